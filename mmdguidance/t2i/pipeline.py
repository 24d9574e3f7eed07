r"""The components of the shapes text-to-image pipeline, built from configs in code (nothing downloaded).

A Stable-Diffusion architecture at toy size: ``AutoencoderKL`` (``32 x 32 x 3`` pixels
:math:`\leftrightarrow` ``4 x 8 x 8`` latents, 3 resolution levels), ``UNet2DConditionModel``
(epsilon prediction, cross-attention on the text encoder's hidden states), ``CLIPTextModel`` with a
``CLIPTokenizer`` built from the in-memory caption vocabulary, and a ``DDIMScheduler`` on the
Stable Diffusion ``scaled_linear`` schedule. :func:`assemble` makes a ``StableDiffusionPipeline``;
the trained weights live in ``assets/shapes-ldm`` (``experiments/t2i_train.py``).
"""

from __future__ import annotations

import torch

from .data import RES, VOCABULARY

__all__ = ["SIZES", "clip_tokenizer", "text_encoder", "vae", "unet", "scheduler", "assemble", "MAX_TOKENS"]

MAX_TOKENS = 16  # longest caption: 10 words + start/end tokens
#: model widths per named size ("tiny" for tests, "cpu" the shipped pipeline)
SIZES = {
    "tiny": dict(vae=(8, 8, 8), unet=(16, 16), text=16, text_layers=1, head_dim=4),
    "cpu": dict(vae=(16, 32, 32), unet=(32, 64), text=32, text_layers=2, head_dim=8),
}
SCHEDULER_KW = dict(num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear")


def _size(size: str) -> dict:
    if size not in SIZES:
        raise ValueError(f"unknown size {size!r}; expected one of {sorted(SIZES)}")
    return SIZES[size]


def _bpe(word: str, merges) -> list[str]:
    """CLIP's BPE of one word: repeatedly merge the adjacent pair of lowest rank."""
    rank = {m: i for i, m in enumerate(merges)}
    parts = list(word[:-1]) + [word[-1] + "</w>"]
    while len(parts) > 1:
        pairs = [(rank.get((a, b), len(rank)), i) for i, (a, b) in enumerate(zip(parts, parts[1:]))]
        r, i = min(pairs)
        if r == len(rank):
            break
        parts = parts[:i] + [parts[i] + parts[i + 1]] + parts[i + 2:]
    return parts


def clip_tokenizer():
    """A byte-level BPE ``CLIPTokenizer`` whose merges spell every caption word as one token.

    Vocabulary: the special tokens, the 26 letters (with and without the end-of-word mark) and the
    merges needed to spell each word of :data:`~mmdguidance.t2i.data.VOCABULARY` as a single token.
    """
    from transformers import CLIPTokenizer

    vocab = {"<|startoftext|>": 0, "<|endoftext|>": 1, "!": 2}
    for ch in "abcdefghijklmnopqrstuvwxyz":
        vocab.setdefault(ch, len(vocab))
        vocab.setdefault(ch + "</w>", len(vocab))
    merges: list[tuple[str, str]] = []
    done = False
    while not done:  # add a merge for the first unmerged pair of each word until all words are one token
        done = True
        for w in VOCABULARY:
            parts = _bpe(w, merges)
            if len(parts) > 1:
                merges.append((parts[0], parts[1]))
                vocab.setdefault(parts[0] + parts[1], len(vocab))
                done = False
    return CLIPTokenizer(vocab=vocab, merges=merges, model_max_length=MAX_TOKENS, pad_token="!")


def text_encoder(size: str = "cpu", *, vocab_size: int, seed: int = 0):
    """``CLIPTextModel`` with hidden size / layers of ``SIZES[size]`` (eval mode)."""
    from transformers import CLIPTextConfig, CLIPTextModel

    s = _size(size)
    torch.manual_seed(seed)
    cfg = CLIPTextConfig(
        vocab_size=vocab_size, hidden_size=s["text"], intermediate_size=2 * s["text"],
        num_hidden_layers=s["text_layers"], num_attention_heads=max(1, s["text"] // s["head_dim"]),
        max_position_embeddings=MAX_TOKENS, projection_dim=s["text"], bos_token_id=0, eos_token_id=1, pad_token_id=2,
    )
    return CLIPTextModel(cfg).eval()


def vae(size: str = "cpu", *, seed: int = 0, scaling_factor: float = 1.0):
    """``AutoencoderKL`` 32x32x3 -> 4x8x8 (three resolution levels: two downsamplings by 2)."""
    from diffusers import AutoencoderKL

    s = _size(size)
    torch.manual_seed(seed)
    return AutoencoderKL(
        block_out_channels=s["vae"], in_channels=3, out_channels=3, latent_channels=4, norm_num_groups=8,
        down_block_types=("DownEncoderBlock2D",) * 3, up_block_types=("UpDecoderBlock2D",) * 3,
        layers_per_block=1, sample_size=RES, scaling_factor=scaling_factor,
    ).eval()


def unet(size: str = "cpu", *, seed: int = 0):
    """``UNet2DConditionModel`` on 4x8x8 latents, cross-attention dim = the text encoder's width."""
    from diffusers import UNet2DConditionModel

    s = _size(size)
    torch.manual_seed(seed)
    return UNet2DConditionModel(
        sample_size=RES // 4, in_channels=4, out_channels=4, layers_per_block=1, block_out_channels=s["unet"],
        down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
        cross_attention_dim=s["text"], attention_head_dim=s["head_dim"], norm_num_groups=8,
    ).eval()


def scheduler(name: str = "ddim"):
    """The training/default scheduler config (Stable Diffusion's scaled-linear betas) as ``name``."""
    from diffusers import (DDIMScheduler, DDPMScheduler, DPMSolverMultistepScheduler, EulerAncestralDiscreteScheduler,
                           EulerDiscreteScheduler, UniPCMultistepScheduler)

    makers = {
        "ddim": lambda: DDIMScheduler(**SCHEDULER_KW, clip_sample=False, set_alpha_to_one=False, steps_offset=1),
        "ddpm": lambda: DDPMScheduler(**SCHEDULER_KW, clip_sample=False),
        "dpm++": lambda: DPMSolverMultistepScheduler(**SCHEDULER_KW, algorithm_type="dpmsolver++"),
        "euler": lambda: EulerDiscreteScheduler(**SCHEDULER_KW, steps_offset=1),
        "euler_a": lambda: EulerAncestralDiscreteScheduler(**SCHEDULER_KW, steps_offset=1),
        "unipc": lambda: UniPCMultistepScheduler(**SCHEDULER_KW),
    }
    if name not in makers:
        raise ValueError(f"unknown scheduler {name!r}; expected one of {sorted(makers)}")
    return makers[name]()


def assemble(*, vae, unet, text_encoder, tokenizer, scheduler):
    """A ``StableDiffusionPipeline`` (no safety checker) with every module in eval mode."""
    from diffusers import StableDiffusionPipeline

    pipe = StableDiffusionPipeline(
        vae=vae.eval(), text_encoder=text_encoder.eval(), tokenizer=tokenizer, unet=unet.eval(), scheduler=scheduler,
        safety_checker=None, feature_extractor=None, requires_safety_checker=False,
    )
    pipe.set_progress_bar_config(disable=True)
    return pipe
