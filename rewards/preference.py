"""Human-preference reward models: ImageReward, HPSv2 and PickScore, differentiable to the pixels.

Each scores how well an image matches a text prompt, as people judged it. The prompt is the
edit instruction of the batch unless a fixed ``prompt`` (a caption) is given. Preprocessing is
done in torch so the gradient reaches ``images``; text features are computed once per distinct
prompt, without grad (the prompt is not trained).

``imagereward`` -- ImageReward (Xu et al. 2023, THUDM/ImageReward, file ``ImageReward.pt``)
    BLIP: ViT-L/16 at 224 px (LayerNorm eps 1e-6) whose tokens the BERT-base text encoder
    cross-attends to; the [CLS] state goes through a 768-1024-128-64-16-1 MLP and is
    standardised with the published mean 0.16717 / std 1.03334. Prompt tokenised by
    ``bert-base-uncased`` (+ the [DEC]/[ENC] tokens BLIP adds; vocab 30524), padded to 35.
    We run it on transformers' ``BlipVisionModel`` and ``BlipTextModel`` (the same layers,
    maintained) after renaming the checkpoint's keys; the ``image-reward`` package itself
    no longer imports with transformers 5 (it imports helpers that moved) and is used only
    as the reference in the parity test. Preprocessing: shortest side to 224 (bicubic),
    centre crop, CLIP mean/std.
``hpsv2`` -- Human Preference Score v2 / v2.1 (Wu et al. 2023, xswu/HPSv2,
    ``HPS_v2_compressed.pt`` / ``HPS_v2.1_compressed.pt``)
    OpenCLIP ViT-H/14 fine-tuned on HPD v2; score = cosine(image, text) (no logit scale; good
    images score ~0.27-0.30). Built with ``open_clip`` (the HPSv2 package bundles an older
    copy of it); tokenizer = OpenCLIP's, whose BPE vocabulary ships in the wheel.
    Preprocessing as HPSv2's eval transform: shortest side to 224 (bicubic), centre crop,
    OpenAI CLIP mean/std.
``pickscore`` -- PickScore (Kirstain et al. 2023, ``yuvalkirstain/PickScore_v1``)
    CLIP ViT-H/14 through transformers' ``CLIPModel``; score = logit_scale.exp() * cosine
    (~ 20-23 for good images), as in its model card. Tokenizer/processor of
    ``laion/CLIP-ViT-H-14-laion2B-s32B-b79K``. Preprocessing as ``CLIPImageProcessor``.

Each factory builds from a config without weights (``pretrained=False``: small random
models for tests; ``config="real"`` or a config for the real size: ``--estimate``), and
turns a missing weight/tokenizer into one :class:`~common.hub.ModelUnavailableError`
naming the option (and training flag) that takes a local path.
"""
from __future__ import annotations

import os
from typing import Sequence

import torch
import torch.nn as nn

from common.hub import (ModelUnavailableError, load_state_dict_file, model_unavailable,
                        resolve_device_dtype, resolve_weight_file)

from .aesthetic import CLIP_MEAN, CLIP_STD, _normalise, _resize_shortest_and_crop
from .base import Metrics, batch_mean, check_images

IMAGEREWARD_REPO = "THUDM/ImageReward"
IMAGEREWARD_FILE = "ImageReward.pt"
IMAGEREWARD_TOKENIZER = "bert-base-uncased"
IMAGEREWARD_MEAN = 0.16717362830052426  # published standardisation of the raw MLP output
IMAGEREWARD_STD = 1.0333394966054072
IMAGEREWARD_MAX_TOKENS = 35
HPSV2_REPO = "xswu/HPSv2"
HPSV2_FILES = {"v2.0": "HPS_v2_compressed.pt", "v2.1": "HPS_v2.1_compressed.pt"}
HPSV2_ARCH = "ViT-H-14"
PICKSCORE_MODEL = "yuvalkirstain/PickScore_v1"
PICKSCORE_PROCESSOR = "laion/CLIP-ViT-H-14-laion2B-s32B-b79K"

# The keywords that take local paths, named in errors (commands rename them to their flags,
# --preference_model / --preference_tokenizer: the registry records in rewards/__init__.py).
MODEL_FLAG = "model_path="
TOKENIZER_FLAG = "tokenizer="


def _freeze(module: nn.Module) -> nn.Module:
    return module.eval().requires_grad_(False)


