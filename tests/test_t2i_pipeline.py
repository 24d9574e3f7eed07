"""The bundled trained text-to-image pipeline (assets/shapes-ldm): offline loading, generation, the MMD adapter
on it, and the training / adaptation scripts end to end at tiny configurations."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("diffusers")
import torch  # noqa: E402

from mmdguidance.t2i import data as D  # noqa: E402
from mmdguidance.t2i.score import read_attributes  # noqa: E402

ASSET = Path(__file__).resolve().parents[1] / "assets" / "shapes-ldm"
REFS = Path(__file__).resolve().parents[1] / "assets" / "refs-red"


@pytest.fixture(scope="module")
def pipe():
    from experiments.t2i_train import load_pipeline

    return load_pipeline(ASSET)


def test_bundle_is_small_float16_safetensors():
    files = [f for f in ASSET.rglob("*") if f.is_file()]
    assert sum(f.stat().st_size for f in files) <= 20 * 2**20
    weights = [f for f in files if f.suffix == ".safetensors"]
    assert {f.parent.name for f in weights} == {"unet", "vae", "text_encoder"}
    from safetensors import safe_open

    for f in weights:
        with safe_open(f, "pt") as sf:
            assert {sf.get_tensor(k).dtype for k in sf.keys()} == {torch.float16}, f
    assert not [f for f in files if f.suffix in (".bin", ".pt", ".ckpt")]


def test_loads_offline_with_diffusion_pipeline(pipe, monkeypatch):
    from diffusers import DiffusionPipeline, StableDiffusionPipeline

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    p = DiffusionPipeline.from_pretrained(str(ASSET), local_files_only=True)
    assert isinstance(p, StableDiffusionPipeline)
    assert type(p.scheduler).__name__ == "DDIMScheduler"
    assert p.vae.config.sample_size == 32 and p.unet.config.sample_size == 8
    assert isinstance(pipe, StableDiffusionPipeline) and pipe.unet.dtype == torch.float32


def test_generates_deterministically_and_is_text_conditional(pipe):
    kw = dict(num_inference_steps=3, guidance_scale=4.0, output_type="np")
    a = pipe(["a red circle", "a blue square"], generator=torch.Generator().manual_seed(0), **kw).images
    b = pipe(["a red circle", "a blue square"], generator=torch.Generator().manual_seed(0), **kw).images
    c = pipe(["a green triangle", "a yellow circle"], generator=torch.Generator().manual_seed(0), **kw).images
    assert a.shape == (2, 32, 32, 3)
    np.testing.assert_array_equal(a, b)
    assert np.abs(a - c).mean() > 0.01


@pytest.mark.slow
def test_trained_pipeline_follows_the_colour_and_shape_of_the_prompt(pipe):
    """Measured (experiments/t2i_train.py, paper_figures/t2i_train.json): colour and shape match rates of
    generated images vs full captions; here a smaller sample at the same settings must clear a lower bar."""
    from experiments.t2i_train import prompt_match

    acc = prompt_match(pipe, 24, steps=20, cfg_scale=4.0, seed=11)
    assert acc["colour"] >= 0.8, acc  # measured 96% on 96 images
    assert acc["shape"] >= 0.4, acc  # measured 54% on 96 images; chance is 33%


def test_vae_reconstructions_keep_the_attributes(pipe):
    from experiments.t2i_train import attribute_accuracy, decode, encode

    imgs, attrs = D.make_dataset(64, random_state=5)
    rec = decode(pipe.vae, encode(pipe.vae, imgs)[0] * pipe.vae.config.scaling_factor)
    acc = attribute_accuracy(rec, attrs)
    # measured on 1000 images: colour 100%, shape 86.4%, size 99.8% (the VAE blurs small squares and triangles)
    assert acc["colour"] >= 0.95 and acc["shape"] >= 0.75 and acc["size"] >= 0.95, acc


def test_adapter_on_the_trained_pipeline(pipe):
    from mmdguidance.adapters.diffusers import DiffusersMMDGuidance

    refs, _ = D.make_dataset(8, random_state=0, colour="red")
    lat = torch.randn((4, 4, 8, 8), generator=torch.Generator().manual_seed(1))
    kw = dict(num_inference_steps=3, guidance_scale=4.0, output_type="np", latents=lat)
    plain = pipe(["a circle"] * 4, **kw).images
    ad = DiffusersMMDGuidance(pipe, scale=0.0).fit(reference_images=refs)
    assert ad.reference_latents_.shape == (8, 4, 8, 8)
    np.testing.assert_allclose(ad.sample("a circle", n=4, **kw).images, plain, atol=1e-6)
    ad.set_params(scale=0.2)
    g1, z1, _ = ad.sample("a circle", n=4, return_dict=False, **kw)
    g2 = ad.sample("a circle", n=4, **kw).images
    assert z1.shape == (4, 4, 8, 8) and g1.shape == (4, 32, 32, 3)
    np.testing.assert_array_equal(g1, g2)
    assert np.abs(g1 - plain).mean() > 1e-3
    # the guidance lowers the latent MMD² to the references
    assert ad.score_latents(z1) < ad.score_latents(pipe(["a circle"] * 4, **{**kw, "output_type": "latent"}).images)


def test_bundled_reference_folder(pipe):
    from mmdguidance.adapters._encode import load_images

    arrays, caps, _ = load_images(REFS)
    assert len(arrays) >= 16 and all(c is not None for c in caps)
    codes = read_attributes(np.stack(arrays))
    assert np.all(codes["colour"] == 0)


@pytest.mark.slow
def test_generate_command_on_the_bundle(tmp_path):
    from mmdguidance.cli import main

    out = tmp_path / "out"
    assert main(["generate", "--pipeline", str(ASSET), "--refs", str(REFS), "--prompt", "a circle", "--n", "2",
                 "--steps", "3", "--out", str(out)]) == 0
    rep = json.loads((out / "generate.json").read_text())
    assert rep["n"] == 2 and (out / "000.png").is_file()


@pytest.mark.slow
def test_training_and_adaptation_scripts_end_to_end(tmp_path):
    from experiments import t2i_adaptation, t2i_train

    res = t2i_train.run("fast", out_dir=tmp_path)
    saved = tmp_path / "t2i_train_pipeline"
    assert (saved / "model_index.json").is_file() and (tmp_path / "t2i_train.png").is_file()
    assert res["n_params"]["unet"] > 0 and "cfg_4" in res["generation_prompt_match"]
    again = t2i_train.run("fast", out_dir=tmp_path / "again")
    assert again["final_losses"] == res["final_losses"]  # seeded and deterministic
    out = t2i_adaptation.run("fast", out_dir=tmp_path, pipeline_dir=saved)
    assert set(out["summary"]["ddim"]) == set(t2i_adaptation.task_specs())
    assert (tmp_path / "t2i_adaptation.png").is_file() and (tmp_path / "t2i_adaptation_grid.png").is_file()
    diff = out["summary"]["ddim"]["subset"]["mmd_xt"]["target_error"]["diff_vs_none"]
    assert diff["ci95"][0] <= diff["mean"] <= diff["ci95"][1]


def test_guided_stochastic_scheduler_keeps_the_callers_noise(pipe):
    """The guidance wraps scheduler.step; the wrapper must keep the signature so that the pipeline still passes its
    generator to Euler ancestral (else the step noise comes from the global RNG and runs are not reproducible)."""
    from experiments.t2i_train import load_pipeline
    from mmdguidance.adapters.classifier_guidance import LatentAttributeClassifier, LatentClassifierGuidance
    from mmdguidance.adapters.diffusers import DiffusersMMDGuidance

    p = load_pipeline(ASSET, scheduler="euler_a")
    refs = torch.randn(6, 4, 8, 8, generator=torch.Generator().manual_seed(0))
    kw = dict(num_inference_steps=3, guidance_scale=4.0, output_type="latent")
    for ev in ("xt", "x0"):
        ad = DiffusersMMDGuidance(p, scale=0.5, evaluate_on=ev, diagnostics=False).fit(reference_latents=refs)
        a = ad.sample("a circle", n=2, generator=torch.Generator().manual_seed(1), **kw).images
        torch.randn(100)  # moves the global RNG
        b = ad.sample("a circle", n=2, generator=torch.Generator().manual_seed(1), **kw).images
        torch.testing.assert_close(a, b, rtol=0, atol=0)
    clf = LatentAttributeClassifier(in_channels=4, heads={"colour": 4}, width=8).eval()
    cg = LatentClassifierGuidance(classifier=clf, targets={"colour": np.eye(4)[0]}, scale=1.0)
    out = []
    for _ in range(2):
        with cg.attached(p):
            out.append(p(["a circle"] * 2, generator=torch.Generator().manual_seed(1), **kw).images)
        torch.randn(100)
    torch.testing.assert_close(out[0], out[1], rtol=0, atol=0)
