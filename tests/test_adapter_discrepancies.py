"""The diffusers adapter driven by any discrepancy (``DiffusersMMDGuidance(pipe, discrepancy=...)``, issue 17 item 1):
on a tiny random SD pipeline built in code and on the bundled trained pipeline (assets/shapes-ldm)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

pytest.importorskip("diffusers")

from mmdguidance import MMD, GaussianKernel  # noqa: E402
from mmdguidance.adapters.diffusers import DiffusersMMDGuidance  # noqa: E402
from mmdguidance.discrepancies import Chamfer, KernelEntropyDiversity, SlicedWasserstein  # noqa: E402

from ._tiny_pipelines import RES, tiny_sd  # noqa: E402

STEPS = 6
PROMPT = "a photo of cat"
ASSETS = Path(__file__).resolve().parents[1] / "assets"


@pytest.fixture(scope="module")
def sd():
    pipe = tiny_sd()
    g = torch.Generator().manual_seed(1)
    base = pipe([PROMPT] * 12, num_inference_steps=STEPS, height=RES, width=RES, generator=g, output_type="latent").images
    return pipe, base + base.std()  # references: unguided latents of other seeds, shifted


def _judge(disc, refs):
    """A fresh fit of the same discrepancy on ``refs`` (sliced W2 with fixed directions: a deterministic value)."""
    params = {**disc.get_params(), **({"resample": False} if isinstance(disc, SlicedWasserstein) else {})}
    return type(disc)(**params).fit(refs.flatten(1))


def _run(pipe, refs, n=6, steps=STEPS, generator=0, **kw):
    a = DiffusersMMDGuidance(pipe, **kw).fit(reference_latents=refs)
    out = a.sample(PROMPT, n=n, num_inference_steps=steps, generator=generator, output_type="latent")
    return a, out


@pytest.mark.parametrize("evaluate_on", ["xt", "x0", "noised_refs"])
def test_mmd_as_a_discrepancy_equals_the_builtin_mmd_run(sd, evaluate_on):
    """The same machinery: guiding with ``discrepancy=MMD(<the adapter's default kernel>)`` is bit-identical."""
    pipe, refs = sd
    kw = dict(scale=0.3, window=(0, 1), evaluate_on=evaluate_on)
    a, ref_out = _run(pipe, refs, **kw)
    b, out = _run(pipe, refs, discrepancy=MMD(kernel=GaussianKernel(bandwidth="median")), **kw)
    assert isinstance(b.mmd_, MMD) and b.mmd_ is not b.discrepancy  # a fitted clone
    assert torch.equal(out.latents, ref_out.latents)
    assert [s["mmd2"] for s in out.diagnostics[0]["steps"]] == [s["mmd2"] for s in ref_out.diagnostics[0]["steps"]]
    assert not torch.equal(out.latents, _run(pipe, refs, scale=0.0, window=(0, 1))[1].latents)  # guidance acted


@pytest.mark.parametrize("disc", [Chamfer(), SlicedWasserstein(random_state=0), KernelEntropyDiversity(diversity=0.3)],
                         ids=["chamfer", "sw", "diversity"])
def test_each_discrepancy_runs_and_lowers_its_own_value(sd, disc):
    pipe, refs = sd
    kw = dict(window=(0, 1), discrepancy=disc)
    a, guided = _run(pipe, refs, scale=0.3, **kw)
    _, plain = _run(pipe, refs, scale=0.0, **kw)
    assert isinstance(a.mmd_, type(disc))
    judge = _judge(disc, refs)
    v, v0 = float(judge.score(guided.latents.flatten(1))), float(judge.score(plain.latents.flatten(1)))
    assert torch.isfinite(guided.latents).all()
    assert v < v0 - 0.1 * abs(v0), (v, v0)
    steps = guided.diagnostics[0]["steps"]  # the recorded value is the discrepancy's own (the adapter's "mmd2" key)
    assert len(steps) == STEPS and all(s["applied"] for s in steps)
    assert steps[-1]["mmd2"] < steps[0]["mmd2"]
    if not isinstance(disc, SlicedWasserstein):  # (sliced W2 redraws its directions at every call)
        assert abs(a.score_latents(guided.latents) - float(a.mmd_.score(guided.latents.flatten(1)))) < 1e-6


def test_discrepancy_bad_input(sd):
    pipe, refs = sd
    with pytest.raises(TypeError, match="Discrepancy"):
        DiffusersMMDGuidance(pipe, discrepancy=GaussianKernel()).fit(reference_latents=refs)
    with pytest.raises(ValueError, match="replaces the built-in MMD"):
        DiffusersMMDGuidance(pipe, discrepancy=Chamfer(), kernel=GaussianKernel()).fit(reference_latents=refs)
    with pytest.raises(ValueError, match="prompt-aware"):
        DiffusersMMDGuidance(pipe, discrepancy=Chamfer(), prompt_kernel=GaussianKernel()).fit(
            reference_latents=refs, prompts=[PROMPT] * len(refs))
    with pytest.raises(ValueError, match="terms"):
        DiffusersMMDGuidance(pipe, discrepancy=SlicedWasserstein(), terms="cross", window=(0, 1)).fit(
            reference_latents=refs).sample(PROMPT, n=2, num_inference_steps=2, output_type="latent")


def test_discrepancies_on_the_bundled_trained_pipeline():
    """assets/shapes-ldm (DDIM, 4 steps) toward the bundled red references: MMD as a discrepancy equals the built-in
    run bit for bit; Chamfer and sliced W2 each lower their own discrepancy against the unguided run."""
    from experiments.t2i_train import load_pipeline

    pipe = load_pipeline(ASSETS / "shapes-ldm")
    kw = dict(num_inference_steps=4, guidance_scale=4.0, output_type="latent")
    lat = torch.randn((6, 4, 8, 8), generator=torch.Generator().manual_seed(1))
    plain = pipe(["a circle"] * 6, latents=lat, **kw).images
    common = dict(scale=0.3, evaluate_on="x0")

    def run(**extra):
        a = DiffusersMMDGuidance(pipe, **common, **extra).fit(ASSETS / "refs-red")
        return a, a.sample("a circle", n=6, latents=lat, **kw).latents

    a, builtin = run()
    _, as_disc = run(discrepancy=MMD(kernel=GaussianKernel(bandwidth="median")))
    assert torch.equal(builtin, as_disc)
    refs = a.reference_latents_
    for disc in (Chamfer(), SlicedWasserstein(random_state=0)):
        _, guided = run(discrepancy=disc)
        judge = _judge(disc, refs)
        v, v0 = float(judge.score(guided.flatten(1))), float(judge.score(plain.flatten(1)))
        assert v < 0.95 * v0, (type(disc).__name__, v, v0)
