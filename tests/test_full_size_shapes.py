"""Real-size shapes on fake tensors: seconds, no memory, no weights.

The models are built from the real configurations (alignprop/configs/: FLUX.1 Kontext-dev,
InternVL3-14B-hf) inside torch's FakeTensorMode, so every tensor has its real shape and no
storage. To keep the suite fast the DEPTH is trimmed (1 double + 1 single transformer block,
1 vision + 1 language layer for InternVL); every width, head count, patch size, channel count,
token count and the VAE are real. A shape bug at 512 or 1024 px, with K = 1 or a random K, or
at InternVL's real tile and image-token count fails here.
"""
import json
import random

import pytest
import torch

from alignprop.estimate import (CONFIG_DIR, _learned_probes, internvl_config, internvl_forward,
                                kontext_configs)
from alignprop.fakemem import Tracker, fake_mode
from alignprop.lora import add_lora
from alignprop.sampler import KontextSampler, PromptEmbeds

TARGETS = ["attn.to_q", "attn.to_k", "attn.to_v", "attn.to_out.0", "ff.net.2"]


@pytest.fixture(autouse=True)
def bf16_default():
    old = torch.get_default_dtype()
    torch.set_default_dtype(torch.bfloat16)
    yield
    torch.set_default_dtype(old)


def _kontext():
    from diffusers import AutoencoderKL, FluxTransformer2DModel

    cfg, _ = kontext_configs("black-forest-labs/FLUX.1-Kontext-dev")
    t = {k: v for k, v in cfg["transformer"].items() if not k.startswith("_")}
    t.update(num_layers=1, num_single_layers=1)            # depth trimmed, widths real
    transformer = FluxTransformer2DModel.from_config(t)
    vae = AutoencoderKL.from_config({k: v for k, v in cfg["vae"].items() if not k.startswith("_")})
    return transformer, vae.requires_grad_(False), cfg["scheduler"]


