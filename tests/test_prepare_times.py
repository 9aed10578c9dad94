"""reproductions/prepare_times.py: core.data.prepare timed on tiny fakes of every download, extrapolated."""

import json

import pytest

from reproductions import prepare_times
from reproductions.prepare_times import FAKES, IMAGENET_JPEG_KB, main, measure

TINY = {"imagenet": 8, "fmow": 2, "celeba-hq": 2, "mnist": 70, "imagenet-pack": 8}


@pytest.fixture(scope="module")
def rows():
    return measure(TINY)


@pytest.mark.smoke
def test_every_dataset_timed_per_image_and_extrapolated(rows):
    assert [r["dataset"] for r in rows] == list(FAKES) == list(TINY)
    for r in rows:
        assert r["images"] == TINY[r["dataset"]]
        assert r["wall_s"] > 0 and r["cpu_s"] > 0 and r["wall_per_image_s"] > 0 and r["cpu_per_image_s"] > 0
        assert r["wall_per_image_s"] == pytest.approx(r["wall_s"] / r["images"], rel=1e-3)
        assert r["cpu_per_1000_images_s"] == pytest.approx(1000 * r["cpu_per_image_s"], rel=1e-3)
        full = FAKES[r["dataset"]].full_images
        assert r["full_images"] == full
        if full is None:  # fMoW: no cited count, only the seconds per 1,000 images
            assert r["full_wall_h"] is None and r["full_cpu_h"] is None
        else:
            assert r["full_wall_h"] == pytest.approx(r["wall_per_image_s"] * full / 3600, rel=1e-3)
            assert r["full_cpu_h"] == pytest.approx(r["cpu_per_image_s"] * full / 3600, rel=1e-3)
    imagenet = rows[0]
    assert imagenet["source_kb_per_image"] == pytest.approx(IMAGENET_JPEG_KB, rel=0.2)  # realistic JPEGs


@pytest.mark.smoke
def test_update_stores_with_provenance_and_a_plain_run_stores_nothing(rows, tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(prepare_times, "measure", lambda counts: rows)
    assert main(["--results-dir", str(tmp_path)]) == 0
    assert not any(tmp_path.iterdir()) and "celeba-hq" in capsys.readouterr().out
    assert main(["--update", "--images", "10", "--results-dir", str(tmp_path)]) == 0
    stored = json.loads((tmp_path / "prepare" / "cpu.json").read_text())
    assert stored["datasets"] == rows and stored["provenance"]["configs"] == {"images": 10, "workers": 1}


@pytest.mark.unit
def test_no_images_is_a_one_line_error(capsys):
    with pytest.raises(SystemExit) as e:
        main(["--images", "0"])
    assert e.value.code == 2 and capsys.readouterr().err == "error: --images must be at least 1, got 0\n"
