"""Preference rewards (ImageReward, HPSv2, PickScore): parity with their reference code on the
same random weights (small configs), gradients to the pixels, tokenizers, missing-weight errors."""
import numpy as np
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from PIL import Image

from rewards import build_reward
from common.hub import ModelUnavailableError
from rewards.preference import (bundled_clip_tokenizer, convert_imagereward_state_dict,
                                hpsv2_config, imagereward_configs, make_hpsv2_reward,
                                make_imagereward_reward, make_pickscore_reward, tiny_bert_tokenizer)

from _reference_packages import hpsv2_open_clip, imagereward_modules

PROMPTS = ["a photo of a cat", "a red dog in the sky"]


def _photos(size=32):
    from skimage import data

    imgs = [data.chelsea(), data.astronaut()]
    x = torch.cat([F.interpolate(torch.from_numpy(i[:300, :300]).permute(2, 0, 1)[None].float()
                                 / 255.0, size=(size, size), mode="bilinear", antialias=True,
                                 align_corners=False) for i in imgs])
    # Quantised to 8 bits so the reference's PIL / ToTensor path sees exactly our pixels.
    return (x * 255).round() / 255


def _pil(x):
    return Image.fromarray((x.permute(1, 2, 0).numpy() * 255).round().astype(np.uint8))


# ------------------------------------------------------------------ tokenizers
def test_bundled_clip_tokenizer_equals_open_clip_tokenizer():
    import open_clip

    tok = bundled_clip_tokenizer()
    assert len(tok) == 49408
    texts = ["A photo of a cat, on the sofa!", "make it brighter; keep the face", "héllo wörld 42"]
    ours = tok(texts, padding="max_length", max_length=77, truncation=True).input_ids
    ref = open_clip.tokenize(texts)
    for a, b in zip(ours, ref.tolist()):
        n = a.index(49407) + 1
        assert a[:n] == b[:n]


# ------------------------------------------------------------------ ImageReward
def _reference_imagereward(tokenizer_dir):
    """The package's ImageReward glue (score_gard / score) around its own BLIP modules."""
    IR, vit, med = imagereward_modules()
    vcfg, tcfg = imagereward_configs(tiny=True)
    torch.manual_seed(1)
    ref = IR.ImageReward.__new__(IR.ImageReward)
    nn.Module.__init__(ref)
    ref.device = "cpu"
    ref.blip = nn.Module()
    ref.blip.visual_encoder = vit.VisionTransformer(
        img_size=vcfg.image_size, patch_size=vcfg.patch_size, embed_dim=vcfg.hidden_size,
        depth=vcfg.num_hidden_layers, num_heads=vcfg.num_attention_heads,
        mlp_ratio=vcfg.intermediate_size / vcfg.hidden_size)
    bcfg = med.BertConfig(vocab_size=tcfg.vocab_size, hidden_size=tcfg.hidden_size,
                          num_hidden_layers=tcfg.num_hidden_layers,
                          num_attention_heads=tcfg.num_attention_heads,
                          intermediate_size=tcfg.intermediate_size, max_position_embeddings=64,
                          add_cross_attention=True)
    bcfg.encoder_width = vcfg.hidden_size
    ref.blip.text_encoder = med.BertModel(config=bcfg, add_pooling_layer=False)
    ref.blip.tokenizer = make_imagereward_reward(pretrained=False, tokenizer=tokenizer_dir).tokenizer
    ref.mlp = IR.MLP(tcfg.hidden_size)
    for p in ref.mlp.parameters():  # the package initialises its MLP to ~0; make it matter
        nn.init.normal_(p, std=0.3)
    ref.preprocess = IR._transform(vcfg.image_size)
    ref.mean, ref.std = 0.16717362830052426, 1.0333394966054072  # set in the package's __init__
    return ref.eval()


def test_imagereward_parity_with_the_package(tmp_path):
    tok_dir = tiny_bert_tokenizer(tmp_path / "bert")
    ref = _reference_imagereward(tok_dir)
    ckpt = tmp_path / "ImageReward.pt"
    torch.save(ref.state_dict(), ckpt)  # the layout of the published ImageReward.pt
    ours = make_imagereward_reward(model_path=str(ckpt), tokenizer=tok_dir,
                                   config=imagereward_configs(tiny=True), device="cpu")
    x = _photos(32)
    with torch.no_grad():
        expected = torch.tensor([ref.score(p, _pil(img)) for p, img in zip(PROMPTS, x)])
        got, metrics = ours(x, None, PROMPTS)
    torch.testing.assert_close(got, expected.float(), rtol=1e-4, atol=1e-4)
    assert expected.std() > 0.05  # different images/prompts, different scores
    assert metrics["imagereward"] == pytest.approx(got.mean().item())
    # The conversion maps every parameter the package uses.
    conv = convert_imagereward_state_dict(ref.state_dict())
    assert set(conv) == set(ours.model.state_dict())


