"""InternVL3 in OpenGVLab's remote-code layout (the original's default model, issue 22 item 6):
a local folder in that layout loads through conversion to transformers' classes and scores
exactly like the same weights in the -hf layout; a hub id maps to its -hf twin."""
import json
import logging

import pytest
import torch
from safetensors.torch import save_file

from rewards.internvl_remote import convert_state_dict, hf_twin
from rewards.vlm import make_vlm_reward
from rewards.vlm_families.internvl import build_tiny_internvl
from rewards.vlm_model import check_vision_config, clear_cache


def _to_remote_key(key: str) -> str:
    """The -hf name of a weight -> OpenGVLab's name (written here independently, as the inverse
    of what the loader must do)."""
    pairs = [("model.vision_tower.embeddings.cls_token", "vision_model.embeddings.class_embedding"),
             ("model.vision_tower.embeddings.position_embeddings",
              "vision_model.embeddings.position_embedding"),
             ("model.vision_tower.embeddings.patch_embeddings.projection.",
              "vision_model.embeddings.patch_embedding."),
             ("model.vision_tower.encoder.layer.", "vision_model.encoder.layers."),
             (".attention.projection_layer.", ".attn.proj."), (".lambda_1", ".ls1"),
             (".lambda_2", ".ls2"), (".layernorm_before.", ".norm1."),
             (".layernorm_after.", ".norm2."),
             ("model.multi_modal_projector.layer_norm.", "mlp1.0."),
             ("model.multi_modal_projector.linear_1.", "mlp1.1."),
             ("model.multi_modal_projector.linear_2.", "mlp1.3."),
             ("model.language_model.", "language_model.model."),
             ("lm_head.", "language_model.lm_head.")]
    for hf, remote in pairs:
        key = key.replace(hf, remote)
    return key


@pytest.fixture(scope="module")
def remote_folder(tmp_path_factory):
    """The tiny InternVL written in the remote-code layout (config, weights, tokenizer)."""
    folder = tmp_path_factory.mktemp("InternVL3-tiny")
    model, processor = build_tiny_internvl()
    state = model.state_dict()
    remote = {}
    for key, value in state.items():
        if ".attention.k_proj." in key or ".attention.v_proj." in key:
            continue
        if ".attention.q_proj." in key:
            parts = [state[key.replace("q_proj", n)] for n in ("q_proj", "k_proj", "v_proj")]
            remote[_to_remote_key(key).replace(".attention.q_proj.", ".attn.qkv.")] = \
                torch.cat(parts).clone()
            continue
        remote[_to_remote_key(key).replace(".attention.", ".attn.")] = value.clone()
    save_file(remote, folder / "model.safetensors")
    vc, tc = model.config.vision_config, model.config.text_config
    llm = {**tc.to_dict(), "architectures": ["Qwen2ForCausalLM"]}
    config = {"architectures": ["InternVLChatModel"], "model_type": "internvl_chat",
              "auto_map": {"AutoModel": "modeling_internvl_chat.InternVLChatModel"},
              "downsample_ratio": 0.5, "force_image_size": 64, "max_dynamic_patch": 12,
              "min_dynamic_patch": 1, "select_layer": -1, "template": "internvl2_5",
              "use_thumbnail": True, "llm_config": llm,
              "vision_config": {"architectures": ["InternVisionModel"],
                                "model_type": "intern_vit_6b", "hidden_size": vc.hidden_size,
                                "intermediate_size": vc.intermediate_size,
                                "num_attention_heads": vc.num_attention_heads,
                                "num_hidden_layers": vc.num_hidden_layers, "image_size": 64,
                                "patch_size": 8, "qkv_bias": False, "qk_normalization": False,
                                "norm_type": "layer_norm", "layer_norm_eps": vc.layer_norm_eps,
                                "hidden_act": vc.hidden_act, "drop_path_rate": 0.1,
                                "use_flash_attn": True}}
    (folder / "config.json").write_text(json.dumps(config))
    processor.tokenizer.save_pretrained(folder)
    return folder


def test_remote_layout_folder_scores_like_the_hf_weights(remote_folder):
    clear_cache()
    x = torch.rand(2, 3, 80, 48, generator=torch.Generator().manual_seed(0))
    for task, kw in (("single", {}), ("pair", {})):
        ours = make_vlm_reward(task, model_id="tiny", dtype="float32", device="cpu", **kw)
        conv = make_vlm_reward(task, model_id=str(remote_folder), dtype="float32", device="cpu",
                               **kw)
        assert conv.max_tiles == ours.max_tiles == 12
        slots = [x] if task == "single" else [x, x.flip(-1)]
        with torch.no_grad():
            a, b = ours.score_slots(slots), conv.score_slots(slots)
        torch.testing.assert_close(b.scores, a.scores, atol=1e-6, rtol=0)


def test_conversion_splits_qkv_and_renames():
    w = torch.arange(12.0).view(6, 2)
    out = convert_state_dict({"vision_model.encoder.layers.3.attn.qkv.weight": w,
                              "vision_model.encoder.layers.3.ls1": torch.ones(2),
                              "mlp1.3.bias": torch.zeros(1),
                              "language_model.lm_head.weight": torch.zeros(1)})
    assert set(out) == {f"model.vision_tower.encoder.layer.3.attention.{n}_proj.weight"
                        for n in "qkv"} | {"model.vision_tower.encoder.layer.3.lambda_1",
                                           "model.multi_modal_projector.linear_2.bias",
                                           "lm_head.weight"}
    torch.testing.assert_close(out["model.vision_tower.encoder.layer.3.attention.k_proj.weight"],
                               w[2:4])


def test_hub_ids_map_to_their_hf_twin_with_one_line(caplog, monkeypatch):
    assert hf_twin("OpenGVLab/InternVL3-14B") == "OpenGVLab/InternVL3-14B-hf"
    assert hf_twin("OpenGVLab/InternVL3-14B-hf") is None and hf_twin("tiny") is None
    import rewards.vlm_model as vm

    seen = []

    def fake(model_id, *a, **k):
        seen.append(model_id)
        raise RuntimeError("stop")

    monkeypatch.setattr(vm, "_load_pretrained", fake)
    with caplog.at_level(logging.WARNING), pytest.raises(RuntimeError):
        vm.load_vlm("OpenGVLab/InternVL3-14B", dtype="float32", device="cpu")
    assert seen == ["OpenGVLab/InternVL3-14B-hf"]
    assert "remote-code layout" in caplog.text and "-hf" in caplog.text


def test_remote_model_type_never_sends_the_user_to_trust_remote_code():
    from types import SimpleNamespace

    with pytest.raises(ValueError) as err:
        check_vision_config(SimpleNamespace(model_type="internvl_chat", vision_config={}), "x")
    assert "local folder" in str(err.value) and "trust_remote_code" not in str(err.value)
