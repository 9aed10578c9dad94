"""Reliability (issue #9): every paper's train.py meets bad input with one `error: ...` line, exit code 2 and
no traceback; runs are deterministic per seed; a checkpoint is resumed only by the config that made it and
never executes code. Resume-after-SIGKILL, 2-process equivalence, NaN stops and atomic results are tested in
test_train.py, test_results.py and test_reproduce.py.
"""

import importlib
import json
import os
import pickle
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file

from core.cli import main_guard
from core.data import HFImageDataset
from core.errors import UserError

ROOT = Path(__file__).resolve().parent.parent
TOY = ROOT / "tests" / "fixtures" / "toy_paper" / "train.py"
ENV = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1", "TQDM_DISABLE": "1"}
PAPERS = ("tnet", "saccader", "wsram", "boed")


def run_cli(script: Path | str, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(script), *args], cwd=ROOT, env=ENV, text=True,
                          capture_output=True, timeout=300)


def assert_one_line_error(proc: subprocess.CompletedProcess, *fragments: str) -> None:
    """Exit 2; stderr ends in the one error line (progress bars may precede it) and holds no traceback."""
    lines = [ln for ln in proc.stderr.strip().splitlines() if ln.startswith("error")]
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr and len(lines) == 1, proc.stderr[-2000:]
    assert proc.stderr.strip().splitlines()[-1] == lines[0]
    for fragment in fragments:
        assert fragment in lines[0], lines[0]


# ---------------------------------------------------------------- every paper's command line

# (extra arguments, fragment the one-line error must contain) per paper; the config is its `smoke`.
BAD_INPUT = {
    "tnet": [
        (["--set", "max_steps=ten"], "expected an integer"),
        (["--set", "locs_per_grid=0"], "locs_per_grid"),                     # zero locations
        (["--set", "locs_per_grid=10"], "grid"),                              # more than the grid's cells
        (["--set", "eval_locs=0,12"], "more locations than"),
        (["--set", "base_res=200"], "image_size"),                           # image smaller than the glimpse
        (["--set", "dataset=/no/such/folder"], "/no/such/folder"),
    ],
    "saccader": [
        (["--set", "batch_size=1.5"], "expected an integer"),
        (["--set", "train_glimpses=0"], ">= 1"),
        (["--set", "image_size=60"], "smaller than one 77 px glimpse"),      # image smaller than the glimpse
        (["--set", "dataset=/no/such/folder"], "/no/such/folder"),
    ],
    "wsram": [
        (["--set", "num_glimpses=four"], "expected an integer"),
        (["--set", "num_glimpses=0"], "num_glimpses"),
        (["--set", "glimpse_size=200"], "glimpse_size"),
    ],
    "boed": [
        (["--set", "num_glimpses=-1"], "num_glimpses"),
        (["--set", "glimpse_size=64"], "glimpse_size"),
        (["--set", "dataset=/no/such/folder"], "/no/such/folder"),
    ],
}


@pytest.mark.smoke  # runs the CLI in a subprocess: seconds
@pytest.mark.parametrize("folder", [*PAPERS, "wsram/captions"])
def test_unknown_config_is_one_line_error_from_the_command_line(folder):
    assert_one_line_error(run_cli(ROOT / "papers" / folder / "train.py", "--config", "no-such-config"),
                          "no-such-config")


@pytest.mark.smoke
@pytest.mark.parametrize("processes", [1, 2])
def test_script_error_under_accelerate_launch_quiet_is_one_line(processes):
    """`accelerate launch -q`: the script's line and nothing from the launcher on one process (exit 1 is the
    launcher's); on two, rank 1 stays silent, so the line is not repeated before torch's failure summary."""
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "-q", "--num_processes", str(processes),
           "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
           *(["--multi_gpu"] if processes > 1 else []),
           str(ROOT / "papers" / "wsram" / "train.py"), "--config", "no-such-config"]
    proc = subprocess.run(cmd, env={**ENV, "ACCELERATE_USE_CPU": "true", "CUDA_VISIBLE_DEVICES": ""},
                          capture_output=True, text=True, timeout=120)
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert proc.returncode == 1 and len(errors) == 1 and "no-such-config" in errors[0], proc.stderr
    assert "Traceback" not in proc.stderr
    if processes == 1:
        assert proc.stderr.strip() == errors[0]


def run_main(paper: str, capsys, *args: str) -> subprocess.CompletedProcess:
    """papers/<paper>/train.py as its __main__ runs it, in this process (saves the interpreter start-up)."""
    main = importlib.import_module(f"papers.{paper}.train").main
    capsys.readouterr()
    try:
        main_guard(main, list(args))
        code = 0
    except SystemExit as e:
        code = e.code
    captured = capsys.readouterr()
    return subprocess.CompletedProcess(args, code, captured.out, captured.err)


@pytest.mark.parametrize("paper", PAPERS)
def test_unknown_flag_and_field_are_one_line_errors(paper, capsys):
    assert_one_line_error(run_main(paper, capsys, "--config", "smoke", "--no-such-flag"), "--no-such-flag")
    assert_one_line_error(run_main(paper, capsys, "--config", "smoke", "--set", "no_such_field=1"),
                          "no_such_field")


@pytest.mark.parametrize("paper,args,fragment",
                         [(p, a, f) for p, cases in BAD_INPUT.items() for a, f in cases],
                         ids=[f"{p}:{a[-1]}" for p, cases in BAD_INPUT.items() for a, _ in cases])
