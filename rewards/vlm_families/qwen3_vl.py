"""Qwen3-VL (``model_type == "qwen3_vl"``): the Qwen-VL dynamic resolution with 16 px patches.

Same preprocessing and placeholder expansion as Qwen2.5-VL (see :mod:`.qwen2_5_vl`): the numbers
differ and are read from the checkpoint's image processor (patch 16, merge 2 -> 32 px per token,
mean/std 0.5). The model adds learned position embeddings interpolated to the image grid and
"deepstack" features from inner vision layers; neither changes what the reward feeds it.

The tiny model: Qwen3VLVisionConfig(hidden 32, 2 blocks, patch 16, merge 2, 8x8 learned
position grid, deepstack from block 0) + Qwen3VLTextConfig(hidden 32, 2 layers, interleaved
mrope), a real ``Qwen3VLProcessor`` + ``Qwen2VLImageProcessor`` (pixel budget 64x64 to 128x128:
4 to 16 image tokens) and the locally built Qwen tokenizer with a ChatML template without a
default system turn (as Qwen3-VL's).
"""
from __future__ import annotations

import torch

from .qwen2_5_vl import QwenVLFamily, build_tiny_tokenizer, chat_template, special_ids, token_ids
from .tiny_tokenizer import padded_vocab

TINY_SEED = 0
TINY_CHAT_TEMPLATE = chat_template(None)


def build_tiny_qwen3_vl():
    """Random tiny Qwen3VLForConditionalGeneration + a real Qwen3VLProcessor (fixed seed)."""
    from transformers import (Qwen2VLImageProcessor, Qwen3VLConfig, Qwen3VLForConditionalGeneration,
                              Qwen3VLProcessor, Qwen3VLVideoProcessor)

    tokenizer = build_tiny_tokenizer(TINY_CHAT_TEMPLATE)
    vision = dict(depth=2, hidden_size=32, intermediate_size=64, num_heads=2, patch_size=16,
                  spatial_merge_size=2, temporal_patch_size=2, out_hidden_size=32,
                  num_position_embeddings=64, deepstack_visual_indexes=[0])
    text = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
                num_key_value_heads=1, head_dim=16, vocab_size=padded_vocab(tokenizer),
                max_position_embeddings=2048, **special_ids(tokenizer),
                rope_parameters={"rope_type": "default", "rope_theta": 5e5,
                                 "mrope_section": [4, 2, 2], "mrope_interleaved": True})
    config = Qwen3VLConfig(vision_config=vision, text_config=text, tie_word_embeddings=True,
                           **token_ids(tokenizer))
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(TINY_SEED)
        model = Qwen3VLForConditionalGeneration(config)
    budget = {"min_pixels": 64 * 64, "max_pixels": 128 * 128}
    mean_std = {"image_mean": [0.5, 0.5, 0.5], "image_std": [0.5, 0.5, 0.5]}
    image_processor = Qwen2VLImageProcessor(patch_size=16, merge_size=2, temporal_patch_size=2,
                                            **budget, **mean_std)
    video_processor = Qwen3VLVideoProcessor(patch_size=16, merge_size=2, temporal_patch_size=2)
    processor = Qwen3VLProcessor(image_processor=image_processor, tokenizer=tokenizer,
                                 video_processor=video_processor, chat_template=TINY_CHAT_TEMPLATE)
    return model, processor


class Qwen3_VLFamily(QwenVLFamily):
    name = "Qwen3-VL"
    model_types = ("qwen3_vl",)
    tiny_names = ("tiny-qwen3-vl",)
    model_class_name = "Qwen3VLForConditionalGeneration"
    example_model_id = "Qwen/Qwen3-VL-8B-Instruct"

    def build_tiny(self):
        return build_tiny_qwen3_vl()


FAMILY = Qwen3_VLFamily()

__all__ = ["FAMILY", "build_tiny_qwen3_vl"]
