"""The CLI: demo outputs and criteria, parser, figures registry."""

import json

import pytest

from mmdguidance.cli import build_parser, main, run_demo


def test_demo_writes_figure_and_table_and_meets_criteria(tmp_path):
    m = run_demo(tmp_path, n=300, seed=0)
    for f in ("demo.png", "demo_metrics.json", "demo_metrics.md"):
        assert (tmp_path / f).stat().st_size > 0
    saved = json.loads((tmp_path / "demo_metrics.json").read_text())
    assert saved["guided"]["exact_mmd2_to_target"] == pytest.approx(m["guided"]["exact_mmd2_to_target"])
    assert m["mmd2_reduction_factor"] >= 5.0
    assert m["guided"]["frac_within_3sigma_of_target_mode"] >= 0.95
    # within-mode spread close to the unguided sampler's (no collapse)
    assert m["guided"]["min_within_mode_variance_ratio"] > 0.5 * m["unguided"]["min_within_mode_variance_ratio"]
    assert "| guided |" in (tmp_path / "demo_metrics.md").read_text()


def test_demo_is_reproducible(tmp_path):
    a = run_demo(tmp_path / "a", n=100, seed=3, make_plot=False)
    b = run_demo(tmp_path / "b", n=100, seed=3, make_plot=False)
    assert a["guided"] == b["guided"] and a["unguided"] == b["unguided"]


def test_cli_demo_entry_point(tmp_path, capsys):
    assert main(["demo", "--out", str(tmp_path), "--n", "120", "--steps", "20"]) in (0, 1)
    assert "| guided |" in capsys.readouterr().out


def test_parser_rejects_unknown_command():
    with pytest.raises(SystemExit):
        build_parser().parse_args(["train"])
