"""The reproduction runner (core/reproduce.py).

Runner logic is tested with a torch-free fake train script (milliseconds per run); one smoke test runs the
real toy paper (tests/fixtures/toy_paper/) end to end through the shared loop.
"""

import json
import os
import shutil
import subprocess
import sys
import textwrap
import tomllib
from pathlib import Path

import pytest

import core.reproduce
from core.errors import UserError
from core.reproduce import current_step, load_spec, main
from core.results import load_result, save_result

ROOT = Path(__file__).resolve().parent.parent

FAKE = '''
import argparse, json, os, pathlib, sys, time
p = argparse.ArgumentParser()
p.add_argument("--config"); p.add_argument("--seed", type=int); p.add_argument("--output-dir")
p.add_argument("--set", action="append", default=[])
a = p.parse_args()
sets = dict(s.split("=", 1) for s in a.set)
if sets.get("fail") == "true":
    sys.exit("error: boom")
if "sleep" in sets:  # a run in progress: its bar is in the log while it sleeps
    sys.stderr.write("\\rtrain:  30%|###       | 3/10 [00:01<00:02, 3.00it/s]")
    sys.stderr.flush()
    time.sleep(float(sets["sleep"]))
out = pathlib.Path(a.output_dir)
out.mkdir(parents=True, exist_ok=True)
(out / "metrics.jsonl").write_text(json.dumps({"step": 1, "loss": 1.0 + a.seed}) + "\\n")
acc = float(sets.get("acc", "0.5")) + 0.01 * a.seed
metrics = {"acc": acc, "threads": float(os.environ["OMP_NUM_THREADS"])}
(out / "final_metrics.json").write_text(json.dumps(metrics))
'''


def _spec(tmp_path: Path, low_sets=("acc=0.5",), required_rhs=0.1, script: Path | None = None) -> Path:
    if script is None:
        script = tmp_path / "fake_train.py"
        script.write_text(FAKE)
    spec = tmp_path / "fake.toml"
    spec.write_text(textwrap.dedent(f"""\
        paper = "fake"
        description = "fake runs"
        script = "{script}"

        [scales.cpu]
        seeds = [0, 1]
        jobs = 2
        runs = [
          {{ name = "low", config = "cpu", set = {json.dumps(list(low_sets))} }},
          {{ name = "high", config = "cpu", set = ["acc=0.8"] }},
        ]

        [scales.paper]
        seeds = [0]
        runs = [ {{ name = "low", config = "cpu" }} ]

        [[tolerances]]
        match = "*/threads"
        kind = "exact"

        [[tolerances]]
        match = "*"
        kind = "absolute"
        tol = 0.05

        [[claims]]
        id = "high_beats_low"
        text = "high > low"
        lhs = "high/acc"
        op = ">"
        rhs = "low/acc"

        [[claims]]
        id = "low_beats_chance"
        text = "low beats chance"
        lhs = "low/acc"
        op = ">"
        rhs = {required_rhs}
        required = true
        """))
    return spec


def _run(spec: Path, tmp_path: Path, *extra: str, scale: str = "cpu") -> int:
    return main([str(spec), "--scale", scale, "--results-dir", str(tmp_path / "results"),
                 "--workdir", str(tmp_path / "work"), *extra])


