"""core.compare renders tables from results/ alone, and they follow the stored numbers."""

import json

import pytest

from core.compare import README_END, README_START, main, render, update_readme
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
