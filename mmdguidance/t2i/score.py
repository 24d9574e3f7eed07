r"""Exact analytic read-out of the shapes attributes from pixels, and the feature space for FD / KD / PRDC.

:func:`read_attributes` inverts :func:`mmdguidance.t2i.data.render` without learning anything:

* **foreground** = pixels with saturation :math:`\max_c u_c - \min_c u_c > 90` (the background is
  grey, saturation 0; the four colours have saturation >= 180), largest 4-connected component;
* **colour** = the prototype nearest (Euclidean, RGB) to the mean foreground colour;
* **shape** = triangle if the share of the component's area in the lower half of its bounding box
  exceeds 0.62 (apex-up triangle: 3/4; circle and square: 1/2), else square if the *extent*
  :math:`A / (w h)` (area over bounding-box area; square 1, circle :math:`\pi/4`) exceeds 0.92, else circle;
* **size** = :math:`\sqrt{w h}` of the bounding box (about ``2s``: small 9-12, large 18-24); threshold 15;
* **background** = grey pixels at distance > 2 px from the foreground: standard deviation < 5 is
  plain; otherwise the share of the variance explained by row means (horizontal stripes: 1,
  dots: about 0.2) above 0.6 is striped, else dotted.

An image without a foreground component of at least 4 pixels gets code ``-1`` for colour, shape and
size. :func:`features` is the descriptor used for FD / KD / precision / recall / coverage.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage

from .data import ATTRIBUTES, COLOUR_RGB, RES

__all__ = ["read_attributes", "descriptors", "features", "check_images", "attribute_frequencies"]

SAT_THRESHOLD = 90.0
BOTTOM_SHARE = 0.62  # triangle above
EXTENT_THRESHOLD = 0.92  # square above, circle below
SIZE_THRESHOLD = 15.0
PLAIN_STD = 5.0
STRIPE_SHARE = 0.6
_PROJ_SEED, _PROJ_DIM = 0, 16


def check_images(images) -> np.ndarray:
    """uint8 ``(n, 32, 32, 3)`` from uint8 or float [0, 1] arrays ``(n, 32, 32, 3)`` or ``(32, 32, 3)``."""
    a = np.asarray(images)
    if a.ndim == 3:
        a = a[None]
    if a.ndim != 4 or a.shape[1:] != (RES, RES, 3):
        raise ValueError(f"images must have shape (n, {RES}, {RES}, 3), got {a.shape}")
    if a.shape[0] == 0:
        raise ValueError("images is empty")
    if a.dtype == np.uint8:
        return a
    a = a.astype(np.float64)
    if not np.isfinite(a).all() or a.min() < 0 or a.max() > 1:
        raise ValueError("float images must be finite and in [0, 1]")
    return np.round(a * 255).astype(np.uint8)


def _foreground(img: np.ndarray) -> np.ndarray:
    sat = img.max(-1) - img.min(-1)  # (RES, RES)
    lab, k = ndimage.label(sat > SAT_THRESHOLD)
    if k == 0:
        return np.zeros(sat.shape, bool)
    sizes = ndimage.sum_labels(np.ones_like(lab), lab, index=np.arange(1, k + 1))
    return lab == 1 + int(np.argmax(sizes))


def _one(img: np.ndarray) -> np.ndarray:
    """Continuous descriptors of one image (float64 (11,)), see :func:`descriptors`."""
    f = img.astype(np.float64)
    fg = _foreground(img)
    out = np.full(11, np.nan)
    area = fg.sum()
    if area >= 4:
        rows, cols = np.nonzero(fg)
        h, w = rows.max() - rows.min() + 1, cols.max() - cols.min() + 1
        out[0:3] = f[fg].mean(0)
        out[3] = area / (h * w)
        out[4] = np.sqrt(h * w)
        out[5:7] = rows.mean(), cols.mean()
        out[10] = np.mean(rows - rows.min() + 0.5 > h / 2.0)
    bg = ~ndimage.binary_dilation(fg, iterations=2) if area else np.ones_like(fg)
    grey = f.mean(-1)  # (RES, RES)
    vals = grey[bg]
    out[7] = vals.mean()
    out[8] = vals.std()
    row_n = bg.sum(1)
    ok = row_n > 0
    row_mean = np.where(ok, (grey * bg).sum(1) / np.maximum(row_n, 1), 0.0)  # (RES,)
    expl = (row_n[ok] * (row_mean[ok] - vals.mean()) ** 2).sum() / max(len(vals), 1)
    out[9] = expl / max(vals.var(), 1e-12)
    return out


def descriptors(images) -> np.ndarray:
    """Continuous descriptors ``(n, 11)`` float64: mean foreground RGB (3), extent, bounding-box scale
    :math:`\\sqrt{wh}`, centroid (row, col), background grey mean, background grey std, share of
    background variance explained by row means, share of the foreground area in the lower half of
    its bounding box. NaN where there is no foreground (background entries are always defined)."""
    imgs = check_images(images)
    return np.stack([_one(im) for im in imgs])


def read_attributes(images) -> dict:
    """Attribute codes read from pixels: ``{"colour", "shape", "size", "background"}`` int arrays (n,)
    (``-1`` = no foreground found), indices into :data:`~mmdguidance.t2i.data.ATTRIBUTES`."""
    d = descriptors(images)
    has = ~np.isnan(d[:, 0])
    rgb = np.nan_to_num(d[:, 0:3])
    colour = np.argmin(((rgb[:, None, :] - COLOUR_RGB[None]) ** 2).sum(-1), axis=1)  # (n,)
    ext, bottom = np.nan_to_num(d[:, 3]), np.nan_to_num(d[:, 10])
    shape = np.where(bottom > BOTTOM_SHARE, 2, np.where(ext > EXTENT_THRESHOLD, 1, 0))
    size = (np.nan_to_num(d[:, 4]) >= SIZE_THRESHOLD).astype(np.int64)
    background = np.where(d[:, 8] < PLAIN_STD, 0, np.where(d[:, 9] > STRIPE_SHARE, 1, 2))
    out = {k: np.where(has, v, -1).astype(np.int64) for k, v in (("colour", colour), ("shape", shape), ("size", size))}
    out["background"] = background.astype(np.int64)
    return out


def attribute_frequencies(codes: dict) -> dict:
    """Per attribute, the frequency of each value (and of ``"none"`` = not found) in read-out codes."""
    out = {}
    for name, values in ATTRIBUTES.items():
        c = np.asarray(codes[name])
        freq = {v: float(np.mean(c == i)) for i, v in enumerate(values)}
        freq["none"] = float(np.mean(c < 0))
        out[name] = freq
    return out


def _projection() -> np.ndarray:
    rng = np.random.default_rng(_PROJ_SEED)
    q, _ = np.linalg.qr(rng.standard_normal((8 * 8 * 3, _PROJ_DIM)))
    return q  # (192, 16) orthonormal columns


def features(images) -> np.ndarray:
    r"""The feature space for FD / KD / PRDC: ``(n, 26)`` float64.

    Ten scaled descriptors (mean foreground RGB / 255, extent, scale / 32, centroid / 32, background
    grey mean / 255 and std / 255, lower-half share; missing foreground -> 0) followed by a fixed orthonormal random
    projection (seed 0) of the ``8 x 8 x 3`` average-pooled image in [0, 1] to 16 dimensions. The first
    part is sensitive to every captioned attribute, the second to position and texture layout.
    """
    imgs = check_images(images)
    d = np.nan_to_num(descriptors(imgs))
    scaled = np.column_stack([d[:, 0:3] / 255, d[:, 3], d[:, 4] / RES, d[:, 5:7] / RES, d[:, 7] / 255, d[:, 8] / 255, d[:, 10]])
    pooled = imgs.astype(np.float64).reshape(len(imgs), 8, 4, 8, 4, 3).mean((2, 4)) / 255  # (n, 8, 8, 3)
    return np.concatenate([scaled, pooled.reshape(len(imgs), -1) @ _projection()], 1)
