"""One Accelerate training loop for every paper: seeded, resumable, logged, distributed-safe.

Reproducibility rules this loop guarantees (and the tests check):
  * the batch at optimisation step t is a function of (seed, t, number of processes) only, so a run killed
    and resumed from a checkpoint ends bit-identical to an uninterrupted one;
  * evaluation runs under its own forked RNG, so evaluating more or less often never changes training;
  * evaluation metrics are exact dataset means, whatever the number of processes or the last batch size.
"""

import contextlib
import json
import os
import pickle
import re
import shutil
import time
from collections import defaultdict
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from accelerate import Accelerator
from accelerate.utils import (
    RNG_STATE_NAME,
    broadcast,
    extract_model_from_parallel,
    is_compiled_module,
    load,
    send_to_device,
    set_seed,
)
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn
from torch.utils.data import DataLoader, Dataset, Sampler
from tqdm.auto import tqdm

from core.errors import UserError

StepFn = Callable[[torch.nn.Module, object, int], tuple[torch.Tensor, dict[str, float]]]
EvalFn = Callable[[torch.nn.Module, object], dict[str, torch.Tensor]]


@dataclass
class LoopConfig:
    max_steps: int
    """Number of optimiser updates (each one is grad_accum_steps micro-batches)."""
    batch_size: int
    """Micro-batch size per process; the effective batch is batch_size * processes * grad_accum_steps."""
    grad_accum_steps: int = 1
    """Micro-batches whose gradients are summed (averaged) before each optimiser update."""
    mixed_precision: str | None = None
    """Autocast mode: "no", "bf16" or "fp16" (fp16 adds a dynamic loss scaler); None defers to the launcher
    (`accelerate launch --mixed_precision`, ACCELERATE_MIXED_PRECISION), "no" without one."""
    seed: int = 0
    """Seeds the global RNGs and the data order."""
    checkpoint_every: int = 1000
    """Save a resumable checkpoint every this many steps (0: only at the end); the last 2 are kept."""
    checkpoint_every_s: float = 300.0
    """Also save one at the first logging step this many seconds after the last save (0: off), so that a
    killed run whose step interval is long (the CPU configs keep only the final one) loses minutes at most."""
    eval_every: int = 0
    """Evaluate every this many steps (0: only at the end)."""
    log_every: int = 10
    """Append training statistics to <output_dir>/metrics.jsonl every this many steps."""
    output_dir: str = "runs/default"
    """Where checkpoints/ and metrics.jsonl go; an existing checkpoint there is resumed automatically."""
    num_workers: int | None = 0
    """DataLoader worker processes; None: from the cores available to each process (paper scale on a GPU).
    Workers draw random augmentations from their own seeds, so the count is part of a run's identity."""
    cpu: bool = False
    """Force CPU even when an accelerator is available."""
    channels_last: bool = False
    """Convert the model and image batches to channels_last (conv nets: 1.3-1.6x the images/s in bf16 on an
    H200, issue #18; 1.2-1.7x the updates/s of the CPU-scale BagNets and ResNets with one thread)."""
    ema_decay: float = 0.0
    """Also keep an exponential moving average of the weights (torch.optim.swa_utils, this decay per update;
    0: off), checkpointed with the run and evaluated beside the trained weights as eval_ema/<metric>."""

    def __post_init__(self):
        if self.mixed_precision not in (None, "no", "bf16", "fp16"):
            raise UserError(f"mixed_precision must be no, bf16 or fp16, got {self.mixed_precision!r}")
        for name in ("max_steps", "batch_size", "grad_accum_steps", "log_every"):
            if getattr(self, name) < 1:
                raise UserError(f"{name} must be >= 1, got {getattr(self, name)}")
        for name in ("checkpoint_every", "checkpoint_every_s", "eval_every", "num_workers", "seed"):
            if (getattr(self, name) or 0) < 0:
                raise UserError(f"{name} must be >= 0, got {getattr(self, name)}")
        if not 0 <= self.ema_decay < 1:
            raise UserError(f"ema_decay must lie in [0, 1), got {self.ema_decay}")


