"""Run a paper's reproduction spec and check it against the stored results.

    python -m core.reproduce reproductions/<paper>.toml --scale smoke|cpu|paper [--update] [--jobs N]
                             [--workdir DIR] [--results-dir DIR]

Every (run, seed) of the scale is a subprocess `python <script> --config C --seed S --output-dir D --set ...`
reading nothing but its CLI; the runner shows overall progress with the running runs' current steps, collects
each run's final_metrics.json, aggregates over seeds, evaluates the claims and compares with
results/<paper>/<scale>.json. Exit status 0 only if every run succeeded with finite metrics, every metric is
within tolerance, every required claim holds and every claim has its stored outcome. The spec's [[health]]
rules (runs = name globs, metric, op, value, text; optional scales) flag each (run, seed) whose metric breaks
them: a claim resting on a flagged run does not hold, with a line naming the flag; the stored result lists
the flags under "health", and a flag raised or cleared unlike stored fails the check. A scale checks the
spec's claims whose runs it has, or only those its section lists (`claims = [...]`). The smoke scale is a
wiring check of a few updates per run: it needs no stored results and passes on its own checks. --update
(after all runs succeeded) stores the new numbers, provenance and per-run logs instead; nothing else ever
writes the stored results. The spec's `figures` command then redraws its figures from what was stored.
"""

import itertools
import json
import math
import os
import re
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
import tomllib
from concurrent.futures import FIRST_COMPLETED, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from pathlib import Path

from tqdm import tqdm

from core.cli import ArgumentParser, main_guard
from core.errors import UserError
from core.results import (
    REPO_ROOT,
    HealthCheck,
    Tolerance,
    aggregate,
    compare,
    describe_flag,
    evaluate_claims,
    fmt,
    format_claims,
    format_comparison,
    format_table,
    health_flags,
    load_result,
    provenance,
    save_result,
)

SCALES = ("smoke", "cpu", "paper")
UNSTORED_SCALE = "smoke"
"""The wiring check: with nothing stored for it, it passes on its runs, finite metrics and listed claims."""
REFRESH_S = 1.0
"""Seconds between progress updates on a terminal (a log file gets a status line every LOG_REFRESH_S)."""
LOG_REFRESH_S = 60.0


@dataclass
class Run:
    name: str
    config: str
    set: list[str] = field(default_factory=list)
    script: Path | None = None
    """This run's training script, if not the spec's (a cross-paper spec runs several papers' scripts)."""


@dataclass
class Spec:
    paper: str
    description: str
    """The scale's own description if its section has one, else the spec's."""
    script: Path
    scale: str
    seeds: list[int]
    jobs: int
    runs: list[Run]
    tolerances: list[Tolerance]
    claims: list[dict]
    """The claims this scale checks: those its section lists, else every claim whose runs it has."""
    unchecked: int = 0
    """How many of the spec's claims this scale does not check."""
    health: list[HealthCheck] = field(default_factory=list)
    """The spec's [[health]] rules that apply at this scale (`scales = [...]`; default every scale but
    smoke, whose few updates learn nothing)."""
    figures: list[str] = field(default_factory=list)
    """The script and arguments that draw the spec's figures from the stored results, run after --update
    at every scale but smoke; {results}, {logs} and {scale} stand for the result store, this scale's
    stored logs and the scale."""


