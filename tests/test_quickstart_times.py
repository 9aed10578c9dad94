"""reproductions/quickstart_times.py: the README's runtime table comes from stored timings only."""

import json
from pathlib import Path

import pytest

from reproductions.quickstart_times import README_END, README_START, main

ROOT = Path(__file__).resolve().parent.parent


def _store(results: Path) -> None:
    (results / "quickstart").mkdir(parents=True)
    measured = {"paper": "quickstart", "scale": "cpu", "provenance": {
        "git_commit": "abcdef0123", "machine": {"cpu_count": 2}, "created_utc": "2026-01-02T03:04:05Z"},
        "commands": [{"command": "`nox -s tests`", "wall_s": 150.0, "cpu_s": 280.0, "load_before": 0.1,
                      "load_after": 1.9}, {"command": "start", "wall_s": 0.5, "cpu_s": 0.3,
                                           "load_before": 0.0, "load_after": 0.0}]}
    (results / "quickstart" / "cpu.json").write_text(json.dumps(measured))
    (results / "tnet").mkdir()
    prov = {"wall_time_s": 1200.0, "cpu_time_s": 2160.0, "machine": {"cpu_count": 2}}
    (results / "tnet" / "cpu.json").write_text(json.dumps({"provenance": prov}))


@pytest.mark.unit
def test_readme_table_is_rewritten_from_stored_timings(tmp_path):
    _store(tmp_path / "results")
    readme = tmp_path / "README.md"
    readme.write_text(f"# x\n{README_START}\nold table\n{README_END}\nafter\n")
    assert main(["--results-dir", str(tmp_path / "results"), "--readme", str(readme)]) == 0
    text = readme.read_text()
    assert "old table" not in text and text.endswith(f"{README_END}\nafter\n")
    assert "commit `abcdef0` on 2 cores (2026-01-02)" in text
    assert "| `nox -s tests` | 2.5 min | 280 | 0.1 / 1.9 |" in text and "| start | 0.5 s | 0 |" in text
    stored = "| `nox -s reproduce-tnet` (stored CPU-scale run) | 20.0 min | 2160 (18.0 min per core) | - |"
    assert stored in text


@pytest.mark.unit
def test_a_readme_without_markers_is_a_one_line_error(tmp_path, capsys):
    _store(tmp_path / "results")
    (tmp_path / "README.md").write_text("# no markers\n")
    with pytest.raises(SystemExit) as e:
        main(["--results-dir", str(tmp_path / "results"), "--readme", str(tmp_path / "README.md")])
    assert e.value.code == 2 and capsys.readouterr().err.startswith("error: ")


@pytest.mark.unit
def test_the_repository_readme_has_the_quickstart_table(tmp_path):
    """The README's table is what the stored timings render to (regenerated here into a copy)."""
    text = (ROOT / "README.md").read_text()
    assert text.index(README_START) < text.index(README_END)
    copy = tmp_path / "README.md"
    copy.write_text(text.replace(text[text.index(README_START):text.index(README_END)], README_START + "\n"))
    main(["--results-dir", str(ROOT / "results"), "--readme", str(copy)])
    assert copy.read_text() == text and "`nox -s tests`" in text
