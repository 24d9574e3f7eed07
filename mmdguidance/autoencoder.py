r"""A small MLP autoencoder: the first stage of a mini latent diffusion model (LDM).

Encoder :math:`E: \mathbb R^D \to \mathbb R^d` and decoder :math:`G: \mathbb R^d \to \mathbb R^D`
(residual-free MLPs with SiLU) are trained jointly on

.. math:: \mathcal L = \frac1n\sum_i \big\|G\big(E(x_i) + \nu\,\xi_i\big) - x_i\big\|^2
          + \beta\,\frac1n\sum_i \|E(x_i)\|^2 / d, \qquad \xi_i \sim \mathcal N(0, I_d),

the latent noise :math:`\nu` (``latent_noise``) making the decoder robust to the small errors of a
latent diffusion model, :math:`\beta` (``latent_penalty``) keeping the latent cloud bounded.
After training the latents are *standardised* with the training statistics, like the LDM
``scaling_factor``: :meth:`encode` returns :math:`z = (E(x) - m)/s` with per-dimension mean
:math:`m` and one global scale :math:`s` (so the latent cloud has unit average variance, the scale a
VP diffusion model expects), and :meth:`decode` inverts it. A latent DDPM is then any
:class:`~mmdguidance.diffusion.MLPDenoiser` with ``dim = latent_dim`` trained on ``encode(X)``; MMD
guidance runs unchanged in latent space on references encoded by the same encoder.
"""

from __future__ import annotations

import math
import warnings

import numpy as np
import torch
from sklearn.base import BaseEstimator
from sklearn.utils.validation import check_is_fitted
from torch import nn

from ._utils import check_array_2d, check_int, check_positive, check_random_state_torch, from_tensor, logger, progress

__all__ = ["Autoencoder"]


def _mlp(sizes, random_state):
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(int(random_state))
        layers = []
        for i in range(len(sizes) - 1):
            layers.append(nn.Linear(sizes[i], sizes[i + 1]))
            if i < len(sizes) - 2:
                layers.append(nn.SiLU())
        return nn.Sequential(*layers)


#: Smallest latent scale: codes are divided by it, so a collapsed latent (constant data) stays finite.
_MIN_LATENT_SCALE = 1e-6


def _latent_scale(Z: torch.Tensor) -> float:
    r"""RMS spread of the codes :math:`\sqrt{\mathrm{mean}_k \mathrm{Var}(z_k)}`, floored at ``_MIN_LATENT_SCALE`` (warns)."""
    s = float(Z.var(0).mean().sqrt()) if Z.shape[0] > 1 else 0.0
    if not s >= _MIN_LATENT_SCALE:
        warnings.warn(
            f"Autoencoder: the codes have (almost) no spread (scale {s:.3g}; constant training data?); "
            f"using latent_scale_ = {_MIN_LATENT_SCALE:g} so that encode() stays finite",
            RuntimeWarning,
            stacklevel=3,
        )
        s = _MIN_LATENT_SCALE
    return s