class StepSampler(Sampler):
    """This process's micro-batches (lists of indices), forever, starting at micro-batch `start`.

    Epoch e is a permutation drawn from (seed, e), cut into global batches of batch_size * world (the ragged
    tail is dropped so every step has the same shape); rank r takes the r-th slice of each global batch.
    Resuming is O(1): no batches are replayed to reach `start`."""

    def __init__(self, num_examples: int, batch_size: int, world: int, rank: int, seed: int, start: int = 0):
        self.n, self.bs, self.world, self.rank, self.seed, self.start = (
            num_examples, batch_size, world, rank, seed, start)
        self.per_epoch = num_examples // (batch_size * world)
        if self.per_epoch == 0:
            raise UserError(f"training set has {num_examples} examples, fewer than one global batch "
                            f"({batch_size} x {world} processes)")

    def __iter__(self):
        epoch, i = divmod(self.start, self.per_epoch)
        while True:
            seed = int(np.random.SeedSequence([self.seed, epoch]).generate_state(1)[0])
            perm = torch.randperm(self.n, generator=torch.Generator().manual_seed(seed))
            for j in range(i, self.per_epoch):
                first = (j * self.world + self.rank) * self.bs
                yield perm[first:first + self.bs].tolist()
            epoch, i = epoch + 1, 0


def checkpoint_steps(root: Path) -> list[int]:
    """Steps of the complete checkpoints under `root` (in-progress saves are named tmp_*), ascending."""
    if not root.is_dir():
        return []
    return sorted(int(m[1]) for p in root.iterdir() if (m := re.fullmatch(r"step_(\d+)", p.name)))


def _save_checkpoint(accelerator: Accelerator, root: Path, step: int, keep: int = 2):
    # Written under a temporary name and renamed once every process is done, so a kill mid-save can never
    # leave a half-written directory that looks like the latest checkpoint.
    tmp, final = root / f"tmp_step_{step}", root / f"step_{step}"
    if accelerator.is_main_process:
        for stale in root.glob("tmp_step_*"):  # left by a kill during an earlier save
            shutil.rmtree(stale)
    accelerator.wait_for_everyone()
    accelerator.save_state(str(tmp), safe_serialization=True)
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        shutil.rmtree(final, ignore_errors=True)
        os.replace(tmp, final)
        for old in checkpoint_steps(root)[:-keep]:
            shutil.rmtree(root / f"step_{old}")
    accelerator.wait_for_everyone()


def _open_log(path: Path, resume_step: int):
    """Open metrics.jsonl for appending, first dropping records past the checkpoint we resume from (a killed
    run may have logged steps it then lost), so every step appears exactly once."""
    kept = []
    for line in path.read_text().splitlines() if path.exists() else []:
        try:
            if json.loads(line)["step"] <= resume_step:
                kept.append(line)
        except (ValueError, KeyError, TypeError):
            pass  # a line cut short by a kill
    tmp = path.with_suffix(".tmp")
    tmp.write_text("".join(line + "\n" for line in kept))
    os.replace(tmp, path)
    return path.open("a")


def _mean_over_processes(accelerator: Accelerator, stats: dict[str, float]) -> dict[str, float]:
    if accelerator.num_processes == 1:
        return stats
    keys = sorted(stats)  # same order on every rank
    values = accelerator.reduce(torch.tensor([stats[k] for k in keys], device=accelerator.device), "mean")
    return dict(zip(keys, values.tolist(), strict=True))


def sync_buffers(accelerator: Accelerator, model):
    """Copy rank 0's buffers to every rank. DDP broadcasts them only at the start of each forward, so after
    a training forward each rank holds its own update (BN statistics, EMA baselines); rank 0's are the ones
    checkpointed, and evaluation and the returned model must all use those."""
    if accelerator.num_processes > 1:
        for buf in accelerator.unwrap_model(model).buffers():
            buf.copy_(broadcast(buf.detach().clone(), from_process=0))


