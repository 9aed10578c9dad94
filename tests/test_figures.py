"""core.figures writes a figure where asked and releases it; the TNet figure renders from stored results."""

from pathlib import Path

import pytest

from core.errors import UserError
from core.figures import plt, save_figure
from papers.tnet.figures import figure2

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.unit
def test_save_figure_creates_the_folder_writes_a_png_and_closes(tmp_path):
    fig, ax = plt.subplots()
    ax.plot([0, 1], [1, 0])
    path = save_figure(fig, tmp_path / "a" / "b" / "line.png", dpi=50)
    assert path == tmp_path / "a" / "b" / "line.png"
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert not plt.fignum_exists(fig.number)


@pytest.mark.unit
def test_tnet_figure2_renders_from_stored_results(tmp_path):
    path = figure2(ROOT / "results", tmp_path / "figs")
    assert path.name == "figure2.png" and path.stat().st_size > 10_000
    with pytest.raises(UserError, match="missing"):
        figure2(tmp_path / "no-results", tmp_path / "figs")
