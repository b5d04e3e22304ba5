"""Load InternVL (transformers ``-hf`` format) for scoring, and preprocess images differentiably.

Three sources, one interface (``InternVLBundle``: model + processor + the numbers the scorer
needs):

* a hub id (default ``OpenGVLab/InternVL3-14B-hf``; 1B/2B/8B/38B ``-hf`` work the same),
* a local directory holding such a checkpoint,
* ``"tiny"``: the same classes (``InternVLForConditionalGeneration``, ``InternVLProcessor``,
  ``GotOcr2ImageProcessor``, a fast tokenizer with the InternVL special tokens and a chat
  template) with a few-thousand-parameter random model from a fixed seed and a tokenizer built
  locally, so every code path of a real checkpoint runs offline in seconds.

Loaded models are cached per ``(model_id, dtype, device, trust_remote_code)`` so that several
reward terms (aesthetic, style, content, sharpness) share one copy of a 14B model.

The torch preprocessing (:func:`preprocess`) reproduces the processor's pixel values (resize with
antialiased bicubic, optional InternVL tiling + thumbnail, rescale, normalise) with differentiable
ops, so gradients flow from the score back to the image pixels.
"""
from __future__ import annotations

import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from .hub import model_unavailable

DEFAULT_MODEL_ID = "OpenGVLab/InternVL3-14B-hf"
MODEL_FLAG = "--model_id (internvl_scorer.py) / --internvl_model_id (training)"

_DTYPES = {"float32": torch.float32, "fp32": torch.float32, "bfloat16": torch.bfloat16,
           "bf16": torch.bfloat16, "float16": torch.float16, "fp16": torch.float16}


def resolve_dtype(dtype: Any) -> torch.dtype:
    """'float32' | 'bfloat16' | 'float16' (or a torch.dtype) -> torch.dtype; clear error otherwise."""
    if dtype is None:
        return torch.float32
    if isinstance(dtype, torch.dtype):
        if dtype not in (torch.float32, torch.bfloat16, torch.float16):
            raise ValueError(f"unsupported dtype {dtype}; use float32, bfloat16 or float16")
        return dtype
    key = str(dtype).lower().replace("torch.", "")
    if key not in _DTYPES:
        raise ValueError(f"unknown dtype {dtype!r}; valid: float32, bfloat16, float16")
    return _DTYPES[key]


def resolve_device(device: Any) -> torch.device:
    if device is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


@dataclass
class InternVLBundle:
    """A loaded InternVL model with what the scorer needs to build inputs itself."""

    model: Any                 # InternVLForConditionalGeneration, eval, frozen
    processor: Any             # InternVLProcessor (tokenizer + image processor + chat template)
    model_id: str
    dtype: torch.dtype
    device: torch.device
    tile_size: tuple[int, int]      # (H, W) of one vision tile (448 for real checkpoints)
    image_mean: tuple[float, ...]
    image_std: tuple[float, ...]
    resample: str                   # "bicubic" | "bilinear" (torch interpolate mode)
    image_seq_length: int           # tokens per tile after pixel shuffle

    @property
    def tokenizer(self):
        return self.processor.tokenizer


# --------------------------------------------------------------------------- cache
_CACHE: dict[tuple, InternVLBundle] = {}
_LOCK = threading.Lock()


def load_internvl(model_id: str = DEFAULT_MODEL_ID, dtype: Any = "bfloat16", device: Any = None,
                  trust_remote_code: bool = False) -> InternVLBundle:
    """Return the (shared) bundle for ``model_id``; loads it on first use.

    Raises :class:`rewards.hub.ModelUnavailableError` when the checkpoint cannot be found and
    ``ValueError`` when it is not a vision-language InternVL ``-hf`` checkpoint.
    """
    torch_dtype = resolve_dtype(dtype)
    dev = resolve_device(device)
    key_id = model_id if model_id == "tiny" else str(Path(model_id).expanduser()) \
        if Path(model_id).expanduser().exists() else model_id
    key = (key_id, torch_dtype, str(dev), bool(trust_remote_code))
    with _LOCK:
        if key not in _CACHE:
            if model_id == "tiny":
                model, processor = build_tiny_internvl()
            else:
                model, processor = _load_pretrained(key_id, torch_dtype, trust_remote_code)
            model = model.to(device=dev, dtype=torch_dtype).eval().requires_grad_(False)
            _CACHE[key] = _bundle(model, processor, model_id, torch_dtype, dev)
        return _CACHE[key]


def clear_cache() -> None:
    """Drop every cached model (frees memory; the next load reads the checkpoint again)."""
    with _LOCK:
        _CACHE.clear()


def _load_pretrained(model_id: str, dtype: torch.dtype, trust_remote_code: bool):
    from transformers import AutoConfig, AutoProcessor, InternVLForConditionalGeneration

    what = "InternVL model"
    try:
        config = AutoConfig.from_pretrained(model_id, trust_remote_code=trust_remote_code)
    except (OSError, ValueError) as exc:
        if "trust_remote_code" in str(exc):
            raise ValueError(
                f"{model_id!r} needs custom code; the scorer uses transformers' built-in InternVL "
                f"classes: use the '-hf' checkpoint (e.g. OpenGVLab/InternVL3-14B-hf) or pass "
                f"--trust_remote_code if you trust it") from None
        raise model_unavailable(what, model_id, MODEL_FLAG, exc) from None
    check_vision_config(config, model_id)
    try:
        processor = AutoProcessor.from_pretrained(model_id, trust_remote_code=trust_remote_code)
        model = InternVLForConditionalGeneration.from_pretrained(
            model_id, dtype=dtype, trust_remote_code=trust_remote_code)
    except OSError as exc:
        raise model_unavailable(what, model_id, MODEL_FLAG, exc) from None
    return model, processor


