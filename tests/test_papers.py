"""The paper contract (core.registry, core.runs), checked over every registered paper: configs round-trip
through config.json; a rerun into a directory holding another config's run is refused in one line, whether
the first run was killed before or after its first checkpoint; batch_size means images per optimiser update
whatever the number of processes, and one the processes cannot share is refused before setup."""

import dataclasses
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

import core.runs
from core import train as core_train
from core.errors import UserError
from core.registry import Paper, get_paper, papers, register
from core.runs import config_from_dict, config_to_dict, load_config, micro_batch, save_config

PAPERS = papers()
NAMES = sorted(PAPERS)


def test_every_paper_is_registered():
    assert {"tnet", "saccader", "wsram", "wsram-captions", "boed"} <= set(NAMES)
    with pytest.raises(UserError, match="unknown paper 'nope'"):
        get_paper("nope")


def test_registering_another_paper_under_a_taken_name_is_refused():
    clash = dataclasses.replace(PAPERS["tnet"], train_script="elsewhere.py")
    with pytest.raises(UserError, match="registered twice"):
        register(clash)
    assert isinstance(register(PAPERS["tnet"]), Paper)  # the same entry again is harmless


@pytest.mark.parametrize("name", NAMES)
def test_every_config_round_trips_through_config_json(name, tmp_path):
    paper = PAPERS[name]
    for config in paper.configs:
        cfg = paper.get_config(config)
        save_config(cfg, tmp_path / config)
        assert load_config(tmp_path / config, paper.config_cls) == cfg, config
        assert json.loads((tmp_path / config / "config.json").read_text()) == config_to_dict(cfg)


def test_config_from_dict_refuses_fields_the_config_lacks():
    paper = PAPERS["wsram"]
    data = {**config_to_dict(paper.get_config("smoke")), "no_such_field": 1}
    with pytest.raises(UserError, match="no_such_field"):
        config_from_dict(paper.config_cls, data)


def test_micro_batch_divides_the_global_batch_or_refuses():
    assert micro_batch(64, 1) == 64 and micro_batch(64, 4) == 16
    with pytest.raises(UserError, match="batch_size 6 is not a positive multiple of the 4 processes"):
        micro_batch(6, 4)


def _patch_train(monkeypatch, paper: Paper, stand_in) -> None:
    """Replace core.train.train in every module of the paper's package that calls it."""
    package = paper.main.__module__.rsplit(".", 1)[0] + "."
    for name, module in list(sys.modules.items()):
        if name.startswith(package) and getattr(module, "train", None) is core_train.train:
            monkeypatch.setattr(module, "train", stand_in)


def _kill(real_train, after_first_checkpoint: bool):
    """A stand-in for core.train.train that dies like a killed run: at once, or after one update that it
    checkpoints (max_steps and checkpoint_every cut to 1, so the checkpoint is real)."""
    def killed(loop, *args, **kwargs):
        if after_first_checkpoint:
            first = dataclasses.replace(loop, max_steps=1, checkpoint_every=1, eval_every=0)
            real_train(first, *args, **kwargs)
        raise KeyboardInterrupt
    return killed


@pytest.mark.smoke
@pytest.mark.parametrize("after_first_checkpoint", [False, True], ids=["before", "after"])
@pytest.mark.parametrize("name", NAMES)
def test_rerun_with_another_config_is_refused_after_a_kill(name, after_first_checkpoint, tmp_path,
                                                           monkeypatch, capsys):
    paper = PAPERS[name]
    out = tmp_path / "run"
    monkeypatch.setenv("TQDM_DISABLE", "1")
    _patch_train(monkeypatch, paper, _kill(core_train.train, after_first_checkpoint))
    argv = ["--config", "smoke", "--output-dir", str(out)]
    with pytest.raises((KeyboardInterrupt, SystemExit)):
        paper.main(argv)
    assert (out / "config.json").is_file(), "config.json must be written before the first training step"
    assert bool(list(out.rglob("checkpoints/step_1"))) == after_first_checkpoint
    capsys.readouterr()
    with pytest.raises(SystemExit) as refused:
        paper.main([*argv, "--seed", "7"])
    assert refused.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err and err[-1].startswith("error: ") and "another config" in err[-1] and "seed" in err[-1]
    assert load_config(out, paper.config_cls).seed != 7  # the first run's record is kept