class _TextCache:
    """Text features per prompt, computed once without grad (prompts are not trained)."""

    def __init__(self, encode, limit: int = 512):
        self.encode, self.limit, self.store = encode, limit, {}

    def __call__(self, prompts: Sequence[str]):
        missing = [p for p in dict.fromkeys(prompts) if p not in self.store]
        if missing:
            if len(self.store) + len(missing) > self.limit:
                self.store.clear()
            with torch.no_grad():
                feats = self.encode(missing)
            for p, f in zip(missing, feats if isinstance(feats, (list, tuple)) else feats.unbind(0)):
                self.store[p] = f
        return [self.store[p] for p in prompts]


def _prompts_for(images: torch.Tensor, prompts, fixed: str | None, name: str) -> list[str]:
    if fixed is not None:
        return [fixed] * len(images)
    if prompts is None:
        raise ValueError(f"the {name} reward scores an image against a text: pass prompts or "
                         f"set a fixed prompt (--preference_prompt)")
    prompts = list(prompts)
    if len(prompts) != len(images):
        raise ValueError(f"{name}: {len(prompts)} prompts for {len(images)} images")
    return prompts


# ================================================================ ImageReward
def imagereward_configs(tiny: bool = False):
    """(BlipVisionConfig, BlipTextConfig) of ImageReward; ``tiny`` = small random test size."""
    from transformers import BlipTextConfig, BlipVisionConfig

    if tiny:
        vision = BlipVisionConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                  num_attention_heads=2, image_size=32, patch_size=8,
                                  layer_norm_eps=1e-6)
        text = BlipTextConfig(vocab_size=64, hidden_size=32, encoder_hidden_size=32,
                              intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
                              max_position_embeddings=64, pad_token_id=0, bos_token_id=None,
                              sep_token_id=None)
        return vision, text
    # BLIP ViT-L/16 (create_vit('large', 224)) and BLIP's med_config.json (BERT-base,
    # vocab 30522 + [DEC] + [ENC], cross-attention to the 1024-wide image tokens).
    vision = BlipVisionConfig(hidden_size=1024, intermediate_size=4096, num_hidden_layers=24,
                              num_attention_heads=16, image_size=224, patch_size=16,
                              layer_norm_eps=1e-6)
    text = BlipTextConfig(vocab_size=30524, hidden_size=768, encoder_hidden_size=1024,
                          intermediate_size=3072, num_hidden_layers=12, num_attention_heads=12,
                          max_position_embeddings=512, layer_norm_eps=1e-12, pad_token_id=0,
                          bos_token_id=None, sep_token_id=None)
    return vision, text


class ImageRewardHead(nn.Module):
    """ImageReward's MLP on the BLIP [CLS] feature (keys ``layers.{0,2,4,6,7}``)."""

    def __init__(self, in_dim: int = 768):
        super().__init__()
        self.layers = nn.Sequential(
            nn.Linear(in_dim, 1024), nn.Dropout(0.2), nn.Linear(1024, 128), nn.Dropout(0.2),
            nn.Linear(128, 64), nn.Dropout(0.1), nn.Linear(64, 16), nn.Linear(16, 1))

    def forward(self, x):
        return self.layers(x)


class ImageRewardModel(nn.Module):
    """BLIP vision + cross-attending text encoder + MLP, in transformers' classes."""

    def __init__(self, vision_config, text_config):
        super().__init__()
        from transformers import BlipVisionModel
        from transformers.models.blip.modeling_blip_text import BlipTextModel

        self.vision = BlipVisionModel(vision_config)
        self.text = BlipTextModel(text_config, add_pooling_layer=False)
        self.mlp = ImageRewardHead(text_config.hidden_size)

    def forward(self, pixel_values, input_ids, attention_mask):
        image_embeds = self.vision(pixel_values=pixel_values).last_hidden_state
        image_atts = torch.ones(image_embeds.shape[:-1], dtype=torch.long, device=image_embeds.device)
        out = self.text(input_ids=input_ids, attention_mask=attention_mask,
                        encoder_hidden_states=image_embeds, encoder_attention_mask=image_atts)
        raw = self.mlp(out.last_hidden_state[:, 0, :]).squeeze(-1)
        return (raw - IMAGEREWARD_MEAN) / IMAGEREWARD_STD


