"""The shared training loop (core/train.py) and paper CLI (core/cli.py).

In-process tests use a tiny MLP; the multi-process, kill/resume and uneven-eval tests run the toy paper
(tests/fixtures/toy_paper/train.py) as real subprocesses, including a 2-process `accelerate launch` on CPU.
"""

import dataclasses
import importlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Literal

import pytest
import torch
import torch.nn.functional as F
from accelerate.state import AcceleratorState
from safetensors.torch import load_file
from torch.utils.data import TensorDataset

from core.cli import main_guard, parse_args, parse_value
from core.errors import UserError
from core.train import LoopConfig, StepSampler, checkpoint_steps, loader_options, train

ROOT = Path(__file__).resolve().parent.parent
TOY = ROOT / "tests" / "fixtures" / "toy_paper" / "train.py"
ENV = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1", "TQDM_DISABLE": "1"}


# ---------------------------------------------------------------- in-process loop


def _setup(seed=0, n=64):
    torch.manual_seed(seed)
    g = torch.Generator().manual_seed(123)
    x = torch.randn(n, 4, generator=g)
    data = TensorDataset(x, (x.sum(1) > 0).long())
    model = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.ReLU(), torch.nn.Linear(8, 2))
    return model, torch.optim.SGD(model.parameters(), lr=0.2), data


def _step(model, batch, step):
    x, y = batch
    logits = model(x)
    return F.cross_entropy(logits, y), {"acc": (logits.argmax(1) == y).float().mean().item()}


def _eval(model, batch):
    x, y = batch
    return {"acc": (model(x).argmax(1) == y).float()}