@pytest.mark.smoke
@pytest.mark.parametrize("world", [1, 2])
@pytest.mark.parametrize("name", NAMES)
def test_batch_size_is_images_per_update_across_processes(name, world, tmp_path, monkeypatch):
    """What each process's loop is given, with the launcher's world size stubbed (no processes started):
    micro-batch x processes x accumulation = the config's batch_size."""
    paper = PAPERS[name]
    seen = []

    def record(loop, *args, **kwargs):
        seen.append(loop)
        raise KeyboardInterrupt

    monkeypatch.setenv("TQDM_DISABLE", "1")
    monkeypatch.setattr(core.runs, "world_size", lambda: world)
    _patch_train(monkeypatch, paper, record)
    with pytest.raises((KeyboardInterrupt, SystemExit)):
        paper.main(["--config", "smoke", "--output-dir", str(tmp_path / "run")])
    loop = seen[0]
    assert loop.batch_size * world * loop.grad_accum_steps == paper.get_config("smoke").batch_size


@pytest.mark.parametrize("name", NAMES)
def test_a_batch_the_processes_cannot_share_is_refused_before_setup(name, tmp_path, monkeypatch, capsys):
    """core.cli.run_paper checks every batch size of the config against the launched processes first: one
    line, exit 2, nothing written."""
    paper = PAPERS[name]
    monkeypatch.setattr(core.runs, "world_size", lambda: 2)
    out = tmp_path / "run"
    with pytest.raises(SystemExit) as refused:
        paper.main(["--config", "smoke", "--output-dir", str(out), "--set", "batch_size=5"])
    assert refused.value.code == 2 and not out.exists()
    assert capsys.readouterr().err.strip().splitlines() == [
        "error: batch_size 5 is not a positive multiple of the 2 processes"]


@pytest.mark.parametrize("name", NAMES)
def test_an_fsdp_launch_is_refused_before_setup(name, tmp_path, monkeypatch, capsys):
    """`accelerate launch --use_fsdp` sets ACCELERATE_USE_FSDP: one line, exit 2, nothing written."""
    monkeypatch.setenv("ACCELERATE_USE_FSDP", "true")
    out = tmp_path / "run"
    with pytest.raises(SystemExit) as refused:
        PAPERS[name].main(["--config", "smoke", "--output-dir", str(out)])
    assert refused.value.code == 2 and not out.exists()
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: FSDP (accelerate launch --use_fsdp) is not supported")


def test_load_weights_from_a_file_or_a_runs_latest_finished_checkpoint(tmp_path):
    from safetensors.torch import save_file
    from torch import nn

    from core.runs import load_weights

    source = nn.Linear(3, 2)
    for step in (4, 12):  # the later one is loaded; a tmp_step_ save in progress never is
        folder = tmp_path / "run" / "checkpoints" / f"step_{step}"
        folder.mkdir(parents=True)
        save_file(source.state_dict(), str(folder / "model.safetensors"))
    (tmp_path / "run" / "checkpoints" / "tmp_step_16").mkdir()
    model = nn.Linear(3, 2)
    assert load_weights(model, tmp_path / "run") == 12 and model.weight.equal(source.weight)
    file = tmp_path / "run" / "checkpoints" / "step_4" / "model.safetensors"
    assert load_weights(nn.Linear(3, 2), file) == 0
    with pytest.raises(UserError, match="does not fit this model"):
        load_weights(nn.Linear(3, 5), file)  # another shape
    with pytest.raises(UserError, match="does not fit this model"):
        load_weights(nn.Sequential(nn.Linear(3, 2)), file)  # other keys
    with pytest.raises(UserError, match="no finished checkpoint"):
        load_weights(model, tmp_path)


