"""Shared input validation and numpy/torch conversion.

Convention of the whole package: numpy in -> numpy out, torch in -> torch out
(same device and dtype). Internally everything is torch; numpy inputs are
computed in float64 on the CPU.
"""

from __future__ import annotations

import logging
import numbers
import os
import sys
from typing import Any, Iterable

import numpy as np
import torch

logger = logging.getLogger("mmdguidance")

__all__ = [
    "ArrayLike",
    "as_tensor",
    "check_array_2d",
    "check_finite",
    "check_int",
    "model_dtype_device",
    "check_option",
    "check_positive",
    "check_random_state_torch",
    "from_tensor",
    "is_torch",
    "match_tensor",
    "progress",
]

ArrayLike = Any


def is_torch(x: Any) -> bool:
    """True if ``x`` is a ``torch.Tensor``."""
    return isinstance(x, torch.Tensor)


def as_tensor(x: ArrayLike, *, dtype: torch.dtype | None = None, device=None) -> torch.Tensor:
    """Convert ``x`` to a floating torch tensor without copying torch inputs needlessly.

    numpy / lists become float64 CPU tensors (unless ``dtype`` is given);
    torch tensors keep their dtype and device unless asked otherwise; integer and
    bool tensors become float64 (like numpy integers: exact up to :math:`2^{53}`,
    where float32 would round values above :math:`2^{24}`).
    """
    if isinstance(x, torch.Tensor):
        t = x
        if not torch.is_floating_point(t):
            t = t.to(torch.float64 if dtype is None else dtype)
    else:
        arr = np.asarray(x)
        if arr.dtype == object:
            raise TypeError(f"cannot convert an object array of shape {arr.shape} to numbers")
        if not np.issubdtype(arr.dtype, np.number) and arr.dtype != bool:
            raise TypeError(f"expected numeric data, got dtype {arr.dtype}")
        arr = arr.astype(np.float64, copy=False)
        t = torch.as_tensor(arr if arr.flags.writeable else arr.copy())
    if dtype is not None or device is not None:
        t = t.to(dtype=dtype if dtype is not None else t.dtype, device=device if device is not None else t.device)
    return t


def from_tensor(t: torch.Tensor, like: ArrayLike):
    """Return ``t`` as the type of ``like``: numpy array if ``like`` was not a tensor."""
    if isinstance(like, torch.Tensor):
        return t
    return t.detach().cpu().numpy()


def match_tensor(t: torch.Tensor, ref: torch.Tensor, *, what: str = "input") -> torch.Tensor:
    """Cast ``t`` to ``ref``'s dtype; raise a clear error on a device mismatch."""
    if t.device != ref.device:
        raise ValueError(
            f"{what} is on device {t.device} but the fitted state is on {ref.device}; "
            "move the data (e.g. .to(device)) or refit on that device"
        )
    if t.dtype != ref.dtype:
        t = t.to(ref.dtype)
    return t


def check_finite(t: torch.Tensor, *, name: str = "X") -> torch.Tensor:
    """Raise ``ValueError`` naming ``name`` if ``t`` contains NaN or inf."""
    if not bool(torch.isfinite(t).all()):
        n_nan = int(torch.isnan(t).sum())
        n_inf = int(torch.isinf(t).sum())
        raise ValueError(f"{name} contains {n_nan} NaN and {n_inf} inf values; inputs must be finite")
    return t


def check_array_2d(
    x: ArrayLike,
    *,
    name: str = "X",
    min_samples: int = 1,
    n_features: int | None = None,
    dtype: torch.dtype | None = None,
    device=None,
    owner: str | None = None,
) -> torch.Tensor:
    """Validate a (n_samples, n_features) array and return it as a tensor.

    Non-tensor input goes through :func:`sklearn.utils.check_array` (dense float64;
    sparse, complex, object and empty data are rejected with sklearn's messages).

    Raises
    ------
    ValueError
        On a wrong number of dimensions, too few rows, a feature count that
        differs from ``n_features`` or non-finite values.
    """
    if isinstance(x, torch.Tensor):
        if torch.is_complex(x):
            raise ValueError(f"Complex data not supported: {name} is a complex tensor")
        t = as_tensor(x, dtype=dtype, device=device)
        if t.ndim != 2:
            raise ValueError(
                f"{name} must be 2-D of shape (n_samples, n_features), got shape {tuple(t.shape)}"
                + (" (flatten images/latents first, e.g. x.flatten(1))" if t.ndim in (1, 3, 4) else "")
            )
        if t.shape[0] < min_samples:
            raise ValueError(f"{name} needs at least {min_samples} sample(s), got {t.shape[0]}")
        if t.shape[1] == 0:
            raise ValueError(f"0 feature(s) (shape={tuple(t.shape)}) while a minimum of 1 is required: {name} is empty")
    else:
        from sklearn.utils import check_array

        arr = check_array(
            x, dtype=np.float64, ensure_all_finite=False, ensure_min_samples=min_samples, ensure_min_features=1, input_name=name
        )
        t = torch.as_tensor(arr if arr.flags.writeable else arr.copy())
        if dtype is not None or device is not None:
            t = t.to(dtype=dtype or t.dtype, device=device)
    if n_features is not None and t.shape[1] != n_features:
        who = owner or "the fitted estimator"
        raise ValueError(f"{name} has {t.shape[1]} features, but {who} is expecting {n_features} features as input")
    check_finite(t, name=name)
    return t