def convert_imagereward_state_dict(state: dict) -> dict:
    """Rename ImageReward.pt keys (BLIP timm-style ViT, BLIP med BERT) to ImageRewardModel's.

    Keys of the BLIP pre-training heads that ImageReward does not use (vision_proj,
    text_proj, itm_head, ...) are dropped.
    """
    vit = {"cls_token": "embeddings.class_embedding", "pos_embed": "embeddings.position_embedding",
           "patch_embed.proj.weight": "embeddings.patch_embedding.weight",
           "patch_embed.proj.bias": "embeddings.patch_embedding.bias",
           "norm.weight": "post_layernorm.weight", "norm.bias": "post_layernorm.bias"}
    block = {"norm1": "layer_norm1", "norm2": "layer_norm2", "attn.qkv": "self_attn.qkv",
             "attn.proj": "self_attn.projection", "mlp.fc1": "mlp.fc1", "mlp.fc2": "mlp.fc2"}
    out = {}
    for key, value in state.items():
        if key.startswith("blip.visual_encoder."):
            k = key[len("blip.visual_encoder."):]
            if k in vit:
                out["vision." + vit[k]] = value
                continue
            parts = k.split(".")
            if parts[0] == "blocks":
                inner = ".".join(parts[2:-1])
                if inner in block:
                    out[f"vision.encoder.layers.{parts[1]}.{block[inner]}.{parts[-1]}"] = value
                    continue
            raise ModelUnavailableError(f"unexpected ImageReward vision key {key!r}; pass "
                                        f"ImageReward.pt with {MODEL_FLAG}", MODEL_FLAG)
        elif key.startswith("blip.text_encoder."):
            k = key[len("blip.text_encoder."):]
            if k.endswith("position_ids"):
                continue  # a buffer, rebuilt by the model
            out["text." + k] = value
        elif key.startswith("mlp."):
            out[key] = value
    return out


def _bert_tokenizer(source, what: str):
    from transformers import BertTokenizer

    try:
        tok = BertTokenizer.from_pretrained(source)
    except (OSError, ValueError) as exc:
        raise model_unavailable(what, source, TOKENIZER_FLAG, exc) from None
    # BLIP's init_tokenizer: [DEC] as bos and [ENC] appended (vocab 30522 -> 30524).
    tok.add_special_tokens({"bos_token": "[DEC]"})
    tok.add_special_tokens({"additional_special_tokens": ["[ENC]"]})
    return tok


def tiny_bert_tokenizer(directory) -> str:
    """Write a small WordPiece vocabulary for tests and return its directory."""
    from transformers import BertTokenizer

    words = ("a photo of cat dog red blue bright dark sharp blurry portrait make it the "
             "with and in on sky tree man woman face").split()
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] + words
    os.makedirs(directory, exist_ok=True)
    path = os.path.join(directory, "vocab.txt")
    with open(path, "w") as f:
        f.write("\n".join(vocab) + "\n")
    BertTokenizer(path).save_pretrained(directory)
    return os.fspath(directory)


