"""The methods of the synthetic benchmark: one sampling function per method name (see :mod:`experiments._benchmark`).

Every method starts from the same initial noise for a given seed and uses the same sampler
(ancestral DDPM, 50 steps), so differences are due to the method only.
"""

from __future__ import annotations

import contextlib
import logging
import warnings

import numpy as np
import torch

from mmdguidance.baselines import ClassifierGuidedDenoiser, DoobMatchingDenoiser, DoobOracleDenoiser, finetune
from mmdguidance.diffusion import GMMDenoiser, MLPDenoiser
from mmdguidance.diffusion.samplers import sample as run_sampler
from mmdguidance.guidance import GuidanceWarning, MMDGuidedSampler
from mmdguidance.kernels import GaussianKernel

from ._scenarios import Scenario, base_samples, initial_noise

NUM_STEPS = 50
SAMPLER = "ddpm"

#: the MMD guidance settings of these (pre-issue-13) experiments: the sampler's defaults at the time, pinned so
#: that their committed JSON stays reproducible after the defaults changed (see bench_defaults / bench_heldout)
PRE_ISSUE13_MMD = dict(kernel=GaussianKernel(bandwidth="median"), scale=0.2, step_rule="batch_normalized", evaluate_on="xt",
                       schedule="decreasing", window=(0.0, 0.8))

#: baseline settings used throughout the benchmark (chosen once, see docs/benchmark.md)
CLASSIFIER = dict(scale=2.0, objective="log_prob", steps=1000, batch_size=256, n_base_samples=2000)
DOOB_MATCHING = dict(scale=1.0, steps=500, batch_size=512, n_base_samples=2000)
FINETUNE = {"finetune": dict(epochs=200, lr=5e-4), "finetune_long": dict(epochs=1000, lr=1e-3)}

METHOD_LABELS = {
    "none": "no guidance",
    "mmd": "MMD guidance",
    "mmd_nr": "MMD guidance (noised refs)",
    "classifier": "classifier guidance",
    "doob_matching": "Doob's matching",
    "finetune": "fine-tune (200 ep)",
    "finetune_long": "fine-tune (1000 ep)",
    "doob_oracle": "Doob oracle",
    "refs": "the N references",
}


# --------------------------------------------------------------------------- methods
@contextlib.contextmanager
def quiet():
    """Silence the guidance's clipping warnings (counted in its diagnostics) inside the benchmark loops."""
    lg = logging.getLogger("mmdguidance")
    old = lg.level
    lg.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", GuidanceWarning)
            yield
    finally:
        lg.setLevel(old)


# each: (model, sc, refs, n, seed, xT (n, D) float64 tensor, mmd kwargs or None, num_steps) -> samples (n, D)
def _refs(model, sc, refs, n, seed, xT, mmd, num_steps):
    return np.asarray(refs, float)


def _none(model, sc, refs, n, seed, xT, mmd, num_steps):
    return run_sampler(model, xT, sampler=SAMPLER, num_steps=num_steps, generator=seed)


def _mmd(model, sc, refs, n, seed, xT, mmd, num_steps, **extra):
    kw = {**PRE_ISSUE13_MMD, **extra, "sampler": SAMPLER, "num_steps": num_steps}
    kw.update(mmd or {})
    return MMDGuidedSampler(model, random_state=seed, **kw).fit(refs).sample(n, x_T=xT.numpy())


def _mmd_nr(*args):  # the same settings except the evaluation point
    return _mmd(*args, evaluate_on="noised_refs")


def _doob_oracle(model, sc, refs, n, seed, xT, mmd, num_steps):
    if sc.weights is None or not isinstance(model, GMMDenoiser):
        raise ValueError("the Doob oracle needs a re-weighting target and an analytic base")
    g = DoobOracleDenoiser(base=model, target_weights=sc.weights)
    return run_sampler(g, xT, sampler=SAMPLER, num_steps=num_steps, generator=seed)


def _classifier(model, sc, refs, n, seed, xT, mmd, num_steps):
    g = ClassifierGuidedDenoiser(base=model, random_state=seed, **CLASSIFIER).fit(refs, base_samples=base_samples(model, seed))
    return run_sampler(g, xT, sampler=SAMPLER, num_steps=num_steps, generator=seed)


def _doob_matching(model, sc, refs, n, seed, xT, mmd, num_steps):
    g = DoobMatchingDenoiser(base=model, random_state=seed, **DOOB_MATCHING).fit(refs, base_samples=base_samples(model, seed))
    return run_sampler(g, xT, sampler=SAMPLER, num_steps=num_steps, generator=seed)


def _finetune(name):
    def run(model, sc, refs, n, seed, xT, mmd, num_steps):
        if not isinstance(model, MLPDenoiser):
            raise ValueError("fine-tuning needs a trained MLPDenoiser base")
        ft = finetune(model, refs, random_state=seed, **FINETUNE[name])
        return run_sampler(ft, xT, sampler=SAMPLER, num_steps=num_steps, generator=seed)

    return run


#: method name -> sampling function (the keys of :data:`METHOD_LABELS`)
METHODS = {"refs": _refs, "none": _none, "mmd": _mmd, "mmd_nr": _mmd_nr, "doob_oracle": _doob_oracle,
           "classifier": _classifier, "doob_matching": _doob_matching, **{name: _finetune(name) for name in FINETUNE}}


def run_method(method: str, model, sc: Scenario, refs: np.ndarray, n: int, seed: int, *, mmd: dict | None = None,
               num_steps: int = NUM_STEPS, x_T=None) -> np.ndarray:
    """Samples ``(n, D)`` of one method (numpy float64).

    ``mmd``: keyword arguments of :class:`MMDGuidedSampler` (the sampler's own defaults otherwise);
    ``'mmd_nr'`` is MMD guidance evaluated against noised references (``evaluate_on='noised_refs'``).
    """
    if method not in METHODS:
        raise ValueError(f"unknown method {method!r}")
    dim = refs.shape[1]
    xT = initial_noise(n, dim, seed) if x_T is None else torch.as_tensor(x_T, dtype=torch.float64)
    with quiet():
        X = METHODS[method](model, sc, refs, n, seed, xT, mmd, num_steps)
    return np.asarray(X.detach().cpu().numpy() if isinstance(X, torch.Tensor) else X, dtype=float)


def applicable(method: str, model, sc: Scenario) -> bool:
    if method == "doob_oracle":
        return sc.weights is not None and isinstance(model, GMMDenoiser)
    if method in FINETUNE:
        return isinstance(model, MLPDenoiser)
    return True