def _records(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


@pytest.mark.unit
def test_train_runs_logs_checkpoints_and_evaluates(tmp_path):
    model, opt, data = _setup()
    before = [p.detach().clone() for p in model.parameters()]
    sched = torch.optim.lr_scheduler.StepLR(opt, step_size=1, gamma=0.9)
    loop = LoopConfig(max_steps=12, batch_size=8, seed=0, checkpoint_every=4, eval_every=5, log_every=2,
                      output_dir=str(tmp_path), cpu=True)
    metrics = train(loop, model, opt, data, _step, eval_dataset=data, eval_fn=_eval, scheduler=sched)

    assert set(metrics) == {"acc"} and metrics["acc"] > 0.6  # learns a linearly separable rule
    assert any(not torch.equal(a, b) for a, b in zip(before, model.parameters(), strict=True))
    assert opt.param_groups[0]["lr"] == pytest.approx(0.2 * 0.9**12)  # one scheduler step per update
    records = _records(tmp_path / "metrics.jsonl")
    assert [r["step"] for r in records] == [2, 4, 5, 6, 8, 10, 12]  # log_every=2, eval at 5 and 10, end
    assert "eval/acc" in records[2] and "loss" not in records[2] and records[-1]["eval/acc"] == metrics["acc"]
    assert checkpoint_steps(tmp_path / "checkpoints") == [8, 12]  # every 4 steps, last 2 kept
    assert (tmp_path / "checkpoints" / "step_12" / "model.safetensors").exists()

    # Re-running a finished run resumes at the end: no training, same metrics, no duplicated log lines.
    model2, opt2, _ = _setup(seed=1)
    sched2 = torch.optim.lr_scheduler.StepLR(opt2, step_size=1, gamma=0.9)
    again = train(loop, model2, opt2, data, _step, eval_dataset=data, eval_fn=_eval, scheduler=sched2)
    assert again == metrics
    assert all(torch.equal(a, b) for a, b in zip(model.parameters(), model2.parameters(), strict=True))
    assert _records(tmp_path / "metrics.jsonl") == records
    assert opt2.param_groups[0]["lr"] == opt.param_groups[0]["lr"]  # scheduler state restored


@pytest.mark.unit
def test_ema_of_the_weights_is_evaluated_beside_them_and_resumes_exactly(tmp_path):
    decay = 0.8
    model, opt, data = _setup()
    weights = []  # the trained weights after every update, to rebuild the average by hand

    def step_fn(model, batch, step):
        weights.append([p.detach().clone() for p in model.parameters()])  # the weights after update step-1
        return _step(model, batch, step)

    loop = LoopConfig(max_steps=6, batch_size=8, eval_every=3, log_every=3, checkpoint_every=3,
                      ema_decay=decay, output_dir=str(tmp_path / "a"), cpu=True)
    train(loop, model, opt, data, step_fn, eval_dataset=data, eval_fn=_eval)
    weights = weights[1:] + [[p.detach().clone() for p in model.parameters()]]
    expected = weights[0]
    for w in weights[1:]:
        expected = [decay * e + (1 - decay) * x for e, x in zip(expected, w, strict=True)]
    saved = load_file(tmp_path / "a" / "checkpoints" / "step_6" / "model.safetensors")
    assert saved  # the trained weights are checkpointed as before; the average rides along as custom state
    records = _records(tmp_path / "a" / "metrics.jsonl")
    assert [("eval/acc" in r, "eval_ema/acc" in r) for r in records] == [(True, True), (True, True)]

    # A run killed at step 3 and resumed ends with the same average (it is checkpointed).
    model_b, opt_b, _ = _setup()
    averaged = {}

    def eval_fn(model, batch):
        averaged[id(model)] = [p.detach().clone() for p in model.parameters()]
        return _eval(model, batch)

    part = dataclasses.replace(loop, max_steps=3, output_dir=str(tmp_path / "b"))
    train(part, model_b, opt_b, data, _step, eval_dataset=data, eval_fn=_eval)
    full = dataclasses.replace(loop, output_dir=str(tmp_path / "b"))
    train(full, *_setup(seed=1)[:2], data, _step, eval_dataset=data, eval_fn=eval_fn)
    ema_weights = [w for w in averaged.values() if not all(
        torch.equal(a, b) for a, b in zip(w, weights[-1], strict=True))]
    assert len(ema_weights) == 1
    for got, want in zip(ema_weights[0], expected, strict=True):
        torch.testing.assert_close(got, want)
    assert _records(tmp_path / "b" / "metrics.jsonl") == records
    with pytest.raises(UserError, match="ema_decay must lie in"):
        LoopConfig(max_steps=1, batch_size=1, ema_decay=1.0)


@pytest.mark.unit
def test_wall_clock_checkpoints_at_logging_steps_and_a_resume_says_where(tmp_path, capsys):
    model, opt, data = _setup()
    loop = LoopConfig(max_steps=9, batch_size=8, checkpoint_every=0, checkpoint_every_s=1e-9, log_every=3,
                      output_dir=str(tmp_path), cpu=True)
    train(loop, model, opt, data, _step)
    assert checkpoint_steps(tmp_path / "checkpoints") == [6, 9]  # each logging step was due; last 2 kept
    assert "resumed" not in capsys.readouterr().out
    train(loop, *_setup(seed=1)[:2], data, _step)
    assert f"resumed from {tmp_path / 'checkpoints' / 'step_9'} (step 9 of 9)" in capsys.readouterr().out


@pytest.mark.unit
def test_nan_loss_stops_with_user_error_and_keeps_last_good_checkpoint(tmp_path):
    model, opt, data = _setup()

    def step_fn(model, batch, step):
        loss, stats = _step(model, batch, step)
        return (loss * float("nan") if step == 7 else loss), stats

    loop = LoopConfig(max_steps=20, batch_size=8, checkpoint_every=5, log_every=1, output_dir=str(tmp_path),
                      cpu=True)
    with pytest.raises(UserError, match=r"non-finite loss at step 7; last good checkpoint: .*step_5"):
        train(loop, model, opt, data, step_fn)
    assert checkpoint_steps(tmp_path / "checkpoints") == [5]
    saved = load_file(str(tmp_path / "checkpoints" / "step_5" / "model.safetensors"))
    assert all(torch.isfinite(v).all() for v in saved.values())
    assert all(torch.isfinite(p).all() for p in model.parameters())  # the bad step never reached the weights
    assert [r["step"] for r in _records(tmp_path / "metrics.jsonl")] == list(range(1, 7))


@pytest.mark.unit
@pytest.mark.parametrize("launcher, configured, used", [("bf16", None, "bf16"), (None, None, "no"),
                                                         ("bf16", "no", "no")])
def test_precision_defers_to_the_launcher_and_is_recorded(tmp_path, monkeypatch, launcher, configured, used):
    # `accelerate launch --mixed_precision bf16` reaches the process as this variable; an explicit value wins.
    if launcher is None:
        monkeypatch.delenv("ACCELERATE_MIXED_PRECISION", raising=False)
    else:
        monkeypatch.setenv("ACCELERATE_MIXED_PRECISION", launcher)
    AcceleratorState._reset_state(True)  # a launched process starts without one; keep no test's precision
    model, optimizer, data = _setup()
    loop = LoopConfig(max_steps=2, batch_size=8, mixed_precision=configured, output_dir=str(tmp_path),
                      cpu=True, channels_last=True)
    seen = []  # accelerate autocasts inside the prepared model's forward
    model[0].register_forward_pre_hook(lambda *_: seen.append(
        torch.get_autocast_dtype("cpu") if torch.is_autocast_enabled("cpu") else None))
    train(loop, model, optimizer, data, _step)
    assert seen[-1] == (torch.bfloat16 if used == "bf16" else None)  # the precision takes effect
    run = json.loads((tmp_path / "run.json").read_text())
    assert run.pop("throughput")["timed_steps"] == 1  # the second of 2 steps (tested below)
    assert run == {"mixed_precision": used, "device": "cpu", "num_processes": 1,
                   "memory_format": "channels_last", "compile": "none"}
    AcceleratorState._reset_state(True)


@pytest.mark.unit
def test_run_records_its_throughput_and_the_time_it_waited_for_data(tmp_path):
    class SlowData(torch.utils.data.Dataset):  # every example costs the loader 5 ms
        def __init__(self, data):
            self.data = data

        def __len__(self):
            return len(self.data)

        def __getitem__(self, i):
            time.sleep(0.005)
            return self.data[i]

    model, optimizer, data = _setup()
    loop = LoopConfig(max_steps=6, batch_size=8, output_dir=str(tmp_path), cpu=True, checkpoint_every=0)
    train(loop, model, optimizer, SlowData(data), _step)
    speed = json.loads((tmp_path / "run.json").read_text())["throughput"]
    assert speed["timed_steps"] == 5  # the first step is not timed
    # >= 40 ms of loading per 8-image step: the wait dominates this tiny model's step and caps the rate
    assert speed["data_wait_fraction"] > 0.5 and 0 < speed["images_per_s"] < 8 / 0.04


@pytest.mark.unit
def test_launcher_compilation_trains_checkpoints_resumes_and_is_recorded(tmp_path, monkeypatch):
    # `accelerate launch --dynamo_backend B` reaches the process as this variable. The eager backend
    # exercises the torch.compile wrapper (accelerate prepare, save/load state, unwrap) without the minutes
    # of an inductor build.
    monkeypatch.setenv("ACCELERATE_DYNAMO_BACKEND", "EAGER")
    AcceleratorState._reset_state(True)
    wrapped = []
    compile_ = torch.compile
    monkeypatch.setattr(torch, "compile",
                        lambda model, **kw: wrapped.append(kw["backend"]) or compile_(model, **kw))
    model, optimizer, data = _setup()
    for steps in (2, 4):  # the second call resumes from the first one's checkpoint, on the same module
        loop = LoopConfig(max_steps=steps, batch_size=8, output_dir=str(tmp_path), cpu=True)
        metrics = train(loop, model, optimizer, data, _step, data, _eval)
    assert wrapped == ["eager", "eager"]  # a module an earlier call prepared is compiled again (stages)
    assert 0 <= metrics["acc"] <= 1 and checkpoint_steps(tmp_path / "checkpoints") == [2, 4]
    assert json.loads((tmp_path / "run.json").read_text())["compile"] == "eager"
    AcceleratorState._reset_state(True)


@pytest.mark.unit
def test_loader_workers_default_from_cores_persist_and_train_like_none(tmp_path, monkeypatch):
    class Accel:
        num_processes, device = 2, torch.device("cpu")

    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(16)), raising=False)
    auto = loader_options(LoopConfig(max_steps=1, batch_size=1, num_workers=None), Accel())
    assert auto == {"num_workers": 7, "pin_memory": False, "persistent_workers": True, "prefetch_factor": 4}
    assert loader_options(LoopConfig(max_steps=1, batch_size=1), Accel()) == {"num_workers": 0,
                                                                              "pin_memory": False}
    # One persistent worker through accelerate's prepared eval loader, evaluated twice: same result as none.
    results = []
    for workers in (0, 1):
        model, optimizer, data = _setup()
        loop = LoopConfig(max_steps=2, batch_size=8, eval_every=1, num_workers=workers,
                          output_dir=str(tmp_path / str(workers)), cpu=True)
        results.append(train(loop, model, optimizer, data, _step, data, _eval))
    assert results[0] == results[1]