def load_spec(path: str | Path, scale: str) -> Spec:
    """Read and validate reproductions/<paper>.toml for one scale; every problem is a UserError."""
    path = Path(path)
    try:
        data = tomllib.loads(path.read_text())
    except FileNotFoundError:
        specs = ", ".join(sorted(p.name for p in path.parent.glob("*.toml"))) or "none"
        raise UserError(f"no reproduction spec at {path} (specs in {path.parent}: {specs})") from None
    except tomllib.TOMLDecodeError as e:
        raise UserError(f"{path}: invalid TOML ({e})") from None
    for key in ("paper", "script", "scales"):
        if key not in data:
            raise UserError(f"{path}: missing top-level key {key!r}")
    if scale not in data["scales"]:
        raise UserError(f"{path}: no [scales.{scale}] (has: {', '.join(data['scales'])})")
    sc = data["scales"][scale]
    try:
        runs = [Run(r["name"], r["config"], [str(s) for s in r.get("set", [])],
                    _repo_path(r["script"]) if "script" in r else None) for r in sc["runs"]]
        seeds = [int(s) for s in sc["seeds"]]
        tolerances = [Tolerance(t["match"], t["kind"], float(t.get("tol", 0.0)))
                      for t in data.get("tolerances", [])]
        claims = [{"id": c["id"], "text": c.get("text", ""), "lhs": c["lhs"], "op": c["op"], "rhs": c["rhs"],
                   "required": bool(c.get("required", False))} for c in data.get("claims", [])]
        health = [HealthCheck(tuple(str(r) for r in h["runs"]), h["metric"], h["op"], float(h["value"]),
                              h["text"]) for h in data.get("health", [])
                  if scale in h.get("scales", [s for s in SCALES if s != UNSTORED_SCALE])]
    except KeyError as e:
        raise UserError(f"{path}: missing key {e} in scale {scale!r}, a tolerance, a claim or a health check"
                        ) from None
    except (TypeError, ValueError) as e:
        raise UserError(f"{path}: malformed entry ({e})") from None
    figures = data.get("figures", [])
    if not isinstance(figures, list) or not all(isinstance(a, str) for a in figures) or (
            "figures" in data and not figures):
        raise UserError(f"{path}: figures must be a list of strings (a script and its arguments)")
    try:
        for arg in figures:
            arg.format(**_figure_values(Path("results"), data["paper"], scale))
    except (KeyError, IndexError, ValueError) as e:
        raise UserError(f"{path}: figures may name only {{results}}, {{logs}} and {{scale}} ({e})") from None
    names = [r.name for r in runs]
    if not runs or not seeds or len(set(names)) != len(names) or any("/" in n for n in names):
        raise UserError(f"{path}: scale {scale!r} needs seeds and runs with unique names without '/'")
    checked = _scale_claims(path, scale, sc, claims, set(names))
    if not isinstance(sc.get("jobs", 1), int) or sc.get("jobs", 1) < 1:
        raise UserError(f"{path}: [scales.{scale}] jobs must be an integer >= 1, got {sc['jobs']!r}")
    return Spec(paper=data["paper"], description=sc.get("description", data.get("description", "")),
                script=_repo_path(data["script"]), scale=scale, seeds=seeds,
                jobs=sc.get("jobs", 1), runs=runs, tolerances=tolerances, claims=checked,
                unchecked=len(claims) - len(checked), health=health, figures=figures)


def _figure_values(results_dir: Path, paper: str, scale: str) -> dict[str, str]:
    return {"results": str(results_dir), "logs": str(results_dir / paper / f"{scale}-logs"), "scale": scale}


def draw_figures(spec: Spec, results_dir: Path) -> int:
    """Run the spec's figure script on the results --update just stored, so the stored figures are always
    drawn from the stored numbers; 0, or 1 with one line naming the command if it failed."""
    script, *args = spec.figures
    values = _figure_values(results_dir, spec.paper, spec.scale)
    cmd = [sys.executable, str(_repo_path(script)), *(a.format(**values) for a in args)]
    proc = subprocess.run(cmd, cwd=REPO_ROOT, capture_output=True, text=True)
    if proc.returncode:
        why = (proc.stderr.strip().splitlines() or [f"exit status {proc.returncode}"])[-1]
        print(f"FAIL: results stored, but drawing the figures failed ({shlex.join(cmd)}): {why}")
        return 1
    print("figures: " + ", ".join(proc.stdout.split()))
    return 0


def _scale_claims(path: Path, scale: str, section: dict, claims: list[dict], runs: set[str]) -> list[dict]:
    """The claims a scale checks: those its section lists by id, else every claim whose runs it has."""
    if "claims" not in section:
        return [c for c in claims if claim_runs(c) <= runs]
    by_id = {c["id"]: c for c in claims}
    listed = [str(i) for i in section["claims"]]
    for claim_id in listed:
        if claim_id not in by_id:
            raise UserError(f"{path}: [scales.{scale}] lists claim {claim_id!r}, which the spec lacks")
        if not claim_runs(by_id[claim_id]) <= runs:
            missing = ", ".join(sorted(claim_runs(by_id[claim_id]) - runs))
            raise UserError(f"{path}: [scales.{scale}] lists claim {claim_id!r}, which needs runs {missing}")
    return [by_id[i] for i in listed]


def _repo_path(path: str) -> Path:
    path = Path(path)
    return path if path.is_absolute() else REPO_ROOT / path


def claim_runs(claim: dict) -> set[str]:
    """Runs a claim refers to ("<run>/<metric>" sides; numbers refer to none)."""
    return {side.split("/", 1)[0] for side in (claim["lhs"], claim["rhs"]) if isinstance(side, str)}


