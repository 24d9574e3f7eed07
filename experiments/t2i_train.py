r"""Train the shapes text-to-image latent diffusion pipeline (``assets/shapes-ldm``) from scratch on CPU.

Recipe (seeded, deterministic on CPU for a fixed thread count):

1. data: ``n_train`` procedural images (:mod:`mmdguidance.t2i.data`, seed ``random_state``), every
   blue triangle left out (the out-of-support target of ``t2i_adaptation``);
2. ``AutoencoderKL`` on pixels in [-1, 1]: :math:`\|D(z) - x\|_1 + \|D(z) - x\|_2^2 + \beta\,\mathrm{KL}`,
   ``z`` a posterior sample; then ``scaling_factor = 1 / std`` of the posterior means (as in SD);
3. ``UNet2DConditionModel`` + ``CLIPTextModel`` jointly on the cached latents: epsilon-prediction MSE,
   uniform :math:`t`, captions redrawn at every step with attributes dropped (30% each) and 10% empty
   captions (classifier-free guidance), AdamW, linear warm-up, EMA of the weights;
4. the EMA weights are assembled into a ``StableDiffusionPipeline`` (DDIM scheduler), saved in
   float16 safetensors and reloaded to evaluate: attribute match rate of generated images vs the
   prompt, read out exactly by :func:`mmdguidance.t2i.read_attributes`.

``python -m experiments.t2i_train [--fast] [--save DIR]`` (the full config writes ``assets/shapes-ldm``);
writes ``<out>/t2i_train.json`` (timings, seeds, sizes, accuracies) and ``<out>/t2i_train.png``.
"""

from __future__ import annotations

import copy
import time
from pathlib import Path

import numpy as np
import torch

from experiments._common import check_config, logger, save_figure, save_json
from mmdguidance._utils import progress
from mmdguidance.t2i import data as D
from mmdguidance.t2i import pipeline as P
from mmdguidance.t2i.score import read_attributes

NAME = "t2i_train"
ASSET_DIR = Path(__file__).resolve().parents[1] / "assets" / "shapes-ldm"
HELD_OUT = ({"colour": "blue", "shape": "triangle"},)
CONFIGS = {
    "full": dict(size="cpu", n_train=20000, vae_steps=1000, vae_batch=32, vae_lr=1e-3, kl=1e-6,
                 unet_steps=2000, unet_batch=64, unet_lr=1e-3, ema=0.995, n_eval=96, eval_steps=25, threads=1),
    "fast": dict(size="tiny", n_train=64, vae_steps=3, vae_batch=8, vae_lr=1e-3, kl=1e-6,
                 unet_steps=3, unet_batch=8, unet_lr=1e-3, ema=0.9, n_eval=4, eval_steps=2, threads=1),
}


