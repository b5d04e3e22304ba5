"""The built-in tiny FLUX Kontext: the real classes with small configs and seeded weights.

Same classes as FLUX.1 Kontext (FluxTransformer2DModel, AutoencoderKL, CLIPTextModel,
T5EncoderModel, CLIP and T5 tokenizers), random weights from a fixed seed, so every code path
of the real model runs on a CPU in seconds. Its tokenizers are built locally (no download).
``tiny-photo`` (:mod:`alignprop.tiny_photo`) is this model with weights pretrained on photos.
"""
from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

import torch

TINY = "tiny"
TINY_SEED = 0
# Same classes, weights pretrained on bundled photos (alignprop/tiny_photo.py): keeps and
# edits photos, for demos and tests where the image must mean something.
TINY_PHOTO = "tiny-photo"


# --------------------------------------------------------------------------- tokenizers
def _bytes_to_unicode() -> dict[int, str]:
    # GPT-2/CLIP byte-level alphabet: every byte maps to a printable unicode char.
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(
        range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, (chr(c) for c in cs)))


def _tiny_tokenizer_dir() -> Path:
    """Write (once) the files of a character-level CLIP BPE tokenizer."""
    root = Path(os.environ.get("ALIGNPROP_CACHE", Path(tempfile.gettempdir()) / "alignprop_tiny"))
    clip_dir = root / "clip_tokenizer_v1"
    if not (clip_dir / "merges.txt").exists():
        clip_dir.mkdir(parents=True, exist_ok=True)
        chars = list(_bytes_to_unicode().values())
        vocab = {c: i for i, c in enumerate(chars)}
        for c in chars:
            vocab[c + "</w>"] = len(vocab)
        vocab["<|startoftext|>"] = len(vocab)
        vocab["<|endoftext|>"] = len(vocab)
        tmp = clip_dir / f"vocab.json.{os.getpid()}"
        tmp.write_text(json.dumps(vocab))
        os.replace(tmp, clip_dir / "vocab.json")
        tmp = clip_dir / f"merges.txt.{os.getpid()}"
        tmp.write_text("#version: 0.2\n")
        os.replace(tmp, clip_dir / "merges.txt")
    return clip_dir


def tiny_clip_tokenizer():
    from transformers import CLIPTokenizer

    d = _tiny_tokenizer_dir()
    return CLIPTokenizer(str(d / "vocab.json"), str(d / "merges.txt"), model_max_length=77)


def tiny_t5_tokenizer():
    """A Unigram (sentencepiece-style) T5 tokenizer over printable ASCII."""
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers
    from tokenizers.processors import TemplateProcessing
    from transformers import T5TokenizerFast

    pieces = [("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0), ("▁", -2.0)]
    pieces += [(chr(c), -3.0) for c in range(32, 127)]
    pieces += [("▁" + chr(c), -2.5) for c in range(33, 127)]
    tok = Tokenizer(models.Unigram(pieces, unk_id=2, byte_fallback=False))
    tok.normalizer = normalizers.Sequence([normalizers.Replace(" {2,}", " ")])
    tok.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="always")
    tok.decoder = decoders.Metaspace(replacement="▁", prepend_scheme="always")
    tok.post_processor = TemplateProcessing(single="$A </s>", pair="$A </s> $B </s>",
                                            special_tokens=[("</s>", 1)])
    return T5TokenizerFast(tokenizer_object=tok, pad_token="<pad>", eos_token="</s>",
                           unk_token="<unk>", extra_ids=0, model_max_length=512)


# --------------------------------------------------------------------------- tiny model
def build_tiny_pipeline(dtype: torch.dtype = torch.float32):
    """Built-in tiny FluxKontextPipeline: real classes, small configs, seeded weights."""
    from diffusers import (AutoencoderKL, FlowMatchEulerDiscreteScheduler, FluxKontextPipeline,
                           FluxTransformer2DModel)
    from transformers import CLIPTextConfig, CLIPTextModel, T5Config, T5EncoderModel

    clip_tok = tiny_clip_tokenizer()
    t5_tok = tiny_t5_tokenizer()

    torch.manual_seed(TINY_SEED)
    transformer = FluxTransformer2DModel(
        patch_size=1, in_channels=16, num_layers=1, num_single_layers=1,
        attention_head_dim=16, num_attention_heads=2, joint_attention_dim=32,
        pooled_projection_dim=32, axes_dims_rope=[4, 4, 8], guidance_embeds=True)
    torch.manual_seed(TINY_SEED + 1)
    vae = AutoencoderKL(
        in_channels=3, out_channels=3,
        down_block_types=("DownEncoderBlock2D", "DownEncoderBlock2D"),
        up_block_types=("UpDecoderBlock2D", "UpDecoderBlock2D"),
        block_out_channels=(8, 16), layers_per_block=1, latent_channels=4,
        norm_num_groups=4, sample_size=64, use_quant_conv=False, use_post_quant_conv=False,
        shift_factor=0.0609, scaling_factor=1.5035)
    torch.manual_seed(TINY_SEED + 2)
    text_encoder = CLIPTextModel(CLIPTextConfig(
        vocab_size=len(clip_tok), hidden_size=32, intermediate_size=37, num_hidden_layers=2,
        num_attention_heads=4, max_position_embeddings=77, projection_dim=32,
        bos_token_id=clip_tok.bos_token_id, eos_token_id=clip_tok.eos_token_id,
        pad_token_id=clip_tok.pad_token_id))
    torch.manual_seed(TINY_SEED + 3)
    text_encoder_2 = T5EncoderModel(T5Config(
        vocab_size=len(t5_tok), d_model=32, d_kv=8, d_ff=37, num_layers=2, num_heads=4,
        relative_attention_num_buckets=8, decoder_start_token_id=0, pad_token_id=0,
        eos_token_id=1))
    scheduler = FlowMatchEulerDiscreteScheduler(shift=3.0, use_dynamic_shifting=True,
                                                base_shift=0.5, max_shift=1.15,
                                                base_image_seq_len=256, max_image_seq_len=4096)
    pipe = FluxKontextPipeline(
        scheduler=scheduler, vae=vae, text_encoder=text_encoder, tokenizer=clip_tok,
        text_encoder_2=text_encoder_2, tokenizer_2=t5_tok, transformer=transformer)
    pipe.tokenizer_max_length = 77
    # Modules built from configs start in train mode (T5 has dropout 0.1); from_pretrained
    # returns eval mode, and so must the tiny model or text embeddings are random.
    for module in (transformer, vae, text_encoder, text_encoder_2):
        module.eval()
    if dtype != torch.float32:
        pipe.to(dtype=dtype)
    return pipe


__all__ = ["TINY", "TINY_PHOTO", "TINY_SEED", "build_tiny_pipeline", "tiny_clip_tokenizer",
           "tiny_t5_tokenizer"]
