"""InternVL3 (transformers ``-hf`` checkpoints, ``model_type == "internvl"``).

Preprocessing as ``InternVLProcessor`` does it by default: dynamic tiling (its call default is
``crop_to_patches=True``, whatever the image processor's own attribute says), up to the
checkpoint's ``max_patches`` tiles (``min_patches`` at least): the grid chosen by transformers' own
canvas search, row-major tiles, then a thumbnail of the whole image; antialiased bicubic resizes;
rescale, normalise. ``max_tiles=1`` is one squashed tile (the cheapest). Each tile becomes
``image_seq_length`` tokens: the placeholder expands to ``<img>`` + ``<IMG_CONTEXT>`` x (tokens
per tile x tiles) + ``</img>``, exactly as ``InternVLProcessor`` does.

The tiny model: InternVLVisionConfig(hidden 32, 2 layers, image 64, patch 8) + Qwen2Config(hidden
32, 2 layers), downsample 0.5 -> 16 tokens per tile, a real ``InternVLProcessor`` +
``GotOcr2ImageProcessor`` and a locally built byte-level BPE tokenizer with the InternVL special
tokens and a ChatML chat template.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

import torch
from torch._subclasses.fake_tensor import is_fake
import torch.nn.functional as F

from . import VLMFamily
from .tiny_tokenizer import build_tiny_tokenizer as build_byte_bpe
from .tiny_tokenizer import padded_vocab

TINY_SEED = 0
TINY_IMAGE_SIZE = 64
# Words the tiny tokenizer knows as single tokens (with and without a leading space), so the
# answer-token lookup is exercised the same way as on a real BPE vocabulary.
TINY_WORDS = ("excellent", "good", "fair", "poor", "bad", "yes", "no", "Image", "image")
TINY_CHAT_TEMPLATE = (
    "{% for message in messages %}<|im_start|>{{ message['role'] }}\n"
    "{% if message['content'] is string %}{{ message['content'] }}"
    "{% else %}{% for content in message['content'] %}"
    "{% if content['type'] == 'image' %}<IMG_CONTEXT>\n"
    "{% elif content['type'] == 'text' %}{{ content['text'] }}{% endif %}"
    "{% endfor %}{% endif %}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
_TINY_SPECIALS = ("<|endoftext|>", "<|im_start|>", "<|im_end|>", "<img>", "</img>",
                  "<IMG_CONTEXT>", "<video>")


@dataclass(frozen=True)
class InternVLSpec:
    """What the InternVL preprocessing needs, read from the loaded image processor."""

    tile_size: tuple[int, int]      # (H, W) of one vision tile (448 for real checkpoints)
    image_mean: tuple[float, ...]
    image_std: tuple[float, ...]
    resample: str                   # "bicubic" | "bilinear" (torch interpolate mode)
    image_seq_length: int           # tokens per tile after pixel shuffle
    max_patches: int = 12           # the image processor's tiling limits (processor default)
    min_patches: int = 1


def build_tiny_tokenizer():
    """The tiny InternVL tokenizer (byte-level BPE, InternVL special tokens, ChatML template)."""
    return build_byte_bpe(TINY_WORDS, _TINY_SPECIALS,
                          {"start_image_token": "<img>", "end_image_token": "</img>",
                           "context_image_token": "<IMG_CONTEXT>", "video_token": "<video>"},
                          TINY_CHAT_TEMPLATE)


def build_tiny_internvl():
    """Random tiny InternVLForConditionalGeneration + a real InternVLProcessor (fixed seed)."""
    from transformers import (GotOcr2ImageProcessor, InternVLConfig,
                              InternVLForConditionalGeneration, InternVLProcessor,
                              InternVLVideoProcessor, InternVLVisionConfig, Qwen2Config)

    tokenizer = build_tiny_tokenizer()
    patch, downsample = 8, 0.5
    seq = int((TINY_IMAGE_SIZE // patch) ** 2 * downsample ** 2)        # 16 tokens per tile
    vision = InternVLVisionConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                                  intermediate_size=64, image_size=TINY_IMAGE_SIZE, patch_size=patch)
    text = Qwen2Config(hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                       num_attention_heads=2, num_key_value_heads=1,
                       vocab_size=padded_vocab(tokenizer), max_position_embeddings=1024,
                       tie_word_embeddings=True)
    config = InternVLConfig(vision_config=vision, text_config=text,
                            image_token_id=tokenizer.convert_tokens_to_ids("<IMG_CONTEXT>"),
                            image_seq_length=seq, downsample_ratio=downsample)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(TINY_SEED)
        model = InternVLForConditionalGeneration(config)
    image_processor = GotOcr2ImageProcessor(
        size={"height": TINY_IMAGE_SIZE, "width": TINY_IMAGE_SIZE}, crop_to_patches=False,
        min_patches=1, max_patches=12, resample=3,
        image_mean=[0.485, 0.456, 0.406], image_std=[0.229, 0.224, 0.225])
    # The processor insists on a video processor too; it is never used for scoring.
    video_processor = InternVLVideoProcessor(
        size={"height": TINY_IMAGE_SIZE, "width": TINY_IMAGE_SIZE})
    processor = InternVLProcessor(image_processor=image_processor, tokenizer=tokenizer,
                                  video_processor=video_processor,
                                  image_seq_length=seq, chat_template=TINY_CHAT_TEMPLATE)
    return model, processor


# --------------------------------------------------------------------------- preprocessing
def tile_grid(height: int, width: int, tile: tuple[int, int], max_tiles: int,
              min_tiles: int = 1) -> tuple[int, int]:
    """(columns, rows) InternVL picks for an image; (1, 1) when tiling is off (max_tiles=1).

    Uses the processor's own canvas search so the tile count always agrees with it.
    """
    if max_tiles <= 1:
        return 1, 1
    from transformers.models.got_ocr2.image_processing_got_ocr2 import get_optimal_tiled_canvas

    return get_optimal_tiled_canvas((height, width), tile, min_tiles, max_tiles)


def num_tiles(height: int, width: int, tile: tuple[int, int], max_tiles: int,
              min_tiles: int = 1) -> int:
    cols, rows = tile_grid(height, width, tile, max_tiles, min_tiles)
    n = cols * rows
    return n + 1 if n > 1 else 1          # + thumbnail when the image was split


def preprocess(images: torch.Tensor, bundle_or_cfg, max_tiles: int = 1,
               min_tiles: int = 1) -> torch.Tensor:
    """(B,3,H,W) in [0,1] -> pixel_values (B*T,3,th,tw) normalised, differentiable.

    Matches ``InternVLProcessor(images=..., crop_to_patches=max_tiles > 1, max_patches=max_tiles)``:
    each image is resized (antialiased bicubic) to the tile grid, split into tiles in row-major
    order, followed by a thumbnail of the whole image when there is more than one tile. The
    processor resizes uint8 images and rounds the result to integers; we keep floats, which is
    the only systematic difference (<= 0.5/255 before normalisation).
    """
    cfg = bundle_or_cfg
    th, tw = cfg.tile_size
    mode = cfg.resample
    h, w = images.shape[-2:]
    cols, rows = tile_grid(h, w, (th, tw), max_tiles, min_tiles)

    def resize(x, size):
        if tuple(x.shape[-2:]) == tuple(size):
            return x
        return F.interpolate(x, size=size, mode=mode, antialias=True, align_corners=False)

    x = images.float()
    if cols * rows == 1:
        tiles = resize(x, (th, tw))[:, None]
    else:
        big = resize(x, (th * rows, tw * cols))
        parts = [big[..., r * th:(r + 1) * th, c * tw:(c + 1) * tw]
                 for r in range(rows) for c in range(cols)]
        parts.append(resize(x, (th, tw)))
        tiles = torch.stack(parts, dim=1)                 # (B, T, 3, th, tw)
    tiles = tiles.clamp(0.0, 1.0)                         # the processor's uint8 range
    mean, std = _mean_std(tuple(cfg.image_mean), tuple(cfg.image_std), x.device)
    tiles = (tiles - mean) / std
    return tiles.flatten(0, 1)


_MEAN_STD: dict = {}


def _mean_std(mean: tuple, std: tuple, device) -> tuple[torch.Tensor, torch.Tensor]:
    """Normalisation tensors on ``device``, made once (a copy per call would wait for a GPU)."""
    key = (mean, std, str(device))
    if key in _MEAN_STD:
        return _MEAN_STD[key]
    made = (torch.tensor(mean, device=device).view(1, 1, 3, 1, 1),
            torch.tensor(std, device=device).view(1, 1, 3, 1, 1))
    if not is_fake(made[0]):   # made inside --estimate's fake-tensor trace: not kept after it
        _MEAN_STD[key] = made
    return made


def _size_hw(size) -> tuple[int, int]:
    if isinstance(size, dict):
        return int(size["height"]), int(size["width"])
    return int(size.height), int(size.width)


# --------------------------------------------------------------------------- the adapter
class InternVLFamily(VLMFamily):
    name = "InternVL3"
    model_types = ("internvl",)
    tiny_names = ("tiny", "tiny-internvl")
    model_class_name = "InternVLForConditionalGeneration"
    example_model_id = "OpenGVLab/InternVL3-14B-hf"
    image_options = {"max_tiles": None}     # None: the checkpoint's max_patches (processor's)

    def build_tiny(self):
        return build_tiny_internvl()

    def image_spec(self, model, processor) -> InternVLSpec:
        ip = processor.image_processor
        resample = int(getattr(ip, "resample", 3) or 3)
        # PIL codes: 2 = bilinear, 3 = bicubic. Real InternVL checkpoints use bicubic.
        mode = {2: "bilinear", 3: "bicubic"}.get(resample, "bicubic")
        seq = getattr(processor, "image_seq_length", None) or model.config.image_seq_length
        return InternVLSpec(tile_size=_size_hw(ip.size),
                            image_mean=tuple(float(m) for m in ip.image_mean),
                            image_std=tuple(float(s) for s in ip.image_std),
                            resample=mode, image_seq_length=int(seq),
                            max_patches=int(getattr(ip, "max_patches", 12) or 12),
                            min_patches=int(getattr(ip, "min_patches", 1) or 1))

    def check_image_options(self, options: dict[str, Any]) -> dict[str, Any]:
        out = super().check_image_options(options)
        if out["max_tiles"] is not None:
            if int(out["max_tiles"]) < 1:
                raise ValueError(f"max_tiles must be >= 1, got {out['max_tiles']!r}")
            out["max_tiles"] = int(out["max_tiles"])
        return out

    def resolve_image_options(self, bundle, options: dict[str, Any]) -> dict[str, Any]:
        if options.get("max_tiles") is None:
            options = {**options, "max_tiles": bundle.spec.max_patches}
        return options

    def prepare(self, bundle, images: torch.Tensor, options: dict[str, Any]):
        pv = preprocess(images.to(bundle.device), bundle.spec, options["max_tiles"],
                        bundle.spec.min_patches if options["max_tiles"] > 1 else 1)
        tiles = pv.view(images.shape[0], -1, *pv.shape[1:])          # (R, T, 3, th, tw)
        return tiles, tiles.shape[1]

    def placeholder(self, bundle, layout: int) -> str:
        proc = bundle.processor
        return (proc.start_image_token + proc.image_token * (proc.image_seq_length * layout)
                + proc.end_image_token)

    def model_inputs(self, bundle, input_ids, pixels: Sequence[torch.Tensor], layouts):
        # the model consumes tiles in text order: row 0 slot 0, row 0 slot 1, ..., row 1 slot 0
        pixel_values = torch.cat(list(pixels), dim=1).flatten(0, 1).to(bundle.dtype)
        return {"pixel_values": pixel_values}

    # one vision pass per image, shared by the questions (VLMFamily)
    shares_vision = True

    def image_features(self, bundle, pixels: torch.Tensor) -> torch.Tensor:
        # the model's own vision tower + pixel shuffle + projector, as its forward runs them
        inner = bundle.model.model
        out = inner.get_image_features(pixel_values=pixels.flatten(0, 1).to(bundle.dtype),
                                       return_dict=True).pooler_output     # (R*T, seq, D)
        return out.reshape(pixels.shape[0], -1, out.shape[-1])              # (R, T*seq, D)

    def image_token_id(self, bundle) -> int:
        return int(bundle.model.config.image_token_id)


FAMILY = InternVLFamily()
