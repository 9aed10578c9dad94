"""Sessions: `nox -s tests`, `nox -s lint`, `nox -s reproduce-<paper> [-- --scale smoke|cpu|paper --update]`,
`nox -s compare`, `nox -s bench`, `nox -s model-facts`. Each session installs the project
(`pip install -e .[dev]`) into its own virtualenv."""

import nox

nox.options.sessions = ["tests", "lint"]
nox.options.reuse_existing_virtualenvs = True
nox.options.default_venv_backend = "virtualenv"  # not uv: uv ignores the local torch wheel

# reproductions/<name>.toml
PAPERS = ("tnet", "saccader", "saccader-ablations", "wsram", "boed", "wsram-captions", "same-footing")


def _install(session: nox.Session) -> None:
    session.install("-e", ".[dev]")


@nox.session
def tests(session: nox.Session) -> None:
    """Unit and smoke tests (slow ones are opt-in: `nox -s tests -- -m slow`)."""
    _install(session)
    args = session.posargs or ["-m", "not slow"]
    session.run("python", "-m", "pytest", "-q", *args)


@nox.session
def lint(session: nox.Session) -> None:
    _install(session)
    session.run("ruff", "check", "core", "papers", "reproductions", "tests", "noxfile.py")


def _reproduce(paper: str):
    def session_fn(session: nox.Session) -> None:
        _install(session)
        # --scale cpu first so that `-- --scale smoke` overrides it (argparse keeps the last value).
        session.run("python", "-m", "core.reproduce", f"reproductions/{paper}.toml", "--scale", "cpu",
                    *session.posargs)

    session_fn.__doc__ = f"Reproduce {paper}'s claims at CPU scale and regress against results/{paper}/."
    return session_fn


for _paper in PAPERS:
    nox.session(name=f"reproduce-{_paper}")(_reproduce(_paper))


@nox.session
def compare(session: nox.Session) -> None:
    """Render paper-vs-ours and cross-paper tables and figures from results/ alone (no training)."""
    _install(session)
    session.run("python", "-m", "core.compare", *session.posargs)


@nox.session
def bench(session: nox.Session) -> None:
    """Performance targets as side-by-side ratios (issue #8); writes results/bench/<device>.json."""
    _install(session)
    session.run("python", "reproductions/bench.py", *session.posargs)


@nox.session(name="model-facts")
def model_facts(session: nox.Session) -> None:
    """Parameter counts and multiplications, checked exactly against results/model-facts/{paper,cpu}.json."""
    _install(session)
    session.run("python", "reproductions/model_facts.py", *session.posargs)
