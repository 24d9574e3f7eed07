r"""Reference images -> latents in the denoiser's space, and the cache key of that encoding.

An image :math:`u \in [0, 255]^{H \times W \times 3}` is mapped to :math:`[-1, 1]`, encoded by the
pipeline's autoencoder (the posterior *mean* of a KL VAE, deterministic; a VQ model's pre-quantisation
latents) and mapped by the exact inverse of the pipeline's own decoding. With ``vae.config`` constants
``scaling_factor`` :math:`s_f`, ``shift_factor`` and per-channel ``latents_mean`` :math:`\mu`, ``latents_std``
:math:`\sigma` (SDXL-style VAEs), the pipelines decode :math:`D(z\,\sigma / s_f + \mu)` (SDXL),
:math:`D(z / s_f + \text{shift})` (SD3) or :math:`D(z / s_f)` (SD, PixArt, LDM), so

.. math:: z = (\mathrm{E}(u) - m)\, s_f / \sigma, \qquad m = \mu \text{ or shift (else 0)}, \ \sigma = 1 \text{ unless given.}

Pixel conversion (one rule for files and arrays): uint8 as is; 16-bit (uint16 arrays, 16-bit PNGs) scaled by
:math:`255/65535`; other integer arrays must hold 0..255; float arrays must be in [0, 1]; grey is repeated to RGB;
an alpha channel is composited on a **white** background, :math:`u = \alpha\,u_{rgb} + (1-\alpha)\,255`.
"""

from __future__ import annotations

import hashlib
import json
import warnings
from pathlib import Path

import numpy as np
import torch

from .._utils import logger

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".webp", ".bmp", ".gif", ".tif", ".tiff")

__all__ = ["load_images", "encode_images", "vae_fingerprint", "reference_cache_key", "decode_constants", "pixels",
           "IMAGE_EXTENSIONS"]


def _pil_array(im) -> np.ndarray:
    """A PIL image as an array in its own range: uint8 (H, W, 3|4), uint16 (H, W) for 16-bit grey, float (H, W)."""
    if im.mode.startswith("I;16"):
        return np.asarray(im).astype(np.uint16)
    if im.mode == "I":  # 32-bit integer grey: how Pillow opens most 16-bit PNGs
        a = np.asarray(im)
        if a.min() < 0 or a.max() > 65535:
            raise ValueError(f"32-bit integer image with values outside 0..65535 ({a.min()}..{a.max()})")
        return a.astype(np.uint16)
    if im.mode == "F":
        return np.asarray(im, dtype=np.float64)
    alpha = im.mode in ("RGBA", "LA", "PA", "RGBa", "La") or (im.mode == "P" and "transparency" in im.info)
    return np.asarray(im.convert("RGBA" if alpha else "RGB"))


def _read(path: Path) -> np.ndarray:
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as im:
            return _pil_array(im)
    except (OSError, UnidentifiedImageError, ValueError) as exc:
        raise ValueError(f"cannot read reference image {str(path)!r}: {exc}") from None


def _to_unit(a: np.ndarray, name: str) -> np.ndarray:
    """Pixel values (any supported dtype) -> float64 in [0, 1] (see the module docstring)."""
    if a.dtype == np.uint8:
        return a / 255.0
    if a.dtype == np.uint16:
        return a / 65535.0
    if a.dtype == np.bool_:
        raise TypeError(f"{name}: boolean image arrays are not supported; pass uint8 0..255 or float 0..1")
    if np.issubdtype(a.dtype, np.integer):
        if a.size and (a.min() < 0 or a.max() > 255):
            raise ValueError(f"{name}: {a.dtype} image arrays must hold 0..255 (got {a.min()}..{a.max()}); "
                             "pass 16-bit data as uint16")
        return a / 255.0
    a = np.asarray(a, dtype=np.float64)
    if not np.isfinite(a).all() or a.min() < 0.0 or a.max() > 1.0:
        raise ValueError(f"{name}: float image arrays must be finite and in [0, 1]")
    return a


def _as_rgb_array(img, name: str) -> np.ndarray:
    """One image (PIL, array (H, W[, 1|3|4]) of a supported dtype, or a path) -> uint8 (H, W, 3), alpha on white."""
    if isinstance(img, (str, Path)):
        a = _read(Path(img))
    else:
        try:
            from PIL import Image

            a = _pil_array(img) if isinstance(img, Image.Image) else img
        except ImportError:  # pragma: no cover - Pillow is in the diffusers extra
            a = img
        if isinstance(a, torch.Tensor):
            a = a.detach().cpu().numpy()
        if not isinstance(a, np.ndarray):
            raise TypeError(f"{name}: expected a path, a PIL image or an array, got {type(img).__name__}")
    if a.ndim == 3 and a.shape[2] == 1:
        a = a[:, :, 0]
    if a.ndim == 2:
        a = np.repeat(a[:, :, None], 3, axis=2)
    if a.ndim != 3 or a.shape[2] not in (3, 4):
        raise ValueError(f"{name}: an image array must have shape (H, W), (H, W, 3) or (H, W, 4), got {a.shape}")
    if a.dtype == np.uint8 and a.shape[2] == 3:
        return a
    u = _to_unit(a, name)  # (H, W, 3|4) in [0, 1]
    if u.shape[2] == 4:  # composite on white
        alpha = u[:, :, 3:]
        u = alpha * u[:, :, :3] + (1.0 - alpha)
    return np.round(u * 255.0).astype(np.uint8)