def make_imagereward_reward(model_path=None, tokenizer=IMAGEREWARD_TOKENIZER, prompt=None,
                            pretrained: bool = True, config=None, device=None, dtype="float32",
                            seed: int = 0):
    """ImageReward score of ``images`` for their prompt (standardised: 0 = average image).

    Args:
        model_path: ``ImageReward.pt`` (a file, a directory holding it, or a hub repo id;
            default ``THUDM/ImageReward``). Read with ``weights_only=True``.
        tokenizer: directory (or hub id) of the ``bert-base-uncased`` tokenizer.
        prompt: fixed caption scored for every image (default: the batch's prompts).
        pretrained: False builds a random model from ``config`` (default: a tiny one),
            for tests; ``tokenizer`` then a local tokenizer directory (the hub default is
            replaced by a small stand-in: a random model reads ids only by their count).
        config: ``(BlipVisionConfig, BlipTextConfig)`` or "real"; default: the real
            ImageReward sizes when ``pretrained``, the tiny ones otherwise.
    Metric: ``imagereward`` (batch mean).
    """
    device, dtype = resolve_device_dtype(device, dtype)
    vcfg, tcfg = (imagereward_configs() if isinstance(config, str) and config == "real"
                  else config or imagereward_configs(tiny=not pretrained))
    # Find the files before building anything: a missing file fails in a second.
    if pretrained:
        path = resolve_weight_file(model_path or IMAGEREWARD_REPO, IMAGEREWARD_FILE,
                                   "the ImageReward model", MODEL_FLAG)
    if not pretrained and tokenizer == IMAGEREWARD_TOKENIZER and not os.path.isdir(tokenizer):
        # a random model reads token ids only by count (padded to IMAGEREWARD_MAX_TOKENS)
        import tempfile

        with tempfile.TemporaryDirectory() as tmp:
            tok = _bert_tokenizer(tiny_bert_tokenizer(tmp), "a stand-in tokenizer")
    else:
        tok = _bert_tokenizer(tokenizer, "the ImageReward (bert-base-uncased) tokenizer")
    torch.manual_seed(seed)
    model = ImageRewardModel(vcfg, tcfg)
    if pretrained:
        state = load_state_dict_file(path, flag=MODEL_FLAG)
        state = state.get("state_dict", state) if isinstance(state, dict) else state
        converted = convert_imagereward_state_dict(state)
        missing, unexpected = model.load_state_dict(converted, strict=False)
        if missing or unexpected:
            raise ModelUnavailableError(
                f"{path!r} is not an ImageReward checkpoint: missing {sorted(missing)[:3]}, "
                f"unexpected {sorted(unexpected)[:3]}; pass ImageReward.pt with {MODEL_FLAG}",
                MODEL_FLAG)
    model = _freeze(model).to(device=device, dtype=dtype)
    size = vcfg.image_size

    def preprocess(x):
        return _normalise(_resize_shortest_and_crop(x, size), CLIP_MEAN, CLIP_STD)

    def encode(texts):
        t = tok(texts, padding="max_length", truncation=True, max_length=IMAGEREWARD_MAX_TOKENS,
                return_tensors="pt")
        return list(zip(t.input_ids.to(device), t.attention_mask.to(device)))

    tokens = _TextCache(encode)

    def reward(images: torch.Tensor, inputs=None, prompts=None):
        check_images(images)
        texts = _prompts_for(images, prompts, prompt, "imagereward")
        ids, mask = (torch.stack(z) for z in zip(*tokens(texts)))
        x = preprocess(images.to(device=device, dtype=dtype).clamp(0, 1))
        scores = model(x, ids, mask).float()
        metrics: Metrics = {"imagereward": batch_mean(scores)}
        return scores, metrics

    reward.model, reward.preprocess, reward.tokenizer = model, preprocess, tok
    return reward


# ================================================================ HPSv2 (OpenCLIP)
def hpsv2_config(tiny: bool = False) -> dict:
    """OpenCLIP model config of HPSv2 (ViT-H/14), or a small one for tests."""
    if tiny:
        return {"embed_dim": 16,
                "vision_cfg": {"image_size": 32, "layers": 2, "width": 32, "head_width": 16,
                               "patch_size": 8},
                "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 32, "heads": 2,
                             "layers": 2}}
    import open_clip

    return open_clip.get_model_config(HPSV2_ARCH)


def build_open_clip(config: dict):
    import open_clip

    return open_clip.CLIP(**config, output_dict=True)


