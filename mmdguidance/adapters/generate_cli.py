"""``mmdguidance generate``: MMD-guided generation with a locally saved diffusers pipeline (nothing is downloaded).

    mmdguidance generate --pipeline DIR --refs DIR --prompt "a photo of a dog" --n 8 --out DIR
    mmdguidance generate --pipeline LDM_DIR --refs DIR --n 8 --out DIR      # unconditional (DDPM / DDIM / LDM)

Writes ``<out>/000.png ...`` and ``<out>/generate.json``: the settings, the latent MMD² of the output to the references,
the same for an unguided run from the same noise (``latent_mmd2_unguided``; skipped with ``--no-baseline``), and a
per-step summary of the guidance (mean over batches of MMD², gradient norm and step size). The output folder is
checked (and created) before anything is loaded. diffusers is imported only when the command runs.
"""

from __future__ import annotations

import json
import logging
import os
import sys
from pathlib import Path

logger = logging.getLogger("mmdguidance")


def add_arguments(p):
    """Register the ``generate`` options on an argparse (sub)parser."""
    p.add_argument("--pipeline", required=True, help="folder of a pipeline saved with save_pretrained")
    p.add_argument("--refs", required=True, help="folder of reference images (captions in <stem>.txt)")
    p.add_argument("--prompt", nargs="+", default=None,
                   help="one prompt for all samples, or exactly n prompts (none for unconditional pipelines)")
    p.add_argument("--n", type=int, default=4, help="number of images")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--batch-size", type=int, default=None, help="samples guided jointly per pipeline call (default n)")
    p.add_argument("--steps", type=int, default=50, help="num_inference_steps")
    p.add_argument("--cfg", type=float, default=None, help="classifier-free guidance scale (pipeline default)")
    p.add_argument("--scale", type=float, default=0.2, help="MMD guidance scale")
    p.add_argument("--evaluate-on", default="xt", choices=("xt", "x0", "noised_refs"),
                   help="where the MMD gradient is taken: the noisy latents x_t, their Tweedie estimate x0, or x_t "
                        "against references noised to the same level (default: xt)")
    p.add_argument("--window", type=float, nargs=2, default=(0.0, 0.8), metavar=("START", "STOP"),
                   help="guide only the steps in this fraction of the trajectory, 0 = first step (default: 0 0.8)")
    p.add_argument("--memory-size", type=int, default=0,
                   help="finished latents of earlier batches kept in the MMD's generated set (default: 0, none)")
    p.add_argument("--prompt-aware", action="store_true", help="product kernel with the references' captions")
    p.add_argument("--height", type=int, default=None, help="image height in pixels (default: the pipeline's)")
    p.add_argument("--width", type=int, default=None, help="image width in pixels (default: the pipeline's)")
    p.add_argument("--resize-refs", action="store_true", help="resize references to the generation size (bicubic)")
    p.add_argument("--cache-dir", default=None, help="cache of encoded reference latents")
    p.add_argument("--device", default=None, help="torch device (default: cuda if available, else cpu)")
    p.add_argument("--fp16", action="store_true", help="load the pipeline in float16")
    p.add_argument("--seed", type=int, default=0, help="seed of the initial noise (default: 0)")
    p.add_argument("--no-baseline", action="store_true", help="skip the unguided same-noise baseline run")


def _prepare_out(out: Path) -> str | None:
    """Create the output folder; an error message if it cannot be used."""
    if out.exists() and not out.is_dir():
        return f"--out {out} exists and is not a folder"
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        return f"cannot create --out {out}: {exc}"
    if not os.access(out, os.W_OK):
        return f"--out {out} is not writable"
    return None


def step_summary(diagnostics) -> list[dict]:
    """Per step index: how many batches were guided and the mean of their ``mmd2``, ``grad_norm``, ``step_size``."""
    rows: dict[int, list[dict]] = {}
    for d in diagnostics:
        for st in d["steps"]:
            rows.setdefault(int(st["step"]), []).append(st)
    out = []
    for i in sorted(rows):
        applied = [st for st in rows[i] if st.get("applied")]
        row = {"step": i, "guided_batches": len(applied)}
        for k in ("mmd2", "grad_norm", "step_size"):
            vals = [float(st[k]) for st in applied if k in st]
            if vals:
                row[k] = sum(vals) / len(vals)
        out.append(row)
    return out


def _check_counts(args) -> str | None:
    """An error message for a count option out of range (checked before anything is loaded)."""
    for flag, value, lo in (("--n", args.n, 1), ("--steps", args.steps, 1), ("--batch-size", args.batch_size, 1),
                            ("--memory-size", args.memory_size, 0), ("--height", args.height, 1),
                            ("--width", args.width, 1)):
        if value is not None and value < lo:
            return f"{flag} must be an integer >= {lo}, got {value}"
    return None


