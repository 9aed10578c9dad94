"""The result store: atomic JSON files, provenance, per-seed aggregation, tolerance checks, paper claims.

Stored reproductions live in results/<paper>/<scale>.json (written only by `core.reproduce --update`);
numbers the papers themselves report live in results/papers/<paper>.json.
"""

import fnmatch
import importlib.metadata
import json
import math
import operator
import os
import platform
import shlex
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from core.errors import UserError

REPO_ROOT = Path(__file__).resolve().parent.parent
KINDS = ("exact", "absolute", "relative", "ratio")
OPS = {"<": operator.lt, "<=": operator.le, ">": operator.gt, ">=": operator.ge}
PACKAGES = ("torch", "numpy", "accelerate", "datasets", "safetensors")


def save_result(path: str | Path, result: dict) -> Path:
    """Write `result` as JSON atomically: readers see the old file or the new one, never half of one."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as f:
            json.dump(result, f, indent=2)
            f.write("\n")
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def load_result(path: str | Path) -> dict:
    """Read a JSON result file; a missing or malformed file is a UserError naming it."""
    try:
        return json.loads(Path(path).read_text())
    except FileNotFoundError:
        raise UserError(f"no result file at {path}") from None
    except json.JSONDecodeError as e:
        raise UserError(f"{path} is not valid JSON ({e})") from None


def _git(*args: str) -> str | None:
    try:
        out = subprocess.run(["git", *args], cwd=REPO_ROOT, capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return out.stdout.strip() if out.returncode == 0 else None


def portable_path(value: str) -> str:
    """An absolute path inside the repository as relative to it, any other absolute path (a scratch
    directory, a machine's data) as `.../<name>`; a `KEY=PATH` or `--opt=PATH` word gets the same for its
    value; anything else is returned as it is."""
    key, sep, rest = value.rpartition("=") if "=" in value and not value.startswith("/") else ("", "", value)
    path = Path(rest)
    if not path.is_absolute():
        return value
    if path.resolve().is_relative_to(REPO_ROOT):
        return key + sep + path.resolve().relative_to(REPO_ROOT).as_posix()
    return f"{key}{sep}.../{path.name}"


def portable_config(config):
    """A (nested) config with every string value through `portable_path`."""
    if isinstance(config, dict):
        return {key: portable_config(value) for key, value in config.items()}
    if isinstance(config, (list, tuple)):
        return [portable_config(value) for value in config]
    return portable_path(config) if isinstance(config, str) else config


def portable_command(argv: list[str]) -> str:
    """The command as a reader can rerun it from a checkout: the interpreter as `python` and every path
    through `portable_path`, so that no machine's absolute paths enter the stored results."""
    words = []
    for i, word in enumerate(argv):
        if i == 0 and (word == sys.executable or Path(word).name.startswith("python")):
            word = "python"
        words.append(portable_path(word))
    return shlex.join(words)


def provenance(configs: dict | None = None, seeds: list[int] | None = None,
               wall_time_s: float | None = None, command: list[str] | None = None, **extra) -> dict:
    """Everything needed to tell where a number came from: code version, command, configs, seeds,
    package versions, machine and wall time. `extra` entries are added as they are."""
    commit = _git("rev-parse", "HEAD")
    versions = {"python": platform.python_version()}
    for name in PACKAGES:
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            versions[name] = None
    import torch  # imported here so that reading/writing results stays cheap

    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
    return {
        "git_commit": commit,
        "git_dirty": bool(_git("status", "--porcelain")) if commit else None,
        "command": portable_command(command if command is not None else [sys.executable, *sys.argv]),
        "configs": portable_config(configs or {}),
        "seeds": list(seeds or []),
        "packages": versions,
        "machine": {"platform": platform.platform(), "arch": platform.machine(),
                    "cpu_count": os.cpu_count(), "gpu": gpu,
                    "gpu_count": torch.cuda.device_count() if gpu else 0},
        "created_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "wall_time_s": None if wall_time_s is None else round(wall_time_s, 2),
        **extra,
    }


def aggregate(per_seed: list[dict[str, float]]) -> dict[str, dict]:
    """[{metric: value} per seed] -> {metric: {"per_seed": [...], "mean", "std"}}; std is the sample
    standard deviation (0 for one seed). Every seed must report the same metrics."""
    if not per_seed:
        return {}
    names = list(per_seed[0])
    for i, metrics in enumerate(per_seed):
        if set(metrics) != set(names):
            raise UserError(f"seed #{i} reports metrics {sorted(metrics)}, seed #0 reports {sorted(names)}")
    out = {}
    for name in names:
        values = [float(m[name]) for m in per_seed]
        std = statistics.stdev(values) if len(values) > 1 else 0.0
        out[name] = {"per_seed": values, "mean": statistics.fmean(values), "std": std}
    return out


def _value(entry) -> float | None:
    """A metric's comparable number: the seed mean of an aggregate entry, or a plain number."""
    if entry is None:
        return None
    return float(entry["mean"]) if isinstance(entry, dict) else float(entry)


@dataclass(frozen=True)
class Tolerance:
    """How far a measured seed mean may be from the stored one. `match` globs "<run>/<metric>"."""

    match: str
    kind: str
    tol: float = 0.0

    def __post_init__(self):
        if self.kind not in KINDS:
            raise UserError(f"tolerance {self.match!r}: kind must be one of {', '.join(KINDS)}, "
                            f"got {self.kind!r}")
        if self.tol < 0 or (self.kind == "ratio" and self.tol < 1):
            raise UserError(f"tolerance {self.match!r}: tol {self.tol} is invalid for kind {self.kind!r} "
                            f"(ratio needs tol >= 1, the others tol >= 0)")

    def describe(self) -> str:
        return {"exact": "exact", "absolute": f"±{self.tol:g}", "relative": f"±{100 * self.tol:g}%",
                "ratio": f"x[1/{self.tol:g}, {self.tol:g}]"}[self.kind]

    def check(self, stored: float, measured: float) -> tuple[float, bool]:
        """(difference in this tolerance's unit, within tolerance?). Non-finite measurements never pass."""
        if not math.isfinite(measured):
            return math.nan, False
        slack = 1e-12 + 1e-9 * self.tol  # so that a difference of exactly `tol` passes despite rounding
        if self.kind == "exact":
            return measured - stored, measured == stored
        if self.kind == "absolute":
            diff = abs(measured - stored)
            return diff, diff <= self.tol + slack
        if stored == 0:
            return (0.0 if measured == 0 else math.inf), measured == 0
        if self.kind == "relative":
            diff = abs(measured - stored) / abs(stored)
            return diff, diff <= self.tol + slack
        ratio = measured / stored
        return ratio, 1 / self.tol - slack <= ratio <= self.tol + slack


def tolerance_for(key: str, tolerances: list[Tolerance]) -> Tolerance:
    """The first tolerance whose glob matches `key`; none matching means the value must be exact."""
    for t in tolerances:
        if fnmatch.fnmatchcase(key, t.match):
            return t
    return Tolerance(match=key, kind="exact")


@dataclass(frozen=True)
class Row:
    """One line of a metric comparison."""

    metric: str
    stored: float | None
    measured: float | None
    diff: float | None
    tol: str
    status: str  # PASS or FAIL

    @property
    def passed(self) -> bool:
        return self.status == "PASS"


def compare(measured: dict, stored: dict, tolerances: list[Tolerance]) -> list[Row]:
    """Compare measured with stored metrics ({key: number or aggregate entry}); a metric present on one
    side only fails (the stored results are out of date)."""
    rows = []
    for key in sorted(set(measured) | set(stored)):
        m, s = _value(measured.get(key)), _value(stored.get(key))
        t = tolerance_for(key, tolerances)
        if m is None or s is None:
            rows.append(Row(key, s, m, None, t.describe(), "FAIL"))
            continue
        diff, ok = t.check(s, m)
        rows.append(Row(key, s, m, diff, t.describe(), "PASS" if ok else "FAIL"))
    return rows


def evaluate_claims(metrics: dict, claims: list[dict]) -> list[dict]:
    """Evaluate each claim `lhs op rhs` (metric keys or numbers) on seed means. Returns the claims with
    lhs_value, rhs_value and holds filled in; a claim naming an unknown metric is a UserError."""
    def resolve(claim, side):
        ref = claim[side]
        if isinstance(ref, int | float) and not isinstance(ref, bool):
            return float(ref)
        if ref not in metrics:
            raise UserError(f"claim {claim['id']!r}: {side} metric {ref!r} was not measured "
                            f"(have: {', '.join(sorted(metrics))})")
        return _value(metrics[ref])

    out = []
    for claim in claims:
        if claim["op"] not in OPS:
            raise UserError(f"claim {claim['id']!r}: op must be one of {' '.join(OPS)}, got {claim['op']!r}")
        lhs, rhs = resolve(claim, "lhs"), resolve(claim, "rhs")
        out.append({**claim, "lhs_value": lhs, "rhs_value": rhs, "holds": bool(OPS[claim["op"]](lhs, rhs))})
    return out


@dataclass(frozen=True)
class HealthCheck:
    """A spec's training-health rule ([[health]]): on every seed of every run it matches, the run's metric
    must satisfy `metric op value`; a (run, seed) that does not is flagged, and the claims resting on that
    run fail, so a collapsed run is never averaged silently into a claim."""

    runs: tuple[str, ...]
    """Globs of the run names the rule covers."""
    metric: str
    """A key of those runs' final_metrics.json (a run that does not write it is flagged too)."""
    op: str
    """One of < <= > >=."""
    value: float
    """The threshold the metric is compared with."""
    text: str
    """What a flag means, e.g. "train accuracy still at chance (0.1) after 3,000 updates"."""

    def __post_init__(self):
        if self.op not in OPS:
            raise UserError(f"health check on {self.metric!r}: op must be one of {' '.join(OPS)}, "
                            f"got {self.op!r}")


def health_flags(per_run: dict[tuple[str, int], dict[str, float]], checks: list[HealthCheck]) -> list[dict]:
    """The (run, seed)s that break a health check: [{"run", "seed", "metric", "value" (None: not written),
    "op", "threshold", "text"}], in check order, then run and seed order."""
    flags = []
    for check in checks:
        for (run, seed), metrics in sorted(per_run.items()):
            if not any(fnmatch.fnmatchcase(run, pattern) for pattern in check.runs):
                continue
            value = metrics.get(check.metric)
            if value is None or not OPS[check.op](value, check.value):
                flags.append({"run": run, "seed": seed, "metric": check.metric, "value": value,
                              "op": check.op, "threshold": check.value, "text": check.text})
    return flags


def describe_flag(flag: dict) -> str:
    """One line naming a health flag: "tnet seed 2: train_accuracy_end 0.07, needs >= 0.2 (text)"."""
    value = "not written" if flag["value"] is None else fmt(flag["value"])
    return (f"{flag['run']} seed {flag['seed']}: {flag['metric']} {value}, needs {flag['op']} "
            f"{flag['threshold']:g} ({flag['text']})")


def fmt(x) -> str:
    """Compact number formatting for tables (4 significant digits); None prints as a dash."""
    if x is None:
        return "-"
    if isinstance(x, float):
        return f"{x:.4g}"
    return str(x)


def format_table(headers: list[str], rows: list[list], markdown: bool = False) -> str:
    """Render rows as an aligned plain-text table, or as a Markdown table."""
    cells = [[fmt(c) for c in row] for row in rows]
    widths = [max(len(h), *(len(r[i]) for r in cells)) for i, h in enumerate(headers)]
    if markdown:
        lines = ["| " + " | ".join(headers) + " |", "|" + "|".join("---" for _ in headers) + "|"]
        lines += ["| " + " | ".join(r) + " |" for r in cells]
    else:
        lines = ["  ".join(h.ljust(w) for h, w in zip(headers, widths, strict=True)),
                 "  ".join("-" * w for w in widths)]
        lines += ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)) for r in cells]
    return "\n".join(line.rstrip() for line in lines)