def test_bad_values_are_one_line_errors(paper, args, fragment, tmp_path, capsys):
    out = tmp_path / "run"
    proc = run_main(paper, capsys, "--config", "smoke", "--output-dir", str(out), *args)
    assert_one_line_error(proc, fragment)
    assert not (out / "final_metrics.json").exists()


def make_imagefolder(root: Path, classes: int = 2, per_class: int = 4, size: int = 64) -> Path:
    """root/{train,test}/class<c>/<i>.png, the imagefolder layout with splits."""
    rng = np.random.default_rng(0)
    for split in ("train", "test"):
        for c in range(classes):
            (root / split / f"class{c}").mkdir(parents=True)
            for i in range(per_class):
                pixels = rng.integers(0, 256, (size, size), dtype=np.uint8)
                Image.fromarray(pixels).save(root / split / f"class{c}" / f"{i}.png")
    return root


@pytest.mark.smoke
def test_bad_dataset_folders_are_one_line_errors(tmp_path, capsys):
    """An empty folder, a corrupt image and labels outside the class range, through TNet's train.py."""
    def tnet(dataset: Path, out: str, *sets: str):
        args = ["--config", "smoke", "--set", "channels=1", "--set", f"dataset={dataset}"]
        return run_main("tnet", capsys, *args, *sum((["--set", s] for s in sets), []),
                        "--output-dir", str(tmp_path / out))

    (tmp_path / "empty").mkdir()
    assert_one_line_error(tnet(tmp_path / "empty", "a"), "empty")

    corrupt = make_imagefolder(tmp_path / "corrupt")
    for png in (corrupt / "train" / "class1").glob("*.png"):
        png.write_bytes(b"\x89PNG\r\n\x1a\n" + b"not an image" * 8)
    assert_one_line_error(tnet(corrupt, "b", "num_classes=2"), "cannot decode image", ".png")

    many = make_imagefolder(tmp_path / "many", classes=3)  # 3 class folders, but the config says 2 classes
    assert_one_line_error(tnet(many, "c", "num_classes=2"), "outside [0, 2)")


def test_non_finite_pixels_are_a_user_error():
    import datasets

    features = datasets.Features({"image": datasets.Array2D((4, 4), "float32"),
                                  "label": datasets.Value("int8")})
    pixels = np.zeros((2, 4, 4), np.float32)
    pixels[1, 2, 3] = np.nan
    data = datasets.Dataset.from_dict({"image": list(pixels), "label": [0, 1]}, features=features)
    ds = HFImageDataset(data, channels=1)
    assert torch.isfinite(ds[0][0]).all()
    with pytest.raises(UserError, match="non-finite"):
        ds[1]


# ---------------------------------------------------------------- determinism and checkpoints (toy paper)

def toy(out: Path, *sets: str) -> subprocess.CompletedProcess:
    args = ["--config", "smoke", "--output-dir", str(out)]
    for s in sets:
        args += ["--set", s]
    return run_cli(TOY, *args)


def toy_result(out: Path) -> tuple[dict, dict]:
    return json.loads((out / "final_metrics.json").read_text()), load_file(out / "params_rank0.safetensors")


@pytest.mark.smoke
def test_same_seed_same_numbers_other_seed_other_numbers(tmp_path):
    for name, seed in (("a", 0), ("b", 0), ("c", 1)):
        assert toy(tmp_path / name, f"seed={seed}").returncode == 0
    (metrics_a, params_a), (metrics_b, params_b), (metrics_c, params_c) = (
        toy_result(tmp_path / n) for n in "abc")
    assert metrics_a == metrics_b and all(torch.equal(params_a[k], params_b[k]) for k in params_a)
    assert not all(torch.equal(params_a[k], params_c[k]) for k in params_a)
    assert (tmp_path / "a" / "metrics.jsonl").read_text() == (tmp_path / "b" / "metrics.jsonl").read_text()


@pytest.mark.smoke
def test_checkpoint_of_another_config_is_refused(tmp_path):
    out = tmp_path / "run"
    assert toy(out).returncode == 0
    before = toy_result(out)[0]
    assert_one_line_error(toy(out, "lr=0.5"), "another config", "lr")
    assert toy_result(out)[0] == before  # nothing was overwritten
    # Without the config record the run's config is unknown: refused too, still one line.
    (out / "config.json").unlink()
    assert_one_line_error(toy(out, "hidden=32"), "no config.json")


class _Payload:
    """A pickle that would create a file when unpickled by anything but a weights_only loader."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


@pytest.mark.smoke
def test_tampered_checkpoint_pickle_is_never_executed(tmp_path):
    out, marker = tmp_path / "run", tmp_path / "pwned"
    assert toy(out, "steps=6").returncode == 0
    (out / "final_metrics.json").unlink()
    step_dir = max((out / "checkpoints").iterdir())
    assert list(step_dir.glob("*.safetensors")), "model weights must be stored as safetensors"
    (step_dir / "random_states_0.pkl").write_bytes(pickle.dumps(_Payload(marker)))
    assert_one_line_error(toy(out, "steps=6"), "cannot resume")
    assert not marker.exists()


@pytest.mark.smoke  # runs the CLI in a subprocess: seconds
def test_config_values_are_data_never_code(tmp_path):
    marker = tmp_path / "pwned"
    proc = toy(tmp_path / "run", f"lr=__import__('pathlib').Path('{marker}').touch()")
    assert_one_line_error(proc, "expected a number")
    assert not marker.exists()
