"""Autoencoder (first stage of the mini LDM): reconstruction vs trivial baselines, standardised latents, seeding, validation."""

import numpy as np
import pytest
import torch
from sklearn.datasets import load_digits
from sklearn.exceptions import NotFittedError

from mmdguidance.autoencoder import Autoencoder


@pytest.fixture(scope="module")
def data():
    X = load_digits().data / 8.0 - 1.0  # (1797, 64) in [-1, 1]
    rng = np.random.default_rng(0)
    idx = rng.permutation(len(X))
    return X[idx[:1400]], X[idx[1400:]]


@pytest.fixture(scope="module")
def ae(data):
    torch.set_num_threads(1)
    return Autoencoder(latent_dim=8, hidden=64, epochs=40, random_state=0).fit(data[0])


def test_reconstructs_held_out_digits_better_than_trivial_baselines(ae, data):
    train, test = data
    err = ae.reconstruction_error(test)
    mean_image = float(((test - train.mean(0)) ** 2).mean())  # predict the training mean image
    assert err < 0.35 * mean_image, (err, mean_image)
    # and better than the best linear map with 2 components (PCA-2), a non-trivial floor at d = 8
    from sklearn.decomposition import PCA

    pca = PCA(n_components=2).fit(train)
    pca_err = float(((pca.inverse_transform(pca.transform(test)) - test) ** 2).mean())
    assert err < pca_err


def test_latents_are_standardised_and_types_round_trip(ae, data):
    train, test = data
    Z = ae.encode(train)
    assert isinstance(Z, np.ndarray) and Z.shape == (len(train), 8)
    np.testing.assert_allclose(Z.mean(0), 0.0, atol=1e-5)  # closed form: (E(x) - m)/s has zero mean ...
    assert abs(Z.var(0, ddof=1).mean() - 1.0) < 1e-4  # ... and unit average variance on the training set
    Zt = ae.encode(torch.as_tensor(test[:5]))
    assert isinstance(Zt, torch.Tensor) and Zt.dtype == torch.float64
    Xr = ae.decode(Zt)
    assert isinstance(Xr, torch.Tensor) and Xr.shape == (5, 64)
    np.testing.assert_allclose(Xr.numpy(), ae.decode(ae.encode(test[:5])), atol=1e-6)


def test_seeded_and_state_round_trip(ae, data):
    train, test = data
    again = Autoencoder(latent_dim=8, hidden=64, epochs=40, random_state=0).fit(train)
    np.testing.assert_array_equal(again.encode(test), ae.encode(test))
    other = Autoencoder(latent_dim=8, hidden=64, epochs=40, random_state=1).fit(train)
    assert not np.allclose(other.encode(test), ae.encode(test))
    loaded = Autoencoder.from_state(ae.state())
    np.testing.assert_array_equal(loaded.decode(loaded.encode(test)), ae.decode(ae.encode(test)))


def test_bad_input_errors(ae, data):
    with pytest.raises(ValueError, match="latent_dim"):
        Autoencoder(latent_dim=0).fit(data[0])
    with pytest.raises(ValueError, match="lr"):
        Autoencoder(lr=-1.0).fit(data[0])
    with pytest.raises(NotFittedError):
        Autoencoder().encode(data[1])
    with pytest.raises(ValueError, match="expecting 64 features"):
        ae.encode(np.zeros((3, 10)))
    with pytest.raises(ValueError, match="expecting 8 features"):
        ae.decode(np.zeros((3, 64)))
    with pytest.raises(ValueError, match="NaN"):
        ae.encode(np.full((2, 64), np.nan))


# ------------------------------------------------------------------ sklearn conventions
from sklearn.utils.estimator_checks import parametrize_with_checks  # noqa: E402


@parametrize_with_checks([Autoencoder(latent_dim=2, hidden=8, epochs=2)], expected_failed_checks=lambda est: {})
def test_sklearn_compatible(estimator, check):
    check(estimator)


def test_constant_data_gives_finite_codes_and_a_warning():
    """latent_scale_ was 0 and every code NaN."""
    X = np.ones((20, 5))
    with pytest.warns(RuntimeWarning, match="no spread"):
        ae = Autoencoder(latent_dim=2, hidden=8, epochs=2, random_state=0).fit(X)
    assert ae.latent_scale_ > 0
    assert np.isfinite(ae.encode(X)).all() and np.isfinite(ae.decode(ae.encode(X))).all()


def test_from_state_names_missing_keys():
    with pytest.raises(ValueError, match="missing"):
        Autoencoder.from_state({})
    with pytest.raises(TypeError, match="dict"):
        Autoencoder.from_state([1, 2])