def check_vision_config(config, model_id: str) -> None:
    """Refuse checkpoints that cannot look at images, or are not in the ``-hf`` layout."""
    if getattr(config, "vision_config", None) is None:
        raise ValueError(
            f"model {model_id!r} (model_type={getattr(config, 'model_type', '?')!r}) has no "
            f"vision_config: it is not a vision-language model. Pass an InternVL checkpoint in "
            f"transformers '-hf' format, e.g. OpenGVLab/InternVL3-14B-hf, or 'tiny'.")
    if getattr(config, "model_type", "") != "internvl":
        raise ValueError(
            f"model {model_id!r} has model_type={config.model_type!r}; the scorer needs an InternVL "
            f"checkpoint in transformers '-hf' format (model_type 'internvl'), e.g. "
            f"OpenGVLab/InternVL3-14B-hf")


def _size_hw(size) -> tuple[int, int]:
    if isinstance(size, dict):
        return int(size["height"]), int(size["width"])
    return int(size.height), int(size.width)


def _bundle(model, processor, model_id, dtype, device) -> InternVLBundle:
    ip = processor.image_processor
    resample = int(getattr(ip, "resample", 3) or 3)
    # PIL codes: 2 = bilinear, 3 = bicubic. Real InternVL checkpoints use bicubic.
    mode = {2: "bilinear", 3: "bicubic"}.get(resample, "bicubic")
    cfg = model.config
    seq = getattr(processor, "image_seq_length", None) or cfg.image_seq_length
    return InternVLBundle(
        model=model, processor=processor, model_id=model_id, dtype=dtype, device=device,
        tile_size=_size_hw(ip.size), image_mean=tuple(float(m) for m in ip.image_mean),
        image_std=tuple(float(s) for s in ip.image_std), resample=mode, image_seq_length=int(seq))


# --------------------------------------------------------------------------- tiny model
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


def build_tiny_tokenizer():
    """Byte-level BPE over the 256 byte symbols + merges for digits/answer words (local, no files)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from tokenizers.pre_tokenizers import ByteLevel
    from transformers import PreTrainedTokenizerFast

    alphabet = ByteLevel.alphabet()
    vocab = {ch: i for i, ch in enumerate(sorted(alphabet))}
    merges = []

    def add_word(word: str):
        # left-to-right merge chain: ((w0 w1) w2) ... ; each intermediate becomes a token
        cur = word[0]
        for ch in word[1:]:
            pair = (cur, ch)
            cur = cur + ch
            if cur not in vocab:
                vocab[cur] = len(vocab)
                merges.append(pair)

    for d in "0123456789":
        add_word("\u0120" + d)        # "Ġ7" = " 7"
    for w in TINY_WORDS:
        add_word(w)
        # " word" = one merge of "Ġ" with the finished word (a chain Ġ+w0+... would lose to
        # the word's own lower-ranked merges and never complete)
        vocab["\u0120" + w] = len(vocab)
        merges.append(("\u0120", w))
    tok = Tokenizer(models.BPE(vocab=vocab, merges=merges))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok, eos_token="<|im_end|>", pad_token="<|endoftext|>",
        extra_special_tokens={"start_image_token": "<img>", "end_image_token": "</img>",
                              "context_image_token": "<IMG_CONTEXT>", "video_token": "<video>"},
    )
    fast.add_special_tokens({"extra_special_tokens": list(_TINY_SPECIALS)},
                            replace_extra_special_tokens=False)
    fast.chat_template = TINY_CHAT_TEMPLATE
    fast.padding_side = "left"
    return fast


def build_tiny_internvl():
    """Random tiny InternVLForConditionalGeneration + a real InternVLProcessor (fixed seed)."""
    from transformers import (GotOcr2ImageProcessor, InternVLConfig, InternVLForConditionalGeneration,
                              InternVLProcessor, InternVLVideoProcessor, InternVLVisionConfig,
                              Qwen2Config)

    tokenizer = build_tiny_tokenizer()
    patch, downsample = 8, 0.5
    seq = int((TINY_IMAGE_SIZE // patch) ** 2 * downsample ** 2)        # 16 tokens per tile
    vision = InternVLVisionConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                                  intermediate_size=64, image_size=TINY_IMAGE_SIZE, patch_size=patch)
    vocab = ((len(tokenizer) + 63) // 64) * 64
    text = Qwen2Config(hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                       num_attention_heads=2, num_key_value_heads=1, vocab_size=vocab,
                       max_position_embeddings=1024, tie_word_embeddings=True)
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


def num_tiles(height: int, width: int, tile: tuple[int, int], max_tiles: int) -> int:
    cols, rows = tile_grid(height, width, tile, max_tiles)
    n = cols * rows
    return n + 1 if n > 1 else 1          # + thumbnail when the image was split


def preprocess(images: torch.Tensor, bundle_or_cfg, max_tiles: int = 1) -> torch.Tensor:
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
    cols, rows = tile_grid(h, w, (th, tw), max_tiles)

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
    mean = torch.tensor(cfg.image_mean, device=x.device).view(1, 1, 3, 1, 1)
    std = torch.tensor(cfg.image_std, device=x.device).view(1, 1, 3, 1, 1)
    tiles = (tiles - mean) / std
    return tiles.flatten(0, 1)
