"""InternVL3 checkpoints in OpenGVLab's remote-code layout, read with transformers' own classes.

``OpenGVLab/InternVL3-14B`` (the original project's model, without ``-hf``) ships its own Python
classes (``config.json``: ``model_type: internvl_chat``, ``auto_map``). We never run a
repository's code. Instead:

* a hub id ``OpenGVLab/InternVL3-<size>`` is mapped to its ``-hf`` twin, which OpenGVLab
  publishes for every InternVL3 size, with one line saying so (:func:`hf_twin`);
* a local folder in that layout is converted on load (:func:`load_remote_internvl`): the config
  as transformers' ``convert_internvl_weights_to_hf.py`` converts it (``llm_config`` ->
  ``text_config``; vision ``qkv_bias`` -> ``attention_bias``, ``qk_normalization`` ->
  ``use_qk_norm``, dropout names; absolute position embeddings), the weights renamed as the same
  script and the ``qianfan_ocr`` entry of transformers' ``conversion_mapping.py`` rename this
  layout (``vision_model.`` -> ``model.vision_tower.``, ``encoder.layers`` ->
  ``encoder.layer``, ``attn.qkv`` split in three along dim 0, ``attn.proj`` ->
  ``attention.projection_layer``, ``ls1/2`` -> ``lambda_1/2``, ``norm1/2`` ->
  ``layernorm_before/after``, ``mlp1.0/1/3`` -> ``multi_modal_projector.layer_norm / linear_1 /
  linear_2``, ``language_model.model.`` -> ``model.language_model.``,
  ``language_model.lm_head.`` -> ``lm_head.``), the processor as the ``-hf`` checkpoints ship it
  (``GotOcr2ImageProcessor`` at the vision tile size, ImageNet mean/std, ``max_patches`` =
  ``max_dynamic_patch``; the tokenizer of the folder with InternVL's image tokens named; the
  ``-hf`` chat template). Only safetensors weights are read.
"""
from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import torch

from common.qwen_vocab import INTERNVL_CHAT_TEMPLATE

REMOTE_MODEL_TYPE = "internvl_chat"
_TWIN = re.compile(r"^OpenGVLab/(InternVL3-\d+B)$")
IMAGE_TOKENS = {"start_image_token": "<img>", "end_image_token": "</img>",
                "context_image_token": "<IMG_CONTEXT>", "video_token": "<video>"}
IMAGENET_MEAN, IMAGENET_STD = [0.485, 0.456, 0.406], [0.229, 0.224, 0.225]


def hf_twin(model_id: str) -> str | None:
    """``OpenGVLab/InternVL3-14B`` -> ``OpenGVLab/InternVL3-14B-hf`` (None for anything else)."""
    m = _TWIN.match(str(model_id))
    return f"OpenGVLab/{m.group(1)}-hf" if m else None


def remote_config(folder: str | Path) -> dict | None:
    """The folder's config.json when it is in the remote-code layout, else None."""
    path = Path(folder).expanduser() / "config.json"
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return data if data.get("model_type") == REMOTE_MODEL_TYPE else None


# --------------------------------------------------------------------------- config
_VISION_KEYS = {"hidden_size": "hidden_size", "intermediate_size": "intermediate_size",
                "num_attention_heads": "num_attention_heads",
                "num_hidden_layers": "num_hidden_layers", "num_channels": "num_channels",
                "hidden_act": "hidden_act", "norm_type": "norm_type",
                "layer_norm_eps": "layer_norm_eps", "initializer_range": "initializer_range",
                "qkv_bias": "attention_bias", "qk_normalization": "use_qk_norm"}


