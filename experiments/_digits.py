r"""Shared pieces of the digits experiments (scikit-learn's 1797 real 8×8 digits, offline).

* data: pixels 0..16 mapped to [-1, 1] (``x/8 - 1``), flattened to 64; a fixed stratified split
  (train 1497 / held-out 300) — the generative models and the evaluation classifier see only the
  training split;
* models: a pixel DDPM (:class:`~mmdguidance.diffusion.MLPDenoiser` on 64-D pixels), a mini LDM
  (:class:`~mmdguidance.autoencoder.Autoencoder` + an ``MLPDenoiser`` on its standardised latents),
  and the evaluation classifier (an MLP; its penultimate layer is the feature space of every metric);
  trained from a seed, cached under ``experiments/checkpoints/`` (loaded when the file's config key
  matches, else retrained);
* evaluation: FD, KD, precision/recall/density/coverage, RRKE on classifier features; the classifier's
  label histogram; mean ink (stroke mass) for the style task;
* sample grids (rows = methods, as in the paper's figures).
"""

from __future__ import annotations

import hashlib
import json
import math
import time
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from mmdguidance import metrics
from mmdguidance.autoencoder import Autoencoder
from mmdguidance.diffusion import MLPDenoiser, sample

CHECKPOINTS = Path(__file__).parent / "checkpoints"
N_HELD_OUT = 300
SIDE = 8

#: model settings per experiment config; "fast" = tiny models trained in seconds (the tests)
MODEL_CONFIGS = {
    "full": dict(ddpm=dict(hidden=256, depth=4, epochs=800, lr=2e-3, batch_size=128),
                 ae=dict(latent_dim=12, hidden=256, epochs=400, batch_size=128, lr=2e-3),
                 ldm=dict(hidden=192, depth=3, epochs=1000, lr=2e-3, batch_size=128),
                 clf=dict(hidden=128, feat=32, epochs=150, lr=2e-3)),
    "fast": dict(ddpm=dict(hidden=96, depth=2, epochs=60, lr=3e-3, batch_size=128),
                 ae=dict(latent_dim=12, hidden=96, epochs=60, batch_size=128, lr=3e-3),
                 ldm=dict(hidden=96, depth=2, epochs=60, lr=3e-3, batch_size=128),
                 clf=dict(hidden=64, feat=32, epochs=40, lr=3e-3)),
}