def evaluate(accelerator: Accelerator, model, loader: DataLoader, eval_fn: EvalFn,
             seed: int) -> dict[str, float]:
    """Dataset means of eval_fn's per-example values. `loader` must come from accelerator.prepare so that
    gather_for_metrics drops the examples padded into the last batch and each example counts once."""
    sync_buffers(accelerator, model)
    model.eval()
    values = defaultdict(list)
    devices = [accelerator.device] if accelerator.device.type == "cuda" else []
    with torch.no_grad(), torch.random.fork_rng(devices=devices):
        # Stochastic eval (sampled glimpses) is reproducible and leaves training's RNG stream alone.
        torch.manual_seed(seed)
        for batch in tqdm(loader, desc="eval", leave=False, dynamic_ncols=True,
                          disable=not accelerator.is_local_main_process):
            out = eval_fn(accelerator.unwrap_model(model), batch)
            for name, v in out.items():
                if not isinstance(v, torch.Tensor) or v.ndim != 1:
                    raise UserError(f"eval_fn must return per-example 1-D tensors; {name!r} is not")
            for name, v in accelerator.gather_for_metrics(out).items():
                values[name].append(v.detach().double().cpu())
    model.train()
    return {name: torch.cat(v).mean().item() for name, v in values.items()}


def unwrap(model: torch.nn.Module) -> torch.nn.Module:
    """The paper's own module inside whatever the accelerator wrapped it in (DDP, FSDP, torch.compile), for
    step functions that read its attributes; the accelerator's own unwrapping, not `model.module`."""
    return extract_model_from_parallel(model, keep_torch_compile=False)


def write_run_record(out: Path, accelerator: Accelerator, model: torch.nn.Module,
                     channels_last: bool) -> Path:
    """<out>/run.json: the precision, devices, memory format and torch.compile backend this run actually used
    (the launcher sets precision, devices and compilation without the config showing it)."""
    backend = accelerator.state.dynamo_plugin.backend.value.lower() if is_compiled_module(model) else "none"
    record = {"mixed_precision": accelerator.mixed_precision, "device": accelerator.device.type,
              "num_processes": accelerator.num_processes,
              "memory_format": "channels_last" if channels_last else "contiguous", "compile": backend}
    out.mkdir(parents=True, exist_ok=True)
    (out / "run.json").write_text(json.dumps(record, indent=2) + "\n")
    return out / "run.json"


class Throughput:
    """Training images per second of this session's steps and the fraction of that time spent waiting for
    the data loader (on this process): the end-to-end rate to set beside `nox -s bench`'s model-only one.
    The first step (kernel selection, compilation, workers starting) is not counted, nor are evaluations
    and checkpoints, which happen after a step's end."""

    def __init__(self, images_per_step: int):
        self.images_per_step = images_per_step
        self.steps, self.busy_s, self.wait_s = 0, 0.0, 0.0
        self._start = self._wait = 0.0

    def start_step(self) -> None:
        self._start, self._wait = time.perf_counter(), 0.0

    @contextlib.contextmanager
    def waiting(self):
        start = time.perf_counter()
        yield
        self._wait += time.perf_counter() - start

    def end_step(self, first: bool) -> None:
        if not first:
            self.steps += 1
            self.busy_s += time.perf_counter() - self._start
            self.wait_s += self._wait

    def summary(self) -> dict:
        return {"timed_steps": self.steps, "images_per_s": self.images_per_step * self.steps / self.busy_s,
                "data_wait_fraction": self.wait_s / self.busy_s}