@pytest.mark.unit
def test_step_sampler_is_a_function_of_seed_and_step_and_shards_global_batches():
    def first(sampler, k):
        it = iter(sampler)
        return [next(it) for _ in range(k)]

    full = first(StepSampler(20, 3, 1, 0, seed=5), 14)  # 6 batches per epoch, into the 3rd epoch
    assert first(StepSampler(20, 3, 1, 0, seed=5, start=9), 5) == full[9:]  # resume = skip, O(1)
    assert full != first(StepSampler(20, 3, 1, 0, seed=6), 14)
    assert sorted(i for b in full[:6] for i in b) == sorted(set(i for b in full[:6] for i in b))  # no repeats
    r0, r1 = first(StepSampler(20, 3, 2, 0, seed=5), 3), first(StepSampler(20, 3, 2, 1, seed=5), 3)
    global_batches = first(StepSampler(20, 6, 1, 0, seed=5), 3)
    assert [a + b for a, b in zip(r0, r1, strict=True)] == global_batches  # ranks split the same batch
    with pytest.raises(UserError, match="fewer than one global batch"):
        StepSampler(5, 3, 2, 0, seed=0)


@pytest.mark.unit
def test_loop_config_rejects_bad_values():
    with pytest.raises(UserError, match="mixed_precision"):
        LoopConfig(max_steps=1, batch_size=1, mixed_precision="fp8")
    with pytest.raises(UserError, match="batch_size must be >= 1"):
        LoopConfig(max_steps=1, batch_size=0)
    assert {f.name for f in dataclasses.fields(LoopConfig)} >= {
        "max_steps", "batch_size", "grad_accum_steps", "mixed_precision", "seed", "checkpoint_every",
        "eval_every", "log_every", "output_dir", "num_workers", "cpu"}