@pytest.mark.slow
@pytest.mark.parametrize("name", NAMES)
def test_two_processes_run_every_paper_as_one_does(name, tmp_path):
    """The smoke config under a 2-process CPU `accelerate launch` records the same config and reports the same
    metrics as one process, every training stage ran on 2 processes. (Values differ: each process samples its
    own glimpses and BatchNorm sees its half of the batch; exact equality is tested on the toy paper.)"""
    root = Path(__file__).resolve().parent.parent
    script = str(root / PAPERS[name].train_script)
    env = {**os.environ, "ACCELERATE_USE_CPU": "true", "CUDA_VISIBLE_DEVICES": "", "OMP_NUM_THREADS": "1",
           "TQDM_DISABLE": "1", "PYTHONPATH": str(root)}
    launch = [sys.executable, "-m", "accelerate.commands.launch", "-q", "--multi_gpu", "--num_processes", "2",
              "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no"]
    for cmd, out in (([sys.executable], tmp_path / "one"), (launch, tmp_path / "two")):
        proc = subprocess.run([*cmd, script, "--config", "smoke", "--output-dir", str(out)], env=env,
                              capture_output=True, text=True, timeout=600)
        assert proc.returncode == 0, proc.stderr[-3000:]
    one, two = (json.loads((tmp_path / d / "final_metrics.json").read_text()) for d in ("one", "two"))
    assert set(one) == set(two)
    configs = [{k: v for k, v in json.loads((tmp_path / d / "config.json").read_text()).items()
                if k != "output_dir"} for d in ("one", "two")]
    assert configs[0] == configs[1]
    stages = [sorted(p.relative_to(tmp_path / d) for p in (tmp_path / d).rglob("run.json"))
              for d in ("one", "two")]
    assert stages[0] and stages[0] == stages[1]  # the same training stages ran
    records = [json.loads((tmp_path / "two" / p).read_text()) for p in stages[1]]
    assert all(r["num_processes"] == 2 for r in records)


@pytest.mark.slow
@pytest.mark.parametrize("name", NAMES)
def test_launcher_precision_and_compilation_take_effect_in_every_paper(name, tmp_path):
    """`accelerate launch --mixed_precision bf16 --dynamo_backend eager` on the smoke config: every training
    stage runs compiled (the eager backend: dynamo's tracing without an inductor build) and records it."""
    root = Path(__file__).resolve().parent.parent
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": "", "OMP_NUM_THREADS": "1", "TQDM_DISABLE": "1",
           "PYTHONPATH": str(root)}
    launch = [sys.executable, "-m", "accelerate.commands.launch", "-q", "--cpu", "--num_processes", "1",
              "--num_machines", "1", "--mixed_precision", "bf16", "--dynamo_backend", "eager"]
    script = str(root / PAPERS[name].train_script)
    proc = subprocess.run([*launch, script, "--config", "smoke", "--output-dir", str(tmp_path)], env=env,
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    records = [json.loads(p.read_text()) for p in tmp_path.rglob("run.json")]
    assert records and all(r["mixed_precision"] == "bf16" and r["compile"] == "eager" for r in records)


def test_paper_code_gets_its_process_state_from_core():
    """A bare accelerate PartialState() ignores ACCELERATE_USE_CPU, and the first one created fixes the state
    for the whole process: under a 2-process CPU launch Saccader and BOED ran as independent single processes
    (BOED then crashed saving a checkpoint). Papers call core.runs.process_state() instead; the 2-process runs
    themselves are test_two_processes_run_every_paper_as_one_does (slow tier)."""
    root = Path(__file__).resolve().parent.parent
    offenders = [str(p.relative_to(root)) for p in sorted((root / "papers").rglob("*.py"))
                 if "PartialState()" in p.read_text()]
    assert offenders == []
