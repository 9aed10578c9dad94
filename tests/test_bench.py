"""reproductions/bench.py: the per-sample loop references match the vectorised glimpse ops exactly, the
row-copy fast path of core.glimpse equals its gather path, and a --quick run writes a well-formed result."""

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from core import glimpse
from reproductions import bench

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.unit
def test_loop_references_match_vectorised_ops_exactly():
    for name, _, vectorised, loop, index, _ in bench.glimpse_cases(torch.device("cpu"), batch=4):
        out, ref = vectorised(), loop()
        assert out.shape == ref.shape, name
        if name == "retina_sensor_wsram":  # float64 summed-area table vs float32 pooling: rounding only
            torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-6)
            assert not torch.equal(out, torch.zeros_like(out)), name
        else:
            assert torch.equal(out, ref), name
        assert index.numel() == out.numel(), name


@pytest.mark.unit
def test_row_copy_fast_path_equals_gather_path(monkeypatch):
    torch.manual_seed(0)
    images = torch.randn(3, 2, 30, 40)
    inside = torch.stack([torch.randint(0, 20, (3, 4)), torch.randint(0, 28, (3, 4))], -1)
    overhang = inside - 5
    assert glimpse._rows_inside(images, inside, (10, 12)) is not None
    assert glimpse._rows_inside(images, overhang, (10, 12)) is not None  # overhang zeroed after the copy
    assert glimpse._rows_inside(images, overhang, (10, 12), "border") is None  # the gather clamps
    # Wholly outside, and overhanging both ends of the flattened batch (runs re-read pixel by pixel).
    corners = torch.tensor([[[-100, -100], [-3, -5], [25, 35], [0, 0]]]).expand(3, 4, 2)
    far = [inside - 100, corners, torch.cat([overhang, inside + 5], 1)]
    assert all(glimpse._rows_inside(images, tl, (10, 12)) is not None for tl in far)
    cases = [inside, overhang, *far]
    fast = [glimpse.extract_patches(images, tl, (10, 12)) for tl in cases]
    monkeypatch.setattr(glimpse, "_rows_inside", lambda *a: None)
    for out, tl in zip(fast, cases, strict=True):
        assert torch.equal(out, glimpse.extract_patches(images, tl, (10, 12)))


@pytest.mark.unit
def test_training_plan_times_issue_18s_table_on_cuda_and_batch_2_fp32_on_cpu():
    cuda = bench.training_plan(torch.device("cuda"), quick=False)  # a plan only: nothing runs on the GPU
    paper = [(run[0], run[2], variant) for scale, run, variant in cuda if scale == "paper"]
    assert len(paper) == 3 * len(bench.PAPER_RUNS)
    assert {(name, batch) for name, batch, _ in paper} == {("tnet", 64), ("saccader", 64), ("wsram", 128),
                                                           ("boed", 64)}
    assert {variant for *_, variant in paper} == {"", "bf16", "bf16_channels_last"}
    cpu = bench.training_plan(torch.device("cpu"), quick=False)
    assert all(variant == "" for *_, variant in cpu)
    assert [run[2] for scale, run, _ in cpu if scale == "paper"] == [2] * len(bench.PAPER_RUNS)


@pytest.mark.unit
def test_ratio_is_the_median_of_per_round_ratios():
    times = {"a": [2.0, 10.0, 3.0], "b": [1.0, 1.0, 1.0]}
    assert bench.ratio(times, "a", "b") == 3.0
    t = bench.Targets()
    t.add("x", 3.0, ">=", 2.0)
    t.add("y", 3.0, "<=", 2.0)
    t.add("z", math.nan, ">=", 1.0)
    assert [r["met"] for r in t.rows] == [True, False, False]