@pytest.mark.unit
def test_update_then_rerun_passes_and_perturbed_store_fails(tmp_path, capsys):
    spec = _spec(tmp_path)
    assert _run(spec, tmp_path) == 1  # nothing stored yet: says so and fails
    assert "no stored results at" in capsys.readouterr().out
    assert not (tmp_path / "results").exists()

    assert _run(spec, tmp_path, "--update") == 0
    out = capsys.readouterr().out
    assert "[1/4]" in out and "[4/4]" in out and "ok in" in out  # one progress line per finished run
    stored_path = tmp_path / "results" / "fake" / "cpu.json"
    stored = load_result(stored_path)
    assert (stored["paper"], stored["scale"]) == ("fake", "cpu")
    assert stored["metrics"]["low/acc"]["per_seed"] == [0.5, 0.51]
    assert stored["metrics"]["low/acc"]["mean"] == pytest.approx(0.505)
    assert stored["metrics"]["high/threads"]["mean"] == max(1, len(os.sched_getaffinity(0)) // 2)
    assert [(c["id"], c["holds"]) for c in stored["claims"]] == [("high_beats_low", True),
                                                                ("low_beats_chance", True)]
    assert {"lhs_value", "rhs_value", "text", "lhs", "op", "rhs"} <= set(stored["claims"][0])
    prov = stored["provenance"]
    assert prov["seeds"] == [0, 1] and prov["configs"]["low"] == {
        "script": ".../fake_train.py", "config": "cpu", "set": ["acc=0.5"],  # no machine path stored
        "resolved": None}
    assert prov["packages"]["python"] and "low/seed1" in prov["run_wall_time_s"]
    assert 0 < prov["run_cpu_time_s"]["low/seed1"] <= prov["cpu_time_s"]
    logs = tmp_path / "results" / "fake" / "cpu-logs"
    assert json.loads((logs / "low" / "seed1.jsonl").read_text()) == {"step": 1, "loss": 2.0}
    assert sorted(p.name for p in (logs / "high").iterdir()) == ["seed0.jsonl", "seed1.jsonl"]

    assert _run(spec, tmp_path) == 0
    out = capsys.readouterr().out
    assert "PASS: 4 metrics within tolerance, 2 claims as stored" in out and "FAIL" not in out

    perturbed = json.loads(stored_path.read_text())
    perturbed["metrics"]["low/acc"]["mean"] += 0.06  # just outside the absolute tolerance of 0.05
    save_result(stored_path, perturbed)
    assert _run(spec, tmp_path) == 1
    out = capsys.readouterr().out
    assert "low/acc outside tolerance" in out and "FAIL" in out

    perturbed = json.loads(json.dumps(stored))
    perturbed["claims"][0]["holds"] = False
    del perturbed["metrics"]["high/threads"]
    save_result(stored_path, perturbed)
    assert _run(spec, tmp_path) == 1
    out = capsys.readouterr().out
    assert "claim high_beats_low holds, unlike stored" in out and "high/threads not stored" in out


@pytest.mark.unit
def test_failed_run_never_touches_stored_results(tmp_path, capsys):
    spec = _spec(tmp_path)
    assert _run(spec, tmp_path, "--update") == 0
    stored = tmp_path / "results" / "fake" / "cpu.json"
    log = tmp_path / "results" / "fake" / "cpu-logs" / "low" / "seed0.jsonl"
    before = (stored.read_bytes(), log.read_bytes())
    capsys.readouterr()

    # Same workdir: the earlier successful final_metrics.json must not be mistaken for this run's result.
    failing = _spec(tmp_path, low_sets=["fail=true"])
    assert _run(failing, tmp_path, "--update") == 1
    out = capsys.readouterr().out
    assert "low seed 0: FAILED (exit 1: error: boom" in out
    assert "FAIL: 2 run(s) failed (" in out and "stored results left untouched" in out
    assert (stored.read_bytes(), log.read_bytes()) == before


@pytest.mark.unit
def test_required_claim_failure_blocks_update(tmp_path, capsys):
    spec = _spec(tmp_path, required_rhs=0.9)
    assert _run(spec, tmp_path, "--update") == 1
    assert "required claim low_beats_chance does not hold; results not stored" in capsys.readouterr().out
    assert not (tmp_path / "results" / "fake").exists()


@pytest.mark.unit
def test_claims_needing_runs_outside_the_scale_are_skipped(tmp_path, capsys):
    spec = _spec(tmp_path)
    assert _run(spec, tmp_path, "--update", scale="paper") == 0
    out = capsys.readouterr().out
    assert "1 of the spec's 2 claims not checked at this scale" in out and "skipped" not in out
    assert [c["id"] for c in load_result(tmp_path / "results" / "fake" / "paper.json")["claims"]] == \
        ["low_beats_chance"]


SMOKE = """
[scales.smoke]
description = "two fake runs of a few updates"
seeds = [0]
claims = {claims}
runs = [ {{ name = "low", config = "smoke" }}, {{ name = "high", config = "smoke", set = ["acc={high}"] }} ]
"""


@pytest.mark.unit
def test_smoke_scale_passes_on_its_own_checks_without_stored_results(tmp_path, capsys):
    spec = _spec(tmp_path)
    base = spec.read_text()
    spec.write_text(base + SMOKE.format(claims='["high_beats_low"]', high=0.8))
    assert _run(spec, tmp_path, scale="smoke") == 0
    out = capsys.readouterr().out
    assert out.startswith("fake [smoke]: two fake runs of a few updates\n")  # the scale's own description
    assert "1 of the spec's 2 claims not checked at this scale (a few updates learn nothing" in out
    assert "PASS: 2 runs finished, 4 metrics, all finite; the 1 listed claims hold" in out
    assert "--update" not in out and not (tmp_path / "results").exists()

    spec.write_text(base + SMOKE.format(claims='["high_beats_low"]', high=0.1))  # a listed claim must hold
    assert _run(spec, tmp_path, scale="smoke") == 1
    assert "FAIL: claim high_beats_low does not hold" in capsys.readouterr().out

    spec.write_text(base + SMOKE.format(claims='["nope"]', high=0.8))
    with pytest.raises(UserError, match="lists claim 'nope', which the spec lacks"):
        load_spec(spec, "smoke")


@pytest.mark.unit
def test_a_non_finite_metric_fails_its_run(tmp_path, capsys):
    spec = _spec(tmp_path, low_sets=["acc=nan"])
    assert _run(spec, tmp_path, "--update") == 1
    out = capsys.readouterr().out
    assert "low seed 0: FAILED (bad final_metrics.json (not finite: acc)" in out
    assert not (tmp_path / "results").exists()


@pytest.mark.unit
def test_progress_shows_the_running_runs_steps(tmp_path, capsys, monkeypatch):
    """Off a terminal (here, captured) the progress is a status line every LOG_REFRESH_S."""
    monkeypatch.setattr(core.reproduce, "REFRESH_S", 0.05)
    monkeypatch.setattr(core.reproduce, "LOG_REFRESH_S", 0.0)
    spec = _spec(tmp_path, low_sets=["acc=0.5", "sleep=1.5"])
    assert _run(spec, tmp_path) == 1  # nothing stored
    out = capsys.readouterr().out
    assert "fake [cpu]:   0%|" in out and "0.0/4 runs" in out and "low s0 0:0" in out
    assert "train 3/10" in out
    outputs = "run outputs (config.json, metrics.jsonl, final_metrics.json, run.log)"
    assert f"{outputs} in {tmp_path / 'work'}/<run>/seed<seed>/" in out


@pytest.mark.unit
def test_current_step_reads_the_last_bar_of_a_log(tmp_path):
    log = tmp_path / "run.log"
    assert current_step(log) == ""  # not started
    log.write_text("cmd\n\rtrain:   0%|          | 0/4 [00:00<?, ?it/s]"
                   "\rtrain:  50%|#####     | 2/4 [00:01<00:01]")
    assert current_step(log) == "train 2/4"
    log.write_text(log.read_text() + "\rtrain: 100%|##########| 4/4 [00:02<00:00]\n"
                   "\rtrain:   0%|          | 0/9 [00:00<?, ?it/s]"
                   "\rtrain:  11%|#         | 1/9 [00:00<00:05]")
    assert current_step(log) == "stage 2: train 1/9"


@pytest.mark.unit
def test_a_run_may_name_its_own_script(tmp_path, capsys):
    """A cross-paper spec (reproductions/same-footing.toml) runs several papers' train.py."""
    spec = _spec(tmp_path)
    other = tmp_path / "other_train.py"
    other.write_text(FAKE.replace('"acc": acc', '"acc": acc + 0.1'))
    high = f'{{ name = "high", script = "{other}", config'
    spec.write_text(spec.read_text().replace('{ name = "high", config', high))
    assert _run(spec, tmp_path, "--update") == 0
    stored = load_result(tmp_path / "results" / "fake" / "cpu.json")
    assert stored["metrics"]["high/acc"]["per_seed"] == pytest.approx([0.9, 0.91])  # other_train.py ran
    assert stored["metrics"]["low/acc"]["per_seed"] == pytest.approx([0.5, 0.51])
    assert stored["provenance"]["configs"]["high"]["script"] == f".../{other.name}"
    other.unlink()
    with pytest.raises(UserError, match="fake is not implemented yet .*other_train.py does not exist"):
        main([str(spec), "--scale", "cpu", "--results-dir", str(tmp_path / "results")])


FIGURES = """
import argparse, pathlib, sys
p = argparse.ArgumentParser()
p.add_argument("--logs", type=pathlib.Path); p.add_argument("--scale")
p.add_argument("--fail", action="store_true")
a = p.parse_args()
if a.fail:
    sys.exit("error: no such metric")
runs = sorted(d.name for d in a.logs.iterdir())
path = a.logs.parent / f"{a.scale}-figure.txt"
path.write_text(" ".join(runs))
print(path)
"""


@pytest.mark.unit
def test_update_redraws_the_specs_figures_from_what_it_stored(tmp_path, capsys):
    spec = _spec(tmp_path)
    (tmp_path / "figures.py").write_text(FIGURES)
    head = f'script = "{tmp_path / "fake_train.py"}"\n'
    figures = f'figures = ["{tmp_path / "figures.py"}", "--logs", "{{logs}}", "--scale", "{{scale}}"]\n'
    spec.write_text(spec.read_text().replace(head, head + figures))
    assert _run(spec, tmp_path, "--update") == 0
    drawn = tmp_path / "results" / "fake" / "cpu-figure.txt"
    assert drawn.read_text() == "high low"  # drawn from the stored logs of every run
    assert f"figures: {drawn}" in capsys.readouterr().out
    drawn.unlink()
    assert _run(spec, tmp_path) == 0 and not drawn.exists()  # a check draws nothing

    spec.write_text(spec.read_text().replace('"{scale}"]', '"{scale}", "--fail"]'))
    assert _run(spec, tmp_path, "--update") == 1  # stored, then the figure script failed: said in one line
    out = capsys.readouterr().out
    assert "FAIL: results stored, but drawing the figures failed (" in out
    assert out.rstrip().endswith("): error: no such metric")
    assert load_result(tmp_path / "results" / "fake" / "cpu.json")["metrics"]["low/acc"]["mean"] == 0.505

    spec.write_text(spec.read_text().replace('"{logs}"', '"{log}"'))
    with pytest.raises(UserError, match=r"figures may name only {results}, {logs} and {scale} \('log'\)"):
        load_spec(spec, "cpu")
    spec.write_text(spec.read_text().replace(str(tmp_path / "figures.py"), str(tmp_path / "nope.py")))
    spec.write_text(spec.read_text().replace('"{log}"', '"{logs}"'))
    with pytest.raises(UserError, match="fake is not implemented yet .*nope.py does not exist"):
        main([str(spec), "--scale", "cpu", "--workdir", str(tmp_path / "unused")])
    assert not (tmp_path / "unused").exists()  # refused before any run starts


@pytest.mark.slow
def test_stored_figures_are_what_the_committed_scripts_draw_from_the_stored_results(tmp_path):
    """Every spec's figures, redrawn from a copy of results/, equal the stored files byte for byte."""
    results = tmp_path / "results"
    shutil.copytree(ROOT / "results", results)
    checked = 0
    for path in sorted((ROOT / "reproductions").glob("*.toml")):
        spec = load_spec(path, "cpu")
        if not spec.figures:
            continue
        before = {p: p.read_bytes() for p in (results / spec.paper).rglob("*.png")}
        assert core.reproduce.draw_figures(spec, results) == 0, path.name
        after = {p: p.read_bytes() for p in (results / spec.paper).rglob("*.png")}
        assert after.keys() == before.keys(), f"{path.name} draws figures that are not stored"
        stale = [str(p.relative_to(results)) for p in after if after[p] != before[p]]
        assert not stale, f"stored figures differ from what {spec.figures[0]} draws now: {stale}"
        checked += len(after)
    assert checked >= 14


@pytest.mark.unit
def test_missing_script_is_not_implemented_yet(tmp_path):
    spec = _spec(tmp_path, script=tmp_path / "papers" / "fake" / "train.py")
    cmd = [sys.executable, "-m", "core.reproduce", str(spec), "--scale", "cpu",
           "--results-dir", str(tmp_path / "results")]
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
    assert proc.returncode != 0 and proc.stdout == ""
    assert proc.stderr.startswith("error: fake is not implemented yet (") and proc.stderr.count("\n") == 1
    assert not (tmp_path / "results").exists()


@pytest.mark.unit
def test_spec_errors_are_user_errors(tmp_path):
    spec = _spec(tmp_path)
    with pytest.raises(UserError, match=r"no \[scales.smoke\] \(has: cpu, paper\)"):
        load_spec(spec, "smoke")
    with pytest.raises(UserError, match=r"no reproduction spec at .*nope.toml \(specs in .*: fake.toml\)"):
        load_spec(tmp_path / "nope.toml", "cpu")
    with pytest.raises(UserError, match="--jobs must be >= 1, got 0"):
        main([str(spec), "--jobs", "0"])
    text = spec.read_text()
    spec.write_text(text.replace("jobs = 2", "jobs = 0"))
    with pytest.raises(UserError, match=r"\[scales.cpu\] jobs must be an integer >= 1, got 0"):
        load_spec(spec, "cpu")
    spec.write_text(text.replace('kind = "exact"', 'kind = "close"'))
    with pytest.raises(UserError, match="kind must be one of"):
        load_spec(spec, "cpu")
    (tmp_path / "bad.toml").write_text('paper = "x"\nscales = {}\n')
    with pytest.raises(UserError, match="missing top-level key 'script'"):
        load_spec(tmp_path / "bad.toml", "cpu")


@pytest.mark.smoke
def test_toy_paper_end_to_end(tmp_path, capsys):
    spec = ROOT / "tests" / "fixtures" / "toy_paper" / "toy.toml"
    assert _run(spec, tmp_path, "--update", scale="smoke") == 0
    stored = load_result(tmp_path / "results" / "toy" / "smoke.json")
    assert stored["metrics"]["trained/eval_index"]["mean"] == 18.0  # every eval example counted once
    assert stored["provenance"]["configs"]["untrained"]["resolved"]["lr"] == 0.0  # --set reached the config
    assert all(c["holds"] for c in stored["claims"])
    log = tmp_path / "results" / "toy" / "smoke-logs" / "trained" / "seed0.jsonl"
    steps = [json.loads(line)["step"] for line in log.read_text().splitlines()]
    assert steps == list(range(1, 13))
    capsys.readouterr()
    # Fresh output folders: the re-run trains from scratch and must match what was stored.
    assert main([str(spec), "--scale", "smoke", "--results-dir", str(tmp_path / "results"),
                 "--workdir", str(tmp_path / "work2")]) == 0
    assert "PASS: 6 metrics within tolerance, 2 claims as stored" in capsys.readouterr().out


@pytest.mark.unit
def test_every_spec_has_a_described_smoke_scale():
    """`nox -s smoke` runs every spec's smoke scale: each says what it runs and which claims it checks."""
    for path in sorted((ROOT / "reproductions").glob("*.toml")):
        smoke, cpu = load_spec(path, "smoke"), load_spec(path, "cpu")
        assert smoke.description != cpu.description, f"{path.name}: [scales.smoke] needs its own description"
        section = tomllib.loads(path.read_text())["scales"]["smoke"]
        assert "claims" in section, f"{path.name}: [scales.smoke] needs its claims list (empty: none)"


HEALTH = """
[[health]]
runs = {runs}
metric = "{metric}"
op = ">="
value = {value}
text = "still at chance"
"""


@pytest.mark.unit
def test_a_flagged_run_fails_the_claims_resting_on_it(tmp_path, capsys):
    spec = _spec(tmp_path)
    base = spec.read_text()
    # high writes acc 0.8 (seed 0) and 0.81 (seed 1): only seed 0 breaks acc >= 0.805.
    spec.write_text(base + HEALTH.format(runs='["hi*"]', metric="acc", value=0.805))
    assert load_spec(spec, "cpu").health[0].runs == ("hi*",)
    assert _run(spec, tmp_path, "--update") == 0  # the flag is stored, not hidden
    stored = load_result(tmp_path / "results" / "fake" / "cpu.json")
    assert stored["health"] == [{"run": "high", "seed": 0, "metric": "acc", "value": 0.8, "op": ">=",
                                 "threshold": 0.805, "text": "still at chance"}]
    flagged = {c["id"]: c for c in stored["claims"]}
    line = "high seed 0: acc 0.8, needs >= 0.805 (still at chance)"
    assert flagged["high_beats_low"]["holds"] is False and flagged["high_beats_low"]["flags"] == [line]
    assert flagged["low_beats_chance"]["holds"] is True and "flags" not in flagged["low_beats_chance"]
    capsys.readouterr()
    assert _run(spec, tmp_path) == 0  # reproduces the stored outcome, and says why the claim fails
    out = capsys.readouterr().out
    assert f"health flags (the claims resting on these runs do not hold)\n{line}" in out
    assert "flagged run" in out  # the claim table's outcome

    unflagged = load_result(tmp_path / "results" / "fake" / "cpu.json")
    unflagged["health"] = []
    save_result(tmp_path / "results" / "fake" / "cpu.json", unflagged)
    assert _run(spec, tmp_path) == 1  # a flag the stored result lacks (a run collapsed here) fails
    assert f"health flag unlike stored: {line}" in capsys.readouterr().out

    spec.write_text(base + HEALTH.format(runs='["hi*"]', metric="acc", value=0.7))  # healthy
    assert _run(spec, tmp_path, "--update") == 0
    assert load_result(tmp_path / "results" / "fake" / "cpu.json")["health"] == []
    assert _run(spec, tmp_path) == 0


@pytest.mark.unit
def test_a_flagged_run_blocks_required_claims_and_skips_smoke(tmp_path, capsys):
    spec = _spec(tmp_path)
    spec.write_text(spec.read_text() + HEALTH.format(runs='["low"]', metric="spread", value=0.1) +
                    SMOKE.format(claims='["high_beats_low"]', high=0.8))
    assert _run(spec, tmp_path, "--update") == 1
    out = capsys.readouterr().out
    assert ("required claim low_beats_chance does not hold (flagged: low seed 0: spread not written, "
            "needs >= 0.1 (still at chance); low seed 1: spread not written") in out
    assert not (tmp_path / "results" / "fake").exists()
    assert load_spec(spec, "smoke").health == []  # a few updates learn nothing: no rule applies by default
    assert _run(spec, tmp_path, scale="smoke") == 0


@pytest.mark.unit
def test_runs_start_longest_stored_first(tmp_path, capsys):
    spec = load_spec(_spec(tmp_path), "cpu")
    expected = {"high/seed1": 5.0, "low/seed0": 3.0}  # the rest: spec order
    results, _ = core.reproduce.run_all(spec, tmp_path / "work", jobs=1, threads=1, expected_s=expected)
    assert list(results) == [("high", 1), ("low", 0), ("low", 1), ("high", 0)]
