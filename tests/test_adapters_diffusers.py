"""The diffusers adapter on tiny randomly initialised SD / SDXL / PixArt-Σ pipelines (offline, CPU)."""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest
import torch

pytest.importorskip("diffusers")

from mmdguidance import MMD, ConstantKernel, GaussianKernel  # noqa: E402
from mmdguidance.adapters._encode import encode_images  # noqa: E402
from mmdguidance.adapters.diffusers import DiffusersMMDGuidance  # noqa: E402
from mmdguidance.guidance import GuidanceWarning  # noqa: E402

from ._tiny_pipelines import PIXART_KW, RES, make_scheduler, tiny_pixart, tiny_sd, tiny_sd3, tiny_sdxl, tiny_vae  # noqa: E402

STEPS = 6
PROMPT = "a photo of cat"


@pytest.fixture(scope="module")
def pipes():
    return {"sd": (tiny_sd(), {}), "sdxl": (tiny_sdxl(), {}), "pixart": (tiny_pixart(), PIXART_KW)}


def _plain(pipe, kw, n, seed, prompt=PROMPT, **extra):
    g = torch.Generator().manual_seed(seed)
    return pipe([prompt] * n, num_inference_steps=STEPS, height=RES, width=RES, generator=g, output_type="latent",
                **kw, **extra).images


def _shifted_refs(pipe, kw, n=16, seed=1):
    base = _plain(pipe, kw, n, seed)  # unguided latents from other seeds, then shifted
    return base + base.std()


# ----------------------------------------------------------------------------- exactness at scale 0
@pytest.mark.parametrize("name", ["sd", "sdxl", "pixart"])
def test_scale_zero_reproduces_plain_pipeline(pipes, name):
    pipe, kw = pipes[name]
    refs = _shifted_refs(pipe, kw, n=4)
    a = DiffusersMMDGuidance(pipe, scale=0.0, window=(0, 1)).fit(reference_latents=refs)
    out, lat, _ = a.sample(PROMPT, n=3, num_inference_steps=STEPS, generator=0, output_type="latent",
                           return_dict=False, **kw)
    plain = _plain(pipe, kw, 3, 0)
    assert torch.equal(out, plain)
    assert torch.equal(lat, plain)
    # decoded images too (pil path of the pipeline, VAE decode untouched)
    imgs = a.sample(PROMPT, n=2, num_inference_steps=2, generator=5, output_type="np", **kw).images
    ref_imgs = pipe([PROMPT] * 2, num_inference_steps=2, height=RES, width=RES, generator=torch.Generator().manual_seed(5),
                    output_type="np", **kw).images
    np.testing.assert_array_equal(imgs, ref_imgs)


def test_precomputed_prompt_embeddings_are_sliced_per_batch(pipes):
    """prompt_embeds / negative embeddings / masks of n rows go to the right batches (PixArt, CFG on)."""
    pipe, kw = pipes["pixart"]
    emb, mask, nemb, nmask = pipe.encode_prompt(["red car", "a dog", "blue sky"], device="cpu", clean_caption=False,
                                                max_sequence_length=16)
    e = dict(prompt_embeds=emb, prompt_attention_mask=mask, negative_prompt_embeds=nemb,
             negative_prompt_attention_mask=nmask)
    a = DiffusersMMDGuidance(pipe, scale=0.0).fit(reference_latents=torch.randn(4, 4, 8, 8))
    out = a.sample(None, n=3, batch_size=2, num_inference_steps=STEPS, generator=0, output_type="latent",
                   **e, **kw).images
    g = torch.Generator().manual_seed(0)
    parts = [pipe(num_inference_steps=STEPS, height=RES, width=RES, generator=g, output_type="latent", negative_prompt=None,
                  **{k: v[s:s + 2] for k, v in e.items()}, **kw).images for s in (0, 2)]
    assert torch.equal(out, torch.cat(parts))
    with pytest.raises(ValueError, match="prompt_embeds has 3 rows for n=2"):
        a.sample(None, n=2, **e, **kw)


# ----------------------------------------------------------------------------- guidance works
@pytest.mark.parametrize("name,evaluate_on", [("sd", "xt"), ("sdxl", "x0"), ("pixart", "xt"), ("pixart", "x0")])
def test_guidance_lowers_latent_mmd(pipes, name, evaluate_on):
    pipe, kw = pipes[name]
    refs = _shifted_refs(pipe, kw)
    a = DiffusersMMDGuidance(pipe, scale=0.2, window=(0, 1), evaluate_on=evaluate_on).fit(reference_latents=refs)
    guided = a.sample(PROMPT, n=6, num_inference_steps=STEPS, generator=0, output_type="latent", **kw).images
    unguided = _plain(pipe, kw, 6, 0)
    m = MMD(kernel=GaussianKernel()).fit(refs.flatten(1))  # the project's estimator, its own median bandwidth
    g, u = float(m.score(guided.flatten(1))), float(m.score(unguided.flatten(1)))
    assert torch.isfinite(guided).all()
    assert g < 0.25 * u, (g, u)
    steps = a.diagnostics_[0]["steps"]
    assert len(steps) == STEPS and all(s["applied"] for s in steps)
    assert steps[-1]["mmd2"] < steps[0]["mmd2"]


def test_batch_is_guided_jointly_and_reproducibly(pipes):
    pipe, kw = pipes["sd"]
    refs = _shifted_refs(pipe, kw, n=8)
    a = DiffusersMMDGuidance(pipe, scale=0.3, window=(0, 1)).fit(reference_latents=refs)
    x1 = a.sample(PROMPT, n=4, num_inference_steps=STEPS, generator=3, output_type="latent").images
    x2 = a.sample(PROMPT, n=4, num_inference_steps=STEPS, generator=3, output_type="latent").images
    assert torch.equal(x1, x2)
    # joint guidance: the self (repulsion) term couples samples, so a batch of 4 differs from 4 batches of 1
    x3 = a.sample(PROMPT, n=4, batch_size=1, num_inference_steps=STEPS, generator=torch.Generator().manual_seed(3),
                  output_type="latent").images
    assert len(a.diagnostics_) == 4
    assert not torch.allclose(x1, x3)
    # every sample moved by its own gradient (the authors' batch>1 defect gave all the last sample's gradient)
    unguided = _plain(pipe, kw, 4, 3)
    d = (x1 - unguided).flatten(1)
    assert float(torch.cdist(d, d).max()) > 1e-3


def test_hooks_agree(pipes):
    """callback_on_step_end, the scheduler.step wrapper (and the legacy callback on PixArt) give the same latents."""
    pipe, kw = pipes["sd"]
    refs = _shifted_refs(pipe, kw, n=6)
    outs = []
    for hook in ("callback_on_step_end", "step"):
        a = DiffusersMMDGuidance(pipe, scale=0.3, window=(0, 1), hook=hook).fit(reference_latents=refs)
        outs.append(a.sample(PROMPT, n=2, num_inference_steps=STEPS, generator=0, output_type="latent").images)
    torch.testing.assert_close(outs[0], outs[1], rtol=0, atol=1e-6)
    assert "step" not in vars(pipe.scheduler)  # the wrapper was removed
    pix, pkw = pipes["pixart"]
    prefs = _shifted_refs(pix, pkw, n=6)
    p_outs = [DiffusersMMDGuidance(pix, scale=0.3, window=(0, 1), hook=h).fit(reference_latents=prefs).sample(
        PROMPT, n=2, num_inference_steps=STEPS, generator=0, output_type="latent", **pkw).images
        for h in ("callback", "step")]
    torch.testing.assert_close(p_outs[0], p_outs[1], rtol=0, atol=1e-6)
    with pytest.raises(ValueError, match="callback_on_step_end"):
        DiffusersMMDGuidance(pix, hook="callback_on_step_end").fit(reference_latents=prefs).sample(
            PROMPT, n=1, num_inference_steps=2, **pkw)


