"""core.compare renders tables from results/ alone, and they follow the stored numbers."""

import json

import pytest

from core.compare import (
    README_END,
    README_START,
    claim_rows,
    load_store,
    main,
    model_rows,
    paper_vs_ours,
    plot_models,
    render,
    update_readme,
)
from core.errors import UserError


def _store(root, measured_error=0.2, claim_holds=True):
    (root / "papers").mkdir(parents=True, exist_ok=True)
    (root / "toy").mkdir(exist_ok=True)
    (root / "papers" / "toy.json").write_text(
        json.dumps(
            {
                "paper": "toy",
                "values": {
                    "glimpses": {
                        "value": 4,
                        "cite": "Table 9",
                        "ours": {"result": "toy/cpu", "metric": "a/glimpses", "kind": "exact"},
                    }
                },
                "models": [
                    {
                        "model": "Toy-Net",
                        "dataset": "ToySet",
                        "accuracy": 0.7,
                        "mults": 1e9,
                        "cite": "Table 9",
                    }
                ],
            }
        )
    )
    metrics = {
        "a/glimpses": {"per_seed": [4, 4], "mean": 4.0, "std": 0.0},
        "a/accuracy": {"per_seed": [0.8, 0.8], "mean": 0.8, "std": 0.0},
        "a/mults": {"per_seed": [1e6, 1e6], "mean": 1e6, "std": 0.0},
        "a/test_error": {"per_seed": [measured_error] * 2, "mean": measured_error, "std": 0.0},
    }
    claims = [
        {
            "id": "c",
            "text": "a beats chance",
            "lhs": "a/test_error",
            "op": "<",
            "rhs": 0.9,
            "lhs_value": measured_error,
            "rhs_value": 0.9,
            "holds": claim_holds,
        }
    ]
    (root / "toy" / "cpu.json").write_text(
        json.dumps({"paper": "toy", "scale": "cpu", "provenance": {}, "metrics": metrics, "claims": claims})
    )


@pytest.mark.unit
def test_a_count_by_the_papers_convention_gets_its_own_row():
    reported = {"toy": {"values": {"mults": {"value": 100.0, "cite": "Table 1", "ours": {
        "result": "facts/paper", "metric": "m/mults", "kind": "relative", "tol": 0.01}}}}}
    ours = {"facts/paper": {"metrics": {"m/mults": {"mean": 90.0}}}}
    assert [r["status"] for r in paper_vs_ours(reported, ours)] == ["FAIL"]
    ours["facts/paper"]["metrics"]["m/mults_paper_convention"] = {"mean": 100.4}
    rows = paper_vs_ours(reported, ours)
    assert [(r["quantity"], r["ours"], r["status"]) for r in rows] == [
        ("mults", 90.0, "FAIL"), ("mults (by the paper's convention)", 100.4, "PASS")]


@pytest.mark.unit
def test_a_claim_on_a_flagged_run_says_so():
    claim = {"id": "c", "lhs": "a/acc", "op": ">", "rhs": "b/acc", "lhs_value": 0.5, "rhs_value": 0.1}
    ours = {"p/cpu": {"claims": [{**claim, "holds": False, "flags": ["b seed 1: acc 0.1, needs >= 0.2"]},
                                 {**claim, "holds": False}, {**claim, "holds": True}]}}
    assert [r["holds"] for r in claim_rows(ours)] == ["does not hold (flagged run)", "does not hold", "holds"]


def test_tables_follow_stored_results(tmp_path):
    _store(tmp_path / "results")
    before = render(tmp_path / "results", tmp_path / "out")
    assert "| toy | glimpses | Table 9 | 4 | 4 | 0 | exact | PASS |" in before
    assert "a/test_error = 0.2" in before and "| holds |" in before
    assert "Toy-Net" in before and (tmp_path / "out" / "accuracy_vs_mults.png").stat().st_size > 0

    _store(tmp_path / "results", measured_error=0.95, claim_holds=False)
    after = render(tmp_path / "results", tmp_path / "out")
    assert after != before
    assert "a/test_error = 0.95" in after and "does not hold" in after
    assert "does not hold" in (tmp_path / "out" / "claims.csv").read_text()


def test_readme_section_is_regenerated(tmp_path):
    _store(tmp_path / "results")
    readme = tmp_path / "README.md"
    readme.write_text(f"intro\n{README_START}\nstale numbers\n{README_END}\noutro\n")
    assert (
        main(
            [
                "--results-dir",
                str(tmp_path / "results"),
                "--out",
                str(tmp_path / "out"),
                "--readme",
                str(readme),
            ]
        )
        == 0
    )
    text = readme.read_text()
    assert "stale numbers" not in text and "Toy-Net" in text
    assert text.startswith("intro\n") and text.endswith("outro\n")


