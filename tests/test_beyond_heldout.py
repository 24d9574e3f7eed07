"""experiments/beyond_heldout.py: the copying metric, the grid extension, the pinned settings, and a fast run."""

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
