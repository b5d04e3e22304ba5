"""Load the Kontext pipeline: a hub id, a local diffusers directory, or a built-in tiny model.

``tiny`` is built by :mod:`alignprop.tiny_kontext` (real classes, random seeded weights);
``tiny-photo`` is the same model with weights pretrained on bundled photos
(:mod:`alignprop.tiny_photo`).
"""
from __future__ import annotations

from pathlib import Path

import torch

from common.hub import model_unavailable

from .tiny_kontext import TINY, TINY_PHOTO, build_tiny_pipeline
from .tiny_photo import load_tiny_photo_pipeline

DEFAULT_MODEL = "black-forest-labs/FLUX.1-Kontext-dev"


def load_kontext_pipeline(pretrained: str = DEFAULT_MODEL, dtype: torch.dtype = torch.float32,
                          revision: str | None = None, variant: str | None = None,
                          flag: str = "--pretrained_model"):
    """Load a FluxKontextPipeline from ``tiny``, ``tiny-photo``, a hub id, or a local directory."""
    if pretrained == TINY:
        return build_tiny_pipeline(dtype)
    if pretrained == TINY_PHOTO:
        return load_tiny_photo_pipeline(dtype)
    from diffusers import FluxKontextPipeline

    local = Path(pretrained).expanduser()
    if local.exists() and not (local / "model_index.json").exists():
        raise model_unavailable(
            "the FLUX Kontext pipeline", pretrained, flag, repo_id=DEFAULT_MODEL,
            hint=f"{local} exists but has no model_index.json: point at the root of a diffusers "
                 "pipeline directory (the folder that holds transformer/, vae/, text_encoder/ ...).")
    try:
        return FluxKontextPipeline.from_pretrained(
            str(local) if local.exists() else pretrained, torch_dtype=dtype,
            revision=revision, variant=variant)
    except (OSError, ValueError, EnvironmentError) as exc:
        raise model_unavailable("the FLUX Kontext pipeline", pretrained, flag, exc,
                                repo_id=DEFAULT_MODEL, hint="Use `--pretrained_model tiny` for the built-in test model.") from None


__all__ = ["DEFAULT_MODEL", "TINY", "TINY_PHOTO", "load_kontext_pipeline"]