# ---------------------------------------------------------------- subprocess runs of the toy paper


def _toy(out: Path, *sets: str, steps: int = 30, die_at_step: int = 0) -> subprocess.Popen:
    cmd = [sys.executable, str(TOY), "--config", "tiny", "--output-dir", str(out), "--set", f"steps={steps}"]
    for s in sets:
        cmd += ["--set", s]
    return subprocess.Popen(cmd, cwd=ROOT, env={**ENV, "TOY_DIE_AT_STEP": str(die_at_step)}, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT)


def _finish(proc: subprocess.Popen, expect: int = 0) -> str:
    out, _ = proc.communicate(timeout=300)
    assert proc.returncode == expect, out[-3000:]
    return out


@pytest.mark.smoke
def test_kill_and_resume_is_bit_identical_to_an_uninterrupted_run(tmp_path):
    sets = ("grad_accum_steps=2",)
    straight = _toy(tmp_path / "straight", *sets)
    killed = _toy(tmp_path / "killed", *sets, die_at_step=15)  # checkpoints at 10 and 20; dies at 15
    _finish(straight)
    _finish(killed, expect=-signal.SIGKILL)
    assert checkpoint_steps(tmp_path / "killed" / "checkpoints") == [10]
    assert [r["step"] for r in _records(tmp_path / "killed" / "metrics.jsonl")] == list(range(1, 15))

    _finish(_toy(tmp_path / "killed", *sets))  # same command, same folder: resumes from step 10
    a = load_file(str(tmp_path / "straight" / "params_rank0.safetensors"))
    b = load_file(str(tmp_path / "killed" / "params_rank0.safetensors"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)  # incl. the EMA buffer
    for name in ("metrics.jsonl", "final_metrics.json"):
        assert (tmp_path / "killed" / name).read_text() == (tmp_path / "straight" / name).read_text()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def two_process_run(tmp_path_factory):
    """One 2-process CPU `accelerate launch` of the toy paper (20 steps, 37 eval examples, batch 8)."""
    out = tmp_path_factory.mktemp("ddp")
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
           "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
           "--main_process_port", str(_free_port()), str(TOY), "--config", "tiny", "--output-dir", str(out),
           "--set", "steps=20"]
    env = {**ENV, "ACCELERATE_USE_CPU": "true", "CUDA_VISIBLE_DEVICES": ""}  # 2 CPU processes on any machine
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-3000:]
    return out


