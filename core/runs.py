"""A run directory's contract, the same for every paper.

  * config.json is written before the first training step and compared on every resume, so a rerun into a
    directory that holds another config's run is refused in one line, whenever the first run was killed;
  * batch_size is images per optimiser update across all processes; each process's micro-batch is derived
    here once;
  * a finished run is loaded back as (config, model) by one function, whatever the paper.
"""

import dataclasses
import json
import os
import types
import typing
from collections.abc import Callable
from pathlib import Path

import torch
from accelerate import PartialState
from accelerate.utils import parse_flag_from_env
from safetensors.torch import load_file

from core.errors import UserError
from core.results import save_result
from core.train import checkpoint_steps


def world_size() -> int:
    """Number of processes the launcher (accelerate launch, torchrun) started; 1 for a plain `python`.
    Read from its environment so that no distributed state is created before core.train builds its own."""
    return int(os.environ.get("WORLD_SIZE", "1"))


def is_main_process() -> bool:
    """Whether this is the launcher's rank 0 (the process that writes run files)."""
    return int(os.environ.get("RANK", "0")) == 0


def process_state() -> PartialState:
    """This process's accelerate state, as core.train's Accelerator will see it. A bare PartialState() ignores
    ACCELERATE_USE_CPU (only the Accelerator reads it), so under a CPU multi-process launch it would make
    every process a single-process run, and the Accelerator created later would inherit that."""
    return PartialState(cpu=parse_flag_from_env("ACCELERATE_USE_CPU"))


def micro_batch(batch_size: int, world: int | None = None) -> int:
    """Examples per process and micro-batch for a global `batch_size` (images per optimiser update across
    all processes, as the papers state it); refuses a batch that the processes cannot share equally."""
    world = world_size() if world is None else world
    if batch_size < 1 or batch_size % world:
        raise UserError(f"batch_size {batch_size} is not a positive multiple of the {world} processes")
    return batch_size // world


def config_to_dict(cfg) -> dict:
    """The config as plain JSON-able data (tuples become lists, paths strings)."""
    return json.loads(json.dumps(dataclasses.asdict(cfg), default=str))


def save_config(cfg, output_dir: str | Path) -> Path:
    """Write <output_dir>/config.json (the resolved config; the reproduction runner records it)."""
    return save_result(Path(output_dir) / "config.json", config_to_dict(cfg))


def check_resumable(cfg, output_dir: str | Path) -> None:
    """An output directory is resumed, so it must hold a run of this very config (or none): resuming
    another config's checkpoint would mix two runs into one result. Only the location may differ."""
    out = Path(output_dir)
    path = out / "config.json"
    if not path.exists():
        if checkpoint_steps(out / "checkpoints"):
            raise UserError(f"{output_dir} holds checkpoints but no config.json, so its config is unknown; "
                            "use another --output-dir")
        return
    try:
        stored = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise UserError(f"{path} is unreadable ({e}); use another --output-dir") from None
    current = config_to_dict(cfg)
    differ = sorted(k for k in stored.keys() | current.keys()
                    if k != "output_dir" and stored.get(k) != current.get(k))  # a moved run is the same run
    if differ:
        raise UserError(f"{output_dir} holds a run of another config (differs in {', '.join(differ)}); "
                        "resume with the same config or use another --output-dir")


def begin_run(cfg, output_dir: str | Path) -> None:
    """Call before the first training step: refuse another config's directory, then record this config
    (rank 0 writes it), so that even a run killed before its first checkpoint is recognised on rerun."""
    check_resumable(cfg, output_dir)
    if is_main_process():
        save_config(cfg, output_dir)


def _from_json(value, tp):
    """`value` read from JSON, turned back into the annotated type `tp` (lists into tuples, nested
    dataclasses, paths); anything else is returned as read."""
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin in (typing.Union, types.UnionType):
        if value is None:
            return None
        options = [a for a in args if a is not type(None)]
        return _from_json(value, options[0]) if len(options) == 1 else value
    if dataclasses.is_dataclass(tp) and isinstance(value, dict):
        return config_from_dict(tp, value)
    if isinstance(value, list) and (origin in (tuple, list) or tp in (tuple, list)):
        if origin is tuple and args and args[-1] is not Ellipsis:
            items = [_from_json(v, t) for v, t in zip(value, args, strict=True)]
        else:
            items = [_from_json(v, args[0]) if args else v for v in value]
        return (origin or tp)(items)
    if tp is Path and isinstance(value, str):
        return Path(value)
    return value


def config_from_dict(cls, data: dict):
    """The inverse of config_to_dict for the dataclass `cls`: every value back to its field's type."""
    hints = typing.get_type_hints(cls)
    fields = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(data.keys() - fields)
    if unknown:
        raise UserError(f"config.json has fields {cls.__name__} lacks: {', '.join(unknown)}")
    return cls(**{k: _from_json(v, hints[k]) for k, v in data.items()})


def load_config(run_dir: str | Path, cls):
    """The config a train.py run recorded in <run_dir>/config.json."""
    path = Path(run_dir) / "config.json"
    if not path.is_file():
        raise UserError(f"{run_dir} has no config.json (not a train.py output directory)")
    try:
        data = json.loads(path.read_text())
    except ValueError as e:
        raise UserError(f"{path} is unreadable ({e})") from None
    return config_from_dict(cls, data)


def read_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """The tensors of a .safetensors file, or of a PyTorch state dict (.pth / .pt, read with weights_only:
    plain tensors only, no code runs); one line if it is neither."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"no file at {path}")
    try:
        if path.suffix == ".safetensors":
            return load_file(str(path))
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - every reader's failure means the same: not a readable state dict
        first = (str(e).strip().splitlines() or [type(e).__name__])[0]
        raise UserError(f"{path} is not a readable state dict ({first})") from None
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise UserError(f"{path} is not a state dict (a mapping of names to tensors)")
    return state


def load_weights(model: torch.nn.Module, source: str | Path, strict: bool = True) -> int:
    """Load into `model` a .safetensors file, or the latest finished checkpoint under <source>/checkpoints
    (a run's or a stage's folder); returns the checkpoint's step (0 for a file). strict: every key must fit,
    else one line names the mismatch."""
    path = Path(source)
    step = 0
    if path.is_dir():
        steps = checkpoint_steps(path / "checkpoints")
        if not steps:
            raise UserError(f"{path}/checkpoints holds no finished checkpoint: was this stage trained?")
        step, path = steps[-1], path / "checkpoints" / f"step_{steps[-1]}" / "model.safetensors"
    if not path.is_file():
        raise UserError(f"no weights at {path}")
    try:
        missing, unexpected = model.load_state_dict(load_file(str(path)), strict=False)
    except RuntimeError as e:  # a tensor of another shape
        raise UserError(f"{path} does not fit this model ({str(e).splitlines()[-1].strip()})") from None
    if strict and (missing or unexpected):
        raise UserError(f"{path} does not fit this model (missing {missing[:3]}, "
                        f"unexpected {unexpected[:3]})")
    return step


def load_run(run_dir: str | Path, cls, build_model: Callable,
             stage: str = "") -> tuple[object, torch.nn.Module]:
    """A finished run: (its config, build_model(config) holding the latest checkpoint of `stage`, in eval
    mode). `stage` is the sub-folder of a multi-stage run ("" for a single-stage one)."""
    cfg = load_config(run_dir, cls)
    model = build_model(cfg)
    load_weights(model, Path(run_dir) / stage)
    return cfg, model.eval()