def flag_claims(claims: list[dict], flags: list[dict]) -> list[dict]:
    """Claims resting on a flagged run do not hold; each gets "flags", the lines naming its runs' flags."""
    out = []
    for claim in claims:
        lines = [describe_flag(f) for f in flags if f["run"] in claim_runs(claim)]
        out.append({**claim, "holds": False, "flags": lines} if lines else claim)
    return out


def run_one(spec: Spec, run: Run, seed: int, out_dir: Path, threads: int) -> dict:
    """Run one (run, seed) subprocess; returns {"ok", "wall_s", "cpu_s", "metrics", "error", "log"}.
    cpu_s (user + system seconds of the process) says what wall_s would be on an idle core."""
    out_dir.mkdir(parents=True, exist_ok=True)
    final = out_dir / "final_metrics.json"
    final.unlink(missing_ok=True)  # a stale file from an earlier run must never count as this run's result
    cmd = [sys.executable, str(run.script or spec.script), "--config", run.config, "--seed", str(seed),
           "--output-dir", str(out_dir)]
    for item in run.set:
        cmd += ["--set", item]
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads),
           "PYTHONPATH": os.pathsep.join(p for p in (str(REPO_ROOT), os.environ.get("PYTHONPATH")) if p),
           "TQDM_MININTERVAL": "2"}  # the runner shows the runs' steps from their logs
    log = out_dir / "run.log"
    start = time.perf_counter()
    with log.open("w") as f:
        f.write(" ".join(cmd) + "\n")
        f.flush()
        proc = subprocess.Popen(cmd, cwd=REPO_ROOT, env=env, stdout=f, stderr=subprocess.STDOUT)
        _, status, usage = os.wait4(proc.pid, 0)
        proc.returncode = code = os.waitstatus_to_exitcode(status)
    result = {"ok": False, "wall_s": time.perf_counter() - start, "cpu_s": usage.ru_utime + usage.ru_stime,
              "metrics": None, "log": log, "error": None}
    if code != 0:
        lines = [ln for ln in log.read_text(errors="replace").splitlines() if ln.strip()]
        result["error"] = f"exit {code}: {lines[-1] if len(lines) > 1 else 'no output'}"
    elif not final.exists() or not (out_dir / "metrics.jsonl").exists():
        result["error"] = "finished without writing final_metrics.json and metrics.jsonl"
    else:
        try:
            metrics = json.loads(final.read_text())
            if not isinstance(metrics, dict) or not all(isinstance(v, int | float) for v in metrics.values()):
                raise ValueError("not a flat {name: number} object")
            if not metrics:
                raise ValueError("no metrics")
            if bad := [k for k, v in metrics.items() if not math.isfinite(v)]:
                raise ValueError(f"not finite: {', '.join(bad)}")
        except ValueError as e:
            result["error"] = f"bad final_metrics.json ({e})"
        else:
            result.update(ok=True, metrics={k: float(v) for k, v in metrics.items()})
    return result


def _store(spec: Spec, results_dir: Path, measured: dict, claims: list[dict], flags: list[dict],
           outputs: dict, prov: dict):
    """Write results/<paper>/<scale>.json and its logs. Logs are staged and swapped in before the JSON is
    replaced, so an interruption leaves the old stored result intact."""
    paper_dir = results_dir / spec.paper
    logs = paper_dir / f"{spec.scale}-logs"
    paper_dir.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(dir=paper_dir, prefix=f".{spec.scale}-logs-"))
    for (run, seed), out_dir in outputs.items():
        (staging / run).mkdir(exist_ok=True)
        shutil.copyfile(out_dir / "metrics.jsonl", staging / run / f"seed{seed}.jsonl")
    if logs.exists():
        old = paper_dir / f".{spec.scale}-logs-old"
        shutil.rmtree(old, ignore_errors=True)
        os.replace(logs, old)
        os.replace(staging, logs)
        shutil.rmtree(old)
    else:
        os.replace(staging, logs)
    result = {"paper": spec.paper, "scale": spec.scale, "description": spec.description,
              "provenance": prov, "metrics": measured, "claims": claims, "health": flags}
    return save_result(paper_dir / f"{spec.scale}.json", result)


