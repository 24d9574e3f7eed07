"""experiments/bench_mlp_tuning on its fast configuration: every arm runs with pinned Heun-50 sampling, every arm's
choice lies on its (extended) dev grid, and on the subset target every arm adapts (MMD² below no guidance)."""

import json

import pytest

from experiments import load
from experiments.bench_mlp_tuning import ARMS, EVAL_POINTS


@pytest.mark.slow
def test_bench_mlp_tuning_fast(tmp_path):
    data = load("bench_mlp_tuning").run(config="fast", out_dir=tmp_path, random_state=0)
    assert (tmp_path / "bench_mlp_tuning.png").stat().st_size > 0
    on_disk = json.loads((tmp_path / "bench_mlp_tuning.json").read_text())
    assert on_disk["config"] == "fast" and on_disk["settings"]["sampling"] == {"sampler": "heun", "num_steps": 50}
    held = data["heldout"]
    assert set(held) == set(ARMS)
    none = sum(held["none"]["subset"]["exact_mmd2"])
    for arm in ARMS[1:]:
        assert sum(held[arm]["subset"]["exact_mmd2"]) < none, arm
        c = data["chosen"][arm]
        for name, value in data["params"][arm].items():
            assert value in c["grids"][name] and c["best"][name] == value
    for arm in EVAL_POINTS:
        assert set(data["params"][arm]) == {"scale"}
    assert set(data["params"]["finetune"]) == {"lr", "epochs"}
    assert set(data["costs"]["ratio_to_none"]) == set(ARMS)  # measured, not asserted (no timing in unit tests)
    for key, (m, lo, hi) in data["paired_ci_exact_mmd2"]["subset"].items():
        assert lo <= m <= hi, key
    assert "i.i.d. floor" in data["table_md"]