def data_workers(num_workers: int | None, processes: int = 1) -> int:
    """`num_workers`, or with None one per core available to each of `processes` processes less one for
    the training loop, at most 8."""
    if num_workers is not None:
        return num_workers
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    return min(8, max(cores // processes - 1, 0))


def loader_options(loop: LoopConfig, accelerator: Accelerator) -> dict:
    """DataLoader keyword arguments that keep an accelerator fed: workers (`data_workers`), kept alive
    across evaluations, prefetching 4 batches each, and page-locked batches on CUDA."""
    workers = data_workers(loop.num_workers, accelerator.num_processes)
    extra = dict(persistent_workers=True, prefetch_factor=4) if workers else {}
    return dict(num_workers=workers, pin_memory=accelerator.device.type == "cuda", **extra)


def _to_channels_last(batch):
    """4-D tensors of a batch (images) in channels_last; everything else unchanged."""
    if isinstance(batch, torch.Tensor):
        return batch.contiguous(memory_format=torch.channels_last) if batch.ndim == 4 else batch
    if isinstance(batch, (list, tuple)):
        return type(batch)(_to_channels_last(b) for b in batch)
    if isinstance(batch, dict):
        return {k: _to_channels_last(v) for k, v in batch.items()}
    return batch


def train(loop: LoopConfig, model: torch.nn.Module, optimizer: torch.optim.Optimizer, train_dataset: Dataset,
          step_fn: StepFn, eval_dataset: Dataset | None = None, eval_fn: EvalFn | None = None,
          scheduler=None, extra_state: Iterable = ()) -> dict[str, float]:
    """Train for loop.max_steps updates (resuming from output_dir if it holds a checkpoint) and return the
    final eval metrics ({} without eval_fn).

    step_fn(model, batch, step) -> (scalar loss, {name: float}) gets the prepared (possibly DDP-wrapped) model
    and must call it, not its submodules, so gradients are synchronised. eval_fn(model, batch) -> {name:
    per-example tensor (B,)} gets the unwrapped model. The scheduler steps once per optimiser update (not once
    per process as accelerate would). extra_state: objects with state_dict/load_state_dict to checkpoint too.
    """
    if (eval_fn is None) != (eval_dataset is None):
        raise UserError("eval_dataset and eval_fn must be given together")
    out = Path(loop.output_dir)
    ckpt_root = out / "checkpoints"
    accelerator = Accelerator(gradient_accumulation_steps=loop.grad_accum_steps,
                              mixed_precision=loop.mixed_precision, cpu=loop.cpu)
    set_seed(loop.seed)
    if loop.channels_last:
        model = model.to(memory_format=torch.channels_last)
    # `accelerate launch --dynamo_backend inductor` (ACCELERATE_DYNAMO_BACKEND) makes prepare wrap the model
    # in torch.compile; off by default: on the CPU configs it does not pay (reproductions/bench.py). A module
    # an earlier stage's accelerator prepared carries accelerate's no-double-wrap flag, and prepare would
    # return it as it is (uncompiled): this accelerator has not prepared it, so the flag goes.
    model.__dict__.pop("_is_accelerate_prepared", None)
    model, optimizer = accelerator.prepare(model, optimizer)
    if accelerator.is_main_process:
        write_run_record(out, accelerator, model, loop.channels_last)
    # Every rank averages the same synchronised weights, so the average needs no communication.
    ema = AveragedModel(unwrap(model), multi_avg_fn=get_ema_multi_avg_fn(loop.ema_decay), use_buffers=True) \
        if loop.ema_decay else None
    for obj in [scheduler, ema, *extra_state]:
        if obj is not None:
            accelerator.register_for_checkpointing(obj)
    eval_loader = None
    if eval_fn is not None:
        eval_loader = accelerator.prepare(DataLoader(
            eval_dataset, batch_size=loop.batch_size, generator=torch.Generator().manual_seed(loop.seed),
            **loader_options(loop, accelerator)))

    # All processes must agree on the resume step, so read the directory after the main one created it.
    if accelerator.is_main_process:
        ckpt_root.mkdir(parents=True, exist_ok=True)
    accelerator.wait_for_everyone()
    start = max(checkpoint_steps(ckpt_root), default=0)
    if start:
        ckpt = ckpt_root / f"step_{start}"
        try:
            # accelerate skips random states it cannot read, and a resume without them is not bit-identical:
            # read them first (weights_only, as load_state does) so that a missing or damaged file stops here.
            load(ckpt / f"{RNG_STATE_NAME}_{accelerator.process_index}.pkl")
            accelerator.load_state(str(ckpt))
        # Shapes or names this model lacks, a missing file, or a pickle that weights_only loading refuses.
        except (RuntimeError, KeyError, ValueError, OSError, pickle.UnpicklingError) as e:
            reason = (str(e).strip().splitlines() or [type(e).__name__])[0][:200]
            raise UserError(f"cannot resume from {ckpt} (another config's, or damaged): {reason}") from e
        accelerator.print(f"resumed from {ckpt} (step {start} of {loop.max_steps})")
    accelerator.wait_for_everyone()

    sampler = StepSampler(len(train_dataset), loop.batch_size, accelerator.num_processes,
                          accelerator.process_index, loop.seed, start=start * loop.grad_accum_steps)
    # A private generator: creating the loader iterator must not consume the (checkpointed) global RNG.
    batches = iter(DataLoader(train_dataset, batch_sampler=sampler, generator=torch.Generator().manual_seed(
        loop.seed), **loader_options(loop, accelerator)))
    log = _open_log(out / "metrics.jsonl", start) if accelerator.is_main_process else None
    progress = tqdm(total=loop.max_steps, initial=start, desc="train", dynamic_ncols=True,
                    disable=not accelerator.is_local_main_process)
    metrics = {}
    saved_at = time.monotonic()
    speed = Throughput(loop.batch_size * accelerator.num_processes * loop.grad_accum_steps)
    model.train()
    try:
        for step in range(start + 1, loop.max_steps + 1):
            stats = defaultdict(float)
            speed.start_step()
            for _ in range(loop.grad_accum_steps):
                with speed.waiting():
                    batch = send_to_device(next(batches), accelerator.device)
                if loop.channels_last:
                    batch = _to_channels_last(batch)
                with accelerator.accumulate(model):
                    loss, extra = step_fn(model, batch, step)
                    # Agreed across processes so that all stop together instead of one hanging in all-reduce.
                    bad = accelerator.reduce((~torch.isfinite(loss.detach())).float().reshape(1), "sum")
                    if bad.item():
                        last = max(checkpoint_steps(ckpt_root), default=None)
                        kept = ckpt_root / f"step_{last}" if last else "none"
                        raise UserError(f"non-finite loss at step {step}; last good checkpoint: {kept}")
                    accelerator.backward(loss)
                    optimizer.step()
                    optimizer.zero_grad()
                for name, value in {"loss": loss.item(), **extra}.items():
                    stats[name] += float(value) / loop.grad_accum_steps
            lr = optimizer.param_groups[0]["lr"]  # the rate this update used
            if ema is not None:
                ema.update_parameters(unwrap(model))
            if scheduler is not None and not optimizer.step_was_skipped:
                scheduler.step()
            speed.end_step(first=step == start + 1)

            record = {}
            if step % loop.log_every == 0 or step == loop.max_steps:
                record = _mean_over_processes(accelerator, dict(stats))
                record["lr"] = lr
                progress.set_postfix(loss=f"{record['loss']:.4g}")
            if eval_loader is not None and ((loop.eval_every and step % loop.eval_every == 0)
                                            or step == loop.max_steps):
                metrics = evaluate(accelerator, model, eval_loader, eval_fn, loop.seed)
                record.update({f"eval/{k}": v for k, v in metrics.items()})
                if ema is not None:  # same seed: the same sampled glimpses as the trained weights got
                    averaged = evaluate(accelerator, ema.module, eval_loader, eval_fn, loop.seed)
                    record.update({f"eval_ema/{k}": v for k, v in averaged.items()})
            if log is not None and record:
                log.write(json.dumps({"step": step, **record}) + "\n")
                log.flush()
            # Last in the step, so the saved RNG state is exactly what step+1 starts from. The wall-clock
            # trigger is read at logging steps only and agreed across processes (each has its own clock).
            due = loop.checkpoint_every_s and step % loop.log_every == 0 and accelerator.reduce(torch.tensor(
                [float(time.monotonic() - saved_at >= loop.checkpoint_every_s)], device=accelerator.device),
                "sum").item()
            if (loop.checkpoint_every and step % loop.checkpoint_every == 0) or step == loop.max_steps or due:
                _save_checkpoint(accelerator, ckpt_root, step)
                saved_at = time.monotonic()
            progress.update(1)
        if start >= loop.max_steps and eval_loader is not None:  # resumed a finished run: just re-evaluate
            metrics = evaluate(accelerator, model, eval_loader, eval_fn, loop.seed)
    finally:
        progress.close()
        if log is not None:
            log.close()
    if accelerator.is_main_process and speed.steps:
        record = {**json.loads((out / "run.json").read_text()), "throughput": speed.summary()}
        (out / "run.json").write_text(json.dumps(record, indent=2) + "\n")
    sync_buffers(accelerator, model)
    return metrics
