"""The paper registry (as timm's model registry): what core and the tools need to know about a paper.

Each paper registers itself in papers/<name>/paper.py:

    register(Paper(name="tnet", config_cls=TNetConfig, get_config=get_config, configs=tuple(CONFIGS),
                   build_model=build_model, build_datasets=build_datasets,
                   train_script="papers/tnet/train.py", main=main,
                   make_step_fn=make_step_fn, make_eval_fn=make_eval_fn))

core never imports a paper by name: `papers()` imports every <package>.<name>.paper module it finds (the
package is a parameter, "papers" by default), so adding a paper means adding its folder and its paper.py.
"""

import importlib
import importlib.util
import pkgutil
from collections.abc import Callable
from dataclasses import dataclass

from core.errors import UserError


@dataclass(frozen=True)
class Paper:
    name: str
    """Registry key and folder name under papers/."""
    config_cls: type
    """The config dataclass; config.json round-trips through it (core.runs.load_config)."""
    get_config: Callable[[str], object]
    """Named config -> a fresh config instance (KeyError if unknown)."""
    configs: tuple[str, ...]
    """The named configs (smoke, cpu and the paper-scale ones)."""
    build_model: Callable[[object], object]
    """config -> the nn.Module trained in the main stage, freshly initialised."""
    build_datasets: Callable[[object], object]
    """config -> the paper's (train, eval) data, as its train.py uses them."""
    train_script: str
    """The paper's command line, relative to the repository root (core.cli's standard arguments)."""
    make_step_fn: Callable | None = None
    """config (, stage) -> core.train step_fn; None where the steps are built inside an experiment."""
    make_eval_fn: Callable | None = None
    """config -> core.train eval_fn (per-example values); None where built inside an experiment."""
    stages: tuple[str, ...] = ()
    """Training stages run one after the other, each in its own sub-folder ("" for one stage)."""
    main: Callable | None = None
    """main(argv) of train_script, for running a paper in-process (tests, tools)."""


_PAPERS: dict[str, Paper] = {}


def register(paper: Paper) -> Paper:
    """Add `paper` to the registry (registering the same name twice is a mistake)."""
    if paper.name in _PAPERS and _PAPERS[paper.name] != paper:
        raise UserError(f"paper {paper.name!r} is registered twice")
    _PAPERS[paper.name] = paper
    return paper


def papers(package: str = "papers") -> dict[str, Paper]:
    """Every registered paper by name, after importing each <package>.<name>.paper module."""
    root = importlib.import_module(package)
    for info in pkgutil.iter_modules(root.__path__):
        if info.ispkg and importlib.util.find_spec(f"{package}.{info.name}.paper") is not None:
            importlib.import_module(f"{package}.{info.name}.paper")
    return dict(sorted(_PAPERS.items()))


def get_paper(name: str, package: str = "papers") -> Paper:
    """The registered paper `name`; a UserError names the registered ones."""
    known = papers(package)
    if name not in known:
        raise UserError(f"unknown paper {name!r} (registered: {', '.join(known)})")
    return known[name]
