"""The procedural shapes data, captions, tokenizer, exact attribute read-out and feature space."""

from __future__ import annotations

import numpy as np
import pytest

from mmdguidance.t2i import data as D
from mmdguidance.t2i import score as S


def test_readout_is_exact_on_clean_renders():
    imgs, attrs = D.make_dataset(3000, random_state=7)
    got = S.read_attributes(imgs)
    for k in D.ATTRIBUTES:
        acc = np.mean(got[k] == attrs[k])
        assert acc >= 0.998, (k, acc)
    assert np.mean(np.all([got[k] == attrs[k] for k in D.ATTRIBUTES], 0)) >= 0.995


def test_readout_descriptors_match_geometry():
    # closed forms: square extent 1, circle extent ~ pi/4, triangle lower-half share 3/4, bbox scale ~ 2s
    for shape, ext, lower in (("square", 1.0, 0.5), ("circle", np.pi / 4, 0.5), ("triangle", 0.5, 0.75)):
        imgs, attrs = D.make_dataset(200, random_state=1, shape=shape, size="large", background="plain")
        d = S.descriptors(imgs)
        assert abs(np.median(d[:, 3]) - ext) < 0.05, shape
        assert abs(np.median(d[:, 10]) - lower) < 0.05, shape
        assert np.all(np.abs(d[:, 4] - 2 * attrs["scale"]) < 2.5), shape
        np.testing.assert_allclose(d[:, 0:3], D.COLOUR_RGB[attrs["colour"]], atol=1)


def test_readout_of_an_empty_image_and_texture_only():
    blank = np.full((2, 32, 32, 3), 190, np.uint8)
    got = S.read_attributes(blank)
    assert np.all(got["colour"] == -1) and np.all(got["shape"] == -1) and np.all(got["background"] == 0)
    freq = S.attribute_frequencies(got)
    assert freq["colour"]["none"] == 1.0


def test_sampling_options_and_exclusion():
    a = D.sample_attributes(500, exclude=[{"colour": "blue", "shape": "triangle"}], random_state=0)
    assert not np.any((a["colour"] == 2) & (a["shape"] == 2))
    assert set(np.unique(a["colour"])) == {0, 1, 2, 3}
    b = D.sample_attributes(50, random_state=0, colour="red", size=["small"])
    assert np.all(b["colour"] == 0) and np.all(b["size"] == 0)
    # the shape stays inside the image
    assert np.all(a["centre"] - a["scale"][:, None] >= 1 - 1e-9)
    assert np.all(a["centre"] + a["scale"][:, None] <= 31 - 1 + 1e-9)
    x1, _ = D.make_dataset(5, random_state=3)
    x2, _ = D.make_dataset(5, random_state=3)
    np.testing.assert_array_equal(x1, x2)


@pytest.mark.parametrize("kw, msg", [
    (dict(colour="purple"), "unknown colour"), (dict(texture="x"), "unknown attribute"), (dict(shape=[]), "unknown shape"),
])
def test_sampling_rejects_bad_options(kw, msg):
    with pytest.raises(ValueError, match=msg):
        D.sample_attributes(3, **kw)


def test_captions():
    assert D.caption("red", "circle", "small", "striped") == "a small red circle on a striped background"
    assert D.caption(colour="blue") == "a blue shape"
    assert D.caption() == ""
    with pytest.raises(ValueError, match="unknown shape"):
        D.caption(shape="star")
    a = D.sample_attributes(400, random_state=0)
    caps = D.training_captions(a, random_state=1)
    assert 0.05 < np.mean([c == "" for c in caps]) < 0.15
    full = D.full_captions(a)
    assert all(len(c.split()) == 8 for c in full)
    words = {w for c in caps + full for w in c.split()}
    assert words <= set(D.VOCABULARY)


def test_tokenizer_spells_every_word_as_one_token():
    pytest.importorskip("transformers")
    from mmdguidance.t2i.pipeline import MAX_TOKENS, clip_tokenizer

    tok = clip_tokenizer()
    ids = [tok(w).input_ids for w in D.VOCABULARY]
    assert all(len(i) == 3 for i in ids)
    assert len({i[1] for i in ids}) == len(D.VOCABULARY)
    longest = D.caption("yellow", "triangle", "large", "striped")
    assert len(tok(longest).input_ids) == 10 <= MAX_TOKENS


def test_features_separate_attributes_and_are_deterministic():
    from mmdguidance.metrics import frechet_distance

    red, _ = D.make_dataset(200, random_state=0, colour="red")
    red2, _ = D.make_dataset(200, random_state=1, colour="red")
    blue, _ = D.make_dataset(200, random_state=2, colour="blue")
    f = S.features(red)
    assert f.shape == (200, 26) and np.isfinite(f).all()
    np.testing.assert_array_equal(f, S.features(red))
    assert frechet_distance(S.features(red2), f) * 5 < frechet_distance(S.features(blue), f)


@pytest.mark.parametrize("bad, msg", [
    (np.zeros((2, 16, 16, 3), np.uint8), "shape"), (np.zeros((0, 32, 32, 3), np.uint8), "empty"),
    (np.full((1, 32, 32, 3), np.nan), "finite"), (np.full((1, 32, 32, 3), 2.0), "finite"),
])
def test_scorer_rejects_bad_images(bad, msg):
    with pytest.raises(ValueError, match=msg):
        S.read_attributes(bad)


def test_float_images_are_accepted():
    imgs, attrs = D.make_dataset(20, random_state=4)
    got = S.read_attributes(imgs / 255.0)
    for k in D.ATTRIBUTES:
        np.testing.assert_array_equal(got[k], attrs[k])