def make_hpsv2_reward(model_path=None, version: str = "v2.1", prompt=None, pretrained: bool = True,
                      config=None, device=None, dtype="float32", seed: int = 0):
    """HPSv2 score (cosine of OpenCLIP image and text features) of ``images`` for their prompt.

    Args:
        model_path: the HPS checkpoint (``HPS_v2.1_compressed.pt`` / ``HPS_v2_compressed.pt``:
            a file, a directory holding it, or a hub repo id; default ``xswu/HPSv2``).
        version: "v2.1" (default, the authors' recommended one) or "v2.0": which file.
        prompt: fixed caption scored for every image (default: the batch's prompts).
        pretrained: False = random model from ``config`` (default tiny), for tests.
    Metric: ``hpsv2`` (batch mean).
    """
    import open_clip

    if version not in HPSV2_FILES:
        raise ValueError(f"unknown HPSv2 version {version!r}; use one of {sorted(HPSV2_FILES)}")
    device, dtype = resolve_device_dtype(device, dtype)
    cfg = (hpsv2_config() if isinstance(config, str) and config == "real"
           else config or hpsv2_config(tiny=not pretrained))
    if pretrained:  # find the file before building the 1B-parameter model
        path = resolve_weight_file(model_path or HPSV2_REPO, HPSV2_FILES[version],
                                   f"the HPS {version} model", MODEL_FLAG)
    torch.manual_seed(seed)
    model = build_open_clip(cfg)
    if pretrained:
        state = load_state_dict_file(path, flag=MODEL_FLAG)
        state = state.get("state_dict", state)
        state = {k.removeprefix("module."): v for k, v in state.items()}
        try:
            model.load_state_dict(state)
        except RuntimeError as exc:
            raise ModelUnavailableError(f"{path!r} does not fit OpenCLIP {HPSV2_ARCH} "
                                        f"({str(exc).splitlines()[0][:200]}); pass the HPS "
                                        f"checkpoint with {MODEL_FLAG}", MODEL_FLAG) from None
    # OpenCLIP's own tokenizer; its BPE vocabulary ships inside the open_clip wheel.
    tok = open_clip.tokenize
    model = _freeze(model).to(device=device, dtype=dtype)
    size = cfg["vision_cfg"]["image_size"]

    def preprocess(x):
        return _normalise(_resize_shortest_and_crop(x, size), CLIP_MEAN, CLIP_STD)

    def encode(texts):
        return model.encode_text(tok(texts, context_length=cfg["text_cfg"].get("context_length", 77))
                                 .to(device), normalize=True)

    text_features = _TextCache(encode)

    def reward(images: torch.Tensor, inputs=None, prompts=None):
        check_images(images)
        texts = _prompts_for(images, prompts, prompt, "hpsv2")
        t = torch.stack(text_features(texts))
        x = preprocess(images.to(device=device, dtype=dtype).clamp(0, 1))
        f = model.encode_image(x, normalize=True)
        scores = (f * t).sum(-1).float()
        metrics: Metrics = {"hpsv2": batch_mean(scores)}
        return scores, metrics

    reward.model, reward.preprocess = model, preprocess
    return reward


# ================================================================ PickScore (transformers CLIP)
def pickscore_config(tiny: bool = False):
    """CLIPConfig of PickScore_v1 (CLIP ViT-H/14), or a small one for tests."""
    from transformers import CLIPConfig

    if tiny:
        return CLIPConfig(
            vision_config=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                               num_attention_heads=2, image_size=32, patch_size=8),
            text_config=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                             num_attention_heads=2, vocab_size=49408, max_position_embeddings=77),
            projection_dim=16)
    return CLIPConfig(
        vision_config=dict(hidden_size=1280, intermediate_size=5120, num_hidden_layers=32,
                           num_attention_heads=16, image_size=224, patch_size=14, hidden_act="gelu"),
        text_config=dict(hidden_size=1024, intermediate_size=4096, num_hidden_layers=24,
                         num_attention_heads=16, vocab_size=49408, max_position_embeddings=77,
                         hidden_act="gelu"),
        projection_dim=1024)


def write_clip_tokenizer(directory) -> str:
    """Write CLIP's BPE tokenizer (vocab.json + merges.txt) from the file open_clip ships.

    OpenAI CLIP, LAION's CLIP-H (PickScore's processor) and OpenCLIP share this one
    vocabulary (49,408 tokens: 512 byte symbols, 48,894 merges, start/end of text), so the
    tokenizer needs no download. Built the way CLIP's own ``SimpleTokenizer`` builds it.
    """
    import gzip
    import json

    from open_clip.tokenizer import bytes_to_unicode, default_bpe
    from transformers import CLIPTokenizer

    merges = gzip.open(default_bpe()).read().decode("utf-8").split("\n")[1:49152 - 256 - 2 + 1]
    symbols = list(bytes_to_unicode().values())
    vocab = symbols + [v + "</w>" for v in symbols] + ["".join(m.split()) for m in merges]
    vocab += ["<|startoftext|>", "<|endoftext|>"]
    os.makedirs(directory, exist_ok=True)
    with open(os.path.join(directory, "vocab.json"), "w", encoding="utf-8") as f:
        json.dump({t: i for i, t in enumerate(vocab)}, f, ensure_ascii=False)
    with open(os.path.join(directory, "merges.txt"), "w", encoding="utf-8") as f:
        f.write("#version: 0.2\n" + "\n".join(merges) + "\n")
    CLIPTokenizer(os.path.join(directory, "vocab.json"), os.path.join(directory, "merges.txt"),
                  model_max_length=77).save_pretrained(directory)
    return os.fspath(directory)