@pytest.mark.parametrize("size", [512, 1024])
@pytest.mark.parametrize("k_mode", ["K=1", "random K"])
def test_sampler_at_real_size(size, k_mode):
    from diffusers import FlowMatchEulerDiscreteScheduler
    from torch._subclasses.fake_tensor import unset_fake_temporarily

    n = 3
    k = 1 if k_mode == "K=1" else random.Random(size).randint(1, n)
    with fake_mode():
        transformer, vae, sched_cfg = _kontext()
        lora = add_lora(transformer, 4, 4, TARGETS)
        transformer.enable_gradient_checkpointing()
        with unset_fake_temporarily():
            sched = FlowMatchEulerDiscreteScheduler.from_config(sched_cfg)
            sampler = KontextSampler(transformer, vae, sched, transformer.config, size, size, n,
                                     dtype=torch.bfloat16)
        assert (sampler.latent_h, sampler.latent_w) == (size // 8, size // 8)
        text = PromptEmbeds(torch.zeros(1, 512, 4096), torch.zeros(1, 768), torch.zeros(512, 3))
        inputs = torch.rand(1, 3, size, size, dtype=torch.float32)
        tokens = sampler.encode_image(inputs)
        assert tokens.shape == (1, (size // 16) ** 2, 64)
        out, latents = sampler.sample(inputs, text, backprop_steps=k, image_tokens=tokens,
                                      generator=torch.Generator().manual_seed(0),
                                      return_latents=True)
        assert out.shape == (1, 3, size, size) and out.requires_grad
        assert latents.shape == (1, (size // 16) ** 2, 64)
        out.float().mean().backward()
        assert all(p.grad is not None and p.grad.shape == p.shape for p in lora)


def _tiles(n_img, max_tiles, h, w):
    from rewards.internvl_model import num_tiles

    return [num_tiles(h, w, (448, 448), max_tiles)] * n_img


@pytest.mark.parametrize("model_id, task, max_tiles, hw", [
    ("OpenGVLab/InternVL3-14B-hf", "single", 1, (512, 512)),
    ("OpenGVLab/InternVL3-14B-hf", "content-similarity", 1, (1024, 1024)),
    ("OpenGVLab/InternVL3-14B-hf", "single", 12, (512, 1024)),
    ("OpenGVLab/InternVL3-38B-hf", "single", 1, (512, 512)),      # InternViT-6B vision tower
])
def test_internvl_reward_at_real_tile_and_token_count(model_id, task, max_tiles, hw):
    from transformers import InternVLForConditionalGeneration

    from alignprop.estimate import _vlm_tokens
    from rewards.internvl_model import preprocess
    from common.qwen_vocab import IMAGE_TOKEN_ID, build_internvl3_processor
    from rewards.vlm import find_answer_tokens
    from rewards.vlm_prompts import DEFAULT_PROMPTS, TASK_IMAGES, parse_answer_scale

    cfg, _ = internvl_config(model_id)
    assert cfg.image_seq_length == 256 and cfg.image_token_id == IMAGE_TOKEN_ID
    cfg.vision_config.num_hidden_layers = 1                 # depth trimmed, widths real
    cfg.text_config.num_hidden_layers = 1
    processor = build_internvl3_processor(image_seq_length=cfg.image_seq_length)
    n_img = TASK_IMAGES[task]
    tiles = _tiles(n_img, max_tiles, *hw)
    ids = _vlm_tokens(processor, task, DEFAULT_PROMPTS[task], "", tiles)
    assert ids.count(IMAGE_TOKEN_ID) == 256 * sum(tiles)
    scale = parse_answer_scale(None, task)
    answers = find_answer_tokens(processor.tokenizer, scale.words)

    class Spec:
        tile_size, resample = (448, 448), "bicubic"
        image_mean, image_std = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)

    with fake_mode():
        model = InternVLForConditionalGeneration(cfg).eval().requires_grad_(False)
        images = torch.rand(2, 3, *hw, dtype=torch.float32, requires_grad=True)
        pv = torch.cat([preprocess(images, Spec, max_tiles).view(2, -1, 3, 448, 448)] * n_img, 1)
        assert pv.shape[1] == sum(tiles)
        feats = model.get_image_features(pixel_values=pv.flatten(0, 1).to(torch.bfloat16),
                                         vision_feature_layer=-1,
                                         vision_feature_select_strategy="default")
        feats = getattr(feats, "pooler_output", feats)
        # the vision tower's tokens per tile after pixel shuffle = the processor's expansion
        assert feats.shape == (2 * sum(tiles), 256, cfg.text_config.hidden_size)
        logp = internvl_forward(model, ids, IMAGE_TOKEN_ID, pv.flatten(0, 1).to(torch.bfloat16),
                                2, answers)
        assert logp.shape == (2, len(scale.words))
        logp.sum().backward()
        assert images.grad is not None and images.grad.shape == images.shape


@pytest.mark.parametrize("spec", [
    {"name": "lpips", "net": "alex", "resolution": 256},
    {"name": "lpips", "net": "vgg", "resolution": 256},
    {"name": "lpips", "net": "squeeze", "resolution": 512},
    {"name": "face"},
    {"name": "aesthetic_scorer"},
    {"name": "aesthetic_v25"},
    {"name": "imagereward", "params": 446_206_689},  # BLIP ViT-L/16 + BERT-base + MLP
    {"name": "hpsv2", "params": 986_109_441},        # OpenCLIP ViT-H-14
    {"name": "pickscore", "params": 986_109_441},    # CLIP ViT-H/14 (same size)
], ids=lambda s: s["name"] + ("-" + s["net"] if "net" in s else ""))
def test_learned_rewards_at_real_input_size(spec):
    """LPIPS trunks at their resolution, FaceNet at 160 px, CLIP ViT-L/14 at 224 px, SigLIP
    so400m at 384 px, the preference models at 224 px (real depth). AIDE's model lives in the
    user's clone of the AIDE repository, so it is not built here."""
    torch.set_default_dtype(torch.float32)
    with fake_mode(), Tracker() as tr:
        probes, _, params = _learned_probes([{**spec, "term": "t", "weight": 1.0}], tr)
        images = torch.rand(2, 3, 512, 512, requires_grad=True)
        scores = probes[0].run(images, torch.rand(2, 3, 512, 512))
        assert scores.shape == (2,)
        scores.float().sum().backward()
        assert images.grad is not None and images.grad.shape == images.shape
    total = list(params.values())[0]["total"]
    assert total > 5e5    # real trunks (squeeze: 0.7M)
    if "params" in spec:
        assert total == spec["params"]


def test_shipped_configs_are_complete():
    data = json.loads((CONFIG_DIR / "flux1_kontext_dev.json").read_text())
    assert {"transformer", "vae", "scheduler", "text_encoder", "text_encoder_2"} <= set(data)
    assert len(list(CONFIG_DIR.glob("internvl3_*_hf.json"))) == 5