def load_images(images) -> tuple[list[np.ndarray], list[str | None], list[str]]:
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
    names : list of str
        The file path of each image, or ``'reference image <i>'``.
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
    arrays, captions, names = [], [], []
    for i, it in enumerate(items):
        names.append(str(it) if isinstance(it, (str, Path)) else f"reference image {i}")
        arrays.append(_as_rgb_array(it, f"reference image {i}"))
        cap = None
        if isinstance(it, (str, Path)):
            txt = Path(it).with_suffix(".txt")
            if txt.is_file():
                cap = txt.read_text().strip()
        captions.append(cap)
    return arrays, captions, names


def fit_resolution(arrays, height: int, width: int, resize: bool) -> list[np.ndarray]:
    """Images ``(h, w, 3)`` uint8 at ``height x width``: bicubic-resized if ``resize``, else a ``ValueError`` on a mismatch."""
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
    """SHA-256 of the VAE's class, config and the bytes of every parameter and buffer (its ``state_dict``)."""
    h = hashlib.sha256(type(vae).__name__.encode())
    cfg = dict(getattr(vae, "config", {}) or {})
    h.update(json.dumps(cfg, sort_keys=True, default=str).encode())
    with torch.no_grad():
        for name, p in vae.state_dict().items():
            h.update(f"{name}{tuple(p.shape)}{p.dtype}".encode())
            h.update(p.detach().reshape(-1).contiguous().view(torch.uint8).cpu().numpy().tobytes())
    return h.hexdigest()


def decode_constants(vae) -> tuple[float, list | float, list | float]:
    """``(scaling_factor, m, sigma)`` of the pipelines' decoding ``D(z * sigma / scaling_factor + m)``.

    ``m`` is ``latents_mean`` (per channel) or ``shift_factor`` or 0; ``sigma`` is ``latents_std`` or 1.
    """
    cfg = vae.config
    sf = getattr(cfg, "scaling_factor", None)
    if sf is None:
        raise ValueError(f"the pipeline's autoencoder ({type(vae).__name__}) has no config.scaling_factor")
    mean, std = getattr(cfg, "latents_mean", None), getattr(cfg, "latents_std", None)
    if mean is not None and std is not None:
        return float(sf), [float(v) for v in mean], [float(v) for v in std]
    return float(sf), float(getattr(cfg, "shift_factor", None) or 0.0), 1.0


def pixels(chunk: np.ndarray) -> torch.Tensor:
    """uint8 images (b, H, W, 3) -> float32 Tensor (b, 3, H, W) in [-1, 1] (the pipelines' image range)."""
    return torch.from_numpy(np.ascontiguousarray(chunk)).permute(0, 3, 1, 2).float() / 127.5 - 1.0


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


def _load_cache(path: Path, n: int):
    """Cached latents (n, ...) or None; a corrupted or mismatching file is reported and ignored."""
    try:
        lat = torch.load(path, map_location="cpu")
        if not isinstance(lat, torch.Tensor) or lat.ndim != 4 or lat.shape[0] != n:
            raise ValueError(f"expected a (n={n}, C, h, w) tensor, got {type(lat).__name__}")
    except Exception as exc:  # noqa: BLE001 - any unreadable file is re-encoded
        why = (str(exc).strip().splitlines() or [""])[0][:120]
        msg = f"reference latent cache {str(path)!r} is unreadable ({type(exc).__name__}: {why}); re-encoding"
        warnings.warn(msg, RuntimeWarning, stacklevel=3)
        logger.warning(msg)
        return None
    logger.info("reference latents loaded from cache %s", path)
    return lat


def _scale_latents(z: torch.Tensor, consts) -> torch.Tensor:
    """Raw encoder latents (b, C, h, w) -> the denoiser's space, the inverse of the pipelines' decoding."""
    sf, m, sd = consts
    C = z.shape[1]
    m = torch.as_tensor(m, dtype=torch.float32, device=z.device).reshape(-1, 1, 1) if isinstance(m, list) else m
    sd = torch.as_tensor(sd, dtype=torch.float32, device=z.device).reshape(-1, 1, 1) if isinstance(sd, list) else sd
    for v in (m, sd):
        if isinstance(v, torch.Tensor) and v.shape[0] != C:
            raise ValueError(f"vae.config latents_mean/latents_std have {v.shape[0]} entries for {C} latent channels")
    return (z.float() - m) * sf / sd  # (b, C, h, w)


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
    arrays = fit_resolution(arrays, height, width, resize)
    consts = decode_constants(vae)
    settings = {"resize": bool(resize), "encode": "posterior_mean", "decode_constants": consts, "format": 2}
    key = reference_cache_key(arrays, height=height, width=width, vae_fp=vae_fingerprint(vae), settings=settings)
    p_dtype = next(vae.parameters()).dtype
    p_device = next(vae.parameters()).device
    device = p_device if device is None else torch.device(device)
    path = None if cache_dir is None else Path(cache_dir) / f"refs-{key}.pt"
    if path is not None and path.is_file():
        lat = _load_cache(path, len(arrays))
        if lat is not None:
            return lat.to(device=device, dtype=torch.float32), key
    upcast = p_dtype == torch.float16 and bool(getattr(vae.config, "force_upcast", False))
    if upcast:
        vae.to(torch.float32)
    run_dtype = torch.float32 if upcast else p_dtype
    try:
        outs = []
        for s in range(0, len(arrays), batch_size):
            x = pixels(np.stack(arrays[s : s + batch_size]))  # (b, 3, H, W) in [-1, 1]
            z = _encode_batch(vae, x.to(device=p_device, dtype=run_dtype))  # (b, C, h, w)
            outs.append(_scale_latents(z, consts).to(device))
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