def run_all(spec: Spec, workdir: Path, jobs: int, threads: int,
            expected_s: dict[str, float] | None = None) -> tuple[dict, dict]:
    """Run every (run, seed), `jobs` at a time, printing one line as each finishes and, meanwhile, overall
    progress with an ETA and each running run's current step. expected_s ("<run>/seed<seed>": seconds, from
    the stored result) lets a running run count in the progress before it finishes.
    Returns ({(run, seed): run_one result}, {(run, seed): output dir})."""
    expected_s = expected_s or {}
    # Longest stored run first (spec order without one), so that the job queues end together.
    tasks = sorted([(run, seed) for run in spec.runs for seed in spec.seeds],
                   key=lambda t: -expected_s.get(f"{t[0].name}/seed{t[1]}", 0.0))
    outputs = {(run.name, seed): workdir / run.name / f"seed{seed}" for run, seed in tasks}
    started, results = {}, {}

    def start(run: Run, seed: int) -> dict:
        started[run.name, seed] = time.perf_counter()
        return run_one(spec, run, seed, outputs[run.name, seed], threads)

    progress = _Progress(f"{spec.paper} [{spec.scale}]", len(tasks))
    with ThreadPoolExecutor(max_workers=jobs) as pool:
        futures = {pool.submit(start, run, seed): (run.name, seed) for run, seed in tasks}
        pending = set(futures)
        while pending:
            done, pending = wait(pending, timeout=REFRESH_S, return_when=FIRST_COMPLETED)
            for future in done:
                (name, seed) = key = futures[future]
                r = results[key] = future.result()
                status = "ok" if r["ok"] else f"FAILED ({r['error']}; log: {r['log']})"
                progress.write(f"[{len(results)}/{len(futures)}] {name} seed {seed}: {status} in "
                               f"{r['wall_s']:.1f}s ({r['cpu_s']:.1f} CPU-s)")
            now, fraction, steps = time.perf_counter(), float(len(results)), []
            for (name, seed), t0 in list(started.items()):
                if (name, seed) in results:
                    continue
                if f"{name}/seed{seed}" in expected_s:
                    fraction += min(0.95, (now - t0) / max(expected_s[f"{name}/seed{seed}"], 1e-9))
                step = current_step(outputs[name, seed] / "run.log")
                steps.append(f"{name} s{seed} {_clock(now - t0)}{' ' + step if step else ''}")
            progress.update(fraction, "; ".join(steps))
    progress.close()
    return results, outputs


_BAR = re.compile(r"([^\r\n|]*?): *\d+%\|[^|\r\n]*\| *(\d+)/(\d+)")


def current_step(log: Path) -> str:
    """A run's current step from the last progress bar in its log ("train 450/1000"; from its second bar
    on, "stage 2: train 450/1000"); empty before the first bar."""
    try:
        bars = [(m[1].strip(), int(m[2]), int(m[3])) for m in _BAR.finditer(log.read_text(errors="replace"))]
    except OSError:
        return ""
    if not bars:
        return ""
    # A new bar: another description or total, or a count that went back.
    stage = 1 + sum(b[0] != a[0] or b[2] != a[2] or b[1] < a[1] for a, b in itertools.pairwise(bars))
    desc, n, total = bars[-1]
    return f"{f'stage {stage}: ' if stage > 1 else ''}{desc} {n}/{total}"


def _clock(seconds: float) -> str:
    return f"{int(seconds // 60)}:{int(seconds % 60):02d}"


class _Progress:
    """Runs done (fractional while running) with an ETA, and the running runs' steps, on one line: a tqdm
    bar on a terminal, else (a log file) a status line every LOG_REFRESH_S."""

    FORMAT = "{desc}: {percentage:3.0f}%|{bar:10}| {n:.1f}/{total_fmt} runs [{elapsed}<{remaining}]{postfix}"

    def __init__(self, desc: str, total: int):
        self.desc, self.total, self.start = desc, total, time.perf_counter()
        self.last_line = self.start
        # shutil falls back to 80 columns where a terminal reports none (tqdm would then print nothing).
        self.bar = tqdm(total=total, desc=desc, bar_format=self.FORMAT, smoothing=0,
                        ncols=shutil.get_terminal_size().columns, disable=not sys.stderr.isatty())

    def write(self, line: str) -> None:
        self.bar.write(line, file=sys.stdout)
        sys.stdout.flush()

    def update(self, done: float, running: str) -> None:
        if not self.bar.disable:
            self.bar.set_postfix_str(running, refresh=False)
            self.bar.update(max(0.0, done - self.bar.n))  # refreshes
            return
        now = time.perf_counter()
        if running and now - self.last_line >= LOG_REFRESH_S:
            self.last_line = now
            print(tqdm.format_meter(done, self.total, now - self.start, prefix=self.desc, postfix=running,
                                    bar_format=self.FORMAT), flush=True)

    def close(self) -> None:
        self.bar.close()