@pytest.mark.smoke
def test_accelerate_launch_mixed_precision_is_used_and_recorded(tmp_path):
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--cpu", "--num_processes", "1",
           "--num_machines", "1", "--mixed_precision", "bf16", "--dynamo_backend", "no", str(TOY),
           "--config", "tiny", "--output-dir", str(tmp_path), "--set", "steps=2"]
    proc = subprocess.run(cmd, cwd=ROOT, env={**ENV, "CUDA_VISIBLE_DEVICES": ""}, capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-3000:]
    run = json.loads((tmp_path / "run.json").read_text())
    assert run["mixed_precision"] == "bf16" and run["device"] == "cpu" and run["num_processes"] == 1


@pytest.mark.smoke
def test_two_processes_end_with_identical_parameters(two_process_run):
    r0 = load_file(str(two_process_run / "params_rank0.safetensors"))
    r1 = load_file(str(two_process_run / "params_rank1.safetensors"))
    assert r0.keys() == r1.keys() and all(torch.equal(r0[k], r1[k]) for k in r0)
    assert (two_process_run / "checkpoints" / "step_20" / "random_states_1.pkl").exists()
    assert [r["step"] for r in _records(two_process_run / "metrics.jsonl")] == list(range(1, 21))
    run = json.loads((two_process_run / "run.json").read_text())
    assert run.pop("throughput")["timed_steps"] == 19
    assert run == {"mixed_precision": "no", "device": "cpu", "num_processes": 2,
                   "memory_format": "contiguous", "compile": "none"}


@pytest.mark.smoke
def test_two_machines_train_as_two_processes_on_one_do(two_process_run, tmp_path):
    """Multi-node DDP as README "Beyond one machine" runs it: two launchers (`--num_machines 2`, one process
    each, here both on localhost, sharing the output folder as nodes share a file system) train exactly as
    one launcher's two processes do."""
    port = str(_free_port())
    env = {**ENV, "ACCELERATE_USE_CPU": "true", "CUDA_VISIBLE_DEVICES": ""}
    procs = [subprocess.Popen(
        [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
         "--num_machines", "2", "--machine_rank", str(rank), "--main_process_ip", "127.0.0.1",
         "--main_process_port", port, "--mixed_precision", "no", "--dynamo_backend", "no", str(TOY),
         "--config", "tiny", "--output-dir", str(tmp_path), "--set", "steps=20"],
        cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True) for rank in (0, 1)]
    for proc in procs:
        out, _ = proc.communicate(timeout=300)
        assert proc.returncode == 0, out[-3000:]
    for rank in (0, 1):
        a = load_file(str(tmp_path / f"params_rank{rank}.safetensors"))
        b = load_file(str(two_process_run / f"params_rank{rank}.safetensors"))
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    for name in ("metrics.jsonl", "final_metrics.json"):
        assert (tmp_path / name).read_text() == (two_process_run / name).read_text()
    assert json.loads((tmp_path / "run.json").read_text())["num_processes"] == 2


