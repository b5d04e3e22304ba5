"""InternVL names kept for existing callers (the code now lives elsewhere).

* loading, the shared model cache and the bundle: :mod:`rewards.vlm_model` (any VLM family;
  the family is read from the checkpoint's ``config.json``);
* everything InternVL-specific (tiny model, tokenizer, differentiable tiling preprocessing):
  the InternVL3 adapter :mod:`rewards.vlm_families.internvl`.

``load_internvl`` is :func:`rewards.vlm_model.load_vlm`: it loads whatever family the checkpoint
is (``"tiny"`` is the tiny InternVL).
"""
from __future__ import annotations

from .vlm_families.internvl import (  # noqa: F401
                                    TINY_CHAT_TEMPLATE,
                                    TINY_IMAGE_SIZE,
                                    TINY_SEED,
                                    TINY_WORDS,
                                    InternVLSpec,
                                    build_tiny_internvl,
                                    build_tiny_tokenizer,
                                    num_tiles,
                                    preprocess,
                                    tile_grid,
)
from .vlm_model import (  # noqa: F401
                                    DEFAULT_MODEL_ID,
                                    MODEL_FLAG,
                                    VLMBundle,
                                    check_vision_config,
                                    clear_cache,
                                    load_vlm,
                                    resolve_device,
                                    resolve_dtype,
)

InternVLBundle = VLMBundle
load_internvl = load_vlm

__all__ = ["DEFAULT_MODEL_ID", "InternVLBundle", "build_tiny_internvl", "build_tiny_tokenizer",
           "check_vision_config", "clear_cache", "load_internvl", "num_tiles", "preprocess",
           "resolve_device", "resolve_dtype", "tile_grid"]