def check(spec: Spec, measured: dict, claims: list[dict], stored: dict | None) -> list[str]:
    """Print the metric and claim tables; return how the reproduction differs from the stored one."""
    seeds = f" over seeds {spec.seeds}" if len(spec.seeds) > 1 else ""
    print(f"\nmetrics (seed means{seeds})")
    if stored is None:
        table = [[k, v["mean"], ", ".join(fmt(x) for x in v["per_seed"])] for k, v in measured.items()]
        print(format_table(["metric", "measured", "per seed"], table))
        problems = [] if spec.scale == UNSTORED_SCALE else [
            "nothing stored to compare with (run with --update to store these results)"]
    else:
        rows = compare(measured, stored.get("metrics", {}), spec.tolerances)
        print(format_comparison(rows, measured))
        problems = [f"{r.metric} outside tolerance" if r.measured is not None and r.stored is not None
                    else f"{r.metric} {'not measured' if r.measured is None else 'not stored'}"
                    for r in rows if not r.passed]
    stored_claims = {c["id"]: c["holds"] for c in stored.get("claims", [])} if stored else None
    if claims:
        print("\nclaims")
        print(format_claims(claims, stored_claims))
    if spec.unchecked:
        smoke = spec.scale == UNSTORED_SCALE
        why = " (a few updates learn nothing; --scale cpu checks them)" if smoke else ""
        total = spec.unchecked + len(claims)
        print(f"\n{spec.unchecked} of the spec's {total} claims not checked at this scale{why}")
    for c in claims if stored_claims is not None else []:
        if c["id"] not in stored_claims:
            problems.append(f"claim {c['id']} not stored")
        elif stored_claims[c["id"]] != c["holds"]:
            problems.append(f"claim {c['id']} {'holds' if c['holds'] else 'does not hold'}, unlike stored")
    return problems