def _check_device(name: str | None) -> str | None:
    """An error message if ``--device`` is not a torch device this build can use."""
    if name is None:
        return None
    import torch

    try:
        dev = torch.device(name)
    except (RuntimeError, ValueError) as exc:
        return f"--device {name!r} is not a torch device ({exc})"
    if dev.type == "cuda" and not torch.cuda.is_available():
        return f"--device {name}: this torch build has no usable CUDA device (torch {torch.__version__}); use --device cpu"
    if dev.type == "cuda" and dev.index is not None and dev.index >= torch.cuda.device_count():
        return f"--device {name}: only {torch.cuda.device_count()} CUDA device(s)"
    if dev.type == "mps" and not torch.backends.mps.is_available():
        return f"--device {name}: MPS is not available here; use --device cpu"
    return None


def _load_pipeline(pdir: Path, args):
    import torch
    from diffusers import DiffusionPipeline

    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    dtype = torch.float16 if args.fp16 else torch.float32
    from diffusers.pipelines import pipeline_utils

    # diffusers >= the release with `_resolve_dtype` takes `dtype=` and deprecates `torch_dtype=`; older ones the reverse
    key = "dtype" if hasattr(pipeline_utils, "_resolve_dtype") else "torch_dtype"
    pipe = DiffusionPipeline.from_pretrained(pdir, local_files_only=True, **{key: dtype}).to(device)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def main(args) -> int:
    """Run the command; returns a process exit code (2 on bad input)."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    pdir, out = Path(args.pipeline), Path(args.out)
    if not (pdir / "model_index.json").is_file():
        print(f"error: {pdir} is not a saved diffusers pipeline (no model_index.json)", file=sys.stderr)
        return 2
    if args.prompt is not None and len(args.prompt) not in (1, args.n):
        print(f"error: got {len(args.prompt)} prompts for --n {args.n}; give one prompt or exactly n", file=sys.stderr)
        return 2
    err = _check_counts(args) or _check_device(args.device) or _prepare_out(out)
    if err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    from ..kernels import GaussianKernel
    from .diffusers import DiffusersMMDGuidance

    pipe = _load_pipeline(pdir, args)
    extra = {"use_resolution_binning": False, "clean_caption": False} if type(pipe).__name__.startswith("PixArt") else {}
    adapter = DiffusersMMDGuidance(
        pipe, scale=args.scale, evaluate_on=args.evaluate_on, window=tuple(args.window), memory_size=args.memory_size,
        prompt_kernel=GaussianKernel() if args.prompt_aware else None, height=args.height, width=args.width,
        resize_references=args.resize_refs, cache_dir=args.cache_dir, random_state=args.seed,
    )
    prompts = None if args.prompt is None else (args.prompt[0] if len(args.prompt) == 1 else args.prompt)
    if prompts is None and adapter.pipeline_family() == "text":
        print(f"error: {type(pipe).__name__} is a text-to-image pipeline: pass --prompt", file=sys.stderr)
        return 2
    run = dict(n=args.n, batch_size=args.batch_size, num_inference_steps=args.steps, guidance_scale=args.cfg, **extra)
    try:
        adapter.fit(args.refs)
        res = adapter.sample(prompts, **run)
        base = None if args.no_baseline else adapter.set_params(scale=0.0).sample(prompts, output_type="latent", **run)
    except (ValueError, TypeError) as exc:
        print(f"error: {str(exc).replace('set resize_references=True', 'pass --resize-refs')}", file=sys.stderr)
        return 2
    adapter.set_params(scale=args.scale)
    for i, im in enumerate(res.images):
        im.save(out / f"{i:03d}.png")
    prompt_list = [prompts] * args.n if isinstance(prompts, str) else prompts  # None: unconditional
    score = lambda lat: adapter.score_latents(lat, prompts=prompt_list if adapter.prompt_aware else None)  # noqa: E731
    report = {
        "pipeline": str(pdir), "pipeline_class": type(pipe).__name__, "refs": str(args.refs),
        "n_refs": int(adapter.reference_latents_.shape[0]), "n": args.n, "prompts": prompt_list,
        "steps": args.steps, "scale": args.scale, "evaluate_on": args.evaluate_on, "window": list(args.window),
        "seed": args.seed, "hook": res.diagnostics[0]["mode"], "cache_key": adapter.cache_key_,
        "guided_steps": sum(s["applied"] for d in res.diagnostics for s in d["steps"]),
        "latent_mmd2_to_refs": score(res.latents),
        "latent_mmd2_unguided": None if base is None else score(base.latents),
        "per_step": step_summary(res.diagnostics),
    }
    (out / "generate.json").write_text(json.dumps(report, indent=2))
    logger.warning("wrote %d images and generate.json to %s (latent MMD² to the references %.4g, unguided %s)",
                   args.n, out, report["latent_mmd2_to_refs"], report["latent_mmd2_unguided"])
    return 0