def test_sd3_flow_matching(pipes):
    """SD3 (flow matching, callback_on_step_end, precomputed embeddings): exact at scale 0, lowers MMD² with x0."""
    pipe, e = tiny_sd3()
    g = torch.Generator().manual_seed(1)
    base = torch.cat([pipe(**e, num_inference_steps=STEPS, height=RES, width=RES, generator=g,
                           output_type="latent").images for _ in range(4)])
    refs = base + base.std()
    plain = pipe(**e, num_inference_steps=STEPS, height=RES, width=RES, generator=torch.Generator().manual_seed(0),
                 output_type="latent").images
    m = MMD(kernel=GaussianKernel()).fit(refs.flatten(1))
    for scale, ev in ((0.0, "x0"), (0.0, "xt"), (0.4, "x0"), (0.2, "xt")):
        a = DiffusersMMDGuidance(pipe, scale=scale, window=(0, 1), evaluate_on=ev).fit(reference_latents=refs)
        x = a.sample(None, n=3, num_inference_steps=STEPS, generator=0, output_type="latent", **e).images
        if scale == 0:
            assert torch.equal(x, plain)
        else:
            assert float(m.score(x.flatten(1))) < 0.25 * float(m.score(plain.flatten(1)))
    assert a.diagnostics_[0]["mode"] == "callback_on_step_end"


# ----------------------------------------------------------------------------- schedulers: exact x̂0 and landing levels
class _Recorder:
    """A stand-in for MMDGuidance: records the x̂0 it is given and shifts it by a fixed ``delta``."""

    evaluate_on = "x0"

    def __init__(self, delta):
        self.delta, self.seen, self.history = delta, [], []

    def is_active(self, step, num_steps):
        return True

    def __call__(self, x, *, step, num_steps, alpha_bar, **kw):
        assert alpha_bar == 1.0
        self.seen.append(x.clone())
        return x + self.delta


def _sched(name, **cfg):
    """A scheduler built with ``cfg`` passed to its constructor (SD's beta schedule for the VP ones)."""
    import diffusers

    cls = {"ddim": "DDIMScheduler", "ddpm": "DDPMScheduler", "euler": "EulerDiscreteScheduler",
           "euler_a": "EulerAncestralDiscreteScheduler", "dpm": "DPMSolverMultistepScheduler",
           "unipc": "UniPCMultistepScheduler", "flow": "FlowMatchEulerDiscreteScheduler"}[name]
    kw = dict(num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear")
    kw = dict(shift=3.0) if name == "flow" else kw
    kw.update({"ddim": dict(clip_sample=False, set_alpha_to_one=False, steps_offset=1),
               "ddpm": dict(clip_sample=False)}.get(name, {}))
    return getattr(diffusers, cls)(**kw, **cfg)


def _x0_cases():
    cases = [("ddim", dict(timestep_spacing=sp, prediction_type=pt))
             for sp in ("leading", "linspace", "trailing") for pt in ("epsilon", "v_prediction", "sample")]
    cases += [("ddpm", dict(prediction_type=pt)) for pt in ("epsilon", "v_prediction", "sample")]
    cases += [("ddpm", dict(variance_type="learned_range"))]
    cases += [(n, dict(prediction_type=pt)) for n in ("euler", "euler_a") for pt in ("epsilon", "v_prediction")]
    cases += [("euler", dict(use_karras_sigmas=True))]
    cases += [("dpm", dict(prediction_type=pt)) for pt in ("epsilon", "v_prediction")]
    cases += [("dpm", dict(use_karras_sigmas=True)), ("unipc", {}), ("flow", {})]
    return cases


@pytest.mark.parametrize("name,cfg", _x0_cases())
def test_x0_seen_by_guidance_is_the_schedulers_own(name, cfg):
    """evaluate_on='x0': the x̂0 the guidance receives is the scheduler's pred_original_sample (DPM-Solver: its
    converted model output; flow: x - σ v) at every step, and the step then continues from the guided x̂0."""
    import copy

    from mmdguidance.adapters._hooks import GuidedCall

    ref, guided = _sched(name, **cfg), _sched(name, **cfg)
    for s in (ref, guided):
        s.set_timesteps(6)
    C = 4
    learned = cfg.get("variance_type") == "learned_range"
    g = torch.Generator().manual_seed(0)
    x = torch.randn(3, C, 5, 5, generator=g) * float(getattr(ref, "init_noise_sigma", 1.0))
    delta = 0.1 * torch.randn(3, C * 25, generator=g)
    rec = _Recorder(delta)
    with GuidedCall(guided, rec, mode="step") as call:
        for i, t in enumerate(ref.timesteps):
            mo = torch.randn(3, 2 * C if learned else C, 5, 5, generator=g)
            gen = lambda: {} if name == "unipc" else {"generator": torch.Generator().manual_seed(i)}  # noqa: E731
            sr = ref.step(mo, t, x, **gen())
            ref_x0 = _reference_x0(ref, sr, mo, t, x, i)
            gx = copy.deepcopy(x)
            out = guided.step(mo, t, gx, **gen())
            torch.testing.assert_close(rec.seen[-1].reshape(ref_x0.shape), ref_x0, rtol=1e-5, atol=1e-5)
            got = _reference_x0(guided, out, None, t, gx, i, after=True)
            if got is not None:  # the scheduler continued from the guided x̂0
                torch.testing.assert_close(got, ref_x0 + delta.reshape(ref_x0.shape), rtol=1e-4, atol=1e-4)
            assert torch.equal(call.final, out.prev_sample)
            x = sr.prev_sample
    assert len(rec.seen) == 6 and "step" not in vars(guided)


def _reference_x0(s, out, mo, t, x, i, after=False):
    """The scheduler's own x̂0 of the step just taken (None where it exposes none after the fact)."""
    if getattr(out, "pred_original_sample", None) is not None:
        return out.pred_original_sample
    if hasattr(s, "model_outputs"):  # DPM-Solver: convert_model_output's result is stored for the multistep update
        return s.model_outputs[-1]
    if after:
        return None
    return x - float(s.sigmas[i]) * mo  # flow matching: x̂0 = x - σ v


@pytest.mark.parametrize("name,cfg", [("ddim", dict(timestep_spacing=sp)) for sp in ("leading", "linspace", "trailing")]
                         + [("ddim", dict(timestep_spacing="trailing", prediction_type="v_prediction")),
                            ("euler", {}), ("euler", dict(timestep_spacing="trailing")), ("flow", {}),
                            ("ddpm", dict(timestep_spacing="trailing"))])
def test_landing_level_is_the_schedulers_previous_timestep(name, cfg):
    """'xt' mode: the post-step sample lives at landing_level, the scheduler's own rule (DDIM: t - T/n, not the next
    entry of timesteps): a deterministic step lands exactly on A' x̂0 + S' ε̂; DDPM's posterior mean on its ᾱ_prev."""
    from mmdguidance.adapters._schedulers import input_level, landing_level

    s = _sched(name, **cfg)
    s.set_timesteps(4)
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, 4, 3, 3, generator=g) * float(getattr(s, "init_noise_sigma", 1.0))
    for i, t in enumerate(s.timesteps):
        mo = torch.randn(2, 4, 3, 3, generator=g)
        A, S = input_level(s, t, i)
        A2, S2 = landing_level(s, t, i)
        out = s.step(mo, t, x)
        if name == "flow":
            x0, eps = x - S * mo, x + (1 - S) * mo
        else:
            x0 = out.pred_original_sample
            eps = (x - A * x0) / S
        if name == "ddpm":  # posterior mean coefficient of x̂0 uses ᾱ_prev
            ab_prev = A2**2
            ab_t = A**2
            beta = 1 - ab_t / ab_prev
            coef = math.sqrt(ab_prev) * beta / (1 - ab_t)
            mean = coef * x0 + math.sqrt(ab_t / ab_prev) * (1 - ab_prev) / (1 - ab_t) * x
            if i == len(s.timesteps) - 1:  # no noise is added on the last step: prev_sample is the mean
                torch.testing.assert_close(out.prev_sample, mean, rtol=1e-4, atol=1e-4)
        else:
            torch.testing.assert_close(out.prev_sample, A2 * x0 + S2 * eps, rtol=1e-4, atol=1e-4)
        x = out.prev_sample
    assert landing_level(s, s.timesteps[-1], len(s.timesteps) - 1)[1] < 0.1


