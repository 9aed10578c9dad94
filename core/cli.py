"""The standard command line of every papers/<paper>/train.py:

    python papers/<paper>/train.py --config NAME [--seed N] [--output-dir DIR] [--set field=value ...]

--set values are parsed to the dataclass field's annotated type (int, float, bool, str, Path, Literal,
Optional, tuple[...] / list[...] written as "1,2,3"); nested dataclass fields are reached with dots
("loop.max_steps=10"). Configs are data, never evaluated as code. Every mistake is one `error: ...` line on
stderr and exit code 2; set HA_DEBUG=1 to see tracebacks of UserErrors raised later by the run itself.
"""

import argparse
import dataclasses
import json
import os
import sys
import time
import types
import typing
from collections.abc import Callable
from pathlib import Path
from typing import NoReturn

import torch
import torch.distributed as dist

from core.errors import UserError
from core.results import save_result
from core.runs import begin_run, check_resumable, is_main_process, micro_batch

_TRUE, _FALSE = {"true", "1", "yes", "on"}, {"false", "0", "no", "off"}
_SILENT_RANK_EXIT_DELAY_S = 3.0


def fail(message: str) -> NoReturn:
    """Print `error: <message>` on stderr and exit with status 2. Under a multi-process launch only rank 0
    prints: every rank checks the same input, so the others would repeat the line. They exit a moment
    later: the launcher kills every rank when the first one exits, and rank 0 could die before printing."""
    if is_main_process():
        print(f"error: {message}", file=sys.stderr, flush=True)
    else:
        time.sleep(_SILENT_RANK_EXIT_DELAY_S)
    raise SystemExit(2)


class ArgumentParser(argparse.ArgumentParser):
    """argparse, but a usage mistake is one `error: ...` line (argparse prints the whole usage block)."""

    def error(self, message: str) -> NoReturn:
        fail(message)


def parse_value(text: str, tp) -> object:
    """Parse one --set value to the annotated type `tp`; ValueError says what was expected."""
    origin, args = typing.get_origin(tp) or (tp if tp in (tuple, list) else None), typing.get_args(tp)
    if origin in (typing.Union, types.UnionType):
        if type(None) in args and text.lower() in ("none", "null"):
            return None
        for option in (a for a in args if a is not type(None)):
            try:
                return parse_value(text, option)
            except ValueError:
                continue
        raise ValueError(f"expected {tp}")
    if origin is typing.Literal:
        for choice in args:
            if text == str(choice) or (isinstance(choice, bool) and text.lower() == str(choice).lower()):
                return choice
        raise ValueError(f"expected one of {', '.join(map(str, args))}")
    if origin in (tuple, list):
        body = text.strip()
        if body[:1] + body[-1:] in ("()", "[]"):
            body = body[1:-1]
        items = [s.strip() for s in body.split(",")] if body.strip() else []
        if items and not items[-1]:
            items.pop()  # trailing comma: "3,"
        if origin is tuple and args and args[-1] is not Ellipsis:
            if len(items) != len(args):
                raise ValueError(f"expected {len(args)} comma-separated values")
            return tuple(parse_value(s, t) for s, t in zip(items, args, strict=True))
        if not args:
            raise ValueError(f"annotate the field with its element type, e.g. {origin.__name__}[int, ...]")
        return origin(parse_value(s, args[0]) for s in items)
    if tp is bool:
        if text.lower() in _TRUE | _FALSE:
            return text.lower() in _TRUE
        raise ValueError("expected true or false")
    if tp is int:
        try:
            return int(text)
        except ValueError:
            raise ValueError("expected an integer") from None
    if tp is float:
        try:
            return float(text)
        except ValueError:
            raise ValueError("expected a number") from None
    if tp is str:
        return text
    if tp is Path:
        return Path(text)
    raise ValueError(f"type {tp} cannot be set from the command line")


def _field_types(obj) -> dict[str, object]:
    try:
        hints = typing.get_type_hints(type(obj))  # resolves `from __future__ import annotations` strings
    except Exception:  # unresolvable forward reference: fall back to the raw annotations
        hints = {}
    return {f.name: hints.get(f.name, f.type) for f in dataclasses.fields(obj)}