class Autoencoder(BaseEstimator):
    r"""MLP autoencoder with standardised latents (sklearn-style, seeded).

    Parameters
    ----------
    latent_dim : int
        :math:`d`.
    hidden : int
        Width of the two hidden layers of the encoder and of the decoder.
    epochs, batch_size, lr, weight_decay : optimisation (AdamW, cosine decay)
    latent_noise : float >= 0
        :math:`\nu`, noise added to the (unstandardised) code during training.
    latent_penalty : float >= 0
        :math:`\beta`.
    random_state : int
        Seeds the weights, the shuffling and the latent noise.

    Attributes
    ----------
    encoder_, decoder_ : nn.Sequential
    latent_mean_ : Tensor of shape (latent_dim,)
        :math:`m`.
    latent_scale_ : float
        :math:`s` (root mean per-dimension variance of the training codes).
    loss_history_ : list of float
        Mean reconstruction loss per epoch.
    n_features_in_ : int
    """

    def __init__(self, *, latent_dim=12, hidden=256, epochs=300, batch_size=128, lr=2e-3, weight_decay=0.0, latent_noise=0.05,
                 latent_penalty=1e-3, random_state=0):
        self.latent_dim = latent_dim
        self.hidden = hidden
        self.epochs = epochs
        self.batch_size = batch_size
        self.lr = lr
        self.weight_decay = weight_decay
        self.latent_noise = latent_noise
        self.latent_penalty = latent_penalty
        self.random_state = random_state

    def _validate(self):
        check_int(self.latent_dim, "latent_dim", 1)
        check_int(self.hidden, "hidden", 1)
        check_int(self.epochs, "epochs", 1)
        check_int(self.batch_size, "batch_size", 1)
        check_positive(self.lr, name="lr")
        check_positive(self.weight_decay, name="weight_decay", allow_zero=True)
        check_positive(self.latent_noise, name="latent_noise", allow_zero=True)
        check_positive(self.latent_penalty, name="latent_penalty", allow_zero=True)
        if isinstance(self.random_state, bool) or not isinstance(self.random_state, (int, np.integer)):
            raise TypeError(f"random_state must be an int seed, got {type(self.random_state).__name__}")

    def fit(self, X, y=None):
        """Train on ``X`` of shape ``(n, D)``, ``n >= 2``; returns ``self``."""
        self._validate()
        Xt = check_array_2d(X, name="X", min_samples=2).to(torch.float32)  # (n, D)
        n, D = Xt.shape
        d, h = int(self.latent_dim), int(self.hidden)
        self.encoder_ = _mlp([D, h, h, d], self.random_state)
        self.decoder_ = _mlp([d, h, h, D], int(self.random_state) + 1)
        params = list(self.encoder_.parameters()) + list(self.decoder_.parameters())
        g = check_random_state_torch(int(self.random_state))
        bs = int(self.batch_size)
        steps = int(self.epochs) * math.ceil(n / bs)
        opt = torch.optim.AdamW(params, lr=float(self.lr), weight_decay=float(self.weight_decay))
        sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=steps)
        self.loss_history_ = []
        for _ in progress(range(int(self.epochs)), total=int(self.epochs), desc="training autoencoder"):
            perm = torch.randperm(n, generator=g)
            tot = 0.0
            for s in range(0, n, bs):
                x = Xt[perm[s : s + bs]]  # (b, D)
                z = self.encoder_(x)  # (b, d)
                zn = z + float(self.latent_noise) * torch.randn(z.shape, generator=g)
                rec = ((self.decoder_(zn) - x) ** 2).mean()
                loss = rec + float(self.latent_penalty) * (z**2).mean()
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                sched.step()
                tot += rec.item() * len(x)
            self.loss_history_.append(tot / n)
        self.encoder_.eval()
        self.decoder_.eval()
        with torch.no_grad():
            Z = self.encoder_(Xt)  # (n, d)
        self.latent_mean_ = Z.mean(0)
        self.latent_scale_ = _latent_scale(Z)
        self.n_features_in_ = int(D)
        logger.info("Autoencoder trained: reconstruction MSE %.4f", self.loss_history_[-1])
        return self

    def encode(self, X):
        r"""Standardised codes :math:`(E(x) - m)/s`, shape ``(n, latent_dim)``; numpy in -> numpy out."""
        check_is_fitted(self, "encoder_")
        Xt = check_array_2d(X, name="X", n_features=self.n_features_in_, owner="the autoencoder")
        with torch.no_grad():
            Z = (self.encoder_(Xt.to(torch.float32)) - self.latent_mean_) / self.latent_scale_  # (n, d)
        return from_tensor(Z.to(Xt.dtype), X)

    def decode(self, Z):
        r""":math:`G(s z + m)`, shape ``(n, D)``; numpy in -> numpy out."""
        check_is_fitted(self, "encoder_")
        Zt = check_array_2d(Z, name="Z", n_features=int(self.latent_dim), owner="the decoder")
        with torch.no_grad():
            X = self.decoder_(Zt.to(torch.float32) * self.latent_scale_ + self.latent_mean_)  # (n, D)
        return from_tensor(X.to(Zt.dtype), Z)

    def reconstruction_error(self, X) -> float:
        r"""Mean squared error per pixel of :math:`G(E(x))` against ``x``."""
        Xt = check_array_2d(X, name="X", n_features=getattr(self, "n_features_in_", None), owner="the autoencoder")
        R = self.decode(self.encode(Xt))  # (n, D), Xt's dtype
        return float(((R - Xt) ** 2).mean())

    def state(self) -> dict:
        """Learned state as a dict of tensors/floats (for :func:`torch.save`); inverse of :meth:`load_state`."""
        check_is_fitted(self, "encoder_")
        return {"encoder": self.encoder_.state_dict(), "decoder": self.decoder_.state_dict(), "latent_mean": self.latent_mean_,
                "latent_scale": self.latent_scale_, "n_features_in": self.n_features_in_, "params": self.get_params()}

    @classmethod
    def from_state(cls, state: dict) -> "Autoencoder":
        """Rebuild a fitted autoencoder from :meth:`state` (no training).

        Raises
        ------
        TypeError
            ``state`` is not a dict.
        ValueError
            Keys are missing (the message lists them).
        """
        if not isinstance(state, dict):
            raise TypeError(f"state must be the dict returned by Autoencoder.state(), got {type(state).__name__}")
        needed = ("encoder", "decoder", "latent_mean", "latent_scale", "n_features_in", "params")
        missing = [k for k in needed if k not in state]
        if missing:
            raise ValueError(f"state is missing {missing}; expected the dict returned by Autoencoder.state()")
        ae = cls(**state["params"])
        ae._validate()
        D, d, h = int(state["n_features_in"]), int(ae.latent_dim), int(ae.hidden)
        ae.encoder_ = _mlp([D, h, h, d], 0)
        ae.decoder_ = _mlp([d, h, h, D], 0)
        ae.encoder_.load_state_dict(state["encoder"])
        ae.decoder_.load_state_dict(state["decoder"])
        ae.encoder_.eval()
        ae.decoder_.eval()
        ae.latent_mean_ = state["latent_mean"]
        ae.latent_scale_ = float(state["latent_scale"])
        ae.n_features_in_ = D
        ae.loss_history_ = []
        return ae