def test_x0_conversion_round_trip_and_flow_identity():
    """to_x0 / from_x0 are inverse (learned-variance channels pass through); flow x̂0 = x - σ v."""
    from mmdguidance.adapters._schedulers import from_x0, to_x0, x0_coefficients

    g = torch.Generator().manual_seed(0)
    x, mo = torch.randn(2, 4, 3, 3, generator=g), torch.randn(2, 8, 3, 3, generator=g)
    for name, cfg in [("ddim", dict(prediction_type="v_prediction")), ("euler", {}), ("flow", {})]:
        s = _sched(name, **cfg)
        s.set_timesteps(5)
        coef = x0_coefficients(s, s.timesteps[2], 2)
        x0 = to_x0(mo, x, coef)
        back = from_x0(x0, mo, x, coef)
        torch.testing.assert_close(back, mo, rtol=1e-5, atol=1e-5)
        assert torch.equal(back[:, 4:], mo[:, 4:])
        if name == "flow":
            torch.testing.assert_close(x0, x - float(s.sigmas[2]) * mo[:, :4])


@pytest.mark.parametrize("karras", [False, True])
def test_noise_level_matches_dpm_solver(karras):
    """(A, S) at each step equal DPM-Solver's own (alpha_t, sigma_t), Karras sigmas included; clean after the last."""
    from diffusers import DPMSolverMultistepScheduler

    from mmdguidance.adapters._schedulers import input_level, landing_level

    s = DPMSolverMultistepScheduler(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012,
                                    use_karras_sigmas=karras)
    s.set_timesteps(10)
    for i in range(10):
        alpha_t, sigma_t = s._sigma_to_alpha_sigma_t(s.sigmas[i])
        np.testing.assert_allclose(input_level(s, s.timesteps[i], i), (float(alpha_t), float(sigma_t)), rtol=1e-5)
    assert landing_level(s, s.timesteps[-1], 9) == (1.0, 0.0)


# ----------------------------------------------------------------------------- prompt-aware
@pytest.mark.parametrize("name", ["sdxl", "pixart"])
def test_prompt_kernel_one_equals_unconditional(pipes, name):
    pipe, kw = pipes[name]
    refs = _shifted_refs(pipe, kw, n=6)
    caps = ["red car", "blue sky", "a dog", "a tree", "a house", "a painting"]
    prompts = ["a photo of cat", "red car", "a dog"]
    unc = DiffusersMMDGuidance(pipe, scale=0.3, window=(0, 1)).fit(reference_latents=refs)
    pa = DiffusersMMDGuidance(pipe, scale=0.3, window=(0, 1), prompt_kernel=ConstantKernel()).fit(
        reference_latents=refs, prompts=caps)
    assert pa.prompt_dim_ > 0
    x_u = unc.sample(prompts, n=3, num_inference_steps=STEPS, generator=0, output_type="latent", **kw).images
    x_p = pa.sample(prompts, n=3, num_inference_steps=STEPS, generator=0, output_type="latent", **kw).images
    torch.testing.assert_close(x_p, x_u, rtol=0, atol=1e-5)
    # a real prompt kernel changes the result (captions matter)
    pg = DiffusersMMDGuidance(pipe, scale=0.3, window=(0, 1), prompt_kernel=GaussianKernel(bandwidth=0.1)).fit(
        reference_latents=refs, prompts=caps)
    x_g = pg.sample(prompts, n=3, num_inference_steps=STEPS, generator=0, output_type="latent", **kw).images
    assert not torch.allclose(x_g, x_u, atol=1e-3)


def test_default_text_embedders(pipes):
    from mmdguidance.adapters.diffusers import pipeline_text_embedder

    sdxl, _ = pipes["sdxl"]
    e = pipeline_text_embedder(sdxl)(["red car", "a dog"])
    pooled = sdxl.encode_prompt(["red car", "a dog"], device="cpu", do_classifier_free_guidance=False)[2]
    torch.testing.assert_close(e, pooled.float())
    pix, _ = pipes["pixart"]
    e = pipeline_text_embedder(pix)(["red car", "a photo of cat"])
    emb, mask, _, _ = pix.encode_prompt(["red car", "a photo of cat"], do_classifier_free_guidance=False, device="cpu",
                                        clean_caption=False)
    for i in range(2):  # masked mean by hand
        k = int(mask[i].sum())
        torch.testing.assert_close(e[i], emb[i, :k].float().mean(0))
    sd, _ = pipes["sd"]
    assert pipeline_text_embedder(sd)(["a dog"]).shape == (1, sd.text_encoder.config.hidden_size)


# ----------------------------------------------------------------------------- memory bank
def test_memory_bank_sliding_window(pipes):
    pipe, kw = pipes["sd"]
    refs = _shifted_refs(pipe, kw, n=6)
    a = DiffusersMMDGuidance(pipe, scale=0.3, window=(0, 1), memory_size=3).fit(reference_latents=refs)
    lat1 = a.sample(PROMPT, n=2, num_inference_steps=2, generator=0, output_type="latent").latents
    torch.testing.assert_close(a.memory_, lat1.flatten(1))
    lat2 = a.sample(PROMPT, n=2, num_inference_steps=2, generator=1, output_type="latent",
                    reset_memory=False).latents
    torch.testing.assert_close(a.memory_, torch.cat([lat1, lat2])[-3:].flatten(1))
    a.clear_memory()
    assert a.memory_ is None


# ----------------------------------------------------------------------------- reference encoding
def _images(n, size=RES, seed=0):
    rng = np.random.default_rng(seed)
    return [rng.integers(0, 256, size=(size, size, 3), dtype=np.uint8) for _ in range(n)]


