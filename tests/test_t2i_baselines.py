"""The fine-tuning baseline (mmdguidance.adapters.finetune) on the bundled pipeline: one optimiser step against an
independent implementation of the objective, checkpoints, the untouched original; the baselines experiment end to end."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("diffusers")
import torch  # noqa: E402

ASSET = Path(__file__).resolve().parents[1] / "assets" / "shapes-ldm"


@pytest.fixture(scope="module")
def pipe():
    from experiments.t2i_train import load_pipeline

    return load_pipeline(ASSET)


def _latents(n=4, seed=0):
    return torch.randn(n, 4, 8, 8, generator=torch.Generator().manual_seed(seed))


def test_one_step_is_adam_on_the_epsilon_objective(pipe):
    """First AdamW step (no weight decay) moves each weight by -lr * sign(grad) (up to Adam's eps); the gradient is
    recomputed here from the same draws with the closed-form noising and the epsilon target."""
    from mmdguidance.adapters.finetune import finetune_unet

    z, caps, lr, bs = _latents(), ["a red circle", "a square", "a circle", ""], 1e-4, 3
    new = finetune_unet(pipe, z, caps, steps=1, lr=lr, batch_size=bs, p_uncond=0.5, random_state=7)
    g = torch.Generator().manual_seed(7)  # the draws in the function's order
    idx = torch.randint(0, 4, (bs,), generator=g)
    t = torch.randint(0, 1000, (bs,), generator=g)
    eps = torch.randn(bs, 4, 8, 8, generator=g)
    drop = torch.rand(bs, generator=g) < 0.5
    ab = pipe.scheduler.alphas_cumprod[t].float()[:, None, None, None]
    xt = ab.sqrt() * z[idx] + (1 - ab).sqrt() * eps
    text = [("" if d else caps[i]) for i, d in zip(idx.tolist(), drop.tolist())]
    ids = pipe.tokenizer(text, padding="max_length", max_length=pipe.tokenizer.model_max_length,
                         return_tensors="pt").input_ids
    with torch.no_grad():
        cond = pipe.text_encoder(ids)[0]
    pipe.unet.zero_grad()
    loss = (pipe.unet(xt, t, cond).sample - eps).pow(2).mean()
    loss.backward()
    assert new.loss_history_ == [pytest.approx(float(loss), rel=1e-5)]
    name, p0 = "conv_in.weight", dict(pipe.unet.named_parameters())["conv_in.weight"]
    step = dict(new.named_parameters())[name].detach() - p0.detach()
    big = p0.grad.abs() > 1e-6  # Adam's first step is -lr * g / (|g| + eps)
    torch.testing.assert_close(step[big], -lr * p0.grad.sign()[big], rtol=1e-2, atol=1e-7)
    pipe.unet.zero_grad(set_to_none=True)


def test_checkpoints_continue_one_run_and_leave_the_pipeline_alone(pipe):
    from mmdguidance.adapters.finetune import finetune_unet, with_unet

    before = {k: v.clone() for k, v in pipe.unet.state_dict().items()}
    a, b = finetune_unet(pipe, _latents(), "a circle", steps=[1, 3], lr=1e-3, batch_size=2, random_state=0)
    c = finetune_unet(pipe, _latents(), "a circle", steps=3, lr=1e-3, batch_size=2, random_state=0)
    for k, v in pipe.unet.state_dict().items():
        torch.testing.assert_close(v, before[k], rtol=0, atol=0)
    for k, v in c.state_dict().items():
        torch.testing.assert_close(b.state_dict()[k], v, rtol=0, atol=0)
    assert len(a.loss_history_) == 1 and len(b.loss_history_) == 3 and 0 < a.seconds_ <= b.seconds_
    p2 = with_unet(pipe, b)
    assert p2.unet is b and p2.vae is pipe.vae and pipe.unet is not b


def test_finetune_bad_input(pipe):
    from mmdguidance.adapters.finetune import finetune_unet

    with pytest.raises(ValueError, match="finite"):
        finetune_unet(pipe, torch.full((2, 4, 8, 8), float("nan")), "x", steps=1, lr=1e-3)
    with pytest.raises(ValueError, match="captions"):
        finetune_unet(pipe, _latents(), ["a", "b"], steps=1, lr=1e-3)
    with pytest.raises(ValueError, match="increasing"):
        finetune_unet(pipe, _latents(), "a", steps=[3, 1], lr=1e-3)
    with pytest.raises(ValueError, match="p_uncond"):
        finetune_unet(pipe, _latents(), "a", steps=1, lr=1e-3, p_uncond=1.0)


def test_classifier_targets_follow_the_prompt_halves():
    from experiments.t2i_adaptation import task_specs
    from experiments.t2i_baselines import classifier_targets

    t = classifier_targets(task_specs()["prompt_aware"], 4, {"colour": 4, "shape": 3, "background": 3})
    np.testing.assert_array_equal(t["colour"], np.eye(4)[[0, 0, 2, 2]])  # red circles, blue squares
    r = classifier_targets(task_specs()["reweight"], 2, {"colour": 4, "shape": 3, "background": 3})
    np.testing.assert_allclose(r["shape"], [[0.7, 0.3, 0.0]] * 2)


@pytest.mark.slow
def test_baselines_experiment_end_to_end(tmp_path):
    from experiments import t2i_baselines

    res = t2i_baselines.run("fast", out_dir=tmp_path)
    assert (tmp_path / "t2i_baselines.png").is_file() and (tmp_path / "t2i_baselines.json").is_file()
    assert set(res["summary"]["ddim"]["subset"]) == {"none", "classifier", "finetune"}
    assert res["best"]["classifier"] in res["settings"]["scales"]
    assert res["cost"]["finetune_training_s_per_task"] > 0
    ext = t2i_baselines.extend(config="fast", ft_lrs=(1e-3,), ft_steps=(2,), scales=(0.4,), out_dir=tmp_path)
    assert {"0.2", "0.4"} <= set(ext["dev_target_error"]["classifier"])
    assert "lr=0.001,steps=2" in ext["dev_target_error"]["finetune"] and len(ext["extensions"]) == 1
    cls = ext["dev_target_error"]["classifier"]
    assert ext["best"]["classifier"] == float(min(cls, key=cls.get))  # re-chosen on the union


def test_defaults_decision_rule():
    """A candidate replaces the defaults only if, at its own scale (best mean over development schedulers), it beats
    the current defaults at theirs on every development scheduler."""
    from experiments.t2i_defaults import decide

    def table(vals):  # scale -> mean error
        return {f"{s:g}": {"mean": v} for s, v in vals.items()}

    cfg = {"candidates": ("current", "a", "b")}
    dev = {"ddim": {"current": table({0.1: 0.3, 0.2: 0.2}), "a": table({0.1: 0.1, 0.2: 0.5}), "b": table({0.1: 0.25, 0.2: 0.4})},
           "euler_a": {"current": table({0.1: 0.4, 0.2: 0.3}), "a": table({0.1: 0.35, 0.2: 0.2}), "b": table({0.1: 0.1, 0.2: 0.9})}}
    d = decide(dev, cfg)
    assert d["chosen_scale"] == {"current": 0.2, "a": 0.1, "b": 0.1}
    assert d["beats_current_on_every_scheduler"] == {"a": False, "b": False}  # a loses on euler_a (0.35 > 0.3)
    assert d["winner"] == "current" and d["challenger"] == "b"  # b: mean 0.175 < a: 0.225
    dev["euler_a"]["a"] = table({0.1: 0.29, 0.2: 0.2})
    d = decide(dev, cfg)
    assert d["beats_current_on_every_scheduler"]["a"] and d["winner"] == "a" == d["challenger"]


@pytest.mark.slow
def test_defaults_experiment_end_to_end(tmp_path):
    from experiments import t2i_defaults

    res = t2i_defaults.run("fast", out_dir=tmp_path)
    assert res["winner"] in res["candidates"] and (tmp_path / "t2i_defaults.json").is_file()
    diff = res["held_out"]["ddim"]["diff"]["current"]["subset"]["vs_current"]
    assert diff["mean"] == 0.0  # the defaults against themselves