def _to_tensor(images: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(images).permute(0, 3, 1, 2).float() / 127.5 - 1.0  # (n, 3, 32, 32) in [-1, 1]


def _lr(step: int, total: int, base: float) -> float:
    warm = max(1, total // 20)
    return base * min(1.0, (step + 1) / warm) * (0.1 + 0.9 * (1 - step / total))  # warm-up, linear decay to 10%


def train_vae(images: np.ndarray, cfg: dict, *, seed: int):
    """Fit the ``AutoencoderKL`` and set its ``scaling_factor``; returns ``(vae, losses)``."""
    vae = P.vae(cfg["size"], seed=seed).train()
    opt = torch.optim.AdamW(vae.parameters(), lr=cfg["vae_lr"], weight_decay=0.0)
    g = torch.Generator().manual_seed(seed)
    rng = np.random.default_rng(seed)
    X = _to_tensor(images)
    losses = []
    for step in progress(range(cfg["vae_steps"]), total=cfg["vae_steps"], desc="VAE"):
        for pg in opt.param_groups:
            pg["lr"] = _lr(step, cfg["vae_steps"], cfg["vae_lr"])
        x = X[rng.integers(0, len(X), cfg["vae_batch"])]  # (b, 3, 32, 32)
        post = vae.encode(x).latent_dist
        z = post.mean + post.std * torch.randn(post.mean.shape, generator=g)  # (b, 4, 8, 8)
        r = vae.decode(z).sample
        loss = (r - x).abs().mean() + (r - x).pow(2).mean() + cfg["kl"] * post.kl().mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        losses.append(loss.item())
    vae.eval()
    mean, _ = encode(vae, images)
    vae.register_to_config(scaling_factor=float(1.0 / mean.std()))
    return vae, losses


@torch.no_grad()
def encode(vae, images: np.ndarray, batch_size: int = 256):
    """Posterior means and stds ``(n, 4, 8, 8)`` (unscaled)."""
    means, stds = [], []
    for s in range(0, len(images), batch_size):
        post = vae.encode(_to_tensor(images[s:s + batch_size])).latent_dist
        means.append(post.mean)
        stds.append(post.std)
    return torch.cat(means), torch.cat(stds)


@torch.no_grad()
def decode(vae, latents: torch.Tensor, batch_size: int = 256) -> np.ndarray:
    """Scaled latents ``(n, 4, 8, 8)`` -> uint8 images ``(n, 32, 32, 3)``."""
    out = []
    for s in range(0, len(latents), batch_size):
        x = vae.decode(latents[s:s + batch_size] / vae.config.scaling_factor).sample
        out.append(((x.clamp(-1, 1) + 1) * 127.5).round().byte().permute(0, 2, 3, 1).numpy())
    return np.concatenate(out)


def _ema_update(ema, model, decay: float):
    with torch.no_grad():
        for pe, pm in zip(ema.parameters(), model.parameters()):
            pe.mul_(decay).add_(pm.detach(), alpha=1 - decay)


def train_unet(mean, std, attrs: dict, tokenizer, cfg: dict, *, seed: int, scaling_factor: float):
    """Train the UNet and the text encoder jointly; returns ``(ema_unet, ema_text_encoder, losses)``."""
    from diffusers import DDPMScheduler

    unet = P.unet(cfg["size"], seed=seed).train()
    te = P.text_encoder(cfg["size"], vocab_size=len(tokenizer), seed=seed).train()
    ema_u, ema_t = copy.deepcopy(unet).eval(), copy.deepcopy(te).eval()
    params = list(unet.parameters()) + list(te.parameters())
    opt = torch.optim.AdamW(params, lr=cfg["unet_lr"], weight_decay=1e-4)
    noise_sched = DDPMScheduler(**P.SCHEDULER_KW)
    g = torch.Generator().manual_seed(seed + 1)
    rng = np.random.default_rng(seed + 1)
    losses = []
    for step in progress(range(cfg["unet_steps"]), total=cfg["unet_steps"], desc="UNet"):
        for pg in opt.param_groups:
            pg["lr"] = _lr(step, cfg["unet_steps"], cfg["unet_lr"])
        idx = rng.integers(0, len(mean), cfg["unet_batch"])
        z0 = (mean[idx] + std[idx] * torch.randn(mean[idx].shape, generator=g)) * scaling_factor  # (b, 4, 8, 8)
        caps = D.training_captions({k: v[idx] for k, v in attrs.items()}, random_state=rng)
        ids = tokenizer(caps, padding="max_length", max_length=P.MAX_TOKENS, truncation=True,
                        return_tensors="pt").input_ids  # (b, L)
        t = torch.randint(0, noise_sched.config.num_train_timesteps, (len(idx),), generator=g)
        eps = torch.randn(z0.shape, generator=g)
        zt = noise_sched.add_noise(z0, eps, t)
        pred = unet(zt, t, te(ids).last_hidden_state).sample
        loss = (pred - eps).pow(2).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        _ema_update(ema_u, unet, cfg["ema"])
        _ema_update(ema_t, te, cfg["ema"])
        losses.append(loss.item())
    return ema_u, ema_t, losses


def save_pipeline(pipe, path) -> int:
    """Save in float16 safetensors (no variant); returns the folder size in bytes."""
    path = Path(path)
    pipe.to(torch.float16).save_pretrained(path, safe_serialization=True)
    pipe.to(torch.float32)
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


def load_pipeline(path=ASSET_DIR, scheduler: str | None = None, dtype=torch.float32):
    """``DiffusionPipeline.from_pretrained(path)`` offline, float32 by default, progress bar off,
    optionally with another scheduler config (``mmdguidance.t2i.pipeline.scheduler`` names)."""
    from diffusers import DiffusionPipeline

    pipe = DiffusionPipeline.from_pretrained(str(path), local_files_only=True, dtype=dtype)
    if scheduler is not None:
        pipe.scheduler = P.scheduler(scheduler)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def write_reference_folder(path, n: int = 20, *, random_state: int = 0, **fixed) -> Path:
    """``n`` rendered PNGs ``ref_000.png ...`` with full captions in ``ref_000.txt ...`` (attributes ``fixed``)."""
    from PIL import Image

    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    imgs, attrs = D.make_dataset(n, random_state=random_state, **fixed)
    for i, (im, cap) in enumerate(zip(imgs, D.full_captions(attrs))):
        Image.fromarray(im).save(path / f"ref_{i:03d}.png")
        (path / f"ref_{i:03d}.txt").write_text(cap + "\n")
    return path


def attribute_accuracy(images: np.ndarray, attrs: dict) -> dict:
    """Per-attribute agreement of the exact read-out with ``attrs`` and the all-four agreement."""
    got = read_attributes(images)
    hit = {k: got[k] == np.asarray(attrs[k]) for k in D.ATTRIBUTES}
    out = {k: float(v.mean()) for k, v in hit.items()}
    out["all"] = float(np.mean(np.all(list(hit.values()), axis=0)))
    return out


@torch.no_grad()
def prompt_match(pipe, n: int, *, steps: int, cfg_scale: float, seed: int, exclude=HELD_OUT, **fixed) -> dict:
    """Generate ``n`` images for full captions of random attribute sets; the match rate with the prompt."""
    attrs = D.sample_attributes(n, exclude=exclude, random_state=seed, **fixed)
    caps = D.full_captions(attrs)
    imgs = pipe(caps, num_inference_steps=steps, guidance_scale=cfg_scale, output_type="np",
                generator=torch.Generator().manual_seed(seed)).images  # (n, 32, 32, 3) float in [0, 1]
    return attribute_accuracy(np.round(imgs * 255).astype(np.uint8), attrs)


def _figure(pipe, cfg: dict, seed: int):
    import matplotlib.pyplot as plt

    prompts = ["a small red circle on a plain background", "a large green square on a striped background",
               "a large yellow triangle on a dotted background", "a small blue square on a striped background",
               "a red shape", "a triangle", "a large blue triangle on a plain background", ""]
    k = 4
    imgs = pipe([p for p in prompts for _ in range(k)], num_inference_steps=cfg["eval_steps"], guidance_scale=cfg["cfg"],
                output_type="np", generator=torch.Generator().manual_seed(seed)).images  # (len*k, 32, 32, 3)
    fig, axes = plt.subplots(len(prompts), k + 1, figsize=(2 + 1.2 * k, 1.2 * len(prompts)),
                             gridspec_kw={"width_ratios": [3] + [1] * k})
    for i, p in enumerate(prompts):
        axes[i, 0].text(0, 0.5, repr(p), fontsize=6, va="center")
        axes[i, 0].axis("off")
        for j in range(k):
            axes[i, j + 1].imshow(imgs[i * k + j])
            axes[i, j + 1].axis("off")
    fig.suptitle(f"shapes-ldm samples (DDIM {cfg['eval_steps']} steps, CFG {cfg['cfg']}); blue triangles never seen",
                 fontsize=7)
    return fig


def run(config: str = "full", out_dir="paper_figures", random_state: int = 0, save_dir=None) -> dict:
    """Train, save (``save_dir``; default ``assets/shapes-ldm`` for ``full``, ``<out_dir>/t2i_train_pipeline``
    for ``fast``), reload, evaluate; writes ``<out_dir>/t2i_train.{json,png}``. Runs with the config's
    thread count and deterministic algorithms, and restores both afterwards."""
    cfg = dict(CONFIGS[check_config(config)])
    cfg["cfg"] = 4.0
    save_dir = Path(save_dir) if save_dir is not None else (
        ASSET_DIR if config == "full" else Path(out_dir) / f"{NAME}_pipeline")
    if config == "full":
        write_reference_folder(ASSET_DIR.parent / "refs-red", 20, random_state=int(random_state) + 500, colour="red")
    threads, determ = torch.get_num_threads(), torch.are_deterministic_algorithms_enabled()
    torch.set_num_threads(cfg["threads"])
    torch.use_deterministic_algorithms(True)
    try:
        res, pipe = _train_and_evaluate(cfg, config, int(random_state), save_dir)
    finally:
        torch.set_num_threads(threads)
        torch.use_deterministic_algorithms(determ)
    save_figure(_figure(pipe, cfg, int(random_state) + 400), out_dir, NAME)
    save_json(res, out_dir, NAME)
    return res


def _train_and_evaluate(cfg: dict, config: str, seed: int, save_dir: Path):
    t0 = time.perf_counter()
    images, attrs = D.make_dataset(cfg["n_train"], random_state=seed, exclude=HELD_OUT)
    vae, vae_losses = train_vae(images, cfg, seed=seed)
    t_vae = time.perf_counter() - t0
    mean, std = encode(vae, images)
    tok = P.clip_tokenizer()
    unet, te, unet_losses = train_unet(mean, std, attrs, tok, cfg, seed=seed, scaling_factor=vae.config.scaling_factor)
    t_total = time.perf_counter() - t0
    pipe = P.assemble(vae=vae, unet=unet, text_encoder=te, tokenizer=tok, scheduler=P.scheduler("ddim"))
    nbytes = save_pipeline(pipe, save_dir)
    pipe = load_pipeline(save_dir)
    n_params = {k: sum(p.numel() for p in getattr(pipe, k).parameters()) for k in ("vae", "unet", "text_encoder")}
    res = {
        "config": config, "settings": cfg, "seed": seed, "torch_threads": cfg["threads"],
        "train_seconds": {"vae": t_vae, "total": t_total}, "saved_to": str(save_dir), "saved_bytes": nbytes,
        "n_params": n_params, "scaling_factor": float(pipe.vae.config.scaling_factor), "held_out": list(HELD_OUT),
        **evaluate(pipe, cfg, config, seed),
        "final_losses": {"vae": float(np.mean(vae_losses[-50:])), "unet": float(np.mean(unet_losses[-200:]))},
        "loss_curves": {"vae": vae_losses[:: max(1, len(vae_losses) // 200)],
                        "unet": unet_losses[:: max(1, len(unet_losses) // 200)]},
    }
    logger.info("t2i_train: %.0f s, VAE recon %s, generation %s", t_total, res["vae_reconstruction_accuracy"],
                res["generation_prompt_match"])
    return res, pipe


def evaluate(pipe, cfg: dict, config: str, seed: int) -> dict:
    """Read-out accuracy on clean renders and VAE reconstructions (seed + 100); prompt match of generated images
    at several CFG scales (seed + 200) and on the never-seen blue triangles (seed + 300)."""
    n_rec = 1000 if config == "full" else 8
    rec_imgs, rec_attrs = D.make_dataset(n_rec, random_state=seed + 100)
    rec = decode(pipe.vae, encode(pipe.vae, rec_imgs)[0] * pipe.vae.config.scaling_factor)
    gen = {f"cfg_{s:g}": prompt_match(pipe, cfg["n_eval"], steps=cfg["eval_steps"], cfg_scale=s, seed=seed + 200)
           for s in (1.0, 2.0, 4.0, 7.5)}
    gen["held_out_blue_triangle_cfg_4"] = prompt_match(pipe, cfg["n_eval"], steps=cfg["eval_steps"], cfg_scale=4.0,
                                                       seed=seed + 300, exclude=(), colour="blue", shape="triangle")
    return {"vae_reconstruction_accuracy": attribute_accuracy(rec, rec_attrs),
            "clean_render_accuracy": attribute_accuracy(rec_imgs, rec_attrs), "generation_prompt_match": gen}


def reevaluate(out_dir="paper_figures", pipeline_dir=ASSET_DIR) -> dict:
    """Recompute :func:`evaluate` on the saved pipeline (e.g. after a scorer change) and update the JSON."""
    import json

    path = Path(out_dir) / f"{NAME}.json"
    res = json.loads(path.read_text())
    res.update(evaluate(load_pipeline(pipeline_dir), res["settings"], res["config"], int(res["seed"])))
    save_json(res, out_dir, NAME)
    return res


if __name__ == "__main__":
    import argparse
    import logging

    ap = argparse.ArgumentParser(prog="python -m experiments.t2i_train")
    ap.add_argument("--fast", action="store_true")
    ap.add_argument("--out", default="paper_figures")
    ap.add_argument("--save", default=None, help="pipeline folder (default assets/shapes-ldm for the full config)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--evaluate-only", action="store_true", help="re-score the saved pipeline, update the JSON")
    a = ap.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    if a.evaluate_only:
        reevaluate(a.out, a.save or ASSET_DIR)
    else:
        run("fast" if a.fast else "full", out_dir=a.out, random_state=a.seed, save_dir=a.save)
