"""The result store (core/results.py): atomic writes, provenance, aggregation, tolerances, claims, tables."""

import json
import math
import sys

import pytest

from core.errors import UserError
from core.results import (
    REPO_ROOT,
    Tolerance,
    aggregate,
    compare,
    evaluate_claims,
    format_claims,
    format_comparison,
    format_table,
    load_paper_values,
    load_result,
    portable_command,
    provenance,
    save_result,
    tolerance_for,
)


@pytest.mark.unit
def test_save_result_is_atomic(tmp_path):
    path = tmp_path / "deep" / "r.json"
    save_result(path, {"a": 1})
    assert load_result(path) == {"a": 1}
    save_result(path, {"a": 2, "b": [1.5]})
    assert load_result(path) == {"a": 2, "b": [1.5]}
    with pytest.raises(TypeError):  # fails half-way through serialising
        save_result(path, {"a": 3, "bad": object()})
    assert load_result(path) == {"a": 2, "b": [1.5]}  # the old file is intact
    assert [p.name for p in path.parent.iterdir()] == ["r.json"]  # no temp file left behind


@pytest.mark.unit
def test_load_result_errors_name_the_file(tmp_path):
    with pytest.raises(UserError, match="no result file at .*missing.json"):
        load_result(tmp_path / "missing.json")
    (tmp_path / "bad.json").write_text("{")
    with pytest.raises(UserError, match="bad.json is not valid JSON"):
        load_result(tmp_path / "bad.json")


@pytest.mark.unit
def test_provenance_records_code_command_packages_and_machine():
    p = provenance(configs={"run": {"config": "cpu"}}, seeds=[0, 1], wall_time_s=12.345,
                   command=["python", "x y"])
    assert p["command"] == "python 'x y'" and p["seeds"] == [0, 1] and p["wall_time_s"] == 12.35
    assert p["configs"] == {"run": {"config": "cpu"}}
    assert {"python", "torch", "numpy", "accelerate", "datasets"} <= set(p["packages"])
    assert p["packages"]["torch"] and p["machine"]["cpu_count"] >= 1 and "platform" in p["machine"]
    assert "git_commit" in p and "git_dirty" in p and "gpu" in p["machine"]
    json.dumps(p)  # storable


@pytest.mark.unit
def test_provenance_command_names_no_machine_path():
    command = [sys.executable, str(REPO_ROOT / "core" / "reproduce.py"), "reproductions/tnet.toml",
               "--workdir", "/scratch/runs/tnet"]
    assert portable_command(command) == "python core/reproduce.py reproductions/tnet.toml --workdir .../tnet"
    # a path inside a KEY=VALUE or --opt=VALUE word, and in a stored config
    command = ["python", "papers/tnet/train.py", "--set", "dataset=/data/imagenet", "--output-dir=/scratch/x",
               f"--set=encoder_weights={REPO_ROOT / 'shared' / 'vgg.safetensors'}", "--set", "lr=3e-4"]
    assert portable_command(command) == ("python papers/tnet/train.py --set dataset=.../imagenet "
                                         "--output-dir=.../x --set=encoder_weights=shared/vgg.safetensors "
                                         "--set lr=3e-4")
    config = {"run": {"resolved": {"dataset": "/data/imagenet", "name": "cpu", "tasks": ["odd@0", "/d/x"]}}}
    assert provenance(configs=config)["configs"] == {
        "run": {"resolved": {"dataset": ".../imagenet", "name": "cpu", "tasks": ["odd@0", ".../x"]}}}


@pytest.mark.unit
def test_aggregate_mean_and_sample_std():
    agg = aggregate([{"err": 0.1, "acc": 0.9}, {"err": 0.3, "acc": 0.7}])
    assert agg["err"]["per_seed"] == [0.1, 0.3]
    assert agg["err"]["mean"] == pytest.approx(0.2) and agg["err"]["std"] == pytest.approx(math.sqrt(0.02))
    assert aggregate([{"err": 0.5}])["err"] == {"per_seed": [0.5], "mean": 0.5, "std": 0.0}
    with pytest.raises(UserError, match="seed #1 reports metrics"):
        aggregate([{"err": 0.1}, {"acc": 0.2}])


@pytest.mark.unit
@pytest.mark.parametrize("kind, tol, stored, measured, ok", [
    ("exact", 0, 5.0, 5.0, True),
    ("exact", 0, 5.0, 5.000001, False),
    ("absolute", 0.03, 0.10, 0.13, True),  # a difference of exactly tol passes
    ("absolute", 0.03, 0.10, 0.0699, False),
    ("relative", 0.1, 2.0, 2.2, True),
    ("relative", 0.1, 2.0, 1.7, False),
    ("relative", 0.1, 0.0, 0.0, True),
    ("relative", 0.1, 0.0, 1e-9, False),
    ("ratio", 2.0, 10.0, 19.9, True),
    ("ratio", 2.0, 10.0, 5.0, True),
    ("ratio", 2.0, 10.0, 4.9, False),
    ("ratio", 2.0, 10.0, -10.0, False),
    ("absolute", 1.0, 0.5, float("nan"), False),
    ("relative", 1.0, 0.5, float("inf"), False),
])
def test_tolerance_kinds(kind, tol, stored, measured, ok):
    assert Tolerance("*", kind, tol).check(stored, measured)[1] is ok


