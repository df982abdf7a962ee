"""The figures: files written, whatever the points."""

from __future__ import annotations

from bellm_st.evaluation.plot import plot_pareto


def test_pareto_plot_writes_a_png(tmp_path):
    points = [
        {"label": "n30-k16", "x": 70.0, "y": 80.8, "baseline": False},
        {"label": "n20-k11", "x": 48.0, "y": 79.9, "baseline": False},
        {"label": "n15-k8", "x": 52.0, "y": 77.0, "baseline": False},  # slower and worse: off the front
        {"label": "all-MiniLM-L6-v2", "x": 22.0, "y": 81.0, "baseline": True},
    ]
    path = plot_pareto(points, tmp_path / "figures" / "pareto.png", "test")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