def convert_config(remote: dict, image_token_id: int):
    """transformers' ``InternVLConfig`` for a remote-layout ``config.json``."""
    from transformers import InternVLConfig, InternVLVisionConfig, LlamaConfig, Qwen2Config

    llm = dict(remote["llm_config"])
    arch = (llm.get("architectures") or ["?"])[0]
    text_cls = {"Qwen2ForCausalLM": Qwen2Config, "LlamaForCausalLM": LlamaConfig}.get(arch)
    if text_cls is None:
        raise ValueError(f"the language model of this InternVL checkpoint is {arch}; the "
                         f"conversion knows Qwen2 and Llama (use the checkpoint's -hf twin)")
    known = set(text_cls().to_dict())
    text = text_cls(**{k: v for k, v in llm.items()
                       if k in known and k not in ("architectures", "_name_or_path",
                                                   "transformers_version", "auto_map")})
    v = remote["vision_config"]
    vision = {ours: v[theirs] for theirs, ours in _VISION_KEYS.items() if theirs in v}
    size = int(remote.get("force_image_size") or v["image_size"])
    patch = int(v["patch_size"])
    dropout = float(v.get("attention_dropout", v.get("attention_probs_dropout_prob", 0.0)))
    vision.update(image_size=[size, size], patch_size=[patch, patch], attention_dropout=dropout,
                  projection_dropout=dropout, use_absolute_position_embeddings=True)
    ratio = float(remote.get("downsample_ratio", 0.5))
    return InternVLConfig(
        vision_config=InternVLVisionConfig(**vision), text_config=text,
        image_token_id=image_token_id, downsample_ratio=ratio,
        vision_feature_layer=int(remote.get("select_layer", -1)),
        image_seq_length=int((size // patch) ** 2 * ratio ** 2))


# --------------------------------------------------------------------------- weights
_RENAMES = (
    (r"^vision_model\.embeddings\.class_embedding$", "model.vision_tower.embeddings.cls_token"),
    (r"^vision_model\.embeddings\.position_embedding$",
     "model.vision_tower.embeddings.position_embeddings"),
    (r"^vision_model\.embeddings\.patch_embedding\.",
     "model.vision_tower.embeddings.patch_embeddings.projection."),
    (r"^vision_model\.encoder\.layers\.(\d+)\.", r"model.vision_tower.encoder.layer.\1."),
    (r"\.attn\.proj\.", ".attention.projection_layer."),
    (r"\.attn\.", ".attention."),
    (r"\.ls(\d)$", r".lambda_\1"),
    (r"\.norm1\.", ".layernorm_before."),
    (r"\.norm2\.", ".layernorm_after."),
    (r"^mlp1\.0\.", "model.multi_modal_projector.layer_norm."),
    (r"^mlp1\.1\.", "model.multi_modal_projector.linear_1."),
    (r"^mlp1\.3\.", "model.multi_modal_projector.linear_2."),
    (r"^language_model\.model\.", "model.language_model."),
    (r"^language_model\.lm_head\.", "lm_head."),
)


def convert_state_dict(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Remote-layout weights -> the names of ``InternVLForConditionalGeneration``."""
    out: dict[str, torch.Tensor] = {}
    for key, value in state.items():
        new = key
        for pattern, repl in _RENAMES:
            new = re.sub(pattern, repl, new)
        if ".attention.qkv." in new:
            q, k, v = value.chunk(3, dim=0)
            for name, part in (("q_proj", q), ("k_proj", k), ("v_proj", v)):
                out[new.replace(".attention.qkv.", f".attention.{name}.")] = part.contiguous()
        else:
            out[new] = value
    return out


def _read_safetensors(folder: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    files = sorted(folder.glob("*.safetensors"))
    if not files:
        raise ValueError(f"{folder} holds no .safetensors weights (pickled .bin files are never "
                         f"read here)")
    state: dict[str, torch.Tensor] = {}
    for f in files:
        state.update(load_file(f))
    return state


# --------------------------------------------------------------------------- processor
def load_tokenizer(folder: Path):
    """The folder's tokenizer with InternVL's image tokens named (as the -hf checkpoints have
    them) and the -hf chat template."""
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(folder, extra_special_tokens=IMAGE_TOKENS)
    missing = [t for t in IMAGE_TOKENS.values() if t not in tok.get_vocab()]
    if missing:  # InternVLProcessor needs a video token too; it never appears in the rewards
        tok.add_special_tokens({"extra_special_tokens": missing},
                               replace_extra_special_tokens=False)
    tok.chat_template = INTERNVL_CHAT_TEMPLATE
    return tok


def build_processor(tok, remote: dict, config):
    from transformers import GotOcr2ImageProcessor, InternVLProcessor, InternVLVideoProcessor

    size = config.vision_config.image_size[0]
    image_processor = GotOcr2ImageProcessor(
        size={"height": size, "width": size}, crop_to_patches=False,
        min_patches=int(remote.get("min_dynamic_patch", 1)),
        max_patches=int(remote.get("max_dynamic_patch", 12)), resample=3,
        image_mean=IMAGENET_MEAN, image_std=IMAGENET_STD)
    video = InternVLVideoProcessor(size={"height": size, "width": size})
    return InternVLProcessor(image_processor=image_processor, tokenizer=tok,
                             video_processor=video, image_seq_length=config.image_seq_length,
                             chat_template=INTERNVL_CHAT_TEMPLATE)


def load_remote_internvl(folder: str | Path, dtype: torch.dtype = torch.float32
                         ) -> tuple[Any, Any]:
    """(InternVLForConditionalGeneration, InternVLProcessor) from a remote-layout folder."""
    from transformers import InternVLForConditionalGeneration
    from transformers.initialization import no_init_weights

    folder = Path(folder).expanduser()
    remote = remote_config(folder)
    if remote is None:
        raise ValueError(f"{folder} is not an InternVL checkpoint in the remote-code layout")
    tok = load_tokenizer(folder)
    config = convert_config(remote, tok.convert_tokens_to_ids(IMAGE_TOKENS["context_image_token"]))
    state = convert_state_dict(_read_safetensors(folder))
    tied = bool(getattr(config.text_config, "tie_word_embeddings", False))
    if tied and "lm_head.weight" not in state:
        state["lm_head.weight"] = state["model.language_model.embed_tokens.weight"]
    with no_init_weights():   # every weight is assigned below: no random init
        model = InternVLForConditionalGeneration(config)
    expected = set(model.state_dict())
    missing, unexpected = sorted(expected - set(state)), sorted(set(state) - expected)
    if missing or unexpected:
        raise ValueError(f"{folder}: the converted weights do not fit InternVL's classes "
                         f"(missing {missing[:3]}, unexpected {unexpected[:3]})")
    model.load_state_dict(state, strict=True, assign=True)
    if tied:
        model.tie_weights()
    return model.to(dtype).eval(), build_processor(tok, remote, config)


__all__ = ["hf_twin", "remote_config", "convert_config", "convert_state_dict",
           "load_remote_internvl", "REMOTE_MODEL_TYPE"]
