"""Runs of the synthetic benchmark: methods x scenarios x seeds, and guidance-option sweeps (see :mod:`experiments._benchmark`)."""

from __future__ import annotations

from ._evaluation import evaluate, summarize
from ._methods import applicable, run_method
from ._scenarios import base_model, references, scenarios


def scenario_table(*, kind: str, dim: int, methods, N: int, n: int, seeds: int, keys=None, random_state: int = 0,
                   desc: str = "benchmark", full_metrics: bool = True, keep_samples: bool = True):
    """Run ``methods`` on the scenarios of one base model; returns ``(results, samples)``.

    ``results[scenario][method] = {"runs": [metrics per seed], "summary": {metric: [mean, std]}}``;
    ``samples[(scenario, method)] = (X, refs)`` of the first seed (2-D plots).
    """
    from mmdguidance._utils import progress

    _, scen = scenarios(dim)
    model = base_model(kind, dim)
    keys = list(scen) if keys is None else list(keys)
    jobs = [(k, m) for k in keys for m in methods if applicable(m, model, scen[k])]
    results: dict = {}
    samples: dict = {}
    for key, method in progress(jobs, total=len(jobs), desc=desc):
        sc = scen[key]
        rows = []
        for s in range(seeds):
            seed = random_state + s
            refs = references(sc, N, seed)
            X = run_method(method, model, sc, refs, n, seed)
            rows.append(evaluate(X, sc, refs if method != "refs" else None, full=full_metrics))
            if s == 0 and keep_samples:
                samples[(key, method)] = (X, refs)
        results.setdefault(key, {})[method] = {"runs": rows, "summary": summarize(rows)}
    return results, samples


# --------------------------------------------------------------------------- option sweeps
def sweep_options(options: dict, *, scales, keys=("subset", "reweight"), N: int = 50, n: int = 300, seeds: int = 5,
                  random_state: int = 0, desc: str = "sweep", kind: str = "gmm", dim: int = 2) -> dict:
    """MMD guidance with each option (a callable returning ``MMDGuidedSampler`` keyword arguments) at each scale.

    Returns ``{option: {scenario: {str(scale): {"runs", "summary"}}}}`` plus, per option and scenario,
    ``"best"``: the scale with the lowest mean exact MMD² (selected on the same seeds: an optimistic
    tuning, stated as such) and its summary.
    """
    from mmdguidance._utils import progress

    _, scen = scenarios(dim)
    model = base_model(kind, dim)
    out: dict = {}
    jobs = [(o, k, s) for o in options for k in keys for s in (scales[o] if isinstance(scales, dict) else scales)]
    for opt, key, scale in progress(jobs, total=len(jobs), desc=desc):
        sc = scen[key]
        rows = []
        for s in range(seeds):
            seed = random_state + s
            refs = references(sc, N, seed)
            kw = dict(options[opt]())
            n_run = kw.pop("_n", n)
            kw["scale"] = scale * kw.pop("_scale_factor", 1.0)
            X = run_method("mmd", model, sc, refs, n_run, seed, mmd=kw)
            rows.append(evaluate(X, sc, full=False))
        out.setdefault(opt, {}).setdefault(key, {})[str(scale)] = {"runs": rows, "summary": summarize(rows)}
    for opt, by_key in out.items():
        for key, by_s in by_key.items():
            best = min(by_s, key=lambda s: by_s[s]["summary"]["exact_mmd2"][0])
            by_s["best"] = {"scale": float(best), "summary": by_s[best]["summary"]}
    return out


def sweep_groups(groups: dict, default_names, *, scales, default_scales=None, group_scales=None, **kw) -> tuple[dict, dict]:
    """Run option groups through :func:`sweep_options`, the default configuration once for all groups.

    ``groups``: ``{group: {option name: callable -> sampler kwargs}}``; an option whose name is in
    ``default_names`` is the sampler's default and shares the single ``"default"`` run set
    (at ``default_scales``, ``scales`` if None). ``group_scales``: ``{group: scales}`` overrides.
    Returns ``(raw, by_group)``: the :func:`sweep_options` result and ``{group: {option name: result}}``.
    """
    options = {"default": lambda: {}}
    per_option = {"default": scales if default_scales is None else default_scales}
    for g, opts in groups.items():
        for name, f in opts.items():
            if name not in default_names:
                options[f"{g}: {name}"] = f
                per_option[f"{g}: {name}"] = (group_scales or {}).get(g, scales)
    raw = sweep_options(options, scales=per_option, **kw)
    by_group = {g: {name: raw["default" if name in default_names else f"{g}: {name}"] for name in opts} for g, opts in groups.items()}
    return raw, by_group