def main(argv: list[str] | None = None) -> int:
    parser = ArgumentParser(prog="python -m core.reproduce", description=__doc__.split("\n\n")[0])
    parser.add_argument("spec", help="reproductions/<paper>.toml")
    parser.add_argument("--scale", choices=SCALES, default="cpu")
    parser.add_argument("--update", action="store_true",
                        help="store the results (only if every run succeeds and required claims hold)")
    parser.add_argument("--jobs", type=int, default=None, help="runs side by side (default: the spec's)")
    parser.add_argument("--workdir", type=Path, default=None,
                        help="run output folders (default: a new temporary folder); reusing one resumes runs")
    parser.add_argument("--results-dir", type=Path, default=REPO_ROOT / "results",
                        help="result store root (default: results/ of this repository)")
    args = parser.parse_args(argv)
    if args.jobs is not None and args.jobs < 1:
        raise UserError(f"--jobs must be >= 1, got {args.jobs}")

    spec = load_spec(args.spec, args.scale)
    figure_script = {_repo_path(spec.figures[0])} if spec.figures else set()
    for script in sorted({spec.script} | {run.script for run in spec.runs if run.script} | figure_script):
        if not script.exists():
            raise UserError(f"{spec.paper} is not implemented yet ({script} does not exist)")
    jobs = args.jobs or spec.jobs
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    threads = max(1, cores // jobs)
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix=f"reproduce-{spec.paper}-{spec.scale}-"))
    stored_path = args.results_dir / spec.paper / f"{spec.scale}.json"
    stored = load_result(stored_path) if stored_path.exists() else None
    print(f"{spec.paper} [{spec.scale}]: {spec.description}\n{len(spec.runs)} runs x {len(spec.seeds)} "
          f"seeds, {jobs} at a time, {threads} thread(s) each; run outputs (config.json, metrics.jsonl, "
          f"final_metrics.json, run.log) in {workdir}/<run>/seed<seed>/", flush=True)

    start = time.perf_counter()
    results, outputs = run_all(spec, workdir, jobs, threads, _expected_seconds(stored))
    wall = time.perf_counter() - start
    failed = [f"{run} seed {seed}" for (run, seed), r in results.items() if not r["ok"]]
    if failed:
        print(f"\nFAIL: {len(failed)} run(s) failed ({', '.join(failed)}); stored results left untouched")
        return 1

    measured = {}
    for run in spec.runs:
        per_seed = aggregate([results[run.name, s]["metrics"] for s in spec.seeds])
        measured.update({f"{run.name}/{k}": v for k, v in per_seed.items()})
    flags = health_flags({key: r["metrics"] for key, r in results.items()}, spec.health)
    claims = flag_claims(evaluate_claims(measured, spec.claims), flags)
    unstored = stored is None and spec.scale == UNSTORED_SCALE
    if unstored:
        listed = "and that the claims its section lists hold" if claims else "(its section lists no claim)"
        print(f"\nnothing stored at {spec.scale} scale: it checks that every run finishes with finite "
              f"metrics {listed}")
    elif stored is None:
        print(f"\nno stored results at {stored_path}")
    problems = check(spec, measured, claims, stored)
    if flags:
        print("\nhealth flags (the claims resting on these runs do not hold)")
        print("\n".join(describe_flag(f) for f in flags))
    if stored is not None:
        was = {(f["run"], f["seed"], f["metric"]) for f in stored.get("health", [])}
        now = {(f["run"], f["seed"], f["metric"]) for f in flags}
        problems += [f"health flag unlike stored: {describe_flag(f)}" for f in flags
                     if (f["run"], f["seed"], f["metric"]) not in was]
        problems += [f"health flag stored but not raised: {run} seed {seed}: {metric}"
                     for run, seed, metric in sorted(was - now)]
    if unstored:
        problems += [f"claim {c['id']} does not hold" + (f" (flagged: {'; '.join(c['flags'])})"
                                                         if c.get("flags") else "")
                     for c in claims if not c["holds"] and not c["required"]]
    required = [f"required claim {c['id']} does not hold" + (f" (flagged: {'; '.join(c['flags'])})"
                                                             if c.get("flags") else "")
                for c in claims if c["required"] and not c["holds"]]

    if args.update:
        if required:
            print(f"\nFAIL: {'; '.join(required)}; results not stored")
            return 1
        configs = {}
        for run in spec.runs:
            resolved = outputs[run.name, spec.seeds[0]] / "config.json"
            script = run.script or spec.script
            if script.is_relative_to(REPO_ROOT):
                script = script.relative_to(REPO_ROOT)
            configs[run.name] = {"script": script.as_posix(), "config": run.config, "set": run.set,
                                 "resolved": _portable_config(resolved)}
        run_walls = {f"{run}/seed{seed}": round(r["wall_s"], 2) for (run, seed), r in results.items()}
        run_cpus = {f"{run}/seed{seed}": round(r["cpu_s"], 2) for (run, seed), r in results.items()}
        prov = provenance(configs=configs, seeds=spec.seeds, wall_time_s=wall, jobs=jobs,
                          threads_per_job=threads, run_wall_time_s=run_walls, run_cpu_time_s=run_cpus,
                          cpu_time_s=round(sum(run_cpus.values()), 1))
        path = _store(spec, args.results_dir, measured, claims, flags, outputs, prov)
        print(f"\nstored {path} ({len(measured)} metrics, {len(claims)} claims; {wall:.0f}s)")
        if spec.figures and spec.scale != UNSTORED_SCALE:
            return draw_figures(spec, args.results_dir)
        return 0
    if required + problems:
        print(f"\nFAIL: {'; '.join(required + problems)}")
        return 1
    if unstored:
        held = f"; the {len(claims)} listed claims hold" if claims else ""
        print(f"\nPASS: {len(results)} runs finished, {len(measured)} metrics, all finite{held} "
              f"({wall:.0f}s)")
    else:
        print(f"\nPASS: {len(measured)} metrics within tolerance, {len(claims)} claims as stored "
              f"({wall:.0f}s)")
    return 0


def _portable_config(path: Path) -> dict | None:
    """A run's resolved config.json without its output directory, a temporary path of the machine."""
    if not path.exists():
        return None
    config = json.loads(path.read_text())
    config.pop("output_dir", None)
    return config


def _expected_seconds(stored: dict | None) -> dict[str, float]:
    """Each stored run's duration on idle cores ("<run>/seed<seed>": its CPU seconds per thread)."""
    prov = (stored or {}).get("provenance", {})
    threads = prov.get("threads_per_job") or 1
    return {key: cpu_s / threads for key, cpu_s in prov.get("run_cpu_time_s", {}).items()}


if __name__ == "__main__":
    sys.exit(main_guard(main))