@pytest.mark.smoke
def test_eval_with_uneven_last_batch_counts_each_example_once(two_process_run, tmp_path):
    # Evaluate the same final checkpoint with one process: resuming a finished run only re-evaluates.
    import shutil

    single = tmp_path / "single"
    shutil.copytree(two_process_run, single)
    (single / "final_metrics.json").unlink()
    _finish(_toy(single, steps=20))
    two = json.loads((two_process_run / "final_metrics.json").read_text())
    one = json.loads((single / "final_metrics.json").read_text())
    assert two["eval_index"] == one["eval_index"] == 18.0  # mean of 0..36: no example dropped or doubled
    assert two["eval_acc"] == one["eval_acc"] and round(37 * two["eval_acc"], 9).is_integer()
    assert two["eval_loss"] == pytest.approx(one["eval_loss"], rel=1e-6)


# ---------------------------------------------------------------- CLI


@dataclasses.dataclass(frozen=True)
class _Inner:
    depth: int = 2  # nested field


@dataclasses.dataclass(frozen=True)
class _Cfg:
    seed: int = 0
    output_dir: str = "x"
    lr: float = 0.1
    steps: int = 10
    batch_size: int = 4
    use_q: bool = False
    name: str = "a"
    sizes: tuple[int, ...] = (1, 2)
    pair: tuple[float, float] = (0.5, 0.5)
    tags: list[str] = dataclasses.field(default_factory=list)
    mode: Literal["var", "wsram"] = "var"
    limit: int | None = None
    inner: _Inner = _Inner()

    def __post_init__(self):
        if self.steps < 0:
            raise UserError("steps must be >= 0")


def _get_config(name):
    if name != "cpu":
        raise UserError(f"unknown config {name!r} (choose from cpu)")
    return _Cfg()


@pytest.mark.unit
def test_parse_args_applies_typed_overrides():
    cfg, args = parse_args(_get_config, ["--config", "cpu", "--seed", "3", "--output-dir", "out",
                                         "--set", "lr=1e-3", "--set", "steps=7", "--set", "use_q=true",
                                         "--set", "name=b=c", "--set", "sizes=3,4,5", "--set", "pair=(1,2)",
                                         "--set", "tags=[x, y]", "--set", "mode=wsram", "--set", "limit=none",
                                         "--set", "inner.depth=5"])
    assert cfg == _Cfg(seed=3, output_dir="out", lr=1e-3, steps=7, use_q=True, name="b=c", sizes=(3, 4, 5),
                       pair=(1.0, 2.0), tags=["x", "y"], mode="wsram", limit=None, inner=_Inner(5))
    assert (args.seed, args.output_dir, args.config) == (3, "out", "cpu")
    cfg, args = parse_args(_get_config, ["--config", "cpu", "--set", "limit=4"])
    assert cfg.limit == 4 and args.seed == 0 and args.output_dir == str(Path("runs/run/cpu/seed0"))
    assert parse_value("", tuple[int, ...]) == () and parse_value("0", bool) is False
    cfg, args = parse_args(_get_config, [])  # no flags: the CPU-scale config, and where its outputs go
    assert args.config == "cpu" and cfg == _Cfg(output_dir=str(Path("runs/run/cpu/seed0")))