def test_imagereward_gradients_and_fixed_prompt(tmp_path):
    reward = make_imagereward_reward(pretrained=False, tokenizer=tiny_bert_tokenizer(tmp_path),
                                     prompt="a photo of a cat", device="cpu")
    x = _photos(48).requires_grad_(True)  # 48 px: resized to 32 inside, with grad
    scores, _ = reward(x, None, None)
    scores.sum().backward()
    assert x.grad.abs().sum() > 0
    assert all(not p.requires_grad and p.grad is None for p in reward.model.parameters())


# ------------------------------------------------------------------ HPSv2
def test_hpsv2_parity_with_the_package(tmp_path):
    model_mod, transform_mod = hpsv2_open_clip()
    cfg = hpsv2_config(tiny=True)
    torch.manual_seed(2)
    ref = model_mod.CLIP(cfg["embed_dim"], model_mod.CLIPVisionCfg(**cfg["vision_cfg"]),
                         model_mod.CLIPTextCfg(**cfg["text_cfg"]), output_dict=True).eval()
    ckpt = tmp_path / "HPS_v2.1_compressed.pt"
    torch.save({"state_dict": ref.state_dict()}, ckpt)  # the published file's layout
    ours = make_hpsv2_reward(model_path=str(tmp_path), config=cfg, device="cpu")
    import open_clip

    x = _photos(40)  # not the model size: exercises resize + crop against HPSv2's transform
    pre = transform_mod.image_transform(cfg["vision_cfg"]["image_size"], is_train=False)
    with torch.no_grad():
        out = ref(torch.stack([pre(_pil(i)) for i in x]), open_clip.tokenize(PROMPTS))
        expected = (out["image_features"] * out["text_features"]).sum(-1)
        got, _ = ours(x, None, PROMPTS)
        exact = ours.model.encode_image(
            torch.stack([pre(_pil(i)) for i in x]), normalize=True)
    # Same weights, same pixels after preprocessing: equal features.
    torch.testing.assert_close(exact, out["image_features"], rtol=1e-5, atol=1e-5)
    # Through our torch preprocessing (bicubic on the tensor, like HPSv2's eval transform).
    torch.testing.assert_close(got, expected, rtol=0, atol=2e-3)
    assert (expected[0] - expected[1]).abs() > 0.01


def test_hpsv2_gradients_ranking_and_errors(tmp_path):
    reward = make_hpsv2_reward(pretrained=False, prompt="a photo", device="cpu")
    x = _photos(32).requires_grad_(True)
    scores, _ = reward(x, None, None)
    scores.sum().backward()
    assert x.grad.abs().sum() > 0
    with pytest.raises(ValueError, match="version"):
        make_hpsv2_reward(version="v3")
    with pytest.raises(ValueError, match="--preference_prompt"):
        make_hpsv2_reward(pretrained=False, device="cpu")(torch.rand(1, 3, 32, 32), None, None)


# ------------------------------------------------------------------ PickScore
def test_pickscore_parity_with_model_card_recipe(tmp_path):
    """Model card: CLIPProcessor + get_*_features, normalise, logit_scale.exp() * dot."""
    from transformers import CLIPImageProcessor, CLIPModel

    ours = make_pickscore_reward(pretrained=False, device="cpu", seed=3)
    ours.model.save_pretrained(tmp_path / "pick")
    loaded = make_pickscore_reward(model_path=str(tmp_path / "pick"), device="cpu")
    ref = CLIPModel.from_pretrained(tmp_path / "pick").eval()
    proc = CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32})
    tok = bundled_clip_tokenizer()
    x = _photos(32)
    with torch.no_grad():
        pv = proc(images=[_pil(i) for i in x], return_tensors="pt").pixel_values
        t = tok(PROMPTS, padding=True, truncation=True, max_length=77, return_tensors="pt")

        def feats(o):
            return o.pooler_output if hasattr(o, "pooler_output") else o
        e = feats(ref.get_image_features(pixel_values=pv))
        te = feats(ref.get_text_features(**t))
        e, te = e / e.norm(dim=-1, keepdim=True), te / te.norm(dim=-1, keepdim=True)
        expected = ref.logit_scale.exp() * (e * te).sum(-1)
        got, metrics = loaded(x, None, PROMPTS)
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-4)
    assert metrics["pickscore"] == pytest.approx(got.mean().item())


