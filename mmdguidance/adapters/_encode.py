r"""Reference images -> latents in the denoiser's space, and the cache key of that encoding.

An image :math:`u \in [0, 255]^{H \times W \times 3}` is mapped to :math:`[-1, 1]`, encoded by the
pipeline's VAE (the posterior *mean*, deterministic) and scaled exactly once,

.. math:: z = (\mathrm{E}(u) - \text{shift\_factor}) \cdot \text{scaling\_factor},

with both constants read from ``vae.config`` (``shift_factor`` is 0 for SD/SDXL/PixArt's VAEs).
This is the inverse of the pipelines' decoding ``D(z / scaling_factor + shift_factor)``.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import torch

from .._utils import logger

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".webp", ".bmp", ".gif", ".tif", ".tiff")

__all__ = ["load_images", "encode_images", "vae_fingerprint", "reference_cache_key", "IMAGE_EXTENSIONS"]


def _read(path: Path) -> np.ndarray:
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as im:
            return np.asarray(im.convert("RGB"))
    except (OSError, UnidentifiedImageError, ValueError) as exc:
        raise ValueError(f"cannot read reference image {str(path)!r}: {exc}") from None


def _as_rgb_array(img, name: str) -> np.ndarray:
    """One image (PIL, array (H, W[, 3|4]) uint8 or float in [0, 1], or a path) -> uint8 (H, W, 3)."""
    if isinstance(img, (str, Path)):
        return _read(Path(img))
    try:
        from PIL import Image

        if isinstance(img, Image.Image):
            return np.asarray(img.convert("RGB"))
    except ImportError:  # pragma: no cover - Pillow is in the diffusers extra
        pass
    if isinstance(img, torch.Tensor):
        img = img.detach().cpu().numpy()
    if not isinstance(img, np.ndarray):
        raise TypeError(f"{name}: expected a path, a PIL image or an array, got {type(img).__name__}")
    a = img
    if a.ndim == 2:
        a = np.repeat(a[:, :, None], 3, axis=2)
    if a.ndim != 3 or a.shape[2] not in (3, 4):
        raise ValueError(f"{name}: an image array must have shape (H, W), (H, W, 3) or (H, W, 4), got {a.shape}")
    a = a[:, :, :3]
    if a.dtype == np.uint8:
        return a
    a = np.asarray(a, dtype=np.float64)
    if not np.isfinite(a).all() or a.min() < 0.0 or a.max() > 1.0:
        raise ValueError(f"{name}: float image arrays must be finite and in [0, 1]")
    return np.round(a * 255.0).astype(np.uint8)


def load_images(images) -> tuple[list[np.ndarray], list[str | None]]:
    """Load reference images and their captions.

    Parameters
    ----------
    images : str or Path (a folder or one file), or a sequence of paths / PIL images / arrays, or an array (N, H, W, 3)
        A folder contributes every file with an image extension (sorted by name); a caption is read
        from a ``<stem>.txt`` file beside an image when one exists.

    Returns
    -------
    arrays : list of uint8 arrays (H, W, 3)
    captions : list of str or None (one per image)
    """
    if isinstance(images, (str, Path)):
        p = Path(images)
        if p.is_dir():
            files = sorted(f for f in p.iterdir() if f.is_file() and f.suffix.lower() in IMAGE_EXTENSIONS)
            if not files:
                raise ValueError(f"no reference images ({', '.join(IMAGE_EXTENSIONS)}) found in folder {str(p)!r}")
            items = files
        elif p.is_file():
            items = [p]
        else:
            raise ValueError(f"reference path {str(p)!r} does not exist")
    elif isinstance(images, np.ndarray) and images.ndim == 4:
        items = list(images)
    elif isinstance(images, torch.Tensor) and images.ndim == 4:
        raise TypeError("pass image tensors as a list of (H, W, 3) arrays, or encoded latents as reference_latents=")
    else:
        try:
            items = list(images)
        except TypeError:
            items = [images]
    if not items:
        raise ValueError("no reference images given (empty sequence)")
    arrays, captions = [], []
    for i, it in enumerate(items):
        arrays.append(_as_rgb_array(it, f"reference image {i}"))
        cap = None
        if isinstance(it, (str, Path)):
            txt = Path(it).with_suffix(".txt")
            if txt.is_file():
                cap = txt.read_text().strip()
        captions.append(cap)
    return arrays, captions


def _fit_resolution(arrays, height: int, width: int, resize: bool) -> list[np.ndarray]:
    from PIL import Image

    out = []
    for i, a in enumerate(arrays):
        if a.shape[:2] == (height, width):
            out.append(a)
        elif not resize:
            raise ValueError(
                f"reference image {i} is {a.shape[1]}x{a.shape[0]} (WxH) but generation is {width}x{height}; "
                "pass images at the generation resolution, or set resize_references=True to resize them "
                "(bicubic, no crop)"
            )
        else:
            out.append(np.asarray(Image.fromarray(a).resize((width, height), Image.BICUBIC)))
    return out


def vae_fingerprint(vae) -> str:
    """SHA-256 of the VAE's config and of per-parameter (name, shape, sum, sum of squares)."""
    h = hashlib.sha256()
    cfg = dict(getattr(vae, "config", {}) or {})
    h.update(json.dumps(cfg, sort_keys=True, default=str).encode())
    with torch.no_grad():
        for name, p in vae.named_parameters():
            pd = p.detach().double()
            h.update(f"{name}{tuple(p.shape)}{p.dtype}{float(pd.sum())!r}{float((pd * pd).sum())!r}".encode())
    return h.hexdigest()