@pytest.mark.unit
def test_tolerance_validation_and_first_match_wins():
    with pytest.raises(UserError, match="kind must be one of"):
        Tolerance("*", "approx", 0.1)
    with pytest.raises(UserError, match="ratio needs tol >= 1"):
        Tolerance("*", "ratio", 0.5)
    tols = [Tolerance("var/*", "absolute", 0.1), Tolerance("*/test_error", "relative", 0.2)]
    assert tolerance_for("var/test_error", tols).kind == "absolute"
    assert tolerance_for("wsram/test_error", tols).kind == "relative"
    assert tolerance_for("wsram/params", tols).kind == "exact"  # unmatched metrics must be exact


@pytest.mark.unit
def test_compare_rows_and_missing_metrics():
    measured = {"a/err": {"per_seed": [0.11, 0.13], "mean": 0.12, "std": 0.01}, "a/new": 1.0}
    stored = {"a/err": {"per_seed": [0.1], "mean": 0.1, "std": 0.0}, "a/gone": 2.0}
    rows = {r.metric: r for r in compare(measured, stored, [Tolerance("*/err", "absolute", 0.03)])}
    assert rows["a/err"].passed and rows["a/err"].diff == pytest.approx(0.02) and rows["a/err"].tol == "±0.03"
    assert not rows["a/new"].passed and rows["a/new"].stored is None  # not stored yet
    assert not rows["a/gone"].passed and rows["a/gone"].measured is None  # no longer measured
    rows = compare({"a/err": 0.2}, stored, [Tolerance("*", "absolute", 0.03)])
    assert [r.status for r in rows] == ["FAIL", "FAIL"]
    table = format_comparison(rows)
    assert "FAIL" in table and "a/err" in table and "0.1" in table


@pytest.mark.unit
def test_evaluate_claims():
    metrics = {"wsram/err": {"mean": 0.1}, "var/err": {"mean": 0.2}, "params": 3.0}
    claims = [{"id": "lower", "lhs": "wsram/err", "op": "<", "rhs": "var/err", "required": False},
              {"id": "chance", "lhs": "wsram/err", "op": "<=", "rhs": 0.9, "required": True},
              {"id": "worse", "lhs": "wsram/err", "op": ">=", "rhs": "var/err"},
              {"id": "eq", "lhs": "params", "op": ">", "rhs": 3}]
    out = evaluate_claims(metrics, claims)
    assert [c["holds"] for c in out] == [True, True, False, False]
    assert out[0]["lhs_value"] == 0.1 and out[0]["rhs_value"] == 0.2 and out[1]["rhs_value"] == 0.9
    assert "does not hold" in format_claims(out) and "holds" in format_claims(out, {"lower": True})
    with pytest.raises(UserError, match="claim 'x': rhs metric 'var/acc' was not measured"):
        evaluate_claims(metrics, [{"id": "x", "lhs": "wsram/err", "op": "<", "rhs": "var/acc"}])
    with pytest.raises(UserError, match="op must be one of"):
        evaluate_claims(metrics, [{"id": "x", "lhs": "wsram/err", "op": "==", "rhs": 1}])


@pytest.mark.unit
def test_format_table_plain_and_markdown():
    plain = format_table(["a", "value"], [["x", 0.123456], ["longer", None]])
    assert plain.splitlines() == ["a       value", "------  ------", "x       0.1235", "longer  -"]
    md = format_table(["a", "value"], [["x", 1]], markdown=True)
    assert md.splitlines() == ["| a | value |", "|---|---|", "| x | 1 |"]


@pytest.mark.unit
def test_load_paper_values(tmp_path):
    (tmp_path / "papers").mkdir()
    values = {"mnist_err": {"value": 0.011, "unit": "fraction", "cite": "Table 1"}}
    save_result(tmp_path / "papers" / "ram.json", {"paper": "ram", "source": "arXiv", "values": values})
    assert load_paper_values("ram", tmp_path) == values
    save_result(tmp_path / "papers" / "bad.json", {"paper": "bad", "values": {"x": {"value": 1}}})
    with pytest.raises(UserError, match="needs at least 'value' and 'cite'"):
        load_paper_values("bad", tmp_path)
    with pytest.raises(UserError, match="no result file"):
        load_paper_values("nope", tmp_path)
