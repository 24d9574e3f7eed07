"""Exploratory look behind protocol amendment 7 (not evidence; not an experiment: it writes nothing).

Where does the amendment-5 default (Heun-50, window (0, 0.8), scale 0.2) throw samples off the support in high d?
New random-mean instances (mean seeds 21, 23, 25; none of them a held-out instance), seed 0, n = 500; arms pin the
amendment-5 window/scale explicitly. Run: ``python -m experiments._explore_window [ARM ...]`` (about 1 min).
"""
import sys
import time

import numpy as np

from mmdguidance.gmm import GaussianMixture

from ._protocol import Scenario, _weights, evaluate, references, sample_method

OLD = dict(window=(0.0, 0.8), scale=0.2)  # the amendment-5 default the look was about

def _random_scenario(k, d, spread, std, seed, w) -> Scenario:
    gm = GaussianMixture(weights=np.full(k, 1 / k), means=spread * np.random.default_rng(seed).standard_normal((k, d)),
                         covariances=np.full(k, std**2))
    return Scenario(f"x_r{k}_d{d}_s{seed}", gm, _weights(k, w), 500)


SCENARIOS = [_random_scenario(3, 64, 2.0, 0.3, 21, {0: 0.7, 2: 0.3}), _random_scenario(5, 32, 2.5, 0.4, 23, {1: 0.5, 3: 0.5}),
             _random_scenario(4, 128, 1.5, 0.3, 25, {0: 0.6, 1: 0.4})]
H = dict(sampler="heun", num_steps=50)
D = dict(sampler="ddpm", num_steps=100)
#: arm -> (method, sampling, MMDGuidedSampler keywords on top of OLD)
ARMS = {
    "none@heun": ("none", H, {}),
    "default@heun": ("mmd", H, {}),
    "default@heun s0.1": ("mmd", H, dict(scale=0.1)),
    "default@heun s0.05": ("mmd", H, dict(scale=0.05)),
    "default@heun win(0,.5)": ("mmd", H, dict(window=(0.0, 0.5))),
    "default@heun win(.2,1)": ("mmd", H, dict(window=(0.2, 1.0))),
    "default@heun const": ("mmd", H, dict(schedule="constant", scale=0.1)),
    "x0jac1.6@heun": ("mmd", H, dict(evaluate_on="x0_jacobian", scale=1.6)),
    "none@ddpm100": ("none", D, {}),
    "default@ddpm100 s0.2": ("mmd", D, {}),
    "default@ddpm100 s0.4": ("mmd", D, dict(scale=0.4)),
}


def main(arms) -> None:
    for sc in SCENARIOS:
        refs = references(sc, 0)
        for a in arms:
            m, samp, kw = ARMS[a]
            t = time.time()
            mmd = {**OLD, "diagnostics": False, **kw} if m == "mmd" else None
            e = evaluate(sample_method(m, sc, refs, 0, sampling=samp, n=500, mmd=mmd), sc)
            print(f"{sc.key:16s} {a:24s} mmd2={e['exact_mmd2']:.4f} recall={e['recall']:.3f} far={e['frac_far']:.3f} "
                  f"tv={e['mode_weight_tv']:.3f} ({time.time() - t:.0f}s)", flush=True)


if __name__ == "__main__":
    main(sys.argv[1:] or list(ARMS))
