"""The beyond-MMD experiments: beyond_heldout (copying metric, grid extension, pinned settings, fast run), beyond_t2i
and beyond_digits (fast runs)."""

from __future__ import annotations

import numpy as np
import pytest

from experiments import beyond_heldout as bh


def test_copying_metric_levels():
    rng = np.random.default_rng(0)
    refs = rng.normal(size=(20, 3))
    Z = rng.normal(size=(4000, 3))  # fresh draws of the same law: no copying
    same = bh.copying(Z[:2000], refs, Z[2000:])
    assert abs(same["nn_ratio"] - 1.0) < 0.1
    assert abs(same["copy_frac"] - bh.COPY_QUANTILE) < 0.02
    copies = np.repeat(refs, 10, axis=0) + 1e-6 * rng.normal(size=(200, 3))  # exact copies of the references
    c = bh.copying(copies, refs, Z)
    assert c["copy_frac"] == 1.0 and c["nn_ratio"] < 1e-3
    # the ratio is the median nearest-reference distance, by brute force
    d = np.linalg.norm(Z[:2000, None] - refs[None], axis=-1).min(1)
    e = np.linalg.norm(Z[2000:, None] - refs[None], axis=-1).min(1)
    assert same["nn_ratio"] == pytest.approx(np.median(d) / np.median(e), rel=1e-12)


def test_grid_extension_only_at_an_edge():
    g = (0.1, 0.2, 0.4)
    assert bh.extend(g, 0.4) == (0.1, 0.2, 0.4, 0.8)
    assert bh.extend(g, 0.1) == (0.05, 0.1, 0.2, 0.4)
    assert bh.extend(g, 0.2) == g


def test_settings_are_pinned_not_library_defaults():
    refs = np.random.default_rng(0).normal(size=(10, 2))
    assert bh.SAMPLING == dict(sampler="heun", num_steps=50)
    for m in bh.GUIDED:
        kw = bh.guidance_kwargs(m, {"scale": 0.3, "diversity": 1.0}, refs, 0)
        assert {k: kw[k] for k in ("step_rule", "schedule", "window", "evaluate_on")} == {
            "step_rule": "normalized", "schedule": "decreasing", "window": (0.0, 0.8),
            "evaluate_on": {"mmd_noised": "noised_refs", "mmd_x0": "x0"}.get(m, "xt")}
        assert ("kernel" in kw) == (m in bh.MMD_ARMS) and ("discrepancy" in kw) == (m not in bh.MMD_ARMS)
    with pytest.raises(ValueError, match="unknown method"):
        bh.guidance_kwargs("nope", {"scale": 0.1}, refs, 0)


@pytest.mark.slow
def test_beyond_heldout_fast(tmp_path):
    data = bh.run(config="fast", out_dir=tmp_path)
    assert (tmp_path / "beyond_heldout.png").stat().st_size > 0
    sel = data["selection"]
    for m in bh.GUIDED:  # the chosen setting is the best-scoring eligible one, and on the searched grid
        best = sel["ranking"][m][0]
        assert best["params"] == sel["params"][m] and best["params"]["scale"] in sel["grids"][m]["scales"]
        assert all(best["score"] <= r["score"] for r in sel["ranking"][m] if r["eligible"])
    ref = data["reference_arm"]
    summ = data["held_out"]["ho_grid9"]["summary"]
    runs = data["held_out"]["ho_grid9"]["runs"]
    for m in bh.METHODS:  # paired differences are the mean of per-seed differences
        if m == ref:
            assert ref not in summ[m]["exact_mmd2"]["minus"]
            continue
        d = np.mean([a["exact_mmd2"] - b["exact_mmd2"] for a, b in zip(runs[m], runs[ref])])
        assert summ[m]["exact_mmd2"]["minus"][ref][0] == pytest.approx(d)
    assert summ["none"]["exact_mmd2"]["mean"] > summ[ref]["exact_mmd2"]["mean"]  # guidance helps at all
    tables = bh.markdown_tables(data)
    assert set(tables) == {"params", "quality", "n_sweep", "cost"}


@pytest.mark.slow
def test_beyond_t2i_fast(tmp_path):
    pytest.importorskip("diffusers")
    from experiments import beyond_t2i as bt

    res = bt.run(config="fast", out_dir=tmp_path)
    assert (tmp_path / "beyond_t2i.png").stat().st_size > 0
    assert set(res["best_scale"]) == {"mmd", "chamfer", "sw"}
    for t, by_m in res["summary"].items():
        runs = res["runs"][t]
        for m in ("none", "chamfer", "sw"):  # the paired difference is the mean of per-seed differences
            d = np.mean([runs[m][s]["target_error"] - runs["mmd"][s]["target_error"] for s in runs["mmd"]])
            assert by_m[m]["target_error"]["minus_mmd"]["mean"] == pytest.approx(d)
    assert "| subset | chamfer |" in bt.markdown_table(res)
    with pytest.raises(ValueError, match="unknown method"):
        bt.discrepancy("nope", 0)


@pytest.mark.slow
def test_beyond_digits_fast(tmp_path):
    from experiments import beyond_digits as bd

    data = bd.run(config="fast", out_dir=tmp_path)
    assert (tmp_path / "beyond_digits.png").stat().st_size > 0
    summ = data["summary"]["class"]["25"]
    assert summ["mmd"]["frac_target"]["mean"] > summ["none"]["frac_target"]["mean"]  # guidance toward digit 3 works
    for m in ("chamfer", "sw"):  # the other discrepancies also move the samples toward the target class
        assert summ[m]["frac_target"]["mean"] > summ["none"]["frac_target"]["mean"], m
    assert data["best_scale"]["mmd"] in data["settings"]["scales"]
