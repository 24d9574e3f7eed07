r"""Procedural "shapes" images with known attributes and captions generated from them (numpy only, seeded).

Each image is ``32 x 32`` RGB ``uint8``: one filled shape on a grey background.

======================  =====================================================================
attribute               values (index order)
======================  =====================================================================
``colour``              red, green, blue, yellow (saturated; the background is grey)
``shape``               circle, square, triangle (circle radius / square half-side / triangle
                        half-width all equal the *scale* ``s``; the triangle has its apex up
                        and fills half of its ``2s x 2s`` bounding box)
``size``                small (``s`` uniform in [4.5, 6]) or large (``s`` uniform in [9, 12])
``background``          plain (grey 190), striped (horizontal bands of 4 rows, 190 / 110),
                        dotted (2x2 dots of 110 on a grid of period 8 on 190)
position                the shape's centre, uniform such that the shape stays 1 px inside
                        (continuous, not captioned)
======================  =====================================================================

Captions: ``"a {size} {colour} {shape} on a {background} background"``; :func:`caption` can drop
attributes (``"a red shape"``, ``"a large circle"``, ``""``), which is how the pipeline is trained
(:func:`training_captions`), so prompts that leave an attribute open sample it from the training
distribution. Everything random takes a ``random_state`` (``numpy.random.default_rng``).
"""

from __future__ import annotations

import numpy as np

__all__ = [
    "COLOURS", "SHAPES", "SIZES", "BACKGROUNDS", "ATTRIBUTES", "RES", "COLOUR_RGB",
    "sample_attributes", "render", "caption", "training_captions", "make_dataset", "VOCABULARY",
]

RES = 32
COLOURS = ("red", "green", "blue", "yellow")
SHAPES = ("circle", "square", "triangle")
SIZES = ("small", "large")
BACKGROUNDS = ("plain", "striped", "dotted")
#: attribute name -> its values (the index of a value is its integer code)
ATTRIBUTES = {"colour": COLOURS, "shape": SHAPES, "size": SIZES, "background": BACKGROUNDS}
COLOUR_RGB = np.array([[220, 40, 40], [40, 170, 40], [40, 70, 220], [230, 210, 30]], dtype=np.float64)  # (4, 3)
BG_LIGHT, BG_DARK = 190.0, 110.0
SCALE_RANGE = {"small": (4.5, 6.0), "large": (9.0, 12.0)}
#: every word a caption can contain (the tokenizer's vocabulary)
VOCABULARY = ("a", "on", "background", "shape", *SIZES, *COLOURS, *SHAPES, *BACKGROUNDS)


def _rng(random_state):
    if isinstance(random_state, np.random.Generator):
        return random_state
    if random_state is None or isinstance(random_state, (int, np.integer)):
        return np.random.default_rng(random_state)
    raise TypeError(f"random_state must be None, an int or a numpy Generator, got {type(random_state).__name__}")


def sample_attributes(n: int, *, exclude=(), random_state=None, **fixed) -> dict:
    """Draw ``n`` attribute sets uniformly (integer codes) plus continuous scale and centre.

    Parameters
    ----------
    n : int
    exclude : sequence of dict
        Attribute combinations never drawn, e.g. ``[{"colour": "blue", "shape": "triangle"}]``
        (rejection sampling).
    random_state : int, numpy Generator or None
    **fixed : str or sequence of str
        Restrict an attribute to one value or a list of values, e.g. ``colour="red"``.

    Returns
    -------
    dict with int arrays ``colour, shape, size, background`` (n,) and float arrays ``scale`` (n,),
    ``centre`` (n, 2) as (row, col) in pixels.
    """
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 0:
        raise ValueError(f"n must be a non-negative int, got {n!r}")
    rng = _rng(random_state)
    allowed = {}
    for name, values in ATTRIBUTES.items():
        v = fixed.pop(name, values)
        v = (v,) if isinstance(v, str) else tuple(v)
        bad = [x for x in v if x not in values]
        if bad or not v:
            raise ValueError(f"unknown {name} value(s) {bad}; expected some of {values}")
        allowed[name] = np.array([values.index(x) for x in v])
    if fixed:
        raise ValueError(f"unknown attribute(s) {sorted(fixed)}; expected some of {list(ATTRIBUTES)}")
    codes = {k: np.empty(0, dtype=np.int64) for k in ATTRIBUTES}
    while len(codes["colour"]) < n:
        m = 2 * (n - len(codes["colour"])) + 8
        draw = {k: rng.choice(allowed[k], size=m) for k in ATTRIBUTES}
        keep = np.ones(m, bool)
        for ex in exclude:
            keep &= ~np.all([draw[k] == ATTRIBUTES[k].index(v) for k, v in ex.items()], axis=0)
        codes = {k: np.concatenate([codes[k], draw[k][keep]]) for k in ATTRIBUTES}
    out = {k: v[:n] for k, v in codes.items()}
    lo = np.array([SCALE_RANGE[s][0] for s in SIZES])[out["size"]]
    hi = np.array([SCALE_RANGE[s][1] for s in SIZES])[out["size"]]
    out["scale"] = lo + (hi - lo) * rng.random(n)  # (n,)
    margin = out["scale"] + 1.0  # the shape stays 1 px inside the image
    out["centre"] = margin[:, None] + (RES - 1 - 2 * margin[:, None]) * rng.random((n, 2))  # (n, 2)
    return out


