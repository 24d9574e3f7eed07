"""Digits experiments on their fast configurations (tiny models trained in seconds): they run, write PNG + JSON,
and show the key claims with tolerances sized for one seed; plus the data/evaluation helpers."""

import json

import numpy as np
import pytest

import mmdguidance.baselines as baselines
from experiments import _digits as D
from experiments import digits_adaptation, load


@pytest.fixture(scope="module")
def adaptation(tmp_path_factory):
    out = tmp_path_factory.mktemp("digits")
    data = load("digits_adaptation").run(config="fast", out_dir=out, random_state=0)
    assert (out / "digits_adaptation.png").stat().st_size > 0
    assert json.loads((out / "digits_adaptation.json").read_text())["config"] == "fast"
    return data


@pytest.mark.slow
def test_mmd_guidance_moves_the_label_histogram_and_keeps_precision(adaptation):
    s = adaptation["summary"]["class"]["25"]
    none, pix, lat0, lat = s["none"], s["mmd_pixel"], s["none_latent"], s["mmd_latent"]
    # ~10% of unguided samples are 3s; guidance moves most of the mass to the reference class
    assert none["frac_target"][0] < 0.25
    assert pix["frac_target"][0] > 0.7
    assert lat["frac_target"][0] > lat0["frac_target"][0] + 0.3
    # fidelity to the target (precision/density in classifier features) does not drop
    assert pix["precision"][0] >= none["precision"][0] - 0.05
    assert pix["density"][0] >= none["density"][0] - 0.05
    assert pix["fd"][0] < none["fd"][0]
    # the cost ratio is measured in the same run and is positive/finite
    c = adaptation["cost"]
    assert 0 < c["latent_over_pixel_guided"] < np.inf and c["pixel_guided_over_unguided"] > 0


@pytest.mark.slow
def test_baselines_are_the_projects(adaptation):
    assert digits_adaptation.ClassifierGuidedDenoiser is baselines.ClassifierGuidedDenoiser
    assert digits_adaptation.finetune is baselines.finetune
    s = adaptation["summary"]["class"]["25"]
    assert set(s) == set(digits_adaptation.METHODS)
    hist = adaptation["per_seed"]["class"]["25"]["classifier"][0]["label_hist"]
    assert len(hist) == 10 and abs(sum(hist) - 1) < 1e-9


@pytest.mark.slow
def test_mmd_ddm_experiment_fast(tmp_path):
    data = load("digits_mmd_ddm").run(config="fast", out_dir=tmp_path, random_state=0)
    assert (tmp_path / "digits_mmd_ddm.png").stat().st_size > 0
    f = data["findings"]["5"]
    first, last = f["mmd2_first_last"]
    assert last < first  # the MMD-DDM loss decreases on the digits
    assert np.isfinite(f["fd_mmd_ddm"]) and np.isfinite(f["fd_ddim"])


def test_data_and_evaluation_helpers():
    Xtr, ytr, Xte, yte = D.load_data(0)
    assert Xtr.shape == (1497, 64) and Xte.shape == (300, 64) and Xtr.min() >= -1 and Xtr.max() <= 1
    assert np.bincount(yte).min() >= 29  # stratified
    thick = D.thicken(Xte)
    assert thick.shape == Xte.shape and D.ink(thick) > D.ink(Xte) + 0.05 and (thick >= Xte).all()
    models = D.get_models("fast", Xtr, ytr)
    assert (models.clf.predict(Xte) == yte).mean() > 0.8
    real = D.evaluate(models.clf, Xtr[:300], Xte, target_classes=[3])
    noise = D.evaluate(models.clf, np.random.default_rng(0).uniform(-1, 1, (300, 64)), Xte, target_classes=[3])
    assert real["fd"] < 0.2 * noise["fd"] and real["precision"] > noise["precision"] + 0.5
    assert real["frac_target"] == pytest.approx(np.mean(models.clf.predict(Xtr[:300]) == 3))
