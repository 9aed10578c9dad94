"""reproductions/model_facts.py: paper-scale facts are stored with --update and then checked exactly."""

import json

import pytest

from core.results import REPO_ROOT, load_result
from reproductions import model_facts


@pytest.mark.unit
def test_check_passes_on_stored_facts_and_fails_on_a_changed_one(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(model_facts, "measure", lambda: {"m/params": 5, "m/mults_T2": 7})
    assert model_facts.run(tmp_path, update=True) == 0
    stored = load_result(tmp_path / "model-facts" / "paper.json")
    assert stored["metrics"]["m/params"]["per_seed"] == [5.0] and stored["provenance"]["git_commit"]
    assert model_facts.run(tmp_path, update=False) == 0
    assert "PASS: 2 facts" in capsys.readouterr().out

    monkeypatch.setattr(model_facts, "measure", lambda: {"m/params": 6, "m/mults_T2": 7})
    assert model_facts.run(tmp_path, update=False) == 1  # exact: one parameter off fails
    assert "FAIL: m/params" in capsys.readouterr().out


@pytest.mark.unit
def test_stored_facts_cover_every_linked_paper_value():
    """Every paper-reported value that points at model-facts names a stored fact."""
    facts = load_result(REPO_ROOT / "results" / "model-facts" / "paper.json")["metrics"]
    links = [entry["ours"]["metric"] for paper in ("tnet", "saccader")
             for entry in json.loads((REPO_ROOT / "results" / "papers" / f"{paper}.json").read_text())
             ["values"].values() if entry.get("ours", {}).get("result") == "model-facts/paper"]
    assert len(links) >= 30 and set(links) <= set(facts)
    assert facts["saccader/imagenet/params"]["mean"] == 35_583_913  # Table Supp.1
    assert facts["saccader/imagenet/locations"]["mean"] == 361  # sec. 3.1


@pytest.mark.slow
def test_measured_facts_equal_the_stored_ones():
    assert model_facts.main([]) == 0
