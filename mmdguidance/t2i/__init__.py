"""Text-to-image testbed: procedural shapes with exact attributes (:mod:`.data`), an analytic scorer and
feature space (:mod:`.score`), and the Stable-Diffusion-architecture pipeline trained on them
(:mod:`.pipeline`; weights in ``assets/shapes-ldm``, trained by ``experiments/t2i_train.py``)."""

from .data import ATTRIBUTES, caption, full_captions, make_dataset, render, sample_attributes, training_captions
from .score import attribute_frequencies, descriptors, features, read_attributes

__all__ = [
    "ATTRIBUTES", "caption", "full_captions", "make_dataset", "render", "sample_attributes", "training_captions",
    "attribute_frequencies", "descriptors", "features", "read_attributes",
]