def format_comparison(rows: list[Row], measured: dict | None = None, markdown: bool = False) -> str:
    """The PASS/FAIL metric table; with `measured` aggregates the measured column shows mean ± std."""
    def shown(row):
        entry = (measured or {}).get(row.metric)
        if isinstance(entry, dict) and len(entry.get("per_seed", [])) > 1:
            return f"{entry['mean']:.4g} ± {entry['std']:.2g}"
        return fmt(row.measured)
    table = [[r.metric, fmt(r.stored), shown(r), fmt(r.diff), r.tol, r.status] for r in rows]
    return format_table(["metric", "stored", "measured", "diff", "tol", "status"], table, markdown)


def format_claims(claims: list[dict], stored: dict[str, bool] | None = None, markdown: bool = False) -> str:
    """The holds / does-not-hold claim table; `stored` maps claim id -> stored outcome."""
    table = []
    for c in claims:
        before = (stored or {}).get(c["id"])
        table.append([c["id"], f"{fmt(c['lhs_value'])} {c['op']} {fmt(c['rhs_value'])}",
                      "flagged run" if c.get("flags") else "holds" if c["holds"] else "does not hold",
                      "-" if before is None else ("holds" if before else "does not hold"),
                      "yes" if c.get("required") else "no"])
    return format_table(["claim", "values", "outcome", "stored", "required"], table, markdown)


def load_paper_values(paper: str, results_dir: str | Path = REPO_ROOT / "results") -> dict[str, dict]:
    """The numbers `paper` itself reports, {key: {"value", "unit", "cite"}}, from
    <results_dir>/papers/<paper>.json."""
    path = Path(results_dir) / "papers" / f"{paper}.json"
    data = load_result(path)
    values = data.get("values") if isinstance(data, dict) else None
    if not isinstance(values, dict):
        raise UserError(f"{path}: expected an object with a 'values' mapping")
    for key, entry in values.items():
        if not isinstance(entry, dict) or not {"value", "cite"} <= set(entry):
            raise UserError(f"{path}: value {key!r} needs at least 'value' and 'cite'")
    return values
