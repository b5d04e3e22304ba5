"""Qwen2.5-VL (``model_type == "qwen2_5_vl"``) and the dynamic resolution Qwen-VL models share.

Dynamic resolution, in torch so gradients reach the pixels (the processor works on uint8
images and numpy-free but non-differentiable paths):

1. smart resize: the image is resized (antialiased bicubic) to the size transformers'
   ``smart_resize`` picks: both sides multiples of ``patch_size * merge_size`` (28 px for
   Qwen2.5-VL, 32 px for Qwen3-VL), aspect ratio kept, area inside the pixel budget
   ``[min_pixels, max_pixels]``;
2. rescale to [0, 1] (clamped, as uint8 would be) and normalise with the checkpoint's mean/std;
3. cut into ``patch_size`` x ``patch_size`` patches, ordered so that each 2x2 group the vision
   merger fuses into one token is contiguous (row-major over merged groups, then row-major
   inside a group); a still image is repeated ``temporal_patch_size`` (2) times along time, as
   the processor does, so each patch row holds C x 2 x P x P values;
4. the image placeholder ``<|image_pad|>`` (already wrapped in ``<|vision_start|>`` /
   ``<|vision_end|>`` by the chat template) expands to ``h * w / merge_size**2`` copies, and the
   model gets ``image_grid_thw = (1, h, w)`` per image and ``mm_token_type_ids`` (1 on image
   tokens) so it builds the same 3-D rotary positions as from the processor's output.

The tiny model: Qwen2_5_VLVisionConfig(hidden 32, 2 blocks, patch 14, merge 2) + text (hidden 32,
2 layers, mrope), a real ``Qwen2_5_VLProcessor`` + ``Qwen2VLImageProcessor`` with a small pixel
budget (min 56x56, max 112x112: 4 to 16 image tokens), a locally built tokenizer with the Qwen
vision tokens and a ChatML template with Qwen2.5-VL's default system turn.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

import torch
import torch.nn.functional as F

from . import VLMFamily
from .tiny_tokenizer import build_tiny_tokenizer as build_byte_bpe
from .tiny_tokenizer import padded_vocab

TINY_SEED = 0
TINY_WORDS = ("excellent", "good", "fair", "poor", "bad", "yes", "no", "Image", "image")
QWEN_SPECIALS = ("<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|vision_start|>",
                 "<|vision_end|>", "<|image_pad|>", "<|video_pad|>")
QWEN_NAMED = {"image_token": "<|image_pad|>", "video_token": "<|video_pad|>",
              "vision_start_token": "<|vision_start|>", "vision_end_token": "<|vision_end|>"}


def chat_template(system: str | None) -> str:
    """A ChatML template that writes images the Qwen-VL way (optional default system turn)."""
    first = ("{% if loop.first and message['role'] != 'system' %}<|im_start|>system\n"
             + system + "<|im_end|>\n{% endif %}") if system else ""
    return (
        "{% for message in messages %}" + first + "<|im_start|>{{ message['role'] }}\n"
        "{% if message['content'] is string %}{{ message['content'] }}"
        "{% else %}{% for content in message['content'] %}"
        "{% if content['type'] == 'image' %}<|vision_start|><|image_pad|><|vision_end|>"
        "{% elif content['type'] == 'text' %}{{ content['text'] }}{% endif %}"
        "{% endfor %}{% endif %}<|im_end|>\n{% endfor %}"
        "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")


TINY_CHAT_TEMPLATE = chat_template("You are a helpful assistant.")


@dataclass(frozen=True)
class QwenVLSpec:
    """What the dynamic-resolution preprocessing needs, read from the loaded image processor."""

    patch_size: int                 # 14 (Qwen2.5-VL) / 16 (Qwen3-VL)
    merge_size: int                 # 2: 2x2 patches -> one token
    temporal_patch_size: int        # 2: a still image is repeated twice along time
    min_pixels: int                 # pixel budget of smart resize
    max_pixels: int
    image_mean: tuple[float, ...]
    image_std: tuple[float, ...]
    resample: str                   # torch interpolate mode

    @property
    def factor(self) -> int:
        return self.patch_size * self.merge_size


def build_tiny_tokenizer(template: str = TINY_CHAT_TEMPLATE):
    return build_byte_bpe(TINY_WORDS, QWEN_SPECIALS, QWEN_NAMED, template)


def token_ids(tokenizer) -> dict[str, int]:
    ids = {name: tokenizer.convert_tokens_to_ids(tok) for name, tok in QWEN_NAMED.items()}
    return {"image_token_id": ids["image_token"], "video_token_id": ids["video_token"],
            "vision_start_token_id": ids["vision_start_token"],
            "vision_end_token_id": ids["vision_end_token"]}


def special_ids(tokenizer) -> dict[str, int]:
    """bos/eos/pad ids of the text config, in the tiny vocabulary (real ones are out of range)."""
    end, pad = (tokenizer.convert_tokens_to_ids(t) for t in ("<|im_end|>", "<|endoftext|>"))
    return {"bos_token_id": pad, "eos_token_id": end, "pad_token_id": pad}


def build_tiny_qwen2_5_vl():
    """Random tiny Qwen2_5_VLForConditionalGeneration + a real Qwen2_5_VLProcessor (fixed seed)."""
    from transformers import (Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration,
                              Qwen2_5_VLProcessor, Qwen2VLImageProcessor, Qwen2VLVideoProcessor)

    tokenizer = build_tiny_tokenizer()
    vision = dict(depth=2, hidden_size=32, intermediate_size=64, num_heads=2, patch_size=14,
                  spatial_merge_size=2, temporal_patch_size=2, window_size=56,
                  fullatt_block_indexes=[1], out_hidden_size=32, tokens_per_second=2)
    # head_dim 16 -> 8 rotary frequencies split over (time, height, width)
    text = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
                num_key_value_heads=1, vocab_size=padded_vocab(tokenizer),
                max_position_embeddings=2048, **special_ids(tokenizer),
                rope_parameters={"rope_type": "default", "rope_theta": 1e6,
                                 "mrope_section": [4, 2, 2]})
    config = Qwen2_5_VLConfig(vision_config=vision, text_config=text, tie_word_embeddings=True,
                              **token_ids(tokenizer))
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(TINY_SEED)
        model = Qwen2_5_VLForConditionalGeneration(config)
    budget = {"min_pixels": 56 * 56, "max_pixels": 112 * 112}
    image_processor = Qwen2VLImageProcessor(patch_size=14, merge_size=2, temporal_patch_size=2,
                                            **budget)
    video_processor = Qwen2VLVideoProcessor(patch_size=14, merge_size=2, temporal_patch_size=2)
    processor = Qwen2_5_VLProcessor(image_processor=image_processor, tokenizer=tokenizer,
                                    video_processor=video_processor,
                                    chat_template=TINY_CHAT_TEMPLATE)
    return model, processor


# --------------------------------------------------------------------------- preprocessing
def resized_size(height: int, width: int, spec: QwenVLSpec, min_pixels: int | None = None,
                 max_pixels: int | None = None) -> tuple[int, int]:
    """(H, W) the processor resizes an image to (transformers' own ``smart_resize``)."""
    from transformers.models.qwen2_vl.image_processing_qwen2_vl import smart_resize

    return smart_resize(height, width, factor=spec.factor,
                        min_pixels=spec.min_pixels if min_pixels is None else min_pixels,
                        max_pixels=spec.max_pixels if max_pixels is None else max_pixels)


def patchify(x: torch.Tensor, spec: QwenVLSpec) -> torch.Tensor:
    """(B,C,H,W) normalised -> (B, gh*gw, C*T*P*P) patch rows in the vision tower's order."""
    b, c, h, w = x.shape
    p, m, t = spec.patch_size, spec.merge_size, spec.temporal_patch_size
    gh, gw = h // p, w // p
    x = x.reshape(b, c, gh // m, m, p, gw // m, m, p)
    # -> (B, gh/m, gw/m, m, m, C, P, P): merged groups row-major, 2x2 inside a group
    x = x.permute(0, 2, 5, 3, 6, 1, 4, 7)
    # a still image: the same frame for every temporal slot of the patch
    x = x.unsqueeze(6).expand(*x.shape[:6], t, p, p)
    return x.reshape(b, gh * gw, c * t * p * p)


def preprocess(images: torch.Tensor, spec: QwenVLSpec, min_pixels: int | None = None,
               max_pixels: int | None = None) -> tuple[torch.Tensor, tuple[int, int, int]]:
    """(B,3,H,W) in [0,1] -> (pixel patches (B, N, C*T*P*P), grid (1, gh, gw)), differentiable.

    Matches ``Qwen2VLImageProcessor`` (used by Qwen2-VL, Qwen2.5-VL and Qwen3-VL) up to the
    rounding of its uint8 resize.
    """
    h, w = images.shape[-2:]
    rh, rw = resized_size(h, w, spec, min_pixels, max_pixels)
    x = images.float()
    if (rh, rw) != (h, w):
        x = F.interpolate(x, size=(rh, rw), mode=spec.resample, antialias=True,
                          align_corners=False)
    x = x.clamp(0.0, 1.0)                                 # the processor's uint8 range
    mean = torch.tensor(spec.image_mean, device=x.device).view(1, 3, 1, 1)
    std = torch.tensor(spec.image_std, device=x.device).view(1, 3, 1, 1)
    x = (x - mean) / std
    return patchify(x, spec), (1, rh // spec.patch_size, rw // spec.patch_size)


def _budget(size) -> tuple[int, int]:
    get = size.get if isinstance(size, dict) else (lambda k: getattr(size, k, None))
    lo, hi = get("shortest_edge"), get("longest_edge")
    if not lo or not hi:
        raise ValueError(f"the Qwen-VL image processor's size {size} has no pixel budget "
                         f"(shortest_edge/longest_edge)")
    return int(lo), int(hi)


# The largest pixel budget any supported Qwen-VL processor uses (Qwen3-VL: 16384 tokens of
# 32x32); a larger one is a typo (1e10 pixels would take ~120 GB as float32).
MAX_PIXELS = 16384 * 32 * 32


# --------------------------------------------------------------------------- the adapter
class QwenVLFamily(VLMFamily):
    """Shared by every Qwen-VL with the 2x2-merged dynamic resolution (2.5-VL, 3-VL)."""

    image_options = {"min_pixels": None, "max_pixels": None}

    def image_spec(self, model, processor) -> QwenVLSpec:
        ip = processor.image_processor
        lo, hi = _budget(ip.size)
        resample = int(getattr(ip, "resample", 3) or 3)
        return QwenVLSpec(patch_size=int(ip.patch_size), merge_size=int(ip.merge_size),
                          temporal_patch_size=int(ip.temporal_patch_size), min_pixels=lo,
                          max_pixels=hi, image_mean=tuple(float(v) for v in ip.image_mean),
                          image_std=tuple(float(v) for v in ip.image_std),
                          resample={2: "bilinear", 3: "bicubic"}.get(resample, "bicubic"))

    def check_image_options(self, options: dict[str, Any]) -> dict[str, Any]:
        out = super().check_image_options(options)
        for key in ("min_pixels", "max_pixels"):
            value = out[key]
            if value is not None and not (isinstance(value, int) and value > 0):
                raise ValueError(f"{key} must be a positive whole number of pixels, got {value!r}")
            if value is not None and value > MAX_PIXELS:
                raise ValueError(f"{key} must be at most {MAX_PIXELS} pixels (16384 vision tokens "
                                 f"of 32x32, the largest budget of the families' processors), "
                                 f"got {value}")
        if out["min_pixels"] and out["max_pixels"] and out["min_pixels"] > out["max_pixels"]:
            raise ValueError(f"min_pixels ({out['min_pixels']}) is larger than max_pixels "
                             f"({out['max_pixels']})")
        return out

    def check_image_size(self, bundle, height: int, width: int, options: dict[str, Any]) -> None:
        spec = bundle.spec
        lo = options.get("min_pixels") or spec.min_pixels
        hi = options.get("max_pixels") or spec.max_pixels
        try:
            resized_size(height, width, spec, lo, max(hi, lo))
        except ValueError as exc:   # e.g. "absolute aspect ratio must be smaller than 200"
            raise ValueError(f"{width}x{height} pixels: {exc}") from None

    def prepare(self, bundle, images: torch.Tensor, options: dict[str, Any]):
        spec = bundle.spec
        self.check_image_size(bundle, *images.shape[-2:], options)   # names the size
        lo = options.get("min_pixels") or spec.min_pixels
        hi = options.get("max_pixels") or spec.max_pixels
        if hi < spec.factor ** 2:
            raise ValueError(f"max_pixels {hi} is below one token ({spec.factor}x{spec.factor} "
                             f"pixels) for {self.name}")
        return preprocess(images.to(bundle.device), spec, lo, max(hi, lo))

    def placeholder(self, bundle, layout: tuple[int, int, int]) -> str:
        t, h, w = layout
        n = t * h * w // bundle.spec.merge_size ** 2
        return self.image_token(bundle.processor) * n

    def model_inputs(self, bundle, input_ids, pixels: Sequence[torch.Tensor], layouts):
        rows = pixels[0].shape[0]
        # text order: row 0 image 1, row 0 image 2, ..., row 1 image 1 ... (the model reads the
        # grids in the same order as the image tokens of the flattened batch)
        pixel_values = torch.cat(list(pixels), dim=1).flatten(0, 1).to(bundle.dtype)
        grid = torch.tensor([list(lay) for lay in layouts] * rows, dtype=torch.long,
                            device=pixel_values.device)
        image_id = bundle.processor.image_token_id
        return {"pixel_values": pixel_values, "image_grid_thw": grid,
                "mm_token_type_ids": (input_ids == image_id).to(torch.int32)}


class Qwen2_5_VLFamily(QwenVLFamily):
    name = "Qwen2.5-VL"
    model_types = ("qwen2_5_vl",)
    tiny_names = ("tiny-qwen2.5-vl",)
    model_class_name = "Qwen2_5_VLForConditionalGeneration"
    example_model_id = "Qwen/Qwen2.5-VL-7B-Instruct"

    def build_tiny(self):
        return build_tiny_qwen2_5_vl()


FAMILY = Qwen2_5_VLFamily()

__all__ = ["FAMILY", "QwenVLFamily", "QwenVLSpec", "build_tiny_qwen2_5_vl", "patchify",
           "preprocess", "resized_size"]