@pytest.mark.smoke
def test_quick_bench_writes_every_target(tmp_path):
    proc = subprocess.run([sys.executable, "reproductions/bench.py", "--quick", "--threads", "1",
                           "--results-dir", str(tmp_path)], cwd=ROOT, capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "targets met" in proc.stdout
    result = json.loads((tmp_path / "bench" / "cpu-quick.json").read_text())
    assert result["quick"] is True and result["device"] == "cpu"
    assert {"git_commit", "command", "packages", "wall_time_s"} <= set(result["provenance"])
    ids = [r["id"] for r in result["targets"]]
    assert len(ids) == len(set(ids))
    for kind in ("glimpse/retina_wsram/vs_loop", "glimpse/crops_tnet_imagenet/vs_gather",
                 "glimpse/patches_boed/vs_loop", "tnet/table1/cpu/1loc/latency",
                 "tnet/table2/cpu/2loc/memory", "loader/tnet_train_224/per_core",
                 "loader/saccader_train_224/per_core"):
        assert kind in ids
    for row in result["targets"]:
        assert math.isfinite(row["measured"]) and row["measured"] > 0, row
        assert isinstance(row["met"], bool)
    assert all(case["exact"] or name == "retina_sensor_wsram" for name, case in result["glimpse"].items())
    assert all(case["equal_up_to_rounding"] for case in result["glimpse"].values())
    for entry in result["training"].values():
        assert entry["images_per_s"] > 0
    assert set(result["training"]) == {"tnet/smoke", "saccader/smoke/policy", "wsram/smoke", "boed/smoke",
                                       "tnet/smoke/bf16", "tnet/smoke/bf16_channels_last"}
    assert all(v == {"note": "no stored result"} for v in result["sessions"].values())
    assert all(rate > 0 for rate in result["loader"]["images_per_cpu_s"].values())


@pytest.mark.slow
def test_compile_section_times_a_compiled_training_step_against_eager():
    out = bench.bench_compile(torch.device("cpu"), quick=True)  # WS-RAM's smoke model, ~40 s of compiling
    entry = out["wsram/smoke"]
    assert entry["eager_step_ms"] > 0 and entry["compiled_step_ms"] > 0 and entry["speedup"] > 0
    assert entry["compile_s"] > 1  # the first compiled steps build the graph; eager ones do not


@pytest.mark.slow
def test_end_to_end_sets_the_folder_run_beside_the_in_memory_one(tmp_path):
    """reproductions/end_to_end.py at a toy size: TNet's imagenet config on made JPEGs and on in-memory
    images, each run's throughput from its run.json, stored with provenance."""
    proc = subprocess.run([sys.executable, "reproductions/end_to_end.py", "--batch", "2", "--steps", "3",
                           "--images", "8", "--workers", "1", "--update", "--results-dir", str(tmp_path)],
                          cwd=ROOT, capture_output=True, text=True, timeout=300,
                          env={**os.environ, "CUDA_VISIBLE_DEVICES": "", "OMP_NUM_THREADS": "1"})
    assert proc.returncode == 0, proc.stderr[-2000:]
    result = json.loads((tmp_path / "bench" / "end-to-end-cpu.json").read_text())
    assert result["device"] == "cpu" and result["mixed_precision"] == "no"
    assert "git_commit" in result["provenance"]
    speeds = {name: run["throughput"] for name, run in result["runs"].items()}
    assert set(speeds) == {"folder", "in_memory"} and all(s["timed_steps"] == 2 for s in speeds.values())
    ratio = speeds["folder"]["images_per_s"] / speeds["in_memory"]["images_per_s"]
    assert result["end_to_end_fraction"] == pytest.approx(ratio)


@pytest.mark.unit
def test_end_to_end_refuses_bad_input_in_one_line():
    proc = subprocess.run([sys.executable, "reproductions/end_to_end.py", "--steps", "1"], cwd=ROOT,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and proc.stderr.strip().count("\n") == 0 and "steps >= 2" in proc.stderr


@pytest.mark.unit
def test_cuda_without_a_gpu_is_a_one_line_error(tmp_path):
    if torch.cuda.is_available():
        pytest.skip("a CUDA device is present")
    proc = subprocess.run([sys.executable, "reproductions/bench.py", "--quick", "--device", "cuda",
                           "--results-dir", str(tmp_path)], cwd=ROOT, capture_output=True, text=True,
                          timeout=60)
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines()[-1].startswith("error: ")


@pytest.mark.smoke
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("paper, name, batch, kw", bench.SMOKE_RUNS)
def test_one_training_step_of_every_paper_on_cuda_matches_cpu(paper, name, batch, kw):
    # Same weights and inputs on both devices; stochastic glimpses draw from different RNG streams, so the
    # loss of sampling models is compared loosely and every gradient must stay on the GPU and be finite.
    losses, grads = {}, {}
    for device in ("cpu", "cuda"):
        torch.manual_seed(0)
        model, optimizer, step_fn, data, _, _ = bench.TRAINERS[paper](name, batch, torch.device("cpu"), **kw)
        model.to(device)
        data = tuple(t.to(device) for t in data)
        torch.manual_seed(1)
        loss, _ = step_fn(model, data, 1)
        loss.backward()
        losses[device] = loss.item()
        grads[device] = [p.grad for p in model.parameters() if p.grad is not None]
    assert all(g.is_cuda and torch.isfinite(g).all() for g in grads["cuda"])
    assert len(grads["cuda"]) == len(grads["cpu"])
    assert math.isfinite(losses["cuda"]) and losses["cuda"] == pytest.approx(losses["cpu"], rel=0.5, abs=1.0)