def reference_cache_key(arrays, *, height: int, width: int, vae_fp: str, settings: dict) -> str:
    """Key of an encoding: changes with any pixel, the resolution, the VAE, or the settings."""
    h = hashlib.sha256()
    h.update(json.dumps({"height": height, "width": width, "vae": vae_fp, **settings}, sort_keys=True).encode())
    for a in arrays:
        h.update(str(a.shape).encode())
        h.update(np.ascontiguousarray(a).tobytes())
    return h.hexdigest()[:32]


@torch.no_grad()
def _encode_batch(vae, x: torch.Tensor) -> torch.Tensor:
    out = vae.encode(x)
    dist = getattr(out, "latent_dist", None)
    if dist is not None:
        return dist.mode()  # the posterior mean
    lat = getattr(out, "latents", None)
    if lat is None:
        lat = out[0] if isinstance(out, (tuple, list)) else out
    return lat


def encode_images(
    vae,
    arrays,
    *,
    height: int,
    width: int,
    resize: bool = False,
    batch_size: int = 8,
    device=None,
    cache_dir=None,
) -> tuple[torch.Tensor, str]:
    r"""Encode reference images to scaled latents ``(N, C, height / f, width / f)`` float32.

    The VAE runs in float32 when it is in float16 and its config asks for it (``force_upcast``,
    the SDXL VAE), otherwise in its own dtype; it is restored afterwards.

    Parameters
    ----------
    vae : diffusers autoencoder (``encode``, ``config.scaling_factor``)
    arrays : list of uint8 (H, W, 3)
    height, width : int
        Generation resolution; images of another size raise ``ValueError`` unless ``resize``.
    resize : bool
        Resize (bicubic, no crop) instead of raising.
    batch_size : int
    device : torch device, optional (default: the VAE's)
    cache_dir : path, optional
        Store / reuse the latents as ``<cache_dir>/refs-<key>.pt``.

    Returns
    -------
    latents : Tensor (N, C, h, w) float32 on ``device``
    key : str
        The cache key (see :func:`reference_cache_key`).
    """
    arrays = _fit_resolution(arrays, height, width, resize)
    sf = getattr(vae.config, "scaling_factor", None)
    if sf is None:
        raise ValueError("the pipeline's VAE has no config.scaling_factor")
    shift = getattr(vae.config, "shift_factor", None) or 0.0
    settings = {"resize": bool(resize), "encode": "posterior_mean", "scaling_factor": float(sf), "shift": float(shift),
                "format": 1}
    key = reference_cache_key(arrays, height=height, width=width, vae_fp=vae_fingerprint(vae), settings=settings)
    p_dtype = next(vae.parameters()).dtype
    p_device = next(vae.parameters()).device
    device = p_device if device is None else torch.device(device)
    path = None if cache_dir is None else Path(cache_dir) / f"refs-{key}.pt"
    if path is not None and path.is_file():
        logger.info("reference latents loaded from cache %s", path)
        return torch.load(path, map_location="cpu").to(device=device, dtype=torch.float32), key
    upcast = p_dtype == torch.float16 and bool(getattr(vae.config, "force_upcast", False))
    if upcast:
        vae.to(torch.float32)
    run_dtype = torch.float32 if upcast else p_dtype
    try:
        outs = []
        for s in range(0, len(arrays), batch_size):
            chunk = np.stack(arrays[s : s + batch_size])  # (b, H, W, 3) uint8
            x = torch.from_numpy(chunk).permute(0, 3, 1, 2).float() / 127.5 - 1.0  # (b, 3, H, W) in [-1, 1]
            z = _encode_batch(vae, x.to(device=p_device, dtype=run_dtype))  # (b, C, h, w)
            outs.append(((z.float() - shift) * sf).to(device))
    finally:
        if upcast:
            vae.to(p_dtype)
    lat = torch.cat(outs, 0)
    if not bool(torch.isfinite(lat).all()):
        raise ValueError("the VAE produced non-finite reference latents (try a float32 VAE)")
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        torch.save(lat.cpu(), path)
    return lat, key