def override(cfg, path: str, text: str):
    """Return a copy of dataclass `cfg` with the (dotted) field `path` set from the string `text`."""
    head, _, rest = path.partition(".")
    types_ = _field_types(cfg)
    if head not in types_:
        raise UserError(f"unknown field {head!r} in {type(cfg).__name__} (fields: {', '.join(types_)})")
    if rest:
        child = getattr(cfg, head)
        if not dataclasses.is_dataclass(child):
            raise UserError(f"field {head!r} of {type(cfg).__name__} is not a nested config")
        return dataclasses.replace(cfg, **{head: override(child, rest, text)})
    try:
        value = parse_value(text, types_[head])
    except ValueError as e:
        raise UserError(f"bad value {text!r} for {type(cfg).__name__}.{head}: {e}") from None
    return dataclasses.replace(cfg, **{head: value})


def parse_args(get_config: Callable[[str], object], argv: list[str] | None = None,
               description: str | None = None) -> tuple[object, argparse.Namespace]:
    """Parse the standard paper CLI and return (resolved config dataclass, args).

    args.seed and args.output_dir are always resolved (defaults: the config's own `seed` field or 0, and
    runs/<paper>/<config>/seed<N>); when the config has top-level `seed` / `output_dir` fields they are set
    too, so the returned config is the complete record of the run. Every check that needs no setup runs here,
    before anything is printed: overrides, learning rates, the launcher, the batch sizes against the launched
    processes, the output directory and whether it holds a run of another config."""
    parser = ArgumentParser(description=description)
    parser.add_argument("--config", default="cpu", metavar="NAME",
                        help="named config from config.py (default: cpu, the CPU-scale reproduction's)")
    parser.add_argument("--seed", type=int, default=None, metavar="N", help="random seed")
    parser.add_argument("--output-dir", default=None, metavar="DIR",
                        help="checkpoints, metrics.jsonl and final_metrics.json go here (resumed if present)")
    parser.add_argument("--set", action="append", default=[], metavar="FIELD=VALUE",
                        help="override a config field (repeatable; dots reach nested fields)")
    args = parser.parse_args(argv)
    if args.seed is not None and args.seed < 0:
        fail(f"--seed must be a non-negative integer, got {args.seed}")
    try:
        cfg = get_config(args.config)
    except KeyError:
        names = _config_names(get_config)
        fail(f"unknown config {args.config!r}" + (f" (choose from {', '.join(names)})" if names else ""))
    except ValueError as e:  # includes UserError
        fail(str(e))
    try:
        for item in args.set:
            field, eq, value = item.partition("=")
            if not eq or not field.strip():
                raise UserError(f"--set expects FIELD=VALUE, got {item!r}")
            cfg = override(cfg, field.strip(), value.strip())
        names = {f.name for f in dataclasses.fields(cfg)}
        if args.seed is None:
            args.seed = int(cfg.seed) if "seed" in names else 0
        if args.output_dir is None:
            paper = get_config.__module__.split(".")[-2] if "." in get_config.__module__ else "run"
            args.output_dir = str(Path("runs") / paper / args.config / f"seed{args.seed}")
        if "seed" in names:
            cfg = dataclasses.replace(cfg, seed=args.seed)
        if "output_dir" in names:
            out = Path(args.output_dir) if isinstance(cfg.output_dir, Path) else args.output_dir
            cfg = dataclasses.replace(cfg, output_dir=out)
        check_learning_rates(cfg)
        check_launcher()
        check_batch_sizes(cfg)
        check_output_dir(args.output_dir)
        check_resumable(cfg, args.output_dir)
    except ValueError as e:  # UserError, or a config's own __post_init__ validation
        fail(str(e))
    if is_main_process():
        print(f"config {args.config}, seed {args.seed}: outputs in {args.output_dir}", flush=True)
    return cfg, args


