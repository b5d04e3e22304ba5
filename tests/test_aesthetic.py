"""Aesthetic rewards (LAION/CLIP and v2.5/SigLIP) on tiny random backbones."""
import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from rewards import build_reward
from rewards.aesthetic import (AestheticV25Head, LaionAestheticHead, make_aesthetic_v25_reward,
                               make_laion_aesthetic_reward, tiny_clip_vision_config,
                               tiny_siglip_vision_config)
from common.hub import ModelUnavailableError

FACTORIES = {"laion": make_laion_aesthetic_reward, "v25": make_aesthetic_v25_reward}


def _photo(h=48, w=64):
    from skimage import data
    import torch.nn.functional as F

    x = torch.from_numpy(data.chelsea()).permute(2, 0, 1).float()[None] / 255.0
    return F.interpolate(x, size=(h, w), mode="bilinear", antialias=True, align_corners=False)


def test_head_layouts_match_the_published_files():
    laion = LaionAestheticHead(768).state_dict()
    assert {k: tuple(v.shape) for k, v in laion.items() if k.endswith("weight")} == {
        "layers.0.weight": (1024, 768), "layers.2.weight": (128, 1024), "layers.4.weight": (64, 128),
        "layers.6.weight": (16, 64), "layers.7.weight": (1, 16)}
    v25 = AestheticV25Head(1152).state_dict()
    assert sorted(k for k in v25 if k.endswith("weight")) == [
        f"scoring_head.{i}.weight" for i in (0, 2, 4, 6, 8)]
    assert v25["scoring_head.0.weight"].shape == (1024, 1152)


@pytest.mark.parametrize("kind", sorted(FACTORIES))
def test_gradients_shapes_and_frozen_params(kind):
    reward = FACTORIES[kind](pretrained=False, device="cpu")
    x = torch.cat([_photo(), torch.rand(1, 3, 48, 64)]).requires_grad_(True)
    scores, metrics = reward(x, None, None)
    assert scores.shape == (2,) and torch.isfinite(scores).all() and scores[0] != scores[1]
    assert list(metrics.values())[0] == pytest.approx(scores.mean().item(), rel=1e-6)
    scores.sum().backward()
    assert x.grad.abs().sum() > 0
    params = list(reward.vision.parameters()) + list(reward.head.parameters())
    assert all(not p.requires_grad and p.grad is None for p in params)
    assert not reward.vision.training and not reward.head.training  # dropout off


def test_laion_preprocessing_matches_clip_image_processor():
    from PIL import Image
    from transformers import CLIPImageProcessor

    reward = make_laion_aesthetic_reward(pretrained=False, device="cpu")
    x = _photo(48, 64)
    proc = CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32})
    pil = Image.fromarray((x[0].permute(1, 2, 0).numpy() * 255).round().astype(np.uint8))
    ref = proc(images=pil, return_tensors="pt").pixel_values
    ours = reward.preprocess(x)
    assert ours.shape == ref.shape == (1, 3, 32, 32)
    assert (ours - ref).abs().mean() < 0.03  # PIL vs torch bicubic differ slightly


def test_v25_preprocessing_matches_siglip_image_processor():
    from PIL import Image
    from transformers import SiglipImageProcessor

    reward = make_aesthetic_v25_reward(pretrained=False, device="cpu")
    x = _photo(48, 64)
    proc = SiglipImageProcessor(size={"height": 32, "width": 32})
    pil = Image.fromarray((x[0].permute(1, 2, 0).numpy() * 255).round().astype(np.uint8))
    ref = proc(images=pil, return_tensors="pt").pixel_values
    ours = reward.preprocess(x)
    assert ours.shape == ref.shape == (1, 3, 32, 32)
    assert (ours - ref).abs().mean() < 0.03


