"""DreamSim reward: parity with the dreamsim package's own loader on the same (small, random)
checkpoint files, gradients, ranking, reference-image (style) mode, offline errors."""
import json
from functools import partial

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from rewards import build_reward
from common.hub import ModelUnavailableError
from rewards.perceptual import make_dreamsim_reward


def _photo(name="chelsea", size=224):
    from skimage import data

    x = torch.from_numpy(getattr(data, name)()[:300, :300]).permute(2, 0, 1)[None].float() / 255
    x = F.interpolate(x, size=(size, size), mode="bilinear", antialias=True, align_corners=False)
    return (x * 255).round() / 255


def _pil(x):
    return Image.fromarray((x[0].permute(1, 2, 0).numpy() * 255).round().astype(np.uint8))


@pytest.fixture
def small_checkpoint(tmp_path, monkeypatch):
    return write_small_checkpoint(tmp_path, monkeypatch)


def write_small_checkpoint(tmp_path, monkeypatch):
    """The files of the package's open_clip_vitb32 zip, with a small random ViT; the
    package's ``vit_base`` is patched (via ``monkeypatch``) to build that small ViT."""
    import peft
    from dreamsim.feature_extraction import load_open_clip_as_dino as loader
    from dreamsim.feature_extraction.vision_transformer import VisionTransformer
    from dreamsim.model import PerceptualModel

    def small_vit_base(patch_size=16, **kw):
        return VisionTransformer(patch_size=patch_size, embed_dim=32, depth=2, num_heads=2,
                                 mlp_ratio=4, qkv_bias=True,
                                 norm_layer=partial(torch.nn.LayerNorm, eps=1e-6), **kw)

    monkeypatch.setattr(loader, "vit_base", small_vit_base)
    torch.manual_seed(0)
    vit = small_vit_base(32)
    vit.pos_drop = torch.nn.LayerNorm(32)
    for p in vit.parameters():
        torch.nn.init.normal_(p, std=0.2)
    torch.save({"state_dict": {**vit.state_dict(), "proj": torch.randn(32, 16)}},
               tmp_path / "open_clip_vitb32_pretrain.pth.tar")
    model = PerceptualModel(feat_type="embedding", model_type="open_clip_vitb32", stride="32",
                            lora=True, load_dir=str(tmp_path), device="cpu", normalize_embeds=True)
    model = peft.get_peft_model(model, peft.LoraConfig(r=4, lora_alpha=8, lora_dropout=0.0,
                                                       target_modules=["qkv"]))
    for name, p in model.named_parameters():
        if "lora_B" in name:
            torch.nn.init.normal_(p, std=0.1)
    model.save_pretrained(tmp_path / "open_clip_vitb32_single_lora")
    assert json.loads((tmp_path / "open_clip_vitb32_single_lora" / "adapter_config.json")
                      .read_text())["r"] == 4
    return tmp_path


@pytest.mark.filterwarnings("ignore::UserWarning")
def test_parity_with_the_dreamsim_package(small_checkpoint):
    from dreamsim import dreamsim

    ref, ref_pre = dreamsim(pretrained=True, device="cpu", cache_dir=str(small_checkpoint),
                            dreamsim_type="open_clip_vitb32")
    ours = make_dreamsim_reward(model_dir=str(small_checkpoint), device="cpu")
    a, b = _photo("chelsea"), _photo("astronaut")
    with torch.no_grad():
        expected = ref(ref_pre(_pil(a)), ref_pre(_pil(b)))
        got, metrics = ours(a, b, None)
        # Off-size images: our torch resize vs the package's PIL resize.
        a64, b64 = _photo("chelsea", 64), _photo("astronaut", 64)
        expected64 = ref(ref_pre(_pil(a64)), ref_pre(_pil(b64)))
        got64, _ = ours(a64, b64, None)
    torch.testing.assert_close(1 - got, expected.reshape(1), rtol=1e-5, atol=1e-6)
    assert expected.item() > 1e-3 and metrics["distance"] == pytest.approx(expected.item(), rel=1e-5)
    torch.testing.assert_close(1 - got64, expected64.reshape(1), rtol=0, atol=0.05 * expected64.item())


def test_gradients_ranking_and_reference_mode():
    reward = build_reward("dreamsim", pretrained=False, device="cpu")
    x = _photo("chelsea", 64)
    same, _ = reward(x, x, None)
    assert same.item() == pytest.approx(1.0, abs=1e-5)
    g = torch.Generator().manual_seed(0)
    noise = torch.randn(x.shape, generator=g)
    scores = [reward((x + s * noise).clamp(0, 1), x, None)[0].item() for s in (0.05, 0.2, 0.5)]
    assert scores == sorted(scores, reverse=True) and scores[-1] < 1.0
    y = x.clone().requires_grad_(True)
    s, _ = reward(y, torch.rand(1, 3, 64, 64), None)
    s.sum().backward()
    assert y.grad.abs().sum() > 0
    assert all(not p.requires_grad for p in reward.model.parameters())
    styled = build_reward("dreamsim", pretrained=False, device="cpu", reference=x[0])
    assert styled(x, None, None)[0].item() == pytest.approx(1.0, abs=1e-5)


def test_offline_errors_name_the_flag(tmp_path):
    with pytest.raises(ModelUnavailableError) as err:
        make_dreamsim_reward(model_dir=str(tmp_path), device="cpu")
    msg = str(err.value)
    assert "open_clip_vitb32_pretrain.pth.tar" in msg and "model_dir=" in msg and "\n" not in msg
    with pytest.raises(ValueError, match="torch.hub"):
        make_dreamsim_reward(dreamsim_type="ensemble", device="cpu")
    with pytest.raises(ValueError, match="inputs is None"):
        make_dreamsim_reward(pretrained=False, device="cpu")(torch.rand(1, 3, 32, 32), None, None)
