"""VLM family adapters: what differs between InternVL3, Qwen2.5-VL, Qwen3-VL, ...

The reward (:mod:`rewards.vlm`) is family-neutral: tasks, prompts, answer scales, objectives,
calibration and the both-orders batching are shared. An adapter tells it, for one family:

* which transformers model class loads a checkpoint and which ``config.model_type`` values it
  serves (the family is picked from the checkpoint's config, never from its name);
* how to build a tiny random model of the family for tests (``tiny_names``);
* how pixels are preprocessed **differentiably** (:meth:`VLMFamily.prepare`): a (R,3,H,W) batch
  in [0,1] becomes per-row model inputs plus a hashable ``layout`` (InternVL: the tile count;
  Qwen-VL: the (t, h, w) patch grid), the same for every row of the batch;
* how one image placeholder of the chat template expands for a layout
  (:meth:`VLMFamily.placeholder`), and which keyword arguments the model's forward takes
  (:meth:`VLMFamily.model_inputs`);
* the answer position: the reward reads the next-token distribution after the chat template's
  generation prompt (plus the user's answer prefix), i.e. the last position, for every family
  shipped here (``answer_index = -1``).

Adding a family = adding one module in this folder that defines a subclass of
:class:`VLMFamily` named ``FAMILY`` (an instance): it is discovered automatically.
"""
from __future__ import annotations

import importlib
import pkgutil
from typing import Any, Sequence

import torch


class VLMFamily:
    """Base class of a family adapter (see the module doc); subclasses fill every hook."""

    name: str = "?"                         # shown in errors and describe()
    model_types: tuple[str, ...] = ()       # config.model_type values this adapter serves
    tiny_names: tuple[str, ...] = ()        # built-in tiny model names
    model_class_name: str = ""              # transformers class that loads a checkpoint
    example_model_id: str = ""              # a real checkpoint, for help texts
    answer_index: int = -1                  # position whose next-token logits are read
    # image options the reward accepts for this family, with their defaults (None = processor's)
    image_options: dict[str, Any] = {}

    def model_class(self):
        import transformers

        return getattr(transformers, self.model_class_name)

    def build_tiny(self):
        """(model, processor): a random tiny model of the family (fixed seed), offline."""
        raise NotImplementedError

    def check_image_size(self, bundle, height: int, width: int, options: dict[str, Any]) -> None:
        """Raise ValueError (saying why) for an image this family's preprocessing refuses, so
        a caller can skip that one image instead of failing a whole batch. Default: any size."""
        return None

    def image_spec(self, model, processor) -> Any:
        """The image numbers (sizes, mean/std, ...) read from a loaded processor/model."""
        raise NotImplementedError

    def check_image_options(self, options: dict[str, Any]) -> dict[str, Any]:
        """Validate the user's image options; return this family's options, defaults filled in.

        An option left at its neutral value (None; ``max_tiles=1`` = one image, no tiling) is
        ignored by families it does not apply to; any other value there is refused.
        """
        unknown = [k for k, v in options.items()
                   if k not in self.image_options and v is not None
                   and not (k == "max_tiles" and v == 1)]
        if unknown:
            valid = ", ".join(self.image_options) or "none"
            raise ValueError(f"option(s) {unknown} do not apply to {self.name} models (image "
                             f"options of {self.name}: {valid})")
        out = {}
        for key, default in self.image_options.items():
            value = options.get(key)
            out[key] = default if value is None else value
        return out

    def resolve_image_options(self, bundle, options: dict[str, Any]) -> dict[str, Any]:
        """Options left to the checkpoint (None) resolved from the loaded processor."""
        return options

    def image_token(self, processor) -> str:
        """The placeholder the chat template writes once per image."""
        return processor.image_token

    def prepare(self, bundle, images: torch.Tensor, options: dict[str, Any]):
        """(R,3,H,W) in [0,1] -> (pixels with leading dim R, layout), differentiable."""
        raise NotImplementedError

    def placeholder(self, bundle, layout) -> str:
        """Text that replaces one image placeholder for an image with this layout."""
        raise NotImplementedError

    def model_inputs(self, bundle, input_ids: torch.Tensor, pixels: Sequence[torch.Tensor],
                     layouts: Sequence[Any]) -> dict[str, Any]:
        """Forward kwargs besides input_ids/attention_mask; ``pixels[k]``: slot k, leading dim R."""
        raise NotImplementedError

    # Optional: one vision pass per image, shared by every question asked about it
    # (rewards.vlm). A family that implements these two lets the reward encode each distinct
    # image once per call (and a style reference once per run) and feed the language model
    # embeddings; the others run the model's own forward on pixels.
    shares_vision: bool = False

    def image_features(self, bundle, pixels: torch.Tensor) -> torch.Tensor:
        """Slot pixels (leading dim R) -> (R, image tokens, hidden) language-model inputs."""
        raise NotImplementedError

    def image_token_id(self, bundle) -> int:
        """The id of the tokens the image features replace in the prompt."""
        raise NotImplementedError

    def embed_inputs(self, bundle, input_ids: torch.Tensor, positions: torch.Tensor,
                     features: Sequence[torch.Tensor]) -> torch.Tensor:
        """Token embeddings (R, L, hidden) with ``features`` (slot by slot, text order) put at
        ``positions`` (the image tokens of ``input_ids``, on the device)."""
        embeds = bundle.model.get_input_embeddings()(input_ids)
        feats = torch.cat(list(features), dim=1).to(embeds.dtype)
        return embeds.index_copy(1, positions, feats)

    def __repr__(self) -> str:
        return f"<VLM family {self.name}>"


_FAMILIES: list[VLMFamily] | None = None


def families() -> list[VLMFamily]:
    """Every adapter in this package (modules defining ``FAMILY``), in module-name order."""
    global _FAMILIES
    if _FAMILIES is None:
        found = []
        for info in sorted(pkgutil.iter_modules(__path__), key=lambda i: i.name):
            if info.name.startswith("_"):
                continue
            module = importlib.import_module(f"{__name__}.{info.name}")
            family = getattr(module, "FAMILY", None)
            if isinstance(family, VLMFamily):
                found.append(family)
        _FAMILIES = found
    return _FAMILIES


def supported_families() -> str:
    return ", ".join(f"{f.name} (model_type {'/'.join(f.model_types)})" for f in families())


def family_for_model_type(model_type: str) -> VLMFamily | None:
    for family in families():
        if model_type in family.model_types:
            return family
    return None


def family_for_tiny(model_id: Any) -> VLMFamily | None:
    """The family of a built-in tiny model name, or None for anything else."""
    for family in families():
        if model_id in family.tiny_names:
            return family
    return None


def tiny_names() -> list[str]:
    return [n for f in families() for n in f.tiny_names]


__all__ = ["VLMFamily", "families", "family_for_model_type", "family_for_tiny",
           "supported_families", "tiny_names"]
