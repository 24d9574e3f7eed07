r"""Pieces shared by the guidance baselines.

Every guidance baseline here is a *Denoiser wrapper*: it keeps the base model's
:math:`\hat\epsilon` and adds a score correction :math:`g(x, t) \approx \nabla_x \log h_t(x)`,

.. math:: \hat\epsilon_g(x, t) = \hat\epsilon(x, t) - s\,\sqrt{1-\bar\alpha_t}\; g(x, t),

which is the :math:`\epsilon`-form of :math:`\nabla\log p_t + s\,\nabla\log h_t` (since
:math:`\nabla\log p_t = -\hat\epsilon/\sqrt{1-\bar\alpha_t}`). Because the wrapper is itself a
Denoiser (``schedule``, ``dim``, ``predict_eps``), the standard :func:`mmdguidance.diffusion.sample`
runs it with any sampler.
"""

from __future__ import annotations

import torch
from torch import nn

from .._utils import as_tensor, check_int, check_positive, check_random_state_torch
from ..diffusion.denoisers import per_row_t, sinusoidal_embedding

__all__ = ["GuidedDenoiser", "draw_base_samples", "TimeMLP", "check_denoiser", "check_int", "noised_batch", "balanced_logistic_loss",
           "optimize"]


def check_denoiser(model, *, name: str = "base"):
    """Raise ``TypeError`` unless ``model`` looks like a Denoiser (``schedule``, ``dim``, ``predict_eps``)."""
    if model is None or not callable(getattr(model, "predict_eps", None)) or not hasattr(model, "schedule") or not hasattr(model, "dim"):
        raise TypeError(f"{name} must be a Denoiser with schedule, dim and predict_eps(x, t, cond=None); got {type(model).__name__}")
    return model


class GuidedDenoiser:
    r"""Base denoiser plus a score correction; subclasses implement :meth:`guidance_grad`.

    Parameters
    ----------
    base : Denoiser
        The pre-trained model (left untouched).
    scale : float >= 0
        Guidance strength :math:`s` (1 = the exact h-transform when the correction is exact).
    """

    def __init__(self, *, base, scale: float = 1.0):
        self.base = check_denoiser(base)
        self.scale = check_positive(scale, name="scale", allow_zero=True)

    @property
    def schedule(self):
        return self.base.schedule

    @property
    def dim(self) -> int:
        return int(self.base.dim)

    def guidance_grad(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:  # pragma: no cover - abstract
        r""":math:`g(x, t) \approx \nabla_x \log h_t(x)` for ``x`` (B, D) and per-row timesteps ``t`` (B,)."""
        raise NotImplementedError

    def predict_eps(self, x, t, cond=None):
        r""":math:`\hat\epsilon(x,t) - s\sqrt{1-\bar\alpha_t}\,g(x,t)`, shape ``(B, D)`` (``cond`` goes to the base)."""
        x = as_tensor(x)
        eps = self.base.predict_eps(x, t, cond).to(x)  # (B, D)
        if self.scale == 0.0:
            return eps
        tt = per_row_t(t, x.shape[0], "cpu")  # (B,)
        sig = (1.0 - self.schedule.alpha_bars[tt]).sqrt().to(x)[:, None]  # (B, 1)
        g = self.guidance_grad(x, tt).to(x)  # (B, D)
        return eps - self.scale * sig * g


def draw_base_samples(base, n: int, *, num_steps: int = 25, sampler: str = "ddim", random_state=None) -> torch.Tensor:
    """``n`` samples of the base model (float64 CPU tensor ``(n, D)``), drawn with the standard sampler."""
    from ..diffusion.samplers import sample

    g = check_random_state_torch(random_state)
    x = sample(base, n=check_int(n, "n_base_samples", 2), sampler=sampler, num_steps=num_steps, generator=g)
    return x.detach().to(dtype=torch.float64, device="cpu")


class TimeMLP(nn.Module):
    r"""Scalar-output MLP :math:`f(x, t)` on ``[x, emb(t)]`` (sinusoidal embedding of :math:`t/T`).

    ``time_embed_dim = 0`` makes it time-independent (``t`` ignored). Weights are initialised
    from ``random_state`` without touching the global torch RNG.
    """

    def __init__(self, *, dim: int, hidden: int = 64, depth: int = 2, time_embed_dim: int = 16, num_train_timesteps: int = 1000, random_state=0):
        super().__init__()
        self.dim, self.time_embed_dim, self.T = int(dim), int(time_embed_dim), int(num_train_timesteps)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(int(random_state))
            layers, width = [], self.dim + self.time_embed_dim
            for _ in range(int(depth)):
                layers += [nn.Linear(width, hidden), nn.SiLU()]
                width = hidden
            layers.append(nn.Linear(width, 1))
            self.net = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor, t: torch.Tensor | None = None) -> torch.Tensor:
        """``x`` (B, D), ``t`` (B,) long -> (B,)."""
        if self.time_embed_dim:
            x = torch.cat([x, sinusoidal_embedding(t, self.time_embed_dim, self.T).to(x)], 1)  # (B, D + E)
        return self.net(x)[:, 0]


def noised_batch(x0: torch.Tensor, schedule, generator: torch.Generator):
    """Forward-noise a batch at uniform random timesteps: returns ``x_t`` (B, D), ``t`` (B,), ``eps`` (B, D), ``sigma`` (B, 1)."""
    B = x0.shape[0]
    t = torch.randint(0, schedule.num_train_timesteps, (B,), generator=generator)
    eps = torch.randn(x0.shape, generator=generator, dtype=x0.dtype)
    ab = schedule.alpha_bars[t].to(x0)[:, None]  # (B, 1)
    return schedule.add_noise(x0, t, eps), t, eps, (1 - ab).sqrt()


def balanced_logistic_loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Class-balanced logistic loss (each class weighs 1/2), so the optimal logit is ``log q/p`` for any class sizes."""
    pos = labels > 0.5
    lp = nn.functional.logsigmoid(logits)  # log sigma(f)
    ln = nn.functional.logsigmoid(-logits)  # log (1 - sigma(f))
    loss = 0.0
    if pos.any():
        loss = loss - 0.5 * lp[pos].mean()
    if (~pos).any():
        loss = loss - 0.5 * ln[~pos].mean()
    return loss


def optimize(module: nn.Module, loss_fn, *, steps: int, lr: float, weight_decay: float = 0.0, cosine: bool = True,
             log_every: int = 50) -> list:
    """The baselines' training loop: AdamW (optionally with a cosine learning-rate decay) over ``steps`` steps.

    ``loss_fn(step) -> 0-d loss`` draws its own batch. Returns the mean loss of every ``log_every`` steps
    (and of the last, partial block); leaves ``module`` in eval mode.
    """
    opt = torch.optim.AdamW(module.parameters(), lr=lr, weight_decay=weight_decay)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=steps) if cosine else None
    hist, acc = [], 0.0
    for step in range(steps):
        loss = loss_fn(step)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if sched is not None:
            sched.step()
        acc += float(loss.detach())
        if (step + 1) % log_every == 0 or step + 1 == steps:
            hist.append(acc / ((step % log_every) + 1))
            acc = 0.0
    module.eval()
    return hist