def _background(kind: int) -> np.ndarray:
    g = np.full((RES, RES), BG_LIGHT)  # (RES, RES)
    r = np.arange(RES)
    if BACKGROUNDS[kind] == "striped":
        g[(r // 4) % 2 == 1, :] = BG_DARK
    elif BACKGROUNDS[kind] == "dotted":
        on = (r % 8 >= 3) & (r % 8 <= 4)
        g[np.ix_(on, on)] = BG_DARK
    return g


def _mask(shape: int, scale: float, centre) -> np.ndarray:
    yy, xx = np.mgrid[0:RES, 0:RES] + 0.5  # pixel centres
    dy, dx = yy - centre[0] - 0.5, xx - centre[1] - 0.5
    name = SHAPES[shape]
    if name == "circle":
        return dy**2 + dx**2 <= scale**2
    if name == "square":
        return (np.abs(dy) <= scale) & (np.abs(dx) <= scale)
    # triangle: apex (−s, 0), base corners (s, ±s): |dx| <= (dy + s) / 2
    return (np.abs(dy) <= scale) & (np.abs(dx) <= (dy + scale) / 2.0)


def render(attributes: dict) -> np.ndarray:
    """Render attribute sets (as returned by :func:`sample_attributes`) to ``uint8`` images ``(n, 32, 32, 3)``."""
    n = len(attributes["colour"])
    out = np.empty((n, RES, RES, 3), dtype=np.uint8)
    for i in range(n):
        img = np.repeat(_background(int(attributes["background"][i]))[:, :, None], 3, axis=2)  # (RES, RES, 3)
        m = _mask(int(attributes["shape"][i]), float(attributes["scale"][i]), attributes["centre"][i])
        img[m] = COLOUR_RGB[int(attributes["colour"][i])]
        out[i] = np.round(img).astype(np.uint8)
    return out


def caption(colour=None, shape=None, size=None, background=None) -> str:
    """The caption of (possibly partial) attributes given as names; ``caption()`` is ``""``.

    >>> caption("red", "circle", "small", "striped")
    'a small red circle on a striped background'
    >>> caption(colour="blue")
    'a blue shape'
    """
    for name, v in (("colour", colour), ("shape", shape), ("size", size), ("background", background)):
        if v is not None and v not in ATTRIBUTES[name]:
            raise ValueError(f"unknown {name} {v!r}; expected one of {ATTRIBUTES[name]}")
    if colour is shape is size is background is None:
        return ""
    words = ["a"] + [w for w in (size, colour) if w is not None] + [shape or "shape"]
    if background is not None:
        words += ["on", "a", background, "background"]
    return " ".join(words)


def training_captions(attributes: dict, *, p_drop: float = 0.3, p_empty: float = 0.1, random_state=None) -> list[str]:
    """Captions for training: each attribute is dropped with probability ``p_drop``, the whole caption
    with ``p_empty`` (so classifier-free guidance has an unconditional model)."""
    rng = _rng(random_state)
    n = len(attributes["colour"])
    drop = rng.random((n, 4)) < p_drop  # (n, 4)
    empty = rng.random(n) < p_empty
    caps = []
    for i in range(n):
        names = [None if drop[i, j] else ATTRIBUTES[k][int(attributes[k][i])] for j, k in enumerate(ATTRIBUTES)]
        caps.append("" if empty[i] else caption(*names))
    return caps


def full_captions(attributes: dict) -> list[str]:
    """The complete caption of every attribute set."""
    n = len(attributes["colour"])
    return [caption(*(ATTRIBUTES[k][int(attributes[k][i])] for k in ATTRIBUTES)) for i in range(n)]


def make_dataset(n: int, *, random_state=None, exclude=(), **fixed) -> tuple[np.ndarray, dict]:
    """``(images uint8 (n, 32, 32, 3), attributes)`` drawn by :func:`sample_attributes` and :func:`render`."""
    attrs = sample_attributes(n, exclude=exclude, random_state=random_state, **fixed)
    return render(attrs), attrs
