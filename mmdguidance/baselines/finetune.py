r"""Fine-tuning baseline: continue training a trained :class:`~mmdguidance.diffusion.MLPDenoiser` on the references.

The copy is trained with the same DDPM objective
:math:`E_{t,\epsilon}\|\epsilon - \hat\epsilon_\theta(\sqrt{\bar\alpha_t}y + \sqrt{1-\bar\alpha_t}\epsilon, t)\|^2`
over the references :math:`y_j` only, starting from the pre-trained weights (AdamW, cosine decay);
the original model is left untouched (``copy.deepcopy`` of the small network). With few references
and many steps the model memorises them; few epochs at a small learning rate trade adaptation
against forgetting — the benchmark reports both a light and a heavy budget.
"""

from __future__ import annotations

import copy

from .._utils import check_array_2d, check_positive
from ..diffusion.denoisers import MLPDenoiser
from ._guided import check_int

__all__ = ["finetune"]


def finetune(model, refs, *, epochs: int = 200, lr: float = 5e-4, batch_size: int = 256, weight_decay: float = 0.0, random_state=None):
    """Return a fine-tuned copy of ``model`` trained on ``refs``.

    Parameters
    ----------
    model : MLPDenoiser
        A trained (unconditional) denoiser; it is not modified.
    refs : array of shape (N, D), N >= 2
    epochs : int >= 1
        Passes over the references (``ceil(N / batch_size)`` optimiser steps each).
    lr : float > 0
    batch_size : int >= 1
    weight_decay : float >= 0
    random_state : int, Generator or None
        Seeds shuffling, timesteps and noise.

    Returns
    -------
    MLPDenoiser
        A new model in eval mode (``loss_history_`` continues the original's).
    """
    if not isinstance(model, MLPDenoiser):
        raise TypeError(f"finetune needs a trained MLPDenoiser, got {type(model).__name__}")
    if model.cond_dim:
        raise ValueError("finetune supports unconditional MLPDenoisers only (cond_dim=0)")
    epochs = check_int(epochs, "epochs", 1)
    batch_size = check_int(batch_size, "batch_size", 1)
    lr = check_positive(lr, name="lr")
    weight_decay = check_positive(weight_decay, name="weight_decay", allow_zero=True)
    Y = check_array_2d(refs, name="references", min_samples=2, n_features=model.dim, owner="the model")
    new = copy.deepcopy(model)
    return new.fit(Y, epochs=epochs, batch_size=batch_size, lr=lr, weight_decay=weight_decay, random_state=random_state, progress_bar=False)