def test_scaling_factor_applied_once():
    imgs = _images(3)
    x = torch.from_numpy(np.stack(imgs)).permute(0, 3, 1, 2).float() / 127.5 - 1.0
    lat = {}
    for sf in (1.0, 0.25):
        vae = tiny_vae(scaling_factor=sf)
        lat[sf], _ = encode_images(vae, imgs, height=RES, width=RES)
        with torch.no_grad():
            mean = vae.encode(x).latent_dist.mean
        torch.testing.assert_close(lat[sf], mean * sf)  # independent: the posterior mean times sf
    torch.testing.assert_close(lat[0.25], 0.25 * lat[1.0])  # linear in sf: applied once, not squared


def test_low_precision_vae_and_pipeline():
    """fp16 VAE with force_upcast encodes in float32 (= its float32 copy) and stays fp16; a bf16 pipeline is guided in
    float32 and returns bf16 latents."""
    import copy

    imgs = _images(3)
    v16 = tiny_vae().to(torch.float16)
    v16.register_to_config(force_upcast=True)
    v32 = copy.deepcopy(v16).to(torch.float32)
    v32.register_to_config(force_upcast=False)
    lat16, _ = encode_images(v16, imgs, height=RES, width=RES)
    lat32, _ = encode_images(v32, imgs, height=RES, width=RES)
    assert next(v16.parameters()).dtype == torch.float16 and lat16.dtype == torch.float32
    torch.testing.assert_close(lat16, lat32, rtol=0, atol=1e-6)
    pipe = tiny_sd().to(torch.bfloat16)
    a = DiffusersMMDGuidance(pipe, scale=0.3, window=(0, 1)).fit(reference_latents=torch.randn(6, 4, 8, 8) + 1)
    x = a.sample(PROMPT, n=3, num_inference_steps=4, generator=0, output_type="latent").images
    assert x.dtype == torch.bfloat16 and torch.isfinite(x).all() and a.mmd_.reference_.dtype == torch.float32
    mmd2 = [s["mmd2"] for s in a.diagnostics_[0]["steps"]]
    assert mmd2[-1] < mmd2[0]


def test_fit_from_images_folder_with_captions_and_cache(tmp_path, pipes):
    from PIL import Image

    pipe, kw = pipes["sd"]
    folder = tmp_path / "refs"
    folder.mkdir()
    for i, a in enumerate(_images(4)):
        Image.fromarray(a).save(folder / f"im{i}.png")
        (folder / f"im{i}.txt").write_text(["red car", "a dog", "blue sky", "a tree"][i])
    cache = tmp_path / "cache"
    a = DiffusersMMDGuidance(pipe, cache_dir=cache, prompt_kernel=GaussianKernel()).fit(folder)
    assert a.reference_captions_ == ["red car", "a dog", "blue sky", "a tree"]
    assert a.reference_latents_.shape == (4, 4, RES // 2, RES // 2)
    assert len(list(cache.glob("refs-*.pt"))) == 1
    calls = []
    orig = pipe.vae.encode
    pipe.vae.encode = lambda *args, **k: calls.append(1) or orig(*args, **k)
    try:
        b = DiffusersMMDGuidance(pipe, cache_dir=cache, prompt_kernel=GaussianKernel()).fit(folder)
        assert calls == [] and b.cache_key_ == a.cache_key_  # cache hit, no encoding
        torch.testing.assert_close(b.reference_latents_, a.reference_latents_)
        # the key changes with a pixel, the resolution (with resize) and the VAE weights
        Image.fromarray(np.zeros((RES, RES, 3), np.uint8)).save(folder / "im0.png")
        c = DiffusersMMDGuidance(pipe, cache_dir=cache, prompt_kernel=GaussianKernel()).fit(folder)
        d = DiffusersMMDGuidance(pipe, cache_dir=cache, height=2 * RES, width=2 * RES, resize_references=True,
                                 prompt_kernel=GaussianKernel()).fit(folder)
        assert d.reference_latents_.shape == (4, 4, RES, RES)
        with torch.no_grad():
            pipe.vae.decoder.conv_out.bias.add_(0.0)  # unchanged weights: same key
            e_key = DiffusersMMDGuidance(pipe).fit(folder).cache_key_
            pipe.vae.encoder.conv_in.bias.add_(1e-3)
            f_key = DiffusersMMDGuidance(pipe).fit(folder).cache_key_
            pipe.vae.encoder.conv_in.bias.sub_(1e-3)
    finally:
        pipe.vae.encode = orig
    assert len({a.cache_key_, c.cache_key_, d.cache_key_, f_key}) == 4 and e_key == c.cache_key_
    assert len(calls) == 4


# ----------------------------------------------------------------------------- bad input
def test_bad_input(tmp_path, pipes):
    pipe, kw = pipes["sd"]
    with pytest.raises(ValueError, match="generation is 16x16.*resize_references"):
        DiffusersMMDGuidance(pipe).fit(_images(3, size=12))
    assert DiffusersMMDGuidance(pipe, resize_references=True).fit(_images(3, size=12)).reference_latents_.shape[0] == 3
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(ValueError, match="no reference images"):
        DiffusersMMDGuidance(pipe).fit(empty)
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "x.png").write_bytes(b"not an image")
    with pytest.raises(ValueError, match="cannot read reference image"):
        DiffusersMMDGuidance(pipe).fit(bad)
    with pytest.raises(ValueError, match="does not exist"):
        DiffusersMMDGuidance(pipe).fit(tmp_path / "missing")
    with pytest.raises(ValueError, match="exactly one"):
        DiffusersMMDGuidance(pipe).fit()
    with pytest.raises(ValueError, match=r"reference_latents must have shape \(N, 4, 8, 8\)"):
        DiffusersMMDGuidance(pipe).fit(reference_latents=torch.zeros(3, 4, 4, 4))
    refs = torch.randn(4, 4, 8, 8)
    a = DiffusersMMDGuidance(pipe).fit(reference_latents=refs)
    with pytest.raises(ValueError, match="got 2 prompts for 3 samples"):
        a.sample(["a", "b"], n=3, num_inference_steps=2)
    with pytest.raises(ValueError, match="n must be a positive int"):
        a.sample(PROMPT, n=0)
    with pytest.raises(ValueError, match="num_images_per_prompt"):
        a.sample(PROMPT, n=1, num_images_per_prompt=2)
    pa = DiffusersMMDGuidance(pipe, prompt_kernel=GaussianKernel())
    with pytest.raises(ValueError, match="one caption per reference"):
        pa.fit(reference_latents=refs)
    with pytest.raises(ValueError, match="got 2 reference prompts for 4"):
        pa.fit(reference_latents=refs, prompts=["a", "b"])
    with pytest.raises(ValueError, match="scale must be >= 0"):
        DiffusersMMDGuidance(pipe, scale=-1.0).fit(reference_latents=refs)
    with pytest.raises(ValueError, match="x0_jacobian.*not supported by the diffusers adapter"):
        DiffusersMMDGuidance(pipe, evaluate_on="x0_jacobian").fit(reference_latents=refs)
    with pytest.raises(ValueError, match="unknown hook"):
        DiffusersMMDGuidance(pipe, hook="nope").fit(reference_latents=refs)
    with pytest.raises(TypeError, match="not supported.*StableDiffusionXLPipeline.*DDPMPipeline"):
        DiffusersMMDGuidance(object()).fit(reference_latents=refs)


