"""reproductions/model_facts.py: facts are stored with --update and then checked exactly; the CPU-scale facts
give every stored CPU-scale model its multiplications."""

import json
import shutil

import pytest

from core.compare import load_store, model_rows
from core.results import REPO_ROOT, load_result
from reproductions import model_facts


@pytest.mark.unit
def test_check_passes_on_stored_facts_and_fails_on_a_changed_one(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(model_facts, "measure_paper", lambda: {"m/params": 5, "m/mults_T2": 7})
    monkeypatch.setattr(model_facts, "measure_cpu", lambda results_dir: {"p/cpu/r/mults": 3})
    assert model_facts.run(tmp_path, update=True) == 0
    stored = load_result(tmp_path / "model-facts" / "paper.json")
    assert stored["metrics"]["m/params"]["per_seed"] == [5.0] and stored["provenance"]["git_commit"]
    assert load_result(tmp_path / "model-facts" / "cpu.json")["metrics"]["p/cpu/r/mults"]["mean"] == 3
    assert model_facts.run(tmp_path, update=False) == 0
    assert "PASS: 3 facts" in capsys.readouterr().out

    monkeypatch.setattr(model_facts, "measure_paper", lambda: {"m/params": 6, "m/mults_T2": 7})
    assert model_facts.run(tmp_path, update=False) == 1  # exact: one parameter off fails
    assert "FAIL: m/params" in capsys.readouterr().out
    monkeypatch.setattr(model_facts, "measure_paper", lambda: {"m/params": 5, "m/mults_T2": 7})
    monkeypatch.setattr(model_facts, "measure_cpu", lambda results_dir: {"p/cpu/r/mults": 4})
    assert model_facts.run(tmp_path, update=False) == 1  # a CPU fact gone stale fails too
    assert "FAIL: p/cpu/r/mults" in capsys.readouterr().out


@pytest.mark.unit
def test_cpu_facts_count_the_runs_whose_training_does_not(tmp_path):
    """WS-RAM's runs get counted multiplications (the random-glimpse baseline has no policy layers, so
    fewer); TNet's runs measure their own, so they get none here."""
    for paper in ("wsram", "tnet"):
        (tmp_path / paper).mkdir()
        shutil.copy(REPO_ROOT / "results" / paper / "cpu.json", tmp_path / paper / "cpu.json")
    facts = model_facts.measure_cpu(tmp_path)
    runs = {key.split("/")[2] for key in facts}
    assert all(key.startswith("wsram/cpu/") for key in facts) and {"wsram_qc", "var"} <= runs
    random = [run for run in runs if run.startswith("random")]
    qc = facts["wsram/cpu/wsram_qc/mults"]
    assert random and all(0 < facts[f"wsram/cpu/{run}/mults"] < qc for run in random)


@pytest.mark.unit
def test_every_stored_cpu_model_has_its_multiplications():
    """Stored results plus stored CPU facts put every CPU-scale model on the multiplications axis; a result
    stored again without `nox -s model-facts -- --update` fails here."""
    missing = [r["source"] + " " + r["model"] for r in model_rows(*load_store(REPO_ROOT / "results"))
               if r["scale"] == "cpu" and not r["mults"]]
    assert not missing


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


@pytest.mark.unit
def test_dram_table1_rows_are_t_plus_one_standard_resnet50_steps():
    """TNet's Table 1 DRAM rows (1.86 / 3.10 / 5.58 / 13.03 G) are (T + 1) x one step of a standard
    ResNet-50 on the 15-channel 77 px glimpse plus DRAM's classifier; ours, the official slim network with
    the LSTMs, costs 565.83 M per step, every step the sum of its modules."""
    assert round(model_facts.count_multiplications(
        model_facts.he_resnet50(3), model_facts.torch.zeros(1, 3, 224, 224)) / 1e9, 2) == 4.09  # ResNet-50
    counts = (2, 4, 8, 20)
    facts = model_facts.dram_step_facts(counts)
    facts = {k.removeprefix("saccader/imagenet-dram/"): v for k, v in facts.items()}
    table1 = [round(facts[f"mults_T{t}_paper_convention"] / 1e9, 2) for t in counts]
    assert table1 == [1.86, 3.10, 5.58, 13.03]
    parts = [v for k, v in facts.items() if k.startswith("step_mults_") and "convention" not in k]
    assert facts["step_mults"] == sum(parts) == 565_831_616