def test_laion_loads_local_clip_dir_and_head_files(tmp_path):
    """A full CLIPModel directory (the hub layout of openai/clip-*) + .pth / .safetensors heads."""
    from transformers import CLIPConfig, CLIPModel

    torch.manual_seed(0)
    vcfg = tiny_clip_vision_config().to_dict()
    tcfg = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2,
                vocab_size=100, max_position_embeddings=16)
    full = CLIPModel(CLIPConfig(vision_config=vcfg, text_config=tcfg, projection_dim=16))
    full.save_pretrained(tmp_path / "clip")
    head = LaionAestheticHead(16)
    torch.save(head.state_dict(), tmp_path / "head.pth")
    save_file(head.state_dict(), tmp_path / "head.safetensors")
    (tmp_path / "headdir").mkdir()
    torch.save(head.state_dict(), tmp_path / "headdir" / "aesthetic-model.pth")
    x = _photo()
    with torch.no_grad():
        e = full.get_image_features(pixel_values=make_laion_aesthetic_reward(
            pretrained=False, device="cpu").preprocess(x))
        e = e.pooler_output if hasattr(e, "pooler_output") else e
        expected = head.eval()(e / e.norm(dim=-1, keepdim=True)).reshape(1)
    for head_path in ("head.pth", "head.safetensors", "headdir"):
        reward = make_laion_aesthetic_reward(clip_model=str(tmp_path / "clip"),
                                             head_path=str(tmp_path / head_path), device="cpu")
        torch.testing.assert_close(reward(x, None, None)[0], expected, rtol=1e-4, atol=1e-5)


def test_v25_loads_local_siglip_dir_and_head_file(tmp_path):
    from transformers import SiglipVisionModel

    torch.manual_seed(0)
    vision = SiglipVisionModel(tiny_siglip_vision_config()).eval()
    vision.save_pretrained(tmp_path / "siglip")
    head = AestheticV25Head(32).eval()
    torch.save({f"layers.{k}": v for k, v in head.state_dict().items()}, tmp_path / "full.pth")
    torch.save(head.state_dict(), tmp_path / "head.pth")
    x = _photo()
    pre = make_aesthetic_v25_reward(pretrained=False, device="cpu").preprocess
    with torch.no_grad():
        e = vision(pixel_values=pre(x)).pooler_output
        expected = head(e / e.norm(dim=-1, keepdim=True)).reshape(1)
    for name in ("head.pth", "full.pth"):
        reward = make_aesthetic_v25_reward(model_path=str(tmp_path / name),
                                           encoder=str(tmp_path / "siglip"), device="cpu")
        torch.testing.assert_close(reward(x, None, None)[0], expected, rtol=1e-4, atol=1e-5)


def test_missing_weights_give_one_clear_error(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    with pytest.raises(ModelUnavailableError, match="openai/clip-vit-large-patch14.*clip_model="):
        make_laion_aesthetic_reward(device="cpu")
    with pytest.raises(ModelUnavailableError, match="siglip-so400m.*encoder="):
        make_aesthetic_v25_reward(device="cpu")
    from transformers import SiglipVisionModel

    SiglipVisionModel(tiny_siglip_vision_config()).save_pretrained(tmp_path / "siglip")
    with pytest.raises(ModelUnavailableError) as err:
        make_aesthetic_v25_reward(encoder=str(tmp_path / "siglip"), device="cpu")
    assert "aesthetic_predictor_v2_5.pth" in str(err.value) and "model_path=" in str(err.value)
    torch.save({"layers.0.weight": torch.zeros(3, 3)}, tmp_path / "bad.pth")
    with pytest.raises(ModelUnavailableError, match="does not fit"):
        make_aesthetic_v25_reward(encoder=str(tmp_path / "siglip"), model_path=str(tmp_path / "bad.pth"),
                                  device="cpu")


def test_registry_and_trust_remote_code_default():
    import inspect

    for name in ("aesthetic_scorer", "aesthetic_v25"):
        reward = build_reward(name, pretrained=False, device="cpu")
        assert reward(torch.rand(1, 3, 40, 40), None, None)[0].shape == (1,)
    for fn in FACTORIES.values():
        assert inspect.signature(fn).parameters["trust_remote_code"].default is False
