"""core.figures writes a figure where asked and releases it, and keeps labels apart; figures name models; the
TNet figure renders from stored results."""

from pathlib import Path

import pytest
from matplotlib.text import Text

from core.compare import MODEL_NAMES, model_name
from core.errors import UserError
from core.figures import label_points, logs_arguments, plt, read_seed_logs, save_figure
from core.reproduce import load_spec
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
def test_logs_arguments_write_beside_the_logs_name_the_scale_and_refuse_missing_logs(tmp_path):
    logs = tmp_path / "wsram" / "cpu-logs"
    logs.mkdir(parents=True)
    args, out, scale = logs_arguments("d", "unused", ["--logs", str(logs), "--only-curves"], only_curves="h")
    assert (out, scale, args.only_curves) == (logs.parent, "cpu", True)
    args, out, _ = logs_arguments("d", "unused", ["--logs", str(logs), "--out", str(tmp_path / "new")])
    assert out.is_dir() and out == tmp_path / "new"
    with pytest.raises(UserError, match="does not exist"):
        logs_arguments("d", str(tmp_path / "absent-logs"), [])


@pytest.mark.unit
def test_seed_logs_are_read_in_seed_order_and_a_missing_run_is_one_line(tmp_path):
    for seed in (10, 2, 0):  # seed10 sorts before seed2 as text
        (tmp_path / f"seed{seed}.jsonl").write_text(f'{{"step": 1, "seed": {seed}}}\n\n{{"step": 2}}\n')
    logs = read_seed_logs(tmp_path)
    assert [rows[0]["seed"] for rows in logs] == [0, 2, 10]
    assert [len(rows) for rows in logs] == [2, 2, 2]
    with pytest.raises(UserError, match=r"no logs under .*missing.*seed<S>\.jsonl\) \(run it\)$"):
        read_seed_logs(tmp_path / "missing", " (run it)")


@pytest.mark.unit
def test_tnet_figure2_renders_from_stored_results(tmp_path):
    path = figure2(ROOT / "results", tmp_path / "figs")
    assert path.name == "figure2.png" and path.stat().st_size > 10_000
    with pytest.raises(UserError, match="missing"):
        figure2(tmp_path / "no-results", tmp_path / "figs")


@pytest.mark.unit
def test_labels_of_coincident_points_do_not_overlap():
    fig, ax = plt.subplots(figsize=(4, 3), dpi=100)
    ax.plot([1, 1, 1, 2], [0.50, 0.501, 0.502, 0.9], "o")
    label_points(ax, [(1, 0.50, "first"), (1, 0.501, "second"), (1, 0.502, "third"), (2, 0.9, "far")])
    fig.canvas.draw()
    boxes = [Text.get_window_extent(t) for t in ax.texts]  # the text alone, without its leader line
    assert len(boxes) == 4
    assert not any(a.overlaps(b) for i, a in enumerate(boxes) for b in boxes[i + 1:])
    plt.close(fig)


@pytest.mark.unit
def test_every_cpu_run_has_a_model_name_for_the_figures():
    """results/compare/accuracy_vs_mults.png names models, not run names such as `flops`."""
    for path in sorted((ROOT / "reproductions").glob("*.toml")):
        spec = load_spec(path, "cpu")
        missing = [run.name for run in spec.runs if run.name not in MODEL_NAMES.get(spec.paper, {})]
        assert not missing, f"{path.name}: add model names for {missing} to core.compare.MODEL_NAMES"
    assert model_name("same-footing", "saccader, random policy") == "Saccader, random policy"