@pytest.mark.unit
@pytest.mark.parametrize("argv, message", [
    (["--config", "paper"], "unknown config 'paper'"),
    (["--config", "cpu", "--bogus"], "unrecognized arguments: --bogus"),
    (["--config", "cpu", "--set", "nope=1"], "unknown field 'nope' in _Cfg"),
    (["--config", "cpu", "--set", "steps=1.5"], "bad value '1.5' for _Cfg.steps: expected an integer"),
    (["--config", "cpu", "--set", "use_q=maybe"], "expected true or false"),
    (["--config", "cpu", "--set", "mode=ram"], "expected one of var, wsram"),
    (["--config", "cpu", "--set", "pair=1,2,3"], "expected 2 comma-separated values"),
    (["--config", "cpu", "--set", "inner.nope=1"], "unknown field 'nope' in _Inner"),
    (["--config", "cpu", "--set", "lr.x=1"], "'lr' of _Cfg is not a nested config"),
    (["--config", "cpu", "--set", "steps"], "--set expects FIELD=VALUE"),
    (["--config", "cpu", "--set", "steps=-1"], "steps must be >= 0"),
    (["--config", "cpu", "--seed", "x"], "invalid int value: 'x'"),
    (["--config", "cpu", "--seed", "-1"], "--seed must be a non-negative integer, got -1"),
    (["--config", "cpu", "--set", "lr=-0.001"], "lr must be a non-negative learning rate, got -0.001"),
    (["--config", "cpu", "--output-dir", __file__], "is a file, not a folder"),
    (["--config", "cpu", "--output-dir", f"{__file__}/run"], "is a file, not a folder"),
    (["--config", "cpu", "--set", "batch_size=0"], "batch_size 0 is not a positive multiple"),
])
def test_parse_args_errors_are_one_line_and_exit_2(argv, message, capsys):
    with pytest.raises(SystemExit) as exc:
        parse_args(_get_config, argv)
    out, err = capsys.readouterr()
    assert exc.value.code == 2 and out == ""  # refused before the "outputs in" line
    assert err.startswith("error: ") and err.count("\n") == 1 and message in err, err


COMMAND_LINES = (
    "core.compare", "core.data.pack", "core.data.prepare", "core.reproduce", "papers.tnet.evaluate",
    "papers.tnet.figures", "papers.tnet.flops", "papers.saccader.evaluate", "papers.saccader.figures",
    "papers.wsram.evaluate", "papers.wsram.figures", "papers.wsram.captions.evaluate",
    "papers.wsram.captions.figures", "papers.wsram.captions.encoder", "papers.boed.evaluate",
    "papers.boed.figures", "reproductions.bench", "reproductions.end_to_end", "reproductions.model_facts",
    "reproductions.prepare_times", "reproductions.quickstart_times",
)


@pytest.mark.unit
@pytest.mark.parametrize("module", COMMAND_LINES)
def test_every_command_line_reports_a_usage_mistake_in_one_line(module, capsys, monkeypatch):
    """An unknown flag (or a missing required argument, which argparse reports first) is one line, exit 2."""
    monkeypatch.syspath_prepend(str(Path(__file__).resolve().parent.parent / "reproductions"))
    with pytest.raises(SystemExit) as exc:
        importlib.import_module(module).main(["--no-such-flag"])
    err = capsys.readouterr().err
    assert exc.value.code == 2 and err.count("\n") == 1 and err.startswith("error: "), err
    assert "--no-such-flag" in err or "arguments are required" in err, err


@pytest.mark.unit
def test_main_guard_turns_user_errors_into_one_line(capsys, monkeypatch):
    def boom():
        raise UserError("dataset 'x' not found")

    monkeypatch.delenv("HA_DEBUG", raising=False)
    with pytest.raises(SystemExit) as exc:
        main_guard(boom)
    assert exc.value.code == 2 and capsys.readouterr().err == "error: dataset 'x' not found\n"
    assert main_guard(lambda x: x + 1, 1) == 2
    monkeypatch.setenv("HA_DEBUG", "1")
    with pytest.raises(UserError):  # the traceback is shown when debugging
        main_guard(boom)


@pytest.mark.unit
def test_main_guard_destroys_the_process_group_after_a_run(tmp_path):
    """Left to interpreter teardown, gloo aborted a finished rank in CI ("terminate called without an active
    exception"), so main_guard ends the group itself once the run has returned."""
    def run():
        assert torch.distributed.is_initialized()
        return "done"

    init = f"file://{tmp_path / 'pg'}"
    torch.distributed.init_process_group("gloo", init_method=init, rank=0, world_size=1)
    try:
        assert main_guard(run) == "done"
        assert not torch.distributed.is_initialized()
    finally:
        if torch.distributed.is_initialized():
            torch.distributed.destroy_process_group()
