"""Tiny randomly initialised diffusers pipelines built from configs in code (no files, no hub).

Used by ``tests/test_adapters_diffusers.py``; every module is put in ``eval()`` mode so runs are
deterministic. Images are 16x16 pixels, latents 4x8x8 (a 2x-downsampling VAE).
"""

from __future__ import annotations

import torch

RES = 16  # pixels; latents are 4 x RES/2 x RES/2

_WORDS = ["a", "photo", "of", "cat", "dog", "red", "blue", "car", "tree", "house", "painting", "sky"]


def clip_tokenizer():
    """An in-memory byte-level BPE CLIP tokenizer over a few whole words (no merges file)."""
    from transformers import CLIPTokenizer

    vocab = {"<|startoftext|>": 0, "<|endoftext|>": 1, "!": 2}
    for w in _WORDS:
        vocab[w + "</w>"] = len(vocab)
    for ch in "abcdefghijklmnopqrstuvwxyz":
        vocab.setdefault(ch, len(vocab))
        vocab.setdefault(ch + "</w>", len(vocab))
    merges = []
    for w in _WORDS:  # merge the characters of each word left to right
        parts = list(w[:-1]) + [w[-1] + "</w>"]
        while len(parts) > 1:
            a, b = parts[0], parts[1]
            merges.append((a, b))
            vocab.setdefault(a + b, len(vocab))
            parts = [a + b] + parts[2:]
    tok = CLIPTokenizer(vocab=vocab, merges=merges, model_max_length=16, pad_token="!")
    return tok