# --------------------------------------------------------------------------- data
def load_data(random_state: int = 0):
    """``(X_train, y_train, X_test, y_test)``: float64 arrays in [-1, 1] of shape ``(n, 64)`` and int labels."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    d = load_digits()
    X = d.data.astype(np.float64) / 8.0 - 1.0  # (1797, 64)
    Xtr, Xte, ytr, yte = train_test_split(X, d.target, test_size=N_HELD_OUT, stratify=d.target, random_state=random_state)
    return Xtr, ytr, Xte, yte


def thicken(X):
    """Thicker strokes: 2×2 grey dilation of each 8×8 image (in [-1, 1]); shape ``(n, 64)`` -> ``(n, 64)``."""
    from scipy.ndimage import grey_dilation

    imgs = np.asarray(X).reshape(-1, SIDE, SIDE)
    return np.stack([grey_dilation(im, size=(2, 2)) for im in imgs]).reshape(len(imgs), -1)


def ink(X) -> float:
    """Mean stroke mass: average pixel value mapped back to [0, 1]."""
    return float(((np.clip(np.asarray(X), -1, 1) + 1) / 2).mean())


# --------------------------------------------------------------------------- evaluation classifier
class FeatureClassifier(nn.Module):
    """MLP digit classifier 64 -> hidden -> feat -> 10 (SiLU); :meth:`features` is the penultimate layer,
    standardised with the training-set mean and std (a fixed affine map, so that KD's cubic kernel
    :math:`(a^\top b/d + 1)^3` sees features of unit scale)."""

    def __init__(self, hidden=128, feat=32, random_state=0):
        super().__init__()
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(int(random_state))
            self.body = nn.Sequential(nn.Linear(64, hidden), nn.SiLU(), nn.Linear(hidden, feat), nn.SiLU())
            self.head = nn.Linear(feat, 10)

    def forward(self, x):
        return self.head(self.body(x))

    def fit(self, X, y, *, epochs=150, lr=2e-3, random_state=0):
        """Cross-entropy with light pixel noise augmentation (AdamW, cosine decay); returns ``self`` in eval mode."""
        g = torch.Generator().manual_seed(int(random_state))
        Xt, yt = torch.as_tensor(X, dtype=torch.float32), torch.as_tensor(y, dtype=torch.long)
        opt = torch.optim.AdamW(self.parameters(), lr=lr, weight_decay=1e-4)
        steps = epochs * math.ceil(len(Xt) / 128)
        sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=steps)
        self.train()
        for _ in range(epochs):
            perm = torch.randperm(len(Xt), generator=g)
            for s in range(0, len(Xt), 128):
                i = perm[s : s + 128]
                x = Xt[i] + 0.1 * torch.randn(len(i), 64, generator=g)
                loss = nn.functional.cross_entropy(self(x), yt[i])
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                sched.step()
        self.eval()
        with torch.no_grad():
            H = self.body(Xt)  # (n, feat)
        self.register_buffer("feat_mean", H.mean(0))
        self.register_buffer("feat_std", H.std(0).clamp_min(1e-6))
        return self

    @torch.no_grad()
    def features(self, X) -> np.ndarray:
        """Penultimate-layer features ``(n, feat)`` of images clipped to [-1, 1]."""
        H = self.body(torch.as_tensor(np.clip(np.asarray(X), -1, 1), dtype=torch.float32))  # (n, feat)
        return ((H - self.feat_mean) / self.feat_std).double().numpy()

    @torch.no_grad()
    def predict(self, X) -> np.ndarray:
        return self(torch.as_tensor(np.clip(np.asarray(X), -1, 1), dtype=torch.float32)).argmax(1).numpy()


# --------------------------------------------------------------------------- models
@dataclass
class DigitModels:
    """The trained models of one config: pixel DDPM, autoencoder + latent DDPM (the mini LDM), evaluation classifier."""

    ddpm: MLPDenoiser
    ae: Autoencoder
    ldm: MLPDenoiser
    clf: FeatureClassifier
    train_seconds: dict
    source: str


def _key(config: str, random_state: int) -> str:
    blob = json.dumps({"cfg": MODEL_CONFIGS[config], "seed": int(random_state), "split": N_HELD_OUT, "v": 1}, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:12]


def get_models(config: str, X_train, y_train, random_state: int = 0, cache: bool | None = None) -> DigitModels:
    """Load the models of ``config`` from ``experiments/checkpoints`` if the key matches, else train (and save when ``cache``).

    ``cache=None`` caches the full config only (the fast config trains in seconds, e.g. in the tests).
    """
    cfg = MODEL_CONFIGS[config]
    memo = (config, int(random_state), len(X_train))
    if memo in _MEMO:  # both experiments in one process (``mmdguidance figures``, the tests) share the models
        return _MEMO[memo]
    _MEMO[memo] = models = _load_or_train(config, cfg, X_train, y_train, random_state, cache)
    return models


_MEMO: dict = {}


def _load_or_train(config, cfg, X_train, y_train, random_state, cache) -> DigitModels:
    cache = (config == "full") if cache is None else cache
    path = CHECKPOINTS / f"digits_{config}.pt"
    key = _key(config, random_state)
    if cache and path.exists():
        st = torch.load(path, weights_only=False)
        if st.get("key") == key:
            return DigitModels(ddpm=_denoiser_from(st["ddpm"]), ae=Autoencoder.from_state(st["ae"]), ldm=_denoiser_from(st["ldm"]),
                               clf=_clf_from(st["clf"]), train_seconds=st["train_seconds"], source=f"loaded {path.name} (key {key})")
    secs = {}
    t0 = time.perf_counter()
    c = cfg["clf"]
    clf = FeatureClassifier(hidden=c["hidden"], feat=c["feat"], random_state=random_state).fit(
        X_train, y_train, epochs=c["epochs"], lr=c["lr"], random_state=random_state)
    secs["classifier"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    d = cfg["ddpm"]
    ddpm = MLPDenoiser(dim=64, hidden=d["hidden"], depth=d["depth"], random_state=random_state).fit(
        X_train, epochs=d["epochs"], lr=d["lr"], batch_size=d["batch_size"], random_state=random_state)
    secs["pixel_ddpm"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    ae = Autoencoder(random_state=random_state, **cfg["ae"]).fit(X_train)
    secs["autoencoder"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    l = cfg["ldm"]
    Z = ae.encode(X_train)
    ldm = MLPDenoiser(dim=Z.shape[1], hidden=l["hidden"], depth=l["depth"], random_state=random_state).fit(
        Z, epochs=l["epochs"], lr=l["lr"], batch_size=l["batch_size"], random_state=random_state)
    secs["latent_ddpm"] = time.perf_counter() - t0
    # the denoisers are stored in float16 (checkpoint size): round-trip now so a fresh run and a cached one agree
    ddpm, ldm = _denoiser_from(_denoiser_state(ddpm)), _denoiser_from(_denoiser_state(ldm))
    models = DigitModels(ddpm=ddpm, ae=ae, ldm=ldm, clf=clf, train_seconds=secs, source=f"trained (key {key})")
    if cache:
        CHECKPOINTS.mkdir(exist_ok=True)
        torch.save({"key": key, "ddpm": _denoiser_state(ddpm), "ae": ae.state(), "ldm": _denoiser_state(ldm),
                    "clf": {"state": clf.state_dict(), "hidden": c["hidden"], "feat": c["feat"]}, "train_seconds": secs}, path)
    return models


def _denoiser_state(m: MLPDenoiser) -> dict:
    return {"state": {k: v.half() if v.is_floating_point() else v for k, v in m.state_dict().items()},
            "dim": m.dim, "hidden": m.inp.out_features, "depth": len(m.blocks)}


def _denoiser_from(st) -> MLPDenoiser:
    m = MLPDenoiser(dim=st["dim"], hidden=st["hidden"], depth=st["depth"])
    m.load_state_dict({k: v.float() if v.is_floating_point() else v for k, v in st["state"].items()})
    return m.eval()


def _clf_from(st) -> FeatureClassifier:
    c = FeatureClassifier(hidden=st["hidden"], feat=st["feat"])
    c.register_buffer("feat_mean", torch.zeros(st["feat"]))
    c.register_buffer("feat_std", torch.ones(st["feat"]))
    c.load_state_dict(st["state"])
    return c.eval()


# --------------------------------------------------------------------------- sampling helpers
def sample_pixels(model, n, *, num_steps=100, sampler="ddpm", random_state=0) -> np.ndarray:
    """Unguided samples ``(n, 64)`` from a pixel denoiser, float64 numpy."""
    with torch.no_grad():
        x = sample(model, n=n, sampler=sampler, num_steps=num_steps, generator=torch.Generator().manual_seed(int(random_state)))
    return x.double().numpy()


def sample_latent(models: DigitModels, n, *, num_steps=100, sampler="ddpm", random_state=0) -> np.ndarray:
    """Unguided mini-LDM samples: latent DDPM, then the decoder; ``(n, 64)``."""
    return models.ae.decode(sample_pixels(models.ldm, n, num_steps=num_steps, sampler=sampler, random_state=random_state))


# --------------------------------------------------------------------------- metrics
def evaluate(clf: FeatureClassifier, X, real, *, target_classes=None, real_all=None, random_state=0) -> dict:
    """Metrics of generated images ``X`` against real images ``real`` in the classifier's penultimate-layer space.

    Returns FD, KD (mean over subsets, ×1e3 as papers report), precision/recall/density/coverage
    (k = 5), RRKE (Gaussian kernel, median bandwidth of the real features), the label histogram,
    the fraction of samples classified into ``target_classes`` and the mean ink; with ``real_all``
    (e.g. all held-out digits) also ``precision_all`` / ``density_all``: fidelity to real digits of
    any class, comparable between guided and unguided samples.
    """
    F, R = clf.features(X), clf.features(real)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # small-sample FD regularisation notice
        fd = metrics.frechet_distance(F, R)
    kd = metrics.kernel_distance(F, R, n_subsets=50, subset_size=200, random_state=random_state)["mean"] * 1e3
    prdc = metrics.precision_recall_density_coverage(R, F, k=5)
    hist = np.bincount(clf.predict(X), minlength=10) / len(X)
    out = {"fd": fd, "kd_x1e3": kd, **prdc, "rrke": metrics.rrke(F, R), "label_hist": hist.tolist(), "ink": ink(X)}
    if target_classes is not None:
        out["frac_target"] = float(hist[list(target_classes)].sum())
    if real_all is not None:
        pa = metrics.precision_recall_density_coverage(clf.features(real_all), F, k=5)
        out["precision_all"], out["density_all"] = pa["precision"], pa["density"]
    return out


def summarize(per_seed: list[dict]) -> dict:
    """``{metric: [mean, std]}`` over seeds for every scalar metric (std with ddof=0)."""
    keys = [k for k, v in per_seed[0].items() if isinstance(v, (int, float))]
    return {k: [float(np.mean([r[k] for r in per_seed])), float(np.std([r[k] for r in per_seed]))] for k in keys}


# --------------------------------------------------------------------------- figures
def plot_grid(ax, X, *, ncols=10, nrows=1, title=None):
    """Tile the first ``nrows*ncols`` images of ``X`` ``(n, 64)`` into one axis (white background, dark strokes)."""
    imgs = np.clip(np.asarray(X)[: nrows * ncols], -1, 1).reshape(-1, SIDE, SIDE)
    canvas = np.full((nrows * (SIDE + 1) - 1, ncols * (SIDE + 1) - 1), -1.0)
    for i, im in enumerate(imgs):
        r, c = divmod(i, ncols)
        canvas[r * (SIDE + 1) : r * (SIDE + 1) + SIDE, c * (SIDE + 1) : c * (SIDE + 1) + SIDE] = im
    ax.imshow(canvas, cmap="gray_r", vmin=-1, vmax=1, interpolation="nearest")
    ax.set_xticks([])
    ax.set_yticks([])
    if title:
        ax.set_ylabel(title, rotation=0, ha="right", va="center", fontsize=9)


def log_axis(ax, which="xy"):
    """Log scale on ``which`` axes with plain tick labels (1, 2, 5, 10, 20, ...), no ``2×10^1`` clutter."""
    from matplotlib.ticker import FuncFormatter, ScalarFormatter

    def minor(v, _):
        m = v / 10 ** np.floor(np.log10(v))
        return f"{v:g}" if np.isclose(m, 2) or np.isclose(m, 5) else ""

    for name in which:
        getattr(ax, f"set_{name}scale")("log")
        axis = ax.xaxis if name == "x" else ax.yaxis
        axis.set_major_formatter(ScalarFormatter())
        axis.set_minor_formatter(FuncFormatter(minor))