def _config_names(get_config: Callable[[str], object]) -> tuple[str, ...]:
    """The named configs of the registered paper whose get_config this is (none for an unregistered one)."""
    from core.registry import papers  # imports every paper: only on this error path

    return next((p.configs for p in papers().values() if p.get_config is get_config), ())


def check_learning_rates(cfg, prefix: str = "") -> None:
    """No learning rate of a config (fields named lr, lr_* or *_lr, nested configs included) is negative: an
    optimiser would reject one only after the minute of setup, with a traceback. lr=0 stays allowed: it is the
    untrained baseline of a reproduction spec."""
    for f in dataclasses.fields(cfg):
        value = getattr(cfg, f.name)
        if dataclasses.is_dataclass(value):
            check_learning_rates(value, f"{prefix}{f.name}.")
        elif (f.name == "lr" or f.name.startswith("lr_") or f.name.endswith("_lr")) and \
                isinstance(value, int | float) and not value >= 0:
            raise UserError(f"{prefix}{f.name} must be a non-negative learning rate, got {value}")


def check_batch_sizes(cfg) -> None:
    """Every batch size of a config (fields named batch_size or *_batch_size, nested configs included) is
    images per optimiser update across all processes: refuse one the processes cannot share, before setup."""
    for f in dataclasses.fields(cfg):
        value = getattr(cfg, f.name)
        if dataclasses.is_dataclass(value):
            check_batch_sizes(value)
        elif f.name == "batch_size" or f.name.endswith("_batch_size"):
            micro_batch(value)


def check_launcher() -> None:
    """Refuse, before setup, a launch the training loop does not support: FSDP shards the parameters, while
    evaluation, the moving averages and the gradient probes run the paper's own module outside the wrapper.
    (On CPU accelerate would silently run DDP instead.)"""
    if os.environ.get("ACCELERATE_USE_FSDP", "").lower() in ("1", "true", "yes"):
        raise UserError("FSDP (accelerate launch --use_fsdp) is not supported: evaluation and the probes run "
                        "the paper's module outside the FSDP wrapper; launch DDP (--multi_gpu) instead")


def check_output_dir(path: str | Path) -> None:
    """The output directory is a folder this process can write (or can create), checked before setup."""
    path = Path(path)
    existing = next(p for p in (path, *path.parents) if p.exists())
    if not existing.is_dir():
        raise UserError(f"--output-dir {path}: {existing} is a file, not a folder")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise UserError(f"--output-dir {path}: {existing} is not writable")


def main_guard(fn: Callable, *args, **kwargs):
    """Run fn(*args, **kwargs); a UserError becomes one `error: ...` line and exit 2 (HA_DEBUG=1 re-raises
    with the traceback), Ctrl-C exits 130 quietly. After a run that returned, the process group it created is
    destroyed: left to the interpreter's teardown, gloo's threads can abort the finished process ("terminate
    called without an active exception", pytorch/pytorch#190489). Not after an error, when another rank may
    still be inside a collective and the teardown could hang."""
    try:
        result = fn(*args, **kwargs)
    except UserError as e:
        if os.environ.get("HA_DEBUG", "") not in ("", "0"):
            raise
        fail(str(e))
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        raise SystemExit(130) from None
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()
    return result


def run_paper(get_config: Callable[[str], object], run: Callable[[object, str], dict[str, float]],
              argv: list[str] | None = None, description: str | None = None) -> dict[str, float]:
    """The whole of a paper's train.py around its training procedure `run(cfg, output_dir) -> final metrics`:
    the standard command line (parse_args, which also checks the launch and the batch sizes against its
    processes); the config recorded in config.json before the first step (and a directory of another config
    refused); the seed; then, on rank 0, final_metrics.json written and printed as one JSON line. Bad input
    is one line."""
    cfg, args = parse_args(get_config, argv, description)

    def go() -> dict[str, float]:
        begin_run(cfg, args.output_dir)
        torch.manual_seed(args.seed)
        metrics = run(cfg, args.output_dir)
        if is_main_process():
            save_result(Path(args.output_dir) / "final_metrics.json", metrics)
            print(json.dumps(metrics), flush=True)
        return metrics

    return main_guard(go)