def test_bad_inputs_are_one_line_errors(tmp_path):
    with pytest.raises(UserError, match="does not exist"):
        render(tmp_path / "missing", tmp_path / "out")
    (tmp_path / "README.md").write_text("no markers")
    with pytest.raises(UserError, match="no results markers"):
        update_readme(tmp_path / "README.md", "x")


def _same_footing(root, saccader_seeds=(0.6, 0.7, 0.8)):
    (root / "same-footing").mkdir(parents=True, exist_ok=True)

    def entry(values):
        mean = sum(values) / len(values)
        return {"per_seed": list(values), "mean": mean, "std": 0.1}

    metrics = {
        "tnet/accuracy": entry([0.5, 0.5, 0.5]),
        "tnet/glimpses": entry([2.0] * 3),
        "tnet/mults": entry([8e6] * 3),
        "saccader/test_accuracy": entry(saccader_seeds),
        "saccader/coverage_learned_T2": entry([0.3] * 3),
        "saccader/accuracy_random_T2": entry([0.2] * 3),
        "saccader/coverage_random_T2": entry([0.4] * 3),
    }
    provenance = {
        "configs": {
            "tnet": {"script": "papers/tnet/train.py", "resolved": {"num_classes": 10}},
            "saccader": {"script": "papers/saccader/train.py",
                         "resolved": {"num_classes": 10, "train_glimpses": 2}},
        },
        "run_cpu_time_s": {f"{run}/seed{s}": t for run, t in (("tnet", 150.0), ("saccader", 130.0))
                           for s in range(3)},
    }
    result = {"paper": "same-footing", "scale": "cpu", "provenance": provenance, "metrics": metrics,
              "claims": []}
    (root / "same-footing" / "cpu.json").write_text(json.dumps(result))


def test_same_footing_table_follows_the_stored_runs(tmp_path):
    _store(tmp_path / "results")
    _same_footing(tmp_path / "results")
    render(tmp_path / "results", tmp_path / "out")
    table = (tmp_path / "out" / "same_footing.md").read_text()
    # Saccader's headline is its test_accuracy at its trained T (2, from the resolved config)
    assert "| saccader | saccader | 0.700 ± 0.100 | 0.600 / 0.700 / 0.800 | 2 | 0.3 | - | 130 |" in table
    assert "| saccader, random policy | saccader | 0.200 ± 0.100 |" in table  # its trivial baseline
    assert "| tnet | tnet | 0.500 ± 0.100 | 0.500 / 0.500 / 0.500 | 2 | - | 8,000,000 | 150 |" in table
    assert "| chance |  | 0.100 |" in table
    assert (tmp_path / "out" / "same_footing.png").stat().st_size > 0

    _same_footing(tmp_path / "results", saccader_seeds=(0.1, 0.1, 0.1))
    render(tmp_path / "results", tmp_path / "out")
    assert "| saccader | saccader | 0.100 ± 0.100 | 0.100 / 0.100 / 0.100 |" in (
        tmp_path / "out" / "same_footing.md").read_text()
    models = (tmp_path / "out" / "models.md").read_text()
    assert "| cpu | same-footing | saccader | same-footing task | 0.1 | - | 2 | 0.3 |" in models


def test_counted_multiplications_fill_the_common_axes(tmp_path):
    """A run whose training does not measure its multiplications takes them from model-facts/cpu.json, says
    so in its source, and lands in its task's panel of the accuracy-vs-multiplications figure."""
    root = tmp_path / "results"
    _store(root)
    _same_footing(root)
    (root / "model-facts").mkdir()
    facts = {"same-footing/cpu/saccader/mults": {"per_seed": [2e7], "mean": 2e7, "std": 0.0}}
    (root / "model-facts" / "cpu.json").write_text(json.dumps(
        {"paper": "model-facts", "scale": "cpu", "provenance": {}, "metrics": facts, "claims": []}))
    render(root, tmp_path / "out")
    models = (tmp_path / "out" / "models.md").read_text()
    assert ("| cpu | same-footing | saccader | same-footing task | 0.7 | 20,000,000 | 2 | 0.3 | "
            "results/same-footing/cpu.json; mults: results/model-facts/cpu.json |") in models
    assert "| saccader | saccader | 0.700 ± 0.100 | 0.600 / 0.700 / 0.800 | 2 | 0.3 | 20,000,000 | 130 |" in (
        tmp_path / "out" / "same_footing.md").read_text()
    rows = model_rows(*load_store(root))
    assert plot_models(rows, tmp_path / "m.png") == [("paper", "ToySet"), ("cpu", "same-footing task"),
                                                     ("cpu", "toy task")]
