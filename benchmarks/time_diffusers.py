r"""Guided / unguided wall time and peak GPU memory of the diffusers adapter on SDXL- and PixArt-Σ-size denoisers.

``python -m benchmarks time_diffusers [--size=full|tiny] [--out=DIR]`` (or ``python -m benchmarks.time_diffusers ...``)

``full`` (a GPU): the real SDXL-base UNet config (2.57 B parameters) and the real PixArt-Σ-XL-2-1024 transformer
config (0.61 B), random weights in float16, 1024² images -> latents 4×128×128, batch 4, 50 steps, classifier-free
guidance 5 (the denoiser sees batch 8). Text encoders are not run: random ``prompt_embeds`` of the real shapes
(SDXL 77×2048 + pooled 1280, PixArt 300×4096 with a mask) are passed, and ``output_type='latent'`` skips the VAE
decode (both costs are the same with and without guidance, so leaving them out makes the ratio *larger*: conservative).
The guidance goes through :class:`~mmdguidance.adapters.diffusers.DiffusersMMDGuidance` exactly as a user's run:
100 reference latents, Gaussian kernel (median bandwidth), the adapter's hook (``callback_on_step_end`` for SDXL,
the legacy ``callback`` for PixArt-Σ). ``tiny`` runs the same code path on CPU with small configs.

For each model: one warm-up of each variant, then ``repeats`` rounds of (unguided, guided variants) interleaved in
the same process, ``torch.cuda.synchronize`` around each call; the reported ratio is the median over rounds of
guided / unguided time. Peak memory is ``torch.cuda.max_memory_allocated`` per variant (reset before it).
"""

from __future__ import annotations

import argparse
import gc
import json
import statistics
import time
from pathlib import Path

import torch

SDXL_UNET = dict(  # stabilityai/stable-diffusion-xl-base-1.0, unet/config.json
    act_fn="silu", addition_embed_type="text_time", addition_embed_type_num_heads=64, addition_time_embed_dim=256,
    attention_head_dim=[5, 10, 20], block_out_channels=[320, 640, 1280], center_input_sample=False,
    cross_attention_dim=2048, down_block_types=["DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"],
    downsample_padding=1, flip_sin_to_cos=True, freq_shift=0, in_channels=4, layers_per_block=2,
    mid_block_scale_factor=1, norm_eps=1e-5, norm_num_groups=32, out_channels=4,
    projection_class_embeddings_input_dim=2816, sample_size=128, transformer_layers_per_block=[1, 2, 10],
    up_block_types=["CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"], use_linear_projection=True,
)
PIXART_SIGMA = dict(  # PixArt-alpha/PixArt-Sigma-XL-2-1024-MS, transformer/config.json
    activation_fn="gelu-approximate", attention_bias=True, attention_head_dim=72, attention_type="default",
    caption_channels=4096, cross_attention_dim=1152, dropout=0.0, in_channels=4, interpolation_scale=2,
    norm_elementwise_affine=False, norm_eps=1e-6, norm_num_groups=32, norm_type="ada_norm_single",
    num_attention_heads=16, num_embeds_ada_norm=1000, num_layers=28, out_channels=8, patch_size=2, sample_size=128,
    upcast_attention=False, use_additional_conditions=False,
)  # (the hub file's Transformer2DModel-only keys double_self_attention, only_cross_attention, use_linear_projection
#    are false there and not arguments of PixArtTransformer2DModel)
SIZES = {
    "full": dict(res=1024, batch=4, steps=50, n_refs=100, repeats=3, text_len=77, t5_len=300),
    "tiny": dict(res=32, batch=2, steps=4, n_refs=8, repeats=2, text_len=8, t5_len=8),
}


def _tiny_unet_cfg():
    return dict(SDXL_UNET, attention_head_dim=[2, 2], block_out_channels=[8, 16], cross_attention_dim=32,
                down_block_types=["DownBlock2D", "CrossAttnDownBlock2D"], up_block_types=["CrossAttnUpBlock2D", "UpBlock2D"],
                layers_per_block=1, norm_num_groups=4, addition_time_embed_dim=4, projection_class_embeddings_input_dim=40,
                transformer_layers_per_block=[1, 1], sample_size=4, addition_embed_type_num_heads=2)