def check_int(value: Any, name: str, lo: int = 1) -> int:
    """``value`` as a Python int ``>= lo`` (numpy integers accepted, bools and floats rejected).

    Raises ``ValueError`` naming ``name`` otherwise.
    """
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < lo:
        raise ValueError(f"{name} must be an int >= {lo}, got {value!r}")
    return int(value)


def model_dtype_device(model, fallback: torch.Tensor):
    """``(dtype, device)`` a model computes in: its first parameter's for an ``nn.Module`` with
    parameters, else its ``dtype`` / ``device`` attributes, else ``fallback``'s."""
    if isinstance(model, torch.nn.Module):
        p = next(model.parameters(), None)
        if p is not None:
            return p.dtype, p.device
    dtype = getattr(model, "dtype", None)
    device = getattr(model, "device", None)
    return (dtype if isinstance(dtype, torch.dtype) else fallback.dtype), (device if device is not None else fallback.device)


def check_option(value: Any, options: Iterable[str], *, name: str) -> str:
    """Raise ``ValueError`` listing the valid choices if ``value`` is not one of ``options``."""
    options = tuple(options)
    if not isinstance(value, str) or value not in options:
        raise ValueError(f"unknown {name}={value!r}; expected one of {', '.join(repr(o) for o in options)}")
    return value


def check_positive(value: Any, *, name: str, allow_zero: bool = False) -> float:
    """Return ``value`` as float, raising ``ValueError`` unless it is finite and > 0 (or >= 0)."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name} must be a real number, got {type(value).__name__}")
    v = float(value)
    if not np.isfinite(v) or v < 0 or (v == 0 and not allow_zero):
        raise ValueError(f"{name} must be {'>= 0' if allow_zero else '> 0'} and finite, got {value!r}")
    return v


def check_random_state_torch(random_state, device="cpu") -> torch.Generator:
    """A ``torch.Generator`` from ``None`` (fresh entropy), an int seed, a numpy
    ``RandomState``/``Generator`` (a seed is drawn from it) or a ``torch.Generator``
    (returned as is)."""
    if isinstance(random_state, torch.Generator):
        return random_state
    g = torch.Generator(device=device)
    if random_state is None:
        g.seed()
    elif isinstance(random_state, numbers.Integral) and not isinstance(random_state, bool):
        g.manual_seed(int(random_state))
    elif isinstance(random_state, (np.random.RandomState, np.random.Generator)):
        rs = random_state
        seed = rs.randint(0, 2**31 - 1) if isinstance(rs, np.random.RandomState) else rs.integers(0, 2**31 - 1)
        g.manual_seed(int(seed))
    else:
        raise TypeError(f"random_state must be None, an int, a numpy or torch generator; got {type(random_state).__name__}")
    return g


def derived_generator(generator: torch.Generator, salt: int = 0) -> torch.Generator:
    """A new CPU ``torch.Generator`` seeded deterministically from ``generator``'s current state and ``salt``.

    Nothing is drawn from ``generator``: a stream derived this way (e.g. the noise of the noised references)
    leaves the parent's stream (e.g. a sampler's ancestral noise) exactly as it would be without it. The seed
    is the first 63 bits of SHA-256(state bytes, salt).
    """
    import hashlib

    if not isinstance(generator, torch.Generator):
        raise TypeError(f"generator must be a torch.Generator, got {type(generator).__name__}")
    digest = hashlib.sha256(generator.get_state().numpy().tobytes() + int(salt).to_bytes(8, "little", signed=True))
    g = torch.Generator()
    g.manual_seed(int.from_bytes(digest.digest()[:8], "little") & (2**63 - 1))
    return g


def progress(iterable, *, total: int | None = None, desc: str | None = None, enable: bool | None = None):
    """Wrap ``iterable`` in a tqdm progress bar when stderr is interactive.

    ``enable=None`` shows the bar only on a TTY and never under pytest or when
    ``MMDGUIDANCE_PROGRESS=0``.
    """
    if enable is None:
        env = os.environ.get("MMDGUIDANCE_PROGRESS")
        if env is not None:
            enable = env not in ("0", "false", "False", "")
        else:
            enable = sys.stderr.isatty() and "PYTEST_CURRENT_TEST" not in os.environ
    if not enable:
        return iterable
    from tqdm.auto import tqdm

    return tqdm(iterable, total=total, desc=desc, leave=False)
