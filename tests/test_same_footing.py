"""The same-footing spec (reproductions/same-footing.toml): every paper's model on one task."""

import dataclasses
from pathlib import Path

import pytest
import torch

from core.cli import override
from core.registry import get_paper
from core.reproduce import REPO_ROOT, load_spec, main
from core.results import load_result
from papers.tnet.config import total_locations

SPEC = REPO_ROOT / "reproductions" / "same-footing.toml"


@pytest.mark.unit
def test_every_paper_sees_the_same_test_canvases():
    def test_canvases(name, **fields):  # through the registry, as each paper's train.py builds them
        paper = get_paper(name)
        return paper.build_datasets(dataclasses.replace(paper.get_config("cpu"), **fields))[1]

    common = dict(dataset="cluttered-mnist", train_size=4, eval_size=3)
    tnet_test = test_canvases("tnet", image_size=128, **common)
    saccader_test = test_canvases("saccader", image_size=128, **common)
    wsram_test = test_canvases("wsram", dataset="cluttered-mnist", canvas=128, digit_scale=(1.0, 1.0),
                               train_size=4, test_size=3, seed=0)
    for i in range(3):
        (a, y), (b, z), (c, w) = tnet_test[i][:2], saccader_test[i][:2], wsram_test[i][:2]
        assert a.shape == (1, 128, 128) and y == z == w
        assert torch.equal(a, b)  # both in [-1, 1]
        assert torch.allclose((a + 1) / 2, c, atol=1e-6)  # WS-RAM's images are in [0, 1]
    assert not torch.equal(tnet_test[0][0], tnet_test[1][0])


@pytest.mark.unit
def test_spec_runs_every_model_with_two_glimpses():
    spec = load_spec(SPEC, "cpu")
    scripts = {run.name: (run.script or spec.script).relative_to(REPO_ROOT).as_posix() for run in spec.runs}
    assert scripts == {"tnet": "papers/tnet/train.py", "saccader": "papers/saccader/train.py",
                       "dram": "papers/saccader/train.py", "wsram_qc": "papers/wsram/train.py"}
    assert len(spec.seeds) >= 3
    glimpses = {}
    for run in spec.runs:  # each run's config as its train.py resolves it
        cfg = get_paper(Path(scripts[run.name]).parent.name).get_config(run.config)
        for item in run.set:
            field, _, value = item.partition("=")
            cfg = override(cfg, field, value)
        assert cfg.dataset == "cluttered-mnist", run.name
        glimpses[run.name] = (total_locations(cfg.locs_per_grid) if run.name == "tnet"
                              else cfg.num_glimpses if run.name == "wsram_qc" else cfg.train_glimpses)
    assert glimpses == {"tnet": 2, "saccader": 2, "dram": 2, "wsram_qc": 2}


@pytest.mark.smoke
def test_smoke_scale_runs_every_paper(tmp_path):
    assert main([str(SPEC), "--scale", "smoke", "--workdir", str(tmp_path / "work"),
                 "--results-dir", str(tmp_path / "results"), "--update"]) == 0
    stored = load_result(tmp_path / "results" / "same-footing" / "smoke.json")
    assert {"tnet/accuracy", "saccader/test_accuracy", "wsram_qc/accuracy"} <= set(stored["metrics"])
    assert stored["metrics"]["wsram_qc/glimpses"]["mean"] == 2.0
    assert "tnet/accuracy_locs2" in stored["metrics"]  # 2 attended locations