def _tiny_pixart_cfg():
    return dict(PIXART_SIGMA, attention_head_dim=4, num_attention_heads=2, caption_channels=16, cross_attention_dim=8,
                num_layers=1, norm_num_groups=4, sample_size=4, interpolation_scale=1)


def _vae(device, dtype):
    """A minimal 8x-downsampling VAE: only its config (scale factor) is used, the decode is skipped."""
    from diffusers import AutoencoderKL

    return AutoencoderKL(block_out_channels=(4, 4, 4, 4), norm_num_groups=2, layers_per_block=1,
                         down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4).to(
        device, dtype)


def build(kind, size, device, dtype):
    """(pipeline, call kwargs) with random weights; text inputs as precomputed embeddings of the real shapes."""
    from diffusers import (DPMSolverMultistepScheduler, EulerDiscreteScheduler, PixArtSigmaPipeline,
                           PixArtTransformer2DModel, StableDiffusionXLPipeline, UNet2DConditionModel)

    cfg = SIZES[size]
    g = torch.Generator().manual_seed(0)
    B = cfg["batch"]
    torch.manual_seed(0)
    with torch.device(device):
        if kind == "sdxl":
            unet = UNet2DConditionModel(**(SDXL_UNET if size == "full" else _tiny_unet_cfg()))
        else:
            tr = PixArtTransformer2DModel(**(PIXART_SIGMA if size == "full" else _tiny_pixart_cfg()))
    sched_kw = dict(num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear")
    if kind == "sdxl":
        unet = unet.to(dtype).eval()
        pipe = StableDiffusionXLPipeline(vae=_vae(device, dtype), text_encoder=None, text_encoder_2=None, tokenizer=None,
                                         tokenizer_2=None, unet=unet,
                                         scheduler=EulerDiscreteScheduler(**sched_kw, steps_offset=1,
                                                                          timestep_spacing="leading"))
        L, E, P = cfg["text_len"], unet.config.cross_attention_dim, unet.config.projection_class_embeddings_input_dim - 6 * unet.config.addition_time_embed_dim
        emb = lambda *s: torch.randn(*s, generator=g).to(device, dtype)  # noqa: E731
        kw = dict(prompt_embeds=emb(B, L, E), negative_prompt_embeds=emb(B, L, E), pooled_prompt_embeds=emb(B, P),
                  negative_pooled_prompt_embeds=emb(B, P), guidance_scale=5.0)
        n_params = sum(p.numel() for p in unet.parameters())
    else:
        tr = tr.to(dtype).eval()
        pipe = PixArtSigmaPipeline(tokenizer=None, text_encoder=None, vae=_vae(device, dtype), transformer=tr,
                                   scheduler=DPMSolverMultistepScheduler(**sched_kw))
        L, E = cfg["t5_len"], tr.config.caption_channels
        emb = lambda *s: torch.randn(*s, generator=g).to(device, dtype)  # noqa: E731
        mask = torch.zeros(B, L, dtype=torch.long, device=device)
        mask[:, : max(L // 8, 1)] = 1  # a short prompt
        kw = dict(prompt_embeds=emb(B, L, E), negative_prompt_embeds=emb(B, L, E), prompt_attention_mask=mask,
                  negative_prompt_attention_mask=mask.clone(), negative_prompt=None, guidance_scale=4.5,
                  use_resolution_binning=False, clean_caption=False)
        n_params = sum(p.numel() for p in tr.parameters())
    pipe.set_progress_bar_config(disable=True)
    return pipe, kw, n_params


def _finite_dtype(pipe, kw, res, dtype):
    """float16 unless the random-weight denoiser overflows in it (then bfloat16); returns the dtype used."""
    out = pipe(num_inference_steps=2, height=res, width=res, generator=torch.Generator().manual_seed(0),
               output_type="latent", **kw).images
    if dtype != torch.float16 or bool(torch.isfinite(out).all()):
        return dtype
    pipe.to(dtype=torch.bfloat16)
    for k, v in kw.items():
        if isinstance(v, torch.Tensor) and v.is_floating_point():
            kw[k] = v.to(torch.bfloat16)
    return torch.bfloat16


def _guidance_step_cost(adapter, B, device, cuda, repeats=20):
    """One MMDGuidance update on (B, D) float32 latents alone: median ms and extra memory over what was allocated."""
    from mmdguidance.guidance import MMDGuidance

    g = MMDGuidance(mmd=adapter.mmd_, scale=0.2, window=(0.0, 1.0), record=False)
    x = torch.randn(B, adapter.n_features_in_, generator=torch.Generator().manual_seed(2)).to(device)
    g(x, step=0, num_steps=50, alpha_bar=0.5)  # warm-up
    _sync(device)
    base = torch.cuda.memory_allocated() if cuda else 0
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    ts = []
    for _ in range(repeats):
        _sync(device)
        t0 = time.perf_counter()
        g(x, step=0, num_steps=50, alpha_bar=0.5)
        _sync(device)
        ts.append(time.perf_counter() - t0)
    extra = (torch.cuda.max_memory_allocated() - base) / 2**20 if cuda else None
    return {"B": B, "D": adapter.n_features_in_, "N": int(adapter.mmd_.reference_.shape[0]),
            "median_ms": 1e3 * statistics.median(ts), "extra_peak_mib": extra}


def _sync(device):
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize()


def _bench_model(kind, size, device, dtype):
    """Timings and peaks of one model; everything it allocates is released when it returns."""
    from mmdguidance.adapters.diffusers import DiffusersMMDGuidance

    cuda = torch.device(device).type == "cuda"
    cfg = SIZES[size]
    B, res, steps = cfg["batch"], cfg["res"], cfg["steps"]
    pipe, kw, n_params = build(kind, size, device, dtype)
    used_dtype = _finite_dtype(pipe, kw, res, dtype)
    den = getattr(pipe, "unet", None) or pipe.transformer
    C, f = den.config.in_channels, pipe.vae_scale_factor
    shape = (C, res // f, res // f)
    refs = torch.randn(cfg["n_refs"], *shape, generator=torch.Generator().manual_seed(1)) * 0.8 + 0.3
    variants = {
        "default (window 0-0.8, diagnostics)": dict(),
        "every step, x0, memory 16": dict(window=(0.0, 1.0), evaluate_on="x0", memory_size=16),
        "every step, no diagnostics": dict(window=(0.0, 1.0), diagnostics=False),
    }
    adapters = {k: DiffusersMMDGuidance(pipe, height=res, width=res, **v).fit(reference_latents=refs.to(device))
                for k, v in variants.items()}

    def unguided(seed):
        return pipe(num_inference_steps=steps, height=res, width=res, generator=torch.Generator().manual_seed(seed),
                    output_type="latent", **kw).images

    def guided(a, seed):
        return a.sample(None, n=B, num_inference_steps=steps, generator=seed, output_type="latent",
                        reset_memory=False, **kw).images

    def timed(fn):
        _sync(device)
        t0 = time.perf_counter()
        out = fn()
        _sync(device)
        return time.perf_counter() - t0, out

    def peak(fn):
        if cuda:
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats()
        fn()
        return torch.cuda.max_memory_allocated() / 2**30 if cuda else None

    peaks = {"unguided": peak(lambda: unguided(0))}  # also the warm-up
    for k, a in adapters.items():
        peaks[k] = peak(lambda a=a: guided(a, 0))
    times = {k: [] for k in ["unguided", *adapters]}
    finite = True
    for r in range(cfg["repeats"]):
        t, _ = timed(lambda: unguided(r + 1))
        times["unguided"].append(t)
        for k, a in adapters.items():
            t, out = timed(lambda a=a: guided(a, r + 1))
            times[k].append(t)
            finite &= bool(torch.isfinite(out).all())
    t_u = statistics.median(times["unguided"])
    rows = []
    for k, a in adapters.items():
        ratios = [g / u for g, u in zip(times[k], times["unguided"])]
        d = a.diagnostics_[0]["steps"]
        n_guided = sum(s["applied"] for s in d)
        mmd2 = [s.get("mmd2") for s in d if s["applied"]]
        rows.append({
            "variant": k, "ratio_median": statistics.median(ratios), "ratios": ratios,
            "guided_s_median": statistics.median(times[k]), "peak_gib": peaks[k], "guided_steps": n_guided,
            "overhead_ms_per_guided_step": 1e3 * (statistics.median(times[k]) - t_u) / max(n_guided, 1),
            "mmd2_first_last": [mmd2[0], mmd2[-1]] if mmd2 else None,
        })
    return {
        "denoiser": type(den).__name__, "params": n_params, "latent_shape": list(shape),
        "hook": adapters[next(iter(adapters))].diagnostics_[0]["mode"], "unguided_s_median": t_u,
        "unguided_peak_gib": peaks["unguided"], "variants": rows, "outputs_finite": finite, "dtype": str(used_dtype),
        "guidance_step_only": _guidance_step_cost(adapters["every step, no diagnostics"], B, device, cuda),
    }


def run(size="tiny", device=None, models=("sdxl", "pixart"), out_dir=None):
    """Benchmark each model in turn (its memory is released before the next); returns the results dict."""
    import diffusers

    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    cuda = torch.device(device).type == "cuda"
    dtype = torch.float16 if cuda else torch.float32
    cfg = SIZES[size]
    results = {"size": size, "device": torch.cuda.get_device_name() if cuda else "cpu", "dtype": str(dtype),
               "torch": torch.__version__, "diffusers": diffusers.__version__, "batch": cfg["batch"],
               "resolution": cfg["res"], "steps": cfg["steps"], "n_refs": cfg["n_refs"], "repeats": cfg["repeats"],
               "models": {}}
    for kind in models:
        results["models"][kind] = _bench_model(kind, size, device, dtype)
        gc.collect()
        if cuda:
            torch.cuda.empty_cache()
        if out_dir is not None:  # after each model, so a cut-off run keeps what it measured
            Path(out_dir).mkdir(parents=True, exist_ok=True)
            (Path(out_dir) / f"time_diffusers_{size}.json").write_text(json.dumps(results, indent=2))
    return results


def main(argv=None):
    p = argparse.ArgumentParser()
    p.add_argument("--size", choices=tuple(SIZES), default=None, help="default: full on a GPU, tiny on CPU")
    p.add_argument("--quick", action="store_true", help="same as --size tiny")
    p.add_argument("--models", nargs="+", default=["sdxl", "pixart"])
    p.add_argument("--out", default=None, help="write time_diffusers.json here")
    a = p.parse_args(argv)
    size = "tiny" if a.quick else (a.size or ("full" if torch.cuda.is_available() else "tiny"))
    res = run(size, models=tuple(a.models), out_dir=a.out)
    print(f"### diffusers adapter: guided / unguided wall time ({res['device']}, {res['dtype']}, {size}: "
          f"{res['resolution']}² batch {res['batch']}, {res['steps']} steps, {res['n_refs']} refs)\n")
    for kind, m in res["models"].items():
        so = m["guidance_step_only"]
        print(f"{kind}: one guidance update alone (B={so['B']}, N={so['N']}, D={so['D']}): {so['median_ms']:.2f} ms, "
              f"extra peak memory {so['extra_peak_mib']} MiB; unguided run {m['unguided_s_median']:.2f} s\n")
    print("| model | params | hook | variant | ratio guided / unguided (median) | peak GiB guided | peak GiB unguided |")
    print("|---|---|---|---|---|---|---|")
    for kind, m in res["models"].items():
        for r in m["variants"]:
            pk = "-" if r["peak_gib"] is None else f"{r['peak_gib']:.2f}"
            pu = "-" if m["unguided_peak_gib"] is None else f"{m['unguided_peak_gib']:.2f}"
            print(f"| {kind} ({m['denoiser']}, {m['dtype']}) | {m['params'] / 1e9:.2f} B | {m['hook']} | {r['variant']} | "
                  f"**{r['ratio_median']:.3f}x** | {pk} | {pu} |")
    return res


if __name__ == "__main__":
    main()
