"""The one declared spec of the guidance parameters: name, default and validator.

:class:`~mmdguidance.guidance.MMDGuidance` validates its constructor arguments with it, the guided
estimators (:class:`~mmdguidance.sampler.MMDGuidedSampler`, the diffusers adapter) validate their
parameters with :func:`validate_guidance_params` and build their :class:`MMDGuidance` from
:data:`STEP_PARAMS`; a test checks that the estimators' signature defaults equal :data:`DEFAULTS`.
Every validator returns the normalised value or raises an error naming the parameter.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

import numpy as np

from ._utils import check_int, check_option, check_positive
from .discrepancy import TERMS
from .mmd import ESTIMATORS
from .step_rules import STEP_RULES

__all__ = ["EVALUATE_ON", "SCHEDULES", "ESTIMATORS", "PARAMS", "DEFAULTS", "STEP_PARAMS", "validate_guidance_params",
           "check_window", "check_bool"]

#: where the discrepancy is evaluated (see :class:`~mmdguidance.guidance.MMDGuidance`)
EVALUATE_ON = ("xt", "x0", "x0_jacobian", "noised_refs")
SCHEDULES = ("constant", "increasing", "decreasing")


def check_window(window):
    """``(start, stop)`` fractions with ``0 <= start <= stop <= 1``, as floats."""
    try:
        lo, hi = (float(v) for v in window)
    except (TypeError, ValueError):
        raise ValueError(f"window must be a pair (start, stop) of fractions in [0, 1], got {window!r}") from None
    if not (0.0 <= lo <= hi <= 1.0):
        raise ValueError(f"window must satisfy 0 <= start <= stop <= 1, got {window!r}")
    return (lo, hi)


def check_bool(value, name: str) -> bool:
    """``value`` if it is a bool (numpy bools accepted); ``TypeError`` for strings, ints, None, ..."""
    if isinstance(value, (bool, np.bool_)):
        return bool(value)
    raise TypeError(f"{name} must be True or False, got {type(value).__name__} {value!r}")


def _check_schedule(value):
    return value if callable(value) else check_option(value, SCHEDULES, name="schedule")


def _check_kernel(name):
    def check(value):
        from .kernels import Kernel

        if value is not None and not isinstance(value, Kernel):
            raise TypeError(f"{name} must be a mmdguidance Kernel or None, got {type(value).__name__}")
        return value

    return check


@dataclass(frozen=True)
class Param:
    """One guidance parameter: its name, default value and validator ``value -> normalised value``."""

    name: str
    default: Any
    validate: Callable[[Any], Any]


PARAMS = (
    Param("kernel", None, _check_kernel("kernel")),
    Param("prompt_kernel", None, _check_kernel("prompt_kernel")),
    Param("estimator", "biased", lambda v: check_option(v, ESTIMATORS, name="estimator")),
    Param("scale", 0.4, lambda v: check_positive(v, name="scale", allow_zero=True)),
    Param("step_rule", "batch_normalized", lambda v: check_option(v, STEP_RULES, name="step_rule")),
    Param("schedule", "decreasing", _check_schedule),
    Param("window", (0.0, 0.65), check_window),
    Param("every", 1, lambda v: check_int(v, "every", 1)),
    Param("terms", "full", lambda v: check_option(v, TERMS, name="terms")),
    Param("evaluate_on", "noised_refs", lambda v: check_option(v, EVALUATE_ON, name="evaluate_on")),
    Param("inner_steps", 1, lambda v: check_int(v, "inner_steps", 1)),
    Param("max_update_ratio", 1.0, lambda v: check_positive(v, name="max_update_ratio")),
    Param("diagnostics", True, lambda v: check_bool(v, "diagnostics")),
)
#: name -> default
DEFAULTS = {p.name: p.default for p in PARAMS}
#: the parameters of the per-step operator :class:`~mmdguidance.guidance.MMDGuidance` (``diagnostics`` is its ``record``)
STEP_PARAMS = ("scale", "step_rule", "schedule", "window", "every", "terms", "evaluate_on", "inner_steps", "max_update_ratio")
_BY_NAME = {p.name: p for p in PARAMS}


def validate_guidance_params(values: dict) -> dict:
    """Validate ``{name: value}`` (any subset of :data:`PARAMS`); returns the normalised values."""
    unknown = set(values) - set(_BY_NAME)
    if unknown:
        raise TypeError(f"unknown guidance parameter(s) {sorted(unknown)}")
    return {k: _BY_NAME[k].validate(v) for k, v in values.items()}
