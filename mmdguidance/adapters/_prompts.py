"""Prompt features for prompt-aware guidance: the pipelines' own text embedders and prompt-list checks."""

from __future__ import annotations

import torch

__all__ = ["pipeline_text_embedder", "check_prompt_list"]


def pipeline_text_embedder(pipeline):
    """The default prompt embedder of a pipeline: ``f(list[str]) -> Tensor (n, Dc)`` float32.

    SDXL (``text_encoder_2``): the pooled projection of the second encoder; PixArt (T5): hidden states
    averaged over the attention mask; a single CLIP encoder (SD): ``text_embeds`` / ``pooler_output``.
    Raises ``ValueError`` if the pipeline has no tokenizer or text encoder (pass ``text_embedder=``).
    """
    device = getattr(pipeline, "_execution_device", None) or pipeline.device
    if getattr(pipeline, "text_encoder_2", None) is not None and getattr(pipeline, "tokenizer_2", None) is not None:
        def sdxl(prompts):
            with torch.no_grad():
                out = pipeline.encode_prompt(list(prompts), device=device, num_images_per_prompt=1,
                                             do_classifier_free_guidance=False)
            return out[2].float()  # pooled (n, Dp)

        return sdxl
    if getattr(pipeline, "text_encoder", None) is None or getattr(pipeline, "tokenizer", None) is None:
        raise ValueError(
            f"{type(pipeline).__name__} has no tokenizer/text encoder: pass text_embedder=callable(list[str]) -> (n, Dc), "
            "or prompt features as arrays"
        )
    if type(pipeline).__name__.startswith("PixArt"):
        def pixart(prompts):
            with torch.no_grad():
                emb, mask, _, _ = pipeline.encode_prompt(list(prompts), do_classifier_free_guidance=False, device=device,
                                                         clean_caption=False)
            m = mask.to(emb.dtype)[:, :, None]  # (n, L, 1)
            return ((emb * m).sum(1) / m.sum(1).clamp_min(1.0)).float()  # (n, Dt)

        return pixart

    def clip(prompts):
        tok = pipeline.tokenizer
        ids = tok(list(prompts), padding="max_length", max_length=tok.model_max_length, truncation=True,
                  return_tensors="pt").input_ids.to(device)
        with torch.no_grad():
            out = pipeline.text_encoder(ids)
        emb = getattr(out, "text_embeds", None)
        if emb is None:
            emb = out.pooler_output
        return emb.float()

    return clip


def check_prompt_list(prompts, n: int, what: str) -> list[str]:
    if isinstance(prompts, str):
        return [prompts] * n
    prompts = list(prompts)
    if not all(isinstance(p, str) for p in prompts):
        raise TypeError(f"{what} must be a str or a list of str")
    if len(prompts) != n:
        raise ValueError(f"got {len(prompts)} {what} for {n} samples; need exactly one per sample (or a single str)")
    return prompts