_BUNDLED_CLIP_TOKENIZER: dict = {}


def bundled_clip_tokenizer():
    """The CLIP tokenizer built from open_clip's shipped BPE file (cached per process)."""
    if "tok" not in _BUNDLED_CLIP_TOKENIZER:
        import tempfile

        from transformers import CLIPTokenizer

        with tempfile.TemporaryDirectory() as d:
            _BUNDLED_CLIP_TOKENIZER["tok"] = CLIPTokenizer.from_pretrained(write_clip_tokenizer(d))
    return _BUNDLED_CLIP_TOKENIZER["tok"]


def _clip_tokenizer(source, what: str):
    from transformers import CLIPTokenizer

    if source in (None, "bundled"):
        return bundled_clip_tokenizer()
    try:
        return CLIPTokenizer.from_pretrained(source)
    except (OSError, ValueError, TypeError) as exc:
        raise model_unavailable(what, source, TOKENIZER_FLAG, exc) from None


def make_pickscore_reward(model_path=PICKSCORE_MODEL, tokenizer="bundled", prompt=None,
                          pretrained: bool = True, config=None, trust_remote_code: bool = False,
                          device=None, dtype="float32", seed: int = 0):
    """PickScore (logit_scale.exp() x cosine of CLIP-H image and text features).

    Args:
        model_path: hub id or local directory of ``yuvalkirstain/PickScore_v1`` (a CLIPModel).
        tokenizer: "bundled" (default: CLIP's BPE vocabulary as shipped in the open_clip
            wheel, the vocabulary of ``laion/CLIP-ViT-H-14-laion2B-s32B-b79K``, so nothing
            is downloaded) or a directory / hub id of a CLIP tokenizer.
        prompt: fixed caption scored for every image (default: the batch's prompts).
        pretrained: False = random CLIPModel from ``config`` (default tiny), for tests.
    Metric: ``pickscore`` (batch mean).
    """
    from transformers import CLIPModel

    device, dtype = resolve_device_dtype(device, dtype)
    if pretrained:
        model_path = model_path or PICKSCORE_MODEL
        try:
            model = CLIPModel.from_pretrained(model_path, dtype=dtype,
                                              trust_remote_code=trust_remote_code)
        except (OSError, ValueError) as exc:
            raise model_unavailable("the PickScore model", model_path, MODEL_FLAG, exc) from None
    else:
        torch.manual_seed(seed)
        model = CLIPModel(pickscore_config() if isinstance(config, str) and config == "real"
                          else config or pickscore_config(tiny=True))
    tok = _clip_tokenizer(tokenizer, "the PickScore (CLIP-H) tokenizer")
    model = _freeze(model).to(device=device, dtype=dtype)
    size = model.config.vision_config.image_size

    def preprocess(x):
        return _normalise(_resize_shortest_and_crop(x, size), CLIP_MEAN, CLIP_STD)

    def _features(out):
        return out.pooler_output if hasattr(out, "pooler_output") else out

    def encode(texts):
        t = tok(texts, padding=True, truncation=True, max_length=77, return_tensors="pt").to(device)
        e = _features(model.get_text_features(**t))
        return e / e.norm(dim=-1, keepdim=True)

    text_features = _TextCache(encode)

    def reward(images: torch.Tensor, inputs=None, prompts=None):
        check_images(images)
        texts = _prompts_for(images, prompts, prompt, "pickscore")
        t = torch.stack(text_features(texts))
        x = preprocess(images.to(device=device, dtype=dtype).clamp(0, 1))
        e = _features(model.get_image_features(pixel_values=x))
        e = e / e.norm(dim=-1, keepdim=True)
        scores = (model.logit_scale.exp() * (e * t).sum(-1)).float()
        metrics: Metrics = {"pickscore": batch_mean(scores)}
        return scores, metrics

    reward.model, reward.preprocess, reward.tokenizer = model, preprocess, tok
    return reward


__all__ = ["make_imagereward_reward", "make_hpsv2_reward", "make_pickscore_reward",
           "imagereward_configs", "hpsv2_config", "pickscore_config",
           "convert_imagereward_state_dict", "ImageRewardModel", "tiny_bert_tokenizer",
           "write_clip_tokenizer", "bundled_clip_tokenizer"]
