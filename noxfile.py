"""Sessions (`nox -l` lists them): tests, lint, smoke, compare, bench, model-facts, and
`nox -s reproduce-<spec> [-- --scale smoke|cpu|paper --update]` for every reproductions/<spec>.toml (paper
scale: the five specs with a [scales.paper], tnet, saccader, wsram, wsram-captions and boed).

Every session runs in one shared environment, .nox/shared: the first session builds it (torch==2.13.0 first,
then the project with the exact versions of constraints.txt), later ones start in seconds, and it is rebuilt
only when pyproject.toml or constraints.txt change. Not uv: uv ignores a local torch wheel that pip finds.
`nox --no-venv` changes nothing (no session has a venv of nox's own); to run in an environment of your own
(a cluster's CUDA build of torch), run a session's command directly, e.g. `python -m pytest -m "not slow"`.
"""

import hashlib
import sys
from pathlib import Path

import nox

nox.options.sessions = ["tests", "lint"]
nox.options.default_venv_backend = "none"  # each session uses the shared environment of _python()

ROOT = Path(__file__).resolve().parent
ENV = ROOT / ".nox" / "shared"
CONSTRAINTS = ROOT / "constraints.txt"
SPECS = ("tnet", "saccader", "saccader-ablations", "saccader-dram", "wsram", "wsram-long", "wsram-captions",
         "wsram-captions-long", "boed", "same-footing")
"""reproductions/<spec>.toml (reproductions/quickstart_times.py reads this list too)"""


def _python(session: nox.Session) -> str:
    """The shared environment's interpreter; (re)installs the environment first if pyproject.toml or
    constraints.txt changed since it was built (or it was never built)."""
    python = ENV / "bin" / "python"
    stamp = ENV / "installed-from.sha256"
    digest = hashlib.sha256((ROOT / "pyproject.toml").read_bytes() + CONSTRAINTS.read_bytes()).hexdigest()
    if python.exists() and stamp.exists() and stamp.read_text() == digest:
        return str(python)
    session.log(f"installing the shared environment {ENV.relative_to(ROOT)} (minutes, once)")
    session.run(sys.executable, "-m", "venv", "--clear", str(ENV), external=True)
    torch = next(line for line in CONSTRAINTS.read_text().splitlines() if line.startswith("torch=="))
    pip = (str(python), "-m", "pip", "install", "--quiet", "--disable-pip-version-check")
    session.run(*pip, torch, external=True)  # alone first: pip takes a local CPU wheel if there is one
    session.run(*pip, "-c", str(CONSTRAINTS), "-e", ".[dev]", external=True)
    stamp.write_text(digest)
    return str(python)


def _run(session: nox.Session, *args: str) -> None:
    session.run(_python(session), *args, external=True)


def _reproduce_cmd(spec: str, scale: str) -> tuple[str, ...]:
    # --scale before the posargs, so that `-- --scale smoke` overrides it (argparse keeps the last value).
    return ("-m", "core.reproduce", f"reproductions/{spec}.toml", "--scale", scale)


@nox.session
def tests(session: nox.Session) -> None:
    """Unit and smoke tests (slow ones are opt-in: `nox -s tests -- -m slow`)."""
    _run(session, "-m", "pytest", "-q", *(session.posargs or ["-m", "not slow"]))


@nox.session
def lint(session: nox.Session) -> None:
    """ruff over the code."""
    _run(session, "-m", "ruff", "check", "core", "papers", "reproductions", "tests", "noxfile.py")


@nox.session
def smoke(session: nox.Session) -> None:
    """Every spec at smoke scale (each under a minute on 2 cores): the runs finish with finite metrics."""
    for spec in SPECS:
        _run(session, *_reproduce_cmd(spec, "smoke"), *session.posargs)


def _reproduce(spec: str):
    def session_fn(session: nox.Session) -> None:
        _run(session, *_reproduce_cmd(spec, "cpu"), *session.posargs)

    session_fn.__doc__ = f"Reproduce {spec}'s claims at CPU scale and regress against results/{spec}/."
    return session_fn


for _spec in SPECS:
    nox.session(name=f"reproduce-{_spec}")(_reproduce(_spec))


@nox.session
def compare(session: nox.Session) -> None:
    """Render paper-vs-ours and cross-paper tables and figures from results/ alone (no training)."""
    _run(session, "-m", "core.compare", *session.posargs)


@nox.session
def bench(session: nox.Session) -> None:
    """Performance targets as side-by-side ratios (issue #8); writes results/bench/<device>.json."""
    _run(session, "reproductions/bench.py", *session.posargs)


@nox.session(name="model-facts")
def model_facts(session: nox.Session) -> None:
    """Parameter counts and multiplications, checked exactly against results/model-facts/{paper,cpu}.json."""
    _run(session, "reproductions/model_facts.py", *session.posargs)