def test_unipc_warns_and_clone_keeps_pipeline():
    from sklearn.base import clone

    pipe = tiny_sd(scheduler="unipc")
    a = DiffusersMMDGuidance(pipe, scale=0.2, window=(0, 1)).fit(reference_latents=torch.randn(4, 4, 8, 8))
    with pytest.warns(GuidanceWarning, match="UniPC"):
        a.sample(PROMPT, n=1, num_inference_steps=2, output_type="latent", generator=0)
    with warnings.catch_warnings():
        warnings.simplefilter("error", GuidanceWarning)
        DiffusersMMDGuidance(pipe, scale=0.0).fit(reference_latents=torch.randn(4, 4, 8, 8)).sample(
            PROMPT, n=1, num_inference_steps=2, output_type="latent", generator=0)
    b = clone(a)
    assert b.pipeline is pipe and b.get_params()["scale"] == 0.2 and not hasattr(b, "mmd_")
    # x0 acts through the model prediction, which UniPC's predictor and corrector both use: no warning, and it guides
    base = pipe([PROMPT] * 8, num_inference_steps=STEPS, height=RES, width=RES, output_type="latent",
                generator=torch.Generator().manual_seed(100)).images
    refs = base + base.std()
    m = MMD(kernel=GaussianKernel()).fit(refs.flatten(1))
    x0 = DiffusersMMDGuidance(pipe, scale=0.2, window=(0, 1), evaluate_on="x0").fit(reference_latents=refs)
    with warnings.catch_warnings():
        warnings.simplefilter("error", GuidanceWarning)
        g = x0.sample(PROMPT, n=4, num_inference_steps=STEPS, generator=0, output_type="latent").images
    u = pipe([PROMPT] * 4, num_inference_steps=STEPS, height=RES, width=RES, output_type="latent",
             generator=torch.Generator().manual_seed(0)).images
    assert float(m.score(g.flatten(1))) < 0.5 * float(m.score(u.flatten(1)))


# ----------------------------------------------------------------------------- saved pipeline + CLI
def test_saved_pipeline_reloads_offline_and_runs_through_cli(tmp_path, pipes, monkeypatch):
    from PIL import Image

    from mmdguidance.cli import main

    pipe, _ = pipes["sd"]
    pipe.save_pretrained(tmp_path / "pipe")
    refs = tmp_path / "refs"
    refs.mkdir()
    for i, a in enumerate(_images(3)):
        Image.fromarray(a).save(refs / f"r{i}.png")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    out = tmp_path / "out"
    rc = main(["generate", "--pipeline", str(tmp_path / "pipe"), "--refs", str(refs), "--prompt", PROMPT, "--n", "3",
               "--batch-size", "2", "--steps", "3", "--scale", "0.3", "--seed", "0", "--out", str(out)])
    assert rc == 0
    pngs = sorted(out.glob("*.png"))
    assert len(pngs) == 3 and Image.open(pngs[0]).size == (RES, RES)
    import json

    rep = json.loads((out / "generate.json").read_text())
    assert rep["n"] == 3 and rep["guided_steps"] > 0 and math.isfinite(rep["latent_mmd2_to_refs"])
    # prompt-aware: without captions a clear error (exit code 2); with <stem>.txt captions it runs
    args = ["generate", "--pipeline", str(tmp_path / "pipe"), "--refs", str(refs), "--prompt", "red car", "a dog",
            "--n", "2", "--steps", "2", "--prompt-aware", "--out", str(tmp_path / "out2")]
    assert main(args) == 2
    for i, cap in enumerate(["red car", "a dog", "blue sky"]):
        (refs / f"r{i}.txt").write_text(cap)
    assert main(args) == 0
    assert json.loads((tmp_path / "out2" / "generate.json").read_text())["prompts"] == ["red car", "a dog"]
    assert main(["generate", "--pipeline", str(tmp_path / "pipe"), "--refs", str(refs), "--out", str(out)]) == 2
    assert main(["generate", "--pipeline", str(tmp_path), "--refs", str(refs), "--prompt", "a", "--out", str(out)]) == 2
    rc = main(["generate", "--pipeline", str(tmp_path / "pipe"), "--refs", str(refs), "--prompt", "a", "b",
               "--n", "3", "--out", str(out)])
    assert rc == 2


def test_benchmark_runs_tiny_on_cpu():
    """benchmarks/time_diffusers.py runs its code path at tiny sizes on CPU (the GPU numbers are in docs/diffusers.md)."""
    from benchmarks.time_diffusers import run

    res = run("tiny", device="cpu")
    assert set(res["models"]) == {"sdxl", "pixart"}
    assert res["models"]["sdxl"]["hook"] == "callback_on_step_end" and res["models"]["pixart"]["hook"] == "callback"
    for m in res["models"].values():
        assert m["outputs_finite"] and len(m["variants"]) == 3
        for v in m["variants"]:
            assert v["ratio_median"] > 0 and v["guided_steps"] > 0


# ----------------------------------------------------------------------------- issue 15 items
@pytest.mark.parametrize("name", ["sd", "sdxl", "pixart"])
def test_x0_mode_scale_zero_is_bit_identical(pipes, name):
    """evaluate_on='x0' wraps scheduler.step; at scale 0 nothing is touched (bit-identical latents)."""
    pipe, kw = pipes[name]
    a = DiffusersMMDGuidance(pipe, scale=0.0, evaluate_on="x0").fit(reference_latents=_shifted_refs(pipe, kw, n=4))
    out = a.sample(PROMPT, n=2, num_inference_steps=STEPS, generator=0, output_type="latent", **kw)
    assert torch.equal(out.images, _plain(pipe, kw, 2, 0)) and torch.equal(out.latents, out.images)


def _decode_through_pipeline(pipe, z, kw=None):
    """The pipeline's own decode path applied to latents z: one step whose callback hands z back, output 'pt'."""
    kw = dict(kw or {})
    if "prompt_embeds" not in kw:
        kw["prompt"] = [PROMPT] * z.shape[0]
    return pipe(num_inference_steps=1, height=RES, width=RES, output_type="pt", generator=torch.Generator().manual_seed(0),
                callback_on_step_end=lambda p, i, t, ck: {"latents": z.clone()}, **kw).images


@pytest.mark.parametrize("which", ["sdxl_latents_mean_std", "sd3_shift"])
def test_references_are_the_exact_inverse_of_the_pipelines_decode(which):
    """decode(encode(u)) through the pipeline's own decode path = the VAE's decode of the posterior mean
    (SDXL-style latents_mean/std; SD3's shift_factor)."""
    if which == "sd3_shift":
        pipe, kw = tiny_sd3()
        pipe.vae.register_to_config(shift_factor=0.3, scaling_factor=0.7)
        kw = {k: v[:3] for k, v in kw.items()}
    else:
        pipe, kw = tiny_sdxl(), {}
        pipe.vae.register_to_config(latents_mean=[0.1, -0.2, 0.3, 0.0], latents_std=[0.5, 2.0, 1.5, 0.8])
    imgs = _images(3)
    a = DiffusersMMDGuidance(pipe).fit(imgs)
    x = torch.from_numpy(np.stack(imgs)).permute(0, 3, 1, 2).float() / 127.5 - 1.0
    with torch.no_grad():
        direct = pipe.vae.decode(pipe.vae.encode(x).latent_dist.mean).sample
    expected = pipe.image_processor.postprocess(direct, output_type="pt")
    got = _decode_through_pipeline(pipe, a.reference_latents_, kw)
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-4)