def test_pickscore_gradients(tmp_path):
    reward = make_pickscore_reward(pretrained=False, device="cpu")
    x = _photos(32).requires_grad_(True)
    scores, _ = reward(x, None, PROMPTS)
    scores.sum().backward()
    assert x.grad.abs().sum() > 0 and scores.shape == (2,)


# ------------------------------------------------------------------ offline errors, registry
@pytest.mark.parametrize("name,kwargs,needle", [
    ("imagereward", {}, "ImageReward.pt"),
    ("hpsv2", {}, "HPS_v2.1_compressed.pt"),
    ("pickscore", {}, "yuvalkirstain/PickScore_v1"),
])
def test_missing_weights_name_the_flag(name, kwargs, needle, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ModelUnavailableError) as err:
        build_reward(name, device="cpu", **kwargs)
    msg = str(err.value)
    assert needle in msg and "model_path=" in msg and "\n" not in msg


def test_imagereward_missing_tokenizer_names_the_flag(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ModelUnavailableError, match="tokenizer="):
        make_imagereward_reward(pretrained=False, tokenizer=str(tmp_path / "nothing"))


def test_real_size_configs_build_without_weights():
    """The real sizes come from configs alone (no weights: meta tensors, as estimates use)."""
    from rewards.preference import ImageRewardModel, build_open_clip, pickscore_config

    with torch.device("meta"):
        ir = ImageRewardModel(*imagereward_configs())
        n_ir = sum(p.numel() for p in ir.parameters())
        hps = build_open_clip(hpsv2_config())
        n_hps = sum(p.numel() for p in hps.parameters())
        from transformers import CLIPModel

        n_pick = sum(p.numel() for p in CLIPModel(pickscore_config()).parameters())
    assert 440e6 < n_ir < 480e6  # BLIP ViT-L + BERT-base with cross-attention + MLP
    assert 980e6 < n_hps < 990e6 and 980e6 < n_pick < 990e6  # CLIP ViT-H/14


# ------------------------------------------------------------------ training flags, packaging
def test_training_flags_select_the_new_rewards(tmp_path, monkeypatch):
    from alignprop.reward_flags import RewardBuildError, RewardFlags, build_reward_from_flags, reward_specs

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    ref = tmp_path / "ref.png"
    Image.new("RGB", (32, 32), (200, 100, 50)).save(ref)
    flags = RewardFlags(preference_backend="hpsv2", preference_reward_scale=0.5,
                        preference_prompt="a cat", similarity_backend="dreamsim",
                        dreamsim_dir=str(tmp_path), style_reference=str(ref), style_backend="dreamsim")
    specs = {s["term"]: s for s in reward_specs(flags)}
    assert specs["preference"] == {"name": "hpsv2", "term": "preference", "weight": 0.5,
                                   "prompt": "a cat", "device": None, "version": "v2.1"}
    assert specs["similarity"]["name"] == specs["style"]["name"] == "dreamsim"
    assert specs["style"]["reference"] == str(ref)
    with pytest.raises(RewardBuildError, match="similarity.*--dreamsim_dir"):
        build_reward_from_flags(flags)
    with pytest.raises(RewardBuildError, match="preference.*--preference_model"):
        build_reward_from_flags(RewardFlags(preference_backend="imagereward"))
    with pytest.raises(ValueError, match="--preference_backend 'clip' is not valid"):
        RewardFlags(preference_backend="clip")
    with pytest.raises(ValueError, match="--preference_tokenizer does not apply to hpsv2"):
        RewardFlags(preference_backend="hpsv2", preference_tokenizer=str(tmp_path))


def test_reference_packages_are_pinned_and_installed_without_their_pins():
    """image-reward and hpsv2 pin versions we cannot take (timm 0.6, protobuf<4, pytest 7.2);
    requirements-nodeps.txt installs them with --no-deps and the parity tests above run their
    model code on our versions."""
    from importlib import metadata
    from pathlib import Path

    pins = dict(line.split("==") for line in
                (Path(__file__).parent.parent / "requirements-nodeps.txt").read_text().split("\n")
                if "==" in line and not line.startswith("#"))
    for dist in ("image-reward", "hpsv2"):
        assert metadata.version(dist) == pins[dist].split()[0]
    requires = " ".join(metadata.requires("image-reward"))
    assert "timm (==0.6.13)" in requires or "timm==0.6.13" in requires
    assert metadata.version("timm").split(".")[0] == "1"  # what open_clip 3 needs
    assert any(r.replace(" ", "").startswith("protobuf<4") for r in metadata.requires("hpsv2"))
