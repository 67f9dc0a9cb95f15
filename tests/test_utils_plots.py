"""utils/plots.py: the binning and grouping behind the plots (hand-worked), atomic PNG writing, and the
plots that `train` (a sweep) and `interpret` write next to their results."""

import json

import numpy as np
import pytest
from helpers import make_activation_cache
from PIL import Image

from sparsesteer.cli import main
from sparsesteer.utils import plots


def test_frequency_bins_hand_worked():
    # log10 of the live ones: -3, -2, -1, 0 over 3 bins [-3,-2) [-2,-1) [-1,0]; two dead latents apart
    edges, counts, dead = plots.frequency_bins(np.array([0, 0.001, 0, 0.01, 0.1, 1.0]), n_bins=3)
    np.testing.assert_allclose(edges, [-3, -2, -1, 0])
    assert counts.tolist() == [1, 1, 2]
    assert dead == 2
    assert counts.sum() + dead == 6


def test_frequency_bins_all_dead_and_all_equal():
    _, counts, dead = plots.frequency_bins(np.zeros(5))
    assert counts.sum() == 0 and dead == 5
    edges, counts, dead = plots.frequency_bins(np.full(4, 0.01), n_bins=2)
    assert counts.sum() == 4 and dead == 0
    assert edges[0] < -2 < edges[-1]


def test_sweep_curves_group_sort_and_skip_untrained_members():
    pts = [
        {"name": "b", "arch": "topk", "l0": 32.0, "fvu": 0.1},
        {"name": "a", "arch": "topk", "l0": 8.0, "fvu": 0.3},
        {"name": "r", "arch": "relu", "l0": 20.0, "fvu": 0.2},
        {"name": "nan", "arch": "relu", "l0": float("nan"), "fvu": 0.2},
        {"name": "none", "arch": "relu", "fvu": 0.2},
    ]
    curves = plots.sweep_curves(pts, group="arch")
    assert curves == {"topk": [(8.0, 0.3, "a"), (32.0, 0.1, "b")], "relu": [(20.0, 0.2, "r")]}
    assert list(plots.sweep_curves(pts, group=None)) == [""]


def test_plots_write_png_atomically(tmp_path):
    path = plots.frequency_histogram(tmp_path / "f.png", np.array([0, 0.5, 0.01]), title="t", dense_threshold=0.1)
    assert Image.open(path).format == "PNG"
    plots.fvu_vs_l0(tmp_path / "s.png", [{"name": "a", "arch": "topk", "l0": 4, "fvu": 0.5}], title="t")
    plots.deltas_bar(tmp_path / "d.png", [1.0, -2.0], xlabel="x", ylabel="y", title="t")
    plots.by_layer(tmp_path / "l.png", [("cls", [(0, 1.0), (1, None), (2, 3.0)])], ylabel="L0", title="t")
    plots.grid_heatmap(
        tmp_path / "g.png", np.eye(2), rows=[0, 1], cols=[2, 3], row_label="a", col_label="b", title="t",
        value_label="v", mark=(1, 1), mark_label="best",
    )  # fmt: skip
    assert sorted(p.name for p in tmp_path.iterdir()) == ["d.png", "f.png", "g.png", "l.png", "s.png"]
    with pytest.raises(ValueError, match="does not match 3 rows"):
        plots.grid_heatmap(
            tmp_path / "bad.png", np.eye(2), rows=[0, 1, 2], cols=[2, 3], row_label="a", col_label="b", title="t",
            value_label="v",
        )  # fmt: skip
    with pytest.raises(RuntimeError):  # a failure while drawing leaves no file, finished or not
        with plots.figure(tmp_path / "x.png"):
            raise RuntimeError("boom")
    assert not any(p.name.startswith((".x", "x")) for p in tmp_path.iterdir())


def test_train_sweep_writes_fvu_vs_l0(tmp_path, capsys):
    cache = make_activation_cache(tmp_path / "cache")
    out = tmp_path / "sweep"
    rc = main(
        ["train", "--activations", str(cache), "--k", "2,4", "--expansion", "2", "--batch-size", "64", "--steps", "6",
         "--log-every", "3", "--out", str(out)]
    )  # fmt: skip
    assert rc == 0
    assert Image.open(out / "fvu_vs_l0.png").format == "PNG"
    assert f"wrote {out / 'fvu_vs_l0.png'}" in capsys.readouterr().out


def test_interpret_writes_the_frequency_histogram(tmp_path):
    cache = make_activation_cache(tmp_path / "cache")
    sae = tmp_path / "sae"
    assert main(["train", "--activations", str(cache), "--k", "2", "--expansion", "2", "--batch-size", "64",
                 "--steps", "6", "--out", str(sae)]) == 0  # fmt: skip
    assert main(["interpret", "--sae", str(sae), "--activations", str(cache), "--out", str(tmp_path / "stats")]) == 0
    assert Image.open(tmp_path / "stats" / "plots" / "frequency.png").format == "PNG"
    assert json.loads((tmp_path / "stats" / "stats.json").read_text())["format"] == "sparsesteer-latent-stats"