def test_vanished_gradient_warns_once_naming_the_bandwidth(pipes):
    pipe, kw = pipes["sd"]
    far = _shifted_refs(pipe, kw, n=6) + 200.0  # latents far off (same spread): the Gaussian kernel underflows
    a = DiffusersMMDGuidance(pipe, scale=0.3, window=(0, 1)).fit(reference_latents=far)
    with pytest.warns(GuidanceWarning, match=r"gradient vanished.*bandwidth.*typical distance") as rec:
        a.sample(PROMPT, n=1, num_inference_steps=3, generator=0, output_type="latent")
    assert sum("vanished" in str(w.message) for w in rec) == 1
    assert all(s["grad_norm"] == 0.0 for s in a.diagnostics_[0]["steps"])
    # a batch: the self (repulsion) term keeps the gradient non-zero, but the cross term vanished; still one warning
    with pytest.warns(GuidanceWarning, match=r"vanished.*cross\) term.*bandwidth") as rec:
        a.sample(PROMPT, n=3, num_inference_steps=3, generator=0, output_type="latent")
    assert sum("vanished" in str(w.message) for w in rec) == 1
    ok = DiffusersMMDGuidance(pipe, scale=0.3, window=(0, 1)).fit(reference_latents=_shifted_refs(pipe, kw, n=6))
    with warnings.catch_warnings():
        warnings.filterwarnings("error", message=".*vanished.*")
        ok.sample(PROMPT, n=2, num_inference_steps=3, generator=0, output_type="latent")


def test_img2img_is_refused(pipes):
    from diffusers import StableDiffusionImg2ImgPipeline

    pipe, _ = pipes["sd"]
    a = DiffusersMMDGuidance(pipe).fit(reference_latents=torch.randn(4, 4, 8, 8))
    for k, v in (("strength", 0.5), ("image", np.zeros((RES, RES, 3), np.uint8))):
        with pytest.raises(ValueError, match="img2img"):
            a.sample(PROMPT, n=1, num_inference_steps=2, **{k: v})
    i2i = StableDiffusionImg2ImgPipeline(**pipe.components)
    with pytest.raises(TypeError, match="StableDiffusionImg2ImgPipeline is not supported.*LDMPipeline"):
        DiffusersMMDGuidance(i2i).fit(reference_latents=torch.randn(4, 4, 8, 8))


def test_16bit_rgba_and_integer_images(tmp_path):
    from PIL import Image

    from mmdguidance.adapters._encode import load_images

    rng = np.random.default_rng(0)
    g16 = rng.integers(0, 65536, size=(RES, RES), dtype=np.uint16)
    Image.fromarray(g16).save(tmp_path / "a16.png")
    rgba = rng.integers(0, 256, size=(RES, RES, 4), dtype=np.uint8)
    Image.fromarray(rgba, mode="RGBA").save(tmp_path / "b_rgba.png")
    arrays, _, names = load_images(tmp_path)
    assert Image.open(tmp_path / "a16.png").mode.startswith("I")  # really a 16-bit file
    want16 = np.repeat(np.round(g16 / 257.0).astype(np.uint8)[:, :, None], 3, 2)
    np.testing.assert_array_equal(arrays[0], want16)  # was all white (255) with convert("RGB")
    al = rgba[:, :, 3:] / 255.0
    want = np.round((al * rgba[:, :, :3] / 255.0 + (1 - al)) * 255.0).astype(np.uint8)  # on white
    np.testing.assert_array_equal(arrays[1], want)
    assert names == [str(tmp_path / "a16.png"), str(tmp_path / "b_rgba.png")]
    c8 = rng.integers(0, 256, size=(RES, RES, 3))
    arrs, _, _ = load_images([c8.astype(np.int64), (c8 * 257).astype(np.uint16), c8.astype(np.uint8)])
    for x in arrs:
        np.testing.assert_array_equal(x, c8.astype(np.uint8))
    with pytest.raises(ValueError, match="int64 image arrays must hold 0..255.*uint16"):
        load_images([c8.astype(np.int64) * 300])


def test_cache_key_hashes_weight_bytes_and_corrupted_cache_reencodes(tmp_path):
    from mmdguidance.adapters._encode import vae_fingerprint

    vae = tiny_vae()
    fp = vae_fingerprint(vae)
    with torch.no_grad():  # a channel permutation keeps per-parameter sums and sums of squares
        w = vae.encoder.conv_in.weight
        w.copy_(w[[1, 0, *range(2, w.shape[0])]])
    assert vae_fingerprint(vae) != fp
    imgs = _images(3)
    lat, key = encode_images(vae, imgs, height=RES, width=RES, cache_dir=tmp_path)
    path = tmp_path / f"refs-{key}.pt"
    path.write_bytes(b"garbage, not a torch file")
    with pytest.warns(RuntimeWarning, match="unreadable.*re-encoding"):
        lat2, _ = encode_images(vae, imgs, height=RES, width=RES, cache_dir=tmp_path)
    torch.testing.assert_close(lat2, lat)
    torch.testing.assert_close(torch.load(path), lat)  # rewritten


def test_refit_errors_after_resolution_change_or_vae_swap(pipes):
    import copy

    pipe, kw = pipes["sd"]
    a = DiffusersMMDGuidance(pipe).fit(_images(3))
    a.set_params(height=2 * RES, width=2 * RES)
    with pytest.raises(ValueError, match="refit"):
        a.sample(PROMPT, n=1, num_inference_steps=2)
    a.set_params(height=None, width=None)
    old = pipe.vae
    try:
        pipe.vae = copy.deepcopy(old)
        with pytest.raises(ValueError, match="autoencoder was replaced.*refit"):
            a.sample(PROMPT, n=1, num_inference_steps=2)
    finally:
        pipe.vae = old
    a.sample(PROMPT, n=1, num_inference_steps=2, output_type="latent")


def test_prompt_kernel_caption_errors(tmp_path, pipes):
    from PIL import Image

    pipe, _ = pipes["sd"]
    refs = torch.randn(4, 4, 8, 8)
    with pytest.raises(ValueError, match="all 4 reference captions are identical.*drop prompt_kernel"):
        DiffusersMMDGuidance(pipe, prompt_kernel=GaussianKernel()).fit(reference_latents=refs, prompts="a dog")
    # a fixed prompt bandwidth is fine with one caption
    DiffusersMMDGuidance(pipe, prompt_kernel=GaussianKernel(bandwidth=0.5)).fit(reference_latents=refs, prompts="a dog")
    for i, a in enumerate(_images(3)):
        Image.fromarray(a).save(tmp_path / f"im{i}.png")
        if i != 1:
            (tmp_path / f"im{i}.txt").write_text("red car")
    with pytest.raises(ValueError, match=r"no <stem>\.txt caption.*im1\.png"):
        DiffusersMMDGuidance(pipe, prompt_kernel=GaussianKernel()).fit(tmp_path)


