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

from alignprop.estimate import CONFIG_DIR, internvl_config, kontext_configs
from alignprop.fakemem import Tracker, fake_mode, param_counts
from rewards.vlm_model import clear_weightless_cache
from torch._subclasses.fake_tensor import unset_fake_temporarily
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
    """The registry's weightless build of the VLM reward (what --estimate traces): the reward's
    own preprocessing, token ids and the model's own forward, at the real tile and token count
    and the real widths, with the real Qwen2.5 vocabulary."""
    from common.qwen_vocab import IMAGE_TOKEN_ID
    from rewards import build_weightless
    from rewards.vlm_prompts import TASK_IMAGES

    cfg, _ = internvl_config(model_id)
    assert cfg.image_seq_length == 256 and cfg.image_token_id == IMAGE_TOKEN_ID
    cfg.vision_config.num_hidden_layers = 1                 # depth trimmed, widths real
    cfg.text_config.num_hidden_layers = 1
    n_img = TASK_IMAGES[task]
    tiles = _tiles(n_img, max_tiles, *hw)
    spec = {"name": "internvl", "term": "t", "weight": 1.0, "task": task, "model_id": model_id,
            "dtype": "bfloat16", "max_tiles": max_tiles, "calibration": "none"}
    try:
        with fake_mode(), Tracker():
            reward = build_weightless(spec, device="cpu", config=cfg).fn
            with unset_fake_temporarily():   # token ids are real numbers (the tokenizer's)
                ids = reward.input_ids(tiles)[0].tolist()
            assert ids.count(IMAGE_TOKEN_ID) == 256 * sum(tiles)
            images = torch.rand(2, 3, *hw, dtype=torch.float32, requires_grad=True)
            slots = [reward._prepare(x) for x in reward.slots_for(images, torch.rand(2, 3, *hw))]
            assert [s.layout for s in slots] == tiles
            feats = reward.bundle.model.get_image_features(
                pixel_values=slots[0].pixels.flatten(0, 1).to(torch.bfloat16),
                vision_feature_layer=-1, vision_feature_select_strategy="default")
            feats = getattr(feats, "pooler_output", feats)
            # the vision tower's tokens per tile after pixel shuffle = the processor's expansion
            assert feats.shape == (2 * tiles[0], 256, cfg.text_config.hidden_size)
            scores, _ = reward(images, torch.rand(2, 3, *hw), ["x", "x"])
            assert scores.shape == (2,)
            scores.float().sum().backward()
            assert images.grad is not None and images.grad.shape == images.shape
    finally:
        clear_weightless_cache()


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
    """The registry's weightless builds (each reward's own factory and preprocessing, what
    --estimate traces): LPIPS trunks at their resolution, FaceNet at 160 px, CLIP ViT-L/14 at
    224 px, SigLIP so400m at 384 px, the preference models at 224 px (real depth). AIDE's model
    lives in the user's clone of the AIDE repository, so it is not built here."""
    from transformers.initialization import no_init_weights

    from alignprop.estimate.trace import _modules_of
    from rewards import build_weightless

    torch.set_default_dtype(torch.float32)
    params = {k: v for k, v in spec.items() if k != "params"}
    with fake_mode(), Tracker():
        with no_init_weights():
            term = build_weightless({**params, "term": "t", "weight": 1.0}, device="cpu")
        images = torch.rand(2, 3, 512, 512, requires_grad=True)
        scores, _ = term.fn(images, torch.rand(2, 3, 512, 512), ["a photo", "a photo"])
        assert scores.shape == (2,)
        scores.float().sum().backward()
        assert images.grad is not None and images.grad.shape == images.shape
    total = sum(param_counts(m)["total"] for m in _modules_of(term.fn)
                if m is not getattr(term.fn, "head", None) or spec["name"].startswith("aes"))
    assert total > 5e5    # real trunks (squeeze: 0.7M)
    if "params" in spec:
        assert total == spec["params"]


def test_shipped_configs_are_complete():
    data = json.loads((CONFIG_DIR / "flux1_kontext_dev.json").read_text())
    assert {"transformer", "vae", "scheduler", "text_encoder", "text_encoder_2"} <= set(data)
    assert len(list(CONFIG_DIR.glob("internvl3_*_hf.json"))) == 5