def t5_tokenizer():
    """An in-memory T5 (unigram) tokenizer over the same few words."""
    from transformers import T5Tokenizer

    vocab = [("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0)] + [("\u2581" + w, -1.0) for w in _WORDS]
    vocab += [(c, -5.0) for c in "abcdefghijklmnopqrstuvwxyz"]
    return T5Tokenizer(vocab=vocab, extra_ids=0)


def _eval(*modules):
    for m in modules:
        if m is not None:
            m.eval()


def tiny_vae(scaling_factor=0.5, seed=0):
    from diffusers import AutoencoderKL

    torch.manual_seed(seed)
    return AutoencoderKL(
        block_out_channels=(8, 8), in_channels=3, out_channels=3, latent_channels=4, norm_num_groups=4,
        down_block_types=("DownEncoderBlock2D",) * 2, up_block_types=("UpDecoderBlock2D",) * 2,
        layers_per_block=1, sample_size=RES, scaling_factor=scaling_factor,
    ).eval()


def _clip_text(dim=16, projection=False, seed=0):
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    torch.manual_seed(seed)
    cfg = CLIPTextConfig(
        vocab_size=128, hidden_size=dim, intermediate_size=2 * dim, num_hidden_layers=1, num_attention_heads=2,
        max_position_embeddings=16, projection_dim=dim, bos_token_id=0, eos_token_id=1, pad_token_id=2,
    )
    return (CLIPTextModelWithProjection if projection else CLIPTextModel)(cfg).eval()


def tiny_sd(seed=0, scheduler="ddim"):
    """StableDiffusionPipeline: UNet (8, 16) channels, CLIP text dim 16, DDIM (or 'ddpm'/'euler'/'unipc')."""
    from diffusers import StableDiffusionPipeline, UNet2DConditionModel

    torch.manual_seed(seed)
    unet = UNet2DConditionModel(
        sample_size=RES // 2, in_channels=4, out_channels=4, layers_per_block=1, block_out_channels=(8, 16),
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"), up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
        cross_attention_dim=16, attention_head_dim=2, norm_num_groups=4,
    )
    pipe = StableDiffusionPipeline(
        vae=tiny_vae(seed=seed), text_encoder=_clip_text(seed=seed), tokenizer=clip_tokenizer(), unet=unet,
        scheduler=make_scheduler(scheduler), safety_checker=None, feature_extractor=None, requires_safety_checker=False,
    )
    _eval(pipe.unet, pipe.vae, pipe.text_encoder)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def make_scheduler(name):
    from diffusers import (DDIMScheduler, DDPMScheduler, DPMSolverMultistepScheduler, EulerDiscreteScheduler,
                           UniPCMultistepScheduler)

    kw = dict(num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear")
    return {
        "ddim": lambda: DDIMScheduler(**kw, clip_sample=False, set_alpha_to_one=False, steps_offset=1),
        "ddpm": lambda: DDPMScheduler(**kw, clip_sample=False),
        "euler": lambda: EulerDiscreteScheduler(**kw, steps_offset=1),
        "dpm": lambda: DPMSolverMultistepScheduler(**kw),
        "unipc": lambda: UniPCMultistepScheduler(**kw),
    }[name]()


def tiny_sdxl(seed=0, scheduler="euler"):
    """StableDiffusionXLPipeline: two CLIP encoders (dims 16 + 16 = 32 cross-attention), text_time embedding."""
    from diffusers import StableDiffusionXLPipeline, UNet2DConditionModel

    torch.manual_seed(seed)
    time_dim, pooled_dim = 4, 16
    unet = UNet2DConditionModel(
        sample_size=RES // 2, in_channels=4, out_channels=4, layers_per_block=1, block_out_channels=(8, 16),
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"), up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        cross_attention_dim=32, attention_head_dim=2, norm_num_groups=4, use_linear_projection=True,
        addition_embed_type="text_time", addition_time_embed_dim=time_dim,
        projection_class_embeddings_input_dim=6 * time_dim + pooled_dim, transformer_layers_per_block=1,
    )
    pipe = StableDiffusionXLPipeline(
        vae=tiny_vae(seed=seed), text_encoder=_clip_text(seed=seed), text_encoder_2=_clip_text(projection=True, seed=seed + 1),
        tokenizer=clip_tokenizer(), tokenizer_2=clip_tokenizer(), unet=unet, scheduler=make_scheduler(scheduler),
        force_zeros_for_empty_prompt=True,
    )
    _eval(pipe.unet, pipe.vae, pipe.text_encoder, pipe.text_encoder_2)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def tiny_pixart(seed=0, scheduler="dpm"):
    """PixArtSigmaPipeline: PixArtTransformer2DModel (learned sigma, 8 output channels), tiny T5 encoder."""
    from diffusers import PixArtSigmaPipeline, PixArtTransformer2DModel
    from transformers import T5Config, T5EncoderModel

    torch.manual_seed(seed)
    transformer = PixArtTransformer2DModel(
        sample_size=RES // 2, num_layers=1, patch_size=2, attention_head_dim=4, num_attention_heads=2, in_channels=4,
        out_channels=8, caption_channels=16, cross_attention_dim=8, norm_num_groups=4, norm_type="ada_norm_single",
        num_embeds_ada_norm=1000, use_additional_conditions=False, interpolation_scale=1,
    )
    torch.manual_seed(seed)
    t5 = T5EncoderModel(T5Config(vocab_size=64, d_model=16, d_ff=32, d_kv=4, num_layers=1, num_heads=2,
                                 pad_token_id=0, eos_token_id=1, decoder_start_token_id=0))
    pipe = PixArtSigmaPipeline(
        tokenizer=t5_tokenizer(), text_encoder=t5, vae=tiny_vae(seed=seed), transformer=transformer,
        scheduler=make_scheduler(scheduler),
    )
    _eval(pipe.transformer, pipe.vae, pipe.text_encoder)
    pipe.set_progress_bar_config(disable=True)
    return pipe


PIXART_KW = dict(use_resolution_binning=False, clean_caption=False, max_sequence_length=16)


def tiny_sd3(seed=0):
    """StableDiffusion3Pipeline (flow matching) without text encoders; returns (pipe, call kwargs of embeddings for 3)."""
    from diffusers import FlowMatchEulerDiscreteScheduler, SD3Transformer2DModel, StableDiffusion3Pipeline

    torch.manual_seed(seed)
    tr = SD3Transformer2DModel(sample_size=RES // 2, patch_size=2, in_channels=4, num_layers=1, attention_head_dim=4,
                               num_attention_heads=2, joint_attention_dim=8, caption_projection_dim=8,
                               pooled_projection_dim=8, out_channels=4, pos_embed_max_size=16)
    pipe = StableDiffusion3Pipeline(transformer=tr, scheduler=FlowMatchEulerDiscreteScheduler(), vae=tiny_vae(seed=seed),
                                    text_encoder=None, tokenizer=None, text_encoder_2=None, tokenizer_2=None,
                                    text_encoder_3=None, tokenizer_3=None)
    _eval(pipe.transformer, pipe.vae)
    pipe.set_progress_bar_config(disable=True)
    g = torch.Generator().manual_seed(seed)
    pe, pp = torch.randn(3, 5, 8, generator=g), torch.randn(3, 8, generator=g)
    kw = dict(prompt_embeds=pe, pooled_prompt_embeds=pp, negative_prompt_embeds=torch.zeros_like(pe),
              negative_pooled_prompt_embeds=torch.zeros_like(pp))
    return pipe, kw


def tiny_unet2d(in_channels=3, sample_size=RES, seed=0):
    """An unconditional UNet2DModel (channels (8, 16))."""
    from diffusers import UNet2DModel

    torch.manual_seed(seed)
    return UNet2DModel(sample_size=sample_size, in_channels=in_channels, out_channels=in_channels, layers_per_block=1,
                       block_out_channels=(8, 16), down_block_types=("DownBlock2D", "DownBlock2D"),
                       up_block_types=("UpBlock2D", "UpBlock2D"), norm_num_groups=4).eval()


def tiny_uncond(kind="ddpm", seed=0):
    """Unconditional pipelines: pixel-space 'ddpm' / 'ddim' (3 x RES x RES) or 'ldm' (VQModel, latents 3 x RES/2)."""
    from diffusers import DDIMPipeline, DDPMPipeline, LDMPipeline, VQModel

    if kind == "ldm":
        torch.manual_seed(seed)
        vq = VQModel(in_channels=3, out_channels=3, latent_channels=3, block_out_channels=(8, 8), layers_per_block=1,
                     down_block_types=("DownEncoderBlock2D",) * 2, up_block_types=("UpDecoderBlock2D",) * 2,
                     norm_num_groups=4, num_vq_embeddings=32, vq_embed_dim=3, sample_size=RES).eval()
        pipe = LDMPipeline(vqvae=vq, unet=tiny_unet2d(3, RES // 2, seed), scheduler=make_scheduler("ddim"))
    else:
        cls = DDPMPipeline if kind == "ddpm" else DDIMPipeline
        pipe = cls(unet=tiny_unet2d(3, RES, seed), scheduler=make_scheduler(kind))
    pipe.set_progress_bar_config(disable=True)
    return pipe


def evaluation_point_table(seeds=(0, 1, 2), steps=8, n=8, scale=0.2):
    """Guided / unguided latent MMD² on tiny pipelines, ``evaluate_on`` 'xt' vs 'x0' (the numbers of docs/diffusers.md).

    Targets built from 16 unguided latents (seed 100) of the same pipeline: 'shift' (plus one std), 'subset' (those
    with above-mean first-channel mean), 'scaled' (times 0.5). MMD²: the project's ``MMD`` with a median-bandwidth
    Gaussian kernel fitted on the target; guidance at the adapter's defaults except ``scale``; per seed, the ratio to
    the unguided run from the same noise. Returns ``{pipeline: {target: {mode: [ratio per seed]}}}``.
    """
    import warnings

    from mmdguidance import MMD, GaussianKernel
    from mmdguidance.adapters.diffusers import DiffusersMMDGuidance

    setups = {"sd (ddim)": (tiny_sd(), {}), "sdxl (euler)": (tiny_sdxl(), {}),
              "pixart (dpm-solver)": (tiny_pixart(), PIXART_KW), "pixart (ddim)": (tiny_pixart(scheduler="ddim"), PIXART_KW)}
    out = {}
    for name, (pipe, kw) in setups.items():
        def plain(k, seed):
            return pipe(["a photo of cat"] * k, num_inference_steps=steps, height=RES, width=RES, output_type="latent",
                        generator=torch.Generator().manual_seed(seed), **kw).images

        base = plain(16, 100)
        targets = {"shift": base + base.std(), "subset": base[base[:, 0].mean((1, 2)) > base[:, 0].mean()],
                   "scaled": 0.5 * base}
        out[name] = {}
        for tname, refs in targets.items():
            m = MMD(kernel=GaussianKernel()).fit(refs.flatten(1))
            row = {}
            for ev in ("xt", "x0"):
                a = DiffusersMMDGuidance(pipe, scale=scale, evaluate_on=ev).fit(reference_latents=refs)
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    g = [a.sample("a photo of cat", n=n, num_inference_steps=steps, generator=s, output_type="latent",
                                  **kw).images for s in seeds]
                row[ev] = [round(float(m.score(x.flatten(1))) / float(m.score(plain(n, s).flatten(1))), 3)
                           for x, s in zip(g, seeds)]
            out[name][tname] = row
    return out


def exact_model_solver_table(scales=(0.1, 0.2, 0.4), seeds=(0, 1, 2), steps=20, n=200, d=8):
    """DDIM vs DPM-Solver++ 2M with an *exact* denoiser, 'xt' vs 'x0' (the PixArt question of docs/diffusers.md).

    Data: a 4-mode Gaussian mixture in ``d`` dims (means ±3 on the first two axes, covariance 0.25 I); target: the two
    modes with positive first coordinate; 100 references drawn from it. The model's ε is exact at the scheduler's own
    noise level of each step (``mixture.noised(ᾱ).score``). The scheduler is driven through the adapter's
    :class:`~mmdguidance.adapters._hooks.GuidedCall` (``hook='step'``). Metric: the project's ``MMD`` (median-bandwidth
    Gaussian kernel fitted on 2000 target samples) of ``n`` samples; per scale, the mean over seeds of guided /
    unguided (same noise). Returns ``{scheduler: {mode: {scale: ratio}}}``.
    """
    import numpy as np
    from diffusers import DDIMScheduler, DPMSolverMultistepScheduler

    from mmdguidance import MMD, GaussianKernel, MMDGuidance
    from mmdguidance.adapters._hooks import GuidedCall
    from mmdguidance.adapters._schedulers import input_level, step_index
    from mmdguidance.gmm import GaussianMixture

    means = np.zeros((4, d))
    means[:, :2] = [[3, 3], [3, -3], [-3, 3], [-3, -3]]
    mix = GaussianMixture(weights=np.full(4, 0.25), means=means, covariances=0.25)
    target = mix.subset([0, 1])
    refs = torch.as_tensor(target.sample(100, random_state=0), dtype=torch.float32)
    judge = MMD(kernel=GaussianKernel()).fit(torch.as_tensor(target.sample(2000, random_state=1), dtype=torch.float32))
    kw = dict(num_train_timesteps=1000, beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012)
    makers = {"ddim": lambda: DDIMScheduler(**kw, set_alpha_to_one=False, steps_offset=1, clip_sample=False),
              "dpm-solver++ 2M": lambda: DPMSolverMultistepScheduler(**kw)}

    def run(make, mode, scale, seed):
        s = make()
        s.set_timesteps(steps)
        x = torch.randn(n, d, generator=torch.Generator().manual_seed(seed))
        g = MMDGuidance(mmd=MMD(kernel=GaussianKernel()).fit(refs), scale=scale, evaluate_on=mode, window=(0.0, 0.8))
        with GuidedCall(s, g, mode="step"):
            for i, t in enumerate(s.timesteps):
                A, S = input_level(s, t, step_index(s, t, i))
                eps = -S * torch.as_tensor(mix.noised(A**2).score(x.double()), dtype=torch.float32)
                x = s.step(eps, t, x).prev_sample
        return float(judge.score(x))

    out = {}
    for name, make in makers.items():
        base = [run(make, "xt", 0.0, sd) for sd in seeds]
        out[name] = {"unguided MMD2": round(float(np.mean(base)), 5)}
        for mode in ("xt", "x0"):
            out[name][mode] = {sc: round(float(np.mean([run(make, mode, sc, sd) / b for sd, b in zip(seeds, base)])), 3)
                               for sc in scales}
    return out