@pytest.mark.parametrize("kind", ["ddpm", "ddim", "ldm"])
def test_unconditional_pipelines(kind):
    """DDPM / DDIM (pixel space) and LDM (VQ model): exact at scale 0, references = pixels or VQ latents, guided."""
    from ._tiny_pipelines import tiny_uncond

    pipe = tiny_uncond(kind)
    if kind == "ldm":
        pipe.vqvae.register_to_config(scaling_factor=1.0)
    imgs = _images(6)
    a = DiffusersMMDGuidance(pipe, scale=0.0).fit(imgs)
    x = torch.from_numpy(np.stack(imgs)).permute(0, 3, 1, 2).float() / 127.5 - 1.0
    with torch.no_grad():
        want = pipe.vqvae.encode(x).latents if kind == "ldm" else x
    torch.testing.assert_close(a.reference_latents_, want)
    out = a.sample(n=2, num_inference_steps=3, generator=0, output_type="np")
    plain = pipe(batch_size=2, num_inference_steps=3, generator=torch.Generator().manual_seed(0), output_type="np").images
    np.testing.assert_array_equal(out.images, plain)
    assert out.diagnostics[0]["mode"] == "step"
    u = a.sample(n=4, num_inference_steps=3, generator=0, output_type="latent")
    base = a.sample(n=8, num_inference_steps=3, generator=1, output_type="latent").latents
    refs = base + base.std()  # the untrained denoiser's own scale (random VQ latents are far smaller)
    for ev in ("xt", "x0"):
        b = DiffusersMMDGuidance(pipe, scale=0.3, window=(0, 1), evaluate_on=ev).fit(reference_latents=refs)
        g = b.sample(n=4, num_inference_steps=3, generator=0, output_type="latent")
        assert torch.equal(g.images, g.latents)
        assert b.score_latents(g.latents) < b.score_latents(u.latents)
    with pytest.raises(ValueError, match="unconditional: prompt"):
        a.sample("a dog", n=1)
    with pytest.raises(ValueError, match="num_inference_steps must be an int >= 1"):
        a.sample(n=1, num_inference_steps=0)
    with pytest.raises(ValueError, match="sample size 16x16"):
        DiffusersMMDGuidance(pipe, height=2 * RES, width=2 * RES).fit(imgs)


def test_pipeline_callback_composes_with_user_callbacks(pipes):
    from diffusers.callbacks import MultiPipelineCallbacks, PipelineCallback

    from mmdguidance.adapters.callback import MMDGuidanceCallback

    pipe, kw = pipes["sd"]
    refs = _shifted_refs(pipe, kw, n=6)
    a = DiffusersMMDGuidance(pipe, scale=0.3, window=(0, 1)).fit(reference_latents=refs)
    want = a.sample(PROMPT, n=2, num_inference_steps=STEPS, generator=0, output_type="latent").images

    class Spy(PipelineCallback):
        tensor_inputs = ["latents"]

        def __init__(self):
            super().__init__()
            self.seen = []

        def callback_fn(self, pipeline, step_index, timestep, callback_kwargs):
            self.seen.append(callback_kwargs["latents"].clone())
            return callback_kwargs

    cb, spy = MMDGuidanceCallback(a), Spy()
    got = pipe([PROMPT] * 2, num_inference_steps=STEPS, height=RES, width=RES, generator=torch.Generator().manual_seed(0),
               output_type="latent", callback_on_step_end=MultiPipelineCallbacks([cb, spy])).images
    torch.testing.assert_close(got, want, rtol=0, atol=1e-6)
    assert len(spy.seen) == STEPS and torch.equal(spy.seen[-1], got)  # the user's callback sees guided latents
    assert len(cb.diagnostics) == STEPS and all(s["applied"] for s in cb.diagnostics)
    # through the convenience wrapper: a PipelineCallback and a plain function after the guidance
    spy2, calls = Spy(), []
    via = a.sample(PROMPT, n=2, num_inference_steps=STEPS, generator=0, output_type="latent", callback_on_step_end=spy2)
    torch.testing.assert_close(via.images, want, rtol=0, atol=1e-6)
    assert len(spy2.seen) == STEPS
    a.sample(PROMPT, n=2, num_inference_steps=STEPS, generator=0, output_type="latent",
             callback_on_step_end=lambda p, i, t, k: calls.append(i) or {})
    assert calls == list(range(STEPS))
    # x0 needs the scheduler.step wrapper: a bare callback refuses, attached() matches the wrapper's result
    b = DiffusersMMDGuidance(pipe, scale=0.3, window=(0, 1), evaluate_on="x0").fit(reference_latents=refs)
    want0 = b.sample(PROMPT, n=2, num_inference_steps=STEPS, generator=0, output_type="latent").images
    cb0 = MMDGuidanceCallback(b)
    run = dict(num_inference_steps=STEPS, height=RES, width=RES, output_type="latent", callback_on_step_end=cb0)
    with pytest.raises(RuntimeError, match="attached"):
        pipe([PROMPT] * 2, generator=torch.Generator().manual_seed(0), **run)
    with cb0.attached(pipe, batch=2):
        got0 = pipe([PROMPT] * 2, generator=torch.Generator().manual_seed(0), **run).images
    torch.testing.assert_close(got0, want0, rtol=0, atol=1e-6)


def test_generator_list_output_and_tuple(pipes):
    pipe, kw = pipes["sd"]
    a = DiffusersMMDGuidance(pipe, scale=0.0).fit(reference_latents=torch.randn(4, 4, 8, 8))
    gens = lambda: [torch.Generator().manual_seed(s) for s in (5, 6, 7)]  # noqa: E731
    out = a.sample(PROMPT, n=3, num_inference_steps=2, generator=gens(), output_type="latent")
    plain = pipe([PROMPT] * 3, num_inference_steps=2, height=RES, width=RES, generator=gens(), output_type="latent").images
    assert torch.equal(out.images, plain)
    split = a.sample(PROMPT, n=3, batch_size=2, num_inference_steps=2, generator=gens(), output_type="latent")
    torch.testing.assert_close(split.images, plain, rtol=0, atol=1e-4)  # image i uses generator i, whatever the batching
    imgs, lat, diag = a.sample(PROMPT, n=3, num_inference_steps=2, generator=gens(), output_type="latent",
                               return_dict=False)
    assert torch.equal(imgs, plain) and torch.equal(lat, plain) and len(diag) == 1
    assert lat is a.latents_ and out[0] is out.images and out.to_tuple()[1] is out.latents
    with pytest.raises(ValueError, match="exactly n=3 torch.Generator"):
        a.sample(PROMPT, n=3, generator=gens()[:2])


def test_concurrent_call_on_one_pipeline_is_a_clear_error(pipes):
    pipe, kw = pipes["sd"]
    a = DiffusersMMDGuidance(pipe, scale=0.2).fit(reference_latents=torch.randn(4, 4, 8, 8))
    errors = []

    def second_call(p, i, t, k):  # a second guided call while the first is inside scheduler.step's wrapper
        try:
            a.sample(PROMPT, n=1, num_inference_steps=2, output_type="latent")
        except RuntimeError as exc:
            errors.append(str(exc))
        return {}

    a.sample(PROMPT, n=1, num_inference_steps=2, output_type="latent", callback_on_step_end=second_call)
    assert errors and "one guided call at a time" in errors[0]
    assert "step" not in vars(pipe.scheduler)


def test_generate_cli_baseline_per_step_and_early_errors(tmp_path, pipes, monkeypatch, capsys):
    import json

    from PIL import Image

    from mmdguidance.cli import main

    pipe, kw = pipes["sd"]
    pipe.save_pretrained(tmp_path / "pipe")
    refs = tmp_path / "refs"
    refs.mkdir()
    for i, im in enumerate(_images(4)):
        Image.fromarray(im).save(refs / f"r{i}.png")
    out = tmp_path / "out"
    args = ["generate", "--pipeline", str(tmp_path / "pipe"), "--refs", str(refs), "--prompt", PROMPT, "--n", "3",
            "--steps", "3", "--scale", "0.3", "--window", "0", "1", "--seed", "0", "--out", str(out)]
    with warnings.catch_warnings():
        warnings.simplefilter("error", FutureWarning)  # no torch_dtype deprecation
        warnings.simplefilter("ignore", GuidanceWarning)  # random VAE latents are far from the random UNet's
        assert main(args) == 0
    rep = json.loads((out / "generate.json").read_text())
    # the unguided baseline is the same noise at scale 0: recompute it independently through the plain pipeline
    plain = _plain(pipe, kw, 3, 0)
    a = DiffusersMMDGuidance(pipe).fit(refs)
    np.testing.assert_allclose(rep["latent_mmd2_unguided"], a.score_latents(plain), rtol=1e-3)  # reloaded weights
    assert [r["step"] for r in rep["per_step"]] == [0, 1, 2] and all(r["guided_batches"] == 1 for r in rep["per_step"])
    assert all(math.isfinite(r["grad_norm"]) and math.isfinite(r["mmd2"]) for r in rep["per_step"])
    # size mismatch names the CLI flag
    small = tmp_path / "small"
    small.mkdir()
    for i, im in enumerate(_images(2, size=12)):
        Image.fromarray(im).save(small / f"s{i}.png")
    assert main(args[:4] + [str(small)] + args[5:]) == 2
    assert "--resize-refs" in capsys.readouterr().err
    # the output folder is checked before the pipeline is loaded
    import diffusers

    monkeypatch.setattr(diffusers.DiffusionPipeline, "from_pretrained", lambda *a, **k: pytest.fail("loaded"))
    (tmp_path / "afile").write_text("x")
    assert main(args[:-1] + [str(tmp_path / "afile")]) == 2
    assert "not a folder" in capsys.readouterr().err


def test_generate_cli_bad_counts_and_device_exit_2_before_loading(tmp_path, monkeypatch, capsys):
    """Issue 14 item 13: ``--steps 0`` and an unusable ``--device`` are errors (exit 2), not tracebacks."""
    import diffusers

    from mmdguidance.cli import main

    (tmp_path / "pipe").mkdir()
    (tmp_path / "pipe" / "model_index.json").write_text("{}")
    monkeypatch.setattr(diffusers.DiffusionPipeline, "from_pretrained", lambda *a, **k: pytest.fail("loaded"))
    base = ["generate", "--pipeline", str(tmp_path / "pipe"), "--refs", str(tmp_path), "--prompt", "p",
            "--out", str(tmp_path / "out")]
    for extra, flag in ((["--steps", "0"], "--steps"), (["--n", "0"], "--n"), (["--batch-size", "-1"], "--batch-size"),
                        (["--memory-size", "-2"], "--memory-size"), (["--height", "0"], "--height"),
                        (["--device", "nonsense"], "--device")):
        assert main(base + extra) == 2, extra
        err = capsys.readouterr().err
        assert flag in err and "Traceback" not in err, err
    if not torch.cuda.is_available():
        assert main(base + ["--device", "cuda"]) == 2
        assert "no usable CUDA device" in capsys.readouterr().err


def test_generate_cli_unconditional_pipeline(tmp_path):
    """The paper's unconditional setting from the command line: a saved DDPM pipeline, no prompt."""
    import json

    from PIL import Image

    from mmdguidance.cli import main

    from ._tiny_pipelines import tiny_uncond

    tiny_uncond("ddpm").save_pretrained(tmp_path / "ddpm")
    refs = tmp_path / "refs"
    refs.mkdir()
    for i, im in enumerate(_images(4)):
        Image.fromarray(im).save(refs / f"r{i}.png")
    out = tmp_path / "out"
    assert main(["generate", "--pipeline", str(tmp_path / "ddpm"), "--refs", str(refs), "--n", "2", "--steps", "2",
                 "--out", str(out)]) == 0
    rep = json.loads((out / "generate.json").read_text())
    assert rep["pipeline_class"] == "DDPMPipeline" and rep["prompts"] is None and rep["hook"] == "step"
    assert len(list(out.glob("*.png"))) == 2 and math.isfinite(rep["latent_mmd2_unguided"])
    assert main(["generate", "--pipeline", str(tmp_path / "ddpm"), "--refs", str(refs), "--prompt", "a dog",
                 "--out", str(out)]) == 2


def test_user_callback_can_interrupt_a_guided_call(pipes):
    pipe, kw = pipes["sd"]
    a = DiffusersMMDGuidance(pipe, scale=0.3, window=(0, 1)).fit(reference_latents=_shifted_refs(pipe, kw, n=6))

    def stop_after_two(p, i, t, k):
        if i == 1:
            p._interrupt = True
        return {}

    out = a.sample(PROMPT, n=2, num_inference_steps=STEPS, generator=0, output_type="latent",
                   callback_on_step_end=stop_after_two)
    steps = out.diagnostics[0]["steps"]
    assert [s["step"] for s in steps] == [0, 1] and all(s["applied"] for s in steps)
    assert torch.equal(out.images, out.latents)  # the pipeline returned the guided latents of step 1


def test_exact_x0_on_the_bundled_trained_pipeline():
    """The trained shapes pipeline (assets/shapes-ldm, DDIM): x̂0 guidance is bit-identical at scale 0, sees the
    scheduler's own pred_original_sample, and lowers the latent MMD² to the bundled red references."""
    from pathlib import Path

    from experiments.t2i_train import load_pipeline

    root = Path(__file__).resolve().parents[1] / "assets"
    pipe = load_pipeline(root / "shapes-ldm")
    kw = dict(num_inference_steps=4, guidance_scale=4.0, output_type="latent")
    lat = torch.randn((4, 4, 8, 8), generator=torch.Generator().manual_seed(1))
    plain = pipe(["a circle"] * 4, latents=lat, **kw).images
    a = DiffusersMMDGuidance(pipe, scale=0.0, evaluate_on="x0").fit(root / "refs-red")
    assert torch.equal(a.sample("a circle", n=4, latents=lat, **kw).images, plain)
    seen, orig = [], pipe.scheduler.step

    def spy(mo, t, x, *args, **k):  # the scheduler's own x̂0 of each step (installed under the adapter's wrapper)
        out = orig(mo, t, x, *args, **k)
        seen.append(out[1] if isinstance(out, tuple) else out.pred_original_sample)
        return out

    pipe.scheduler.step = spy
    try:
        b = DiffusersMMDGuidance(pipe, scale=0.2, evaluate_on="x0").fit(root / "refs-red")
        out = b.sample("a circle", n=4, latents=lat, **kw)
    finally:
        del pipe.scheduler.step
    assert b.score_latents(out.latents) < b.score_latents(plain)
    mmd2 = [s["mmd2"] for s in out.diagnostics[0]["steps"] if s["applied"]]
    assert len(seen) == 4 and len(mmd2) == 3  # default window (0, 0.8): steps 0-2 guided
    ref_m = [float(b.mmd_.score(x.flatten(1))) for x in seen[:3]]  # MMD² of the scheduler's (guided) x̂0
    np.testing.assert_allclose(mmd2, ref_m, rtol=1e-4)
