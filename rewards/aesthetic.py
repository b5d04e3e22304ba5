"""Learned aesthetic predictors as differentiable rewards.

Two predictors, each an MLP on the L2-normalised image embedding of a frozen
vision backbone; preprocessing is done in torch so gradients reach the pixels.

``aesthetic_scorer`` -- LAION aesthetic predictor ("improved aesthetic predictor")
    Backbone: CLIP ViT-L/14 (``openai/clip-vit-large-patch14``), image embedding
    = ``CLIPVisionModelWithProjection(...).image_embeds`` (768-d).
    Head: Linear 768-1024, Dropout .2, Linear 1024-128, Dropout .2, Linear 128-64,
    Dropout .1, Linear 64-16, Linear 16-1 (no activations), state dict keys
    ``layers.{0,2,4,6,7}.{weight,bias}`` -- the layout of
    ``trl-lib/ddpo-aesthetic-predictor/aesthetic-model.pth`` and of LAION's
    ``sac+logos+ava1-l14-linearMSE.pth``.
    Preprocessing (as CLIPImageProcessor): shortest side to 224 (bicubic),
    centre crop 224, CLIP mean/std. Scores are on the AVA 1-10 scale; real
    photos mostly land between 4 and 7.

``aesthetic_v25`` -- Aesthetic Predictor V2.5 (discus0434)
    Backbone: SigLIP so400m (``google/siglip-so400m-patch14-384``), embedding =
    ``SiglipVisionModel(...).pooler_output`` (1152-d), L2 normalised.
    Head: Linear 1152-1024, Dropout .5, Linear 1024-128, Dropout .5, Linear 128-64,
    Dropout .5, Linear 64-16, Dropout .2, Linear 16-1, state dict keys
    ``scoring_head.{0,2,4,6,8}.{weight,bias}`` (file ``aesthetic_predictor_v2_5.pth``;
    a full-model dict with ``layers.scoring_head.*`` keys is accepted too).
    Preprocessing (as SiglipImageProcessor): resize to 384x384 (bicubic), mean =
    std = 0.5. Scores on a 1-10 scale; its authors call 5.5+ a great score.

Both run in eval mode (dropout off) with frozen parameters. ``pretrained=False``
builds random backbones and heads without reading a file: tiny ones (tests), or the real
architecture with ``config="real"`` (what ``--estimate`` traces, without weights).
"""
from __future__ import annotations

import os

import torch
import torch.nn as nn
import torch.nn.functional as F

from common.hub import (ModelUnavailableError, load_state_dict_file, model_unavailable,
                        resolve_device_dtype, resolve_weight_file, torch_hub_checkpoint)

from .base import Metrics, batch_mean, check_images

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
LAION_HEAD_REPO = "trl-lib/ddpo-aesthetic-predictor"
LAION_HEAD_FILE = "aesthetic-model.pth"
V25_HEAD_FILE = "aesthetic_predictor_v2_5.pth"
V25_HEAD_URL = ("https://github.com/discus0434/aesthetic-predictor-v2-5/raw/main/models/"
                + V25_HEAD_FILE)
V25_ENCODER = "google/siglip-so400m-patch14-384"


class LaionAestheticHead(nn.Module):
    """The LAION aesthetic MLP (layout of trl-lib/ddpo-aesthetic-predictor)."""

    def __init__(self, in_dim: int = 768):
        super().__init__()
        self.layers = nn.Sequential(
            nn.Linear(in_dim, 1024), nn.Dropout(0.2),
            nn.Linear(1024, 128), nn.Dropout(0.2),
            nn.Linear(128, 64), nn.Dropout(0.1),
            nn.Linear(64, 16),
            nn.Linear(16, 1),
        )

    def forward(self, embeds: torch.Tensor) -> torch.Tensor:
        return self.layers(embeds)


class AestheticV25Head(nn.Module):
    """Aesthetic Predictor V2.5's scoring head (layout of aesthetic_predictor_v2_5.pth)."""

    def __init__(self, in_dim: int = 1152):
        super().__init__()
        self.scoring_head = nn.Sequential(
            nn.Linear(in_dim, 1024), nn.Dropout(0.5),
            nn.Linear(1024, 128), nn.Dropout(0.5),
            nn.Linear(128, 64), nn.Dropout(0.5),
            nn.Linear(64, 16), nn.Dropout(0.2),
            nn.Linear(16, 1),
        )

    def forward(self, embeds: torch.Tensor) -> torch.Tensor:
        return self.scoring_head(embeds)


# ---------------------------------------------------------------- helpers
def _freeze(module: nn.Module) -> nn.Module:
    return module.eval().requires_grad_(False)


def _head_file(source, default_repo: str | None, filename: str, what: str, flag: str,
               default_cache: str | None = None, url: str | None = None) -> str:
    """Resolve a head weight file; a directory may hold it as .pth or .safetensors."""
    if source is not None and os.path.isdir(os.fspath(source)):
        stem = os.path.splitext(filename)[0]
        for name in (filename, stem + ".safetensors", "model.safetensors"):
            if os.path.isfile(os.path.join(source, name)):
                return os.path.join(source, name)
    if source is None and default_repo is not None:
        source = default_repo
    return resolve_weight_file(source, filename, what, flag, default_cache=default_cache, url=url)


def _load_head(head: nn.Module, path: str, strip: tuple[str, ...] = (),
               flag: str = "head_path=") -> None:
    state = load_state_dict_file(path, flag=flag)
    if isinstance(state, dict) and "state_dict" in state and isinstance(state["state_dict"], dict):
        state = state["state_dict"]
    for prefix in strip:  # e.g. a full-model dict of v2.5 stores the head under "layers."
        if state and all(k.startswith(prefix) for k in state):
            state = {k[len(prefix):]: v for k, v in state.items()}
    try:
        head.load_state_dict(state)
    except RuntimeError as exc:
        expected = {k: tuple(v.shape) for k, v in head.state_dict().items()}
        raise ModelUnavailableError(
            f"{path!r} does not fit the {type(head).__name__} layout {expected} "
            f"({str(exc).splitlines()[0]})") from None


def _load_vision(cls, source: str, what: str, flag: str, dtype, trust_remote_code: bool):
    try:
        return cls.from_pretrained(source, dtype=dtype, trust_remote_code=trust_remote_code)
    except (OSError, ValueError) as exc:
        raise model_unavailable(what, source, flag, exc) from None


def _resize_shortest_and_crop(x: torch.Tensor, size: int) -> torch.Tensor:
    h, w = x.shape[-2:]
    # Like CLIPImageProcessor: the long side is truncated, not rounded.
    nh, nw = (size, int(w * size / h)) if h <= w else (int(h * size / w), size)
    x = F.interpolate(x, size=(nh, nw), mode="bicubic", align_corners=False, antialias=True)
    top, left = (nh - size) // 2, (nw - size) // 2
    return x[..., top:top + size, left:left + size]


def _normalise(x: torch.Tensor, mean, std) -> torch.Tensor:
    m = torch.tensor(mean, device=x.device, dtype=x.dtype).view(1, 3, 1, 1)
    s = torch.tensor(std, device=x.device, dtype=x.dtype).view(1, 3, 1, 1)
    return (x - m) / s


def _make_scorer(vision, head, preprocess, embed, device, dtype, name: str):
    def reward(images: torch.Tensor, inputs=None, prompts=None):
        check_images(images)
        x = preprocess(images.to(device=device, dtype=dtype).clamp(0, 1))
        e = embed(x)
        e = e / e.norm(dim=-1, keepdim=True)
        scores = head(e).reshape(len(images)).float()
        metrics: Metrics = {name: batch_mean(scores)}
        return scores, metrics

    reward.vision, reward.head, reward.preprocess = vision, head, preprocess
    return reward


# ---------------------------------------------------------------- LAION / CLIP
def tiny_clip_vision_config():
    """A small CLIPVisionConfig for tests (random weights, 32 px input)."""
    from transformers import CLIPVisionConfig

    return CLIPVisionConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                            num_attention_heads=2, image_size=32, patch_size=8, projection_dim=16)


def real_clip_vision_config():
    """The vision tower of openai/clip-vit-large-patch14 (what the LAION head reads)."""
    from transformers import CLIPVisionConfig

    return CLIPVisionConfig(hidden_size=1024, intermediate_size=4096, num_hidden_layers=24,
                            num_attention_heads=16, image_size=224, patch_size=14,
                            projection_dim=768, hidden_act="quick_gelu")


def _random_config(config, tiny, real):
    """The config of a random (``pretrained=False``) build: tiny by default, "real", or given."""
    if config is None:
        return tiny()
    if isinstance(config, str) and config == "real":
        return real()
    return config


def make_laion_aesthetic_reward(clip_model: str = "openai/clip-vit-large-patch14", head_path=None,
                                pretrained: bool = True, trust_remote_code: bool = False,
                                device=None, dtype="float32", seed: int = 0,
                                head_filename: str | None = None, config=None):
    """LAION aesthetic score (AVA 1-10 scale) of ``images``; ``inputs`` are ignored.

    Args:
        clip_model: hub id or local directory of a CLIP model (a full ``CLIPModel``
            checkpoint works; only the vision tower + projection are loaded).
        head_path: the aesthetic MLP: a file (.pth read with weights_only, or
            .safetensors), a directory holding ``aesthetic-model.pth``, or a hub
            repo id; default ``trl-lib/ddpo-aesthetic-predictor``.
        head_filename: the head's file name inside that directory or repo (default
            ``aesthetic-model.pth``; the original's --hf_hub_aesthetic_model_filename).
        pretrained: False builds a random CLIP + random head (``seed``) from ``config``.
        config: of a random build: None = tiny (tests), "real" = CLIP ViT-L/14, or a
            ``CLIPVisionConfig``.
        trust_remote_code: passed to ``from_pretrained`` (off unless asked).
    Metric: ``aesthetic`` (batch mean score).
    """
    from transformers import CLIPVisionModelWithProjection

    device, dtype = resolve_device_dtype(device, dtype)
    if pretrained:
        vision = _load_vision(CLIPVisionModelWithProjection, clip_model,
                              "the CLIP vision model of the LAION aesthetic scorer", "clip_model=",
                              dtype, trust_remote_code)
        head = LaionAestheticHead(vision.config.projection_dim)
        path = _head_file(head_path, LAION_HEAD_REPO, head_filename or LAION_HEAD_FILE,
                          "the LAION aesthetic head", "head_path=")
        _load_head(head, path)
    else:
        torch.manual_seed(seed)
        vision = CLIPVisionModelWithProjection(
            _random_config(config, tiny_clip_vision_config, real_clip_vision_config))
        head = LaionAestheticHead(vision.config.projection_dim)
    vision = _freeze(vision).to(device=device, dtype=dtype)
    head = _freeze(head).to(device=device, dtype=dtype)
    size = vision.config.image_size

    def preprocess(x):
        return _normalise(_resize_shortest_and_crop(x, size), CLIP_MEAN, CLIP_STD)

    def embed(x):
        return vision(pixel_values=x).image_embeds

    return _make_scorer(vision, head, preprocess, embed, device, dtype, "aesthetic")


# ---------------------------------------------------------------- v2.5 / SigLIP
def tiny_siglip_vision_config():
    """A small SiglipVisionConfig for tests (random weights, 32 px input)."""
    from transformers import SiglipVisionConfig

    return SiglipVisionConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                              num_attention_heads=2, image_size=32, patch_size=8)


def real_siglip_vision_config():
    """The vision tower of google/siglip-so400m-patch14-384 (what the v2.5 head reads)."""
    from transformers import SiglipVisionConfig

    return SiglipVisionConfig(hidden_size=1152, intermediate_size=4304, num_hidden_layers=27,
                              num_attention_heads=16, image_size=384, patch_size=14)


def make_aesthetic_v25_reward(model_path=None, encoder: str = V25_ENCODER, pretrained: bool = True,
                              trust_remote_code: bool = False, device=None, dtype="float32",
                              seed: int = 0, head_filename: str | None = None, config=None):
    """Aesthetic Predictor V2.5 score (1-10 scale) of ``images``; ``inputs`` are ignored.

    Args:
        model_path: the v2.5 head weights ``aesthetic_predictor_v2_5.pth`` (file,
            directory holding it, or hub repo id). Default: torch hub's cache
            (``$TORCH_HOME/hub/checkpoints/``), where the upstream package stores
            its download.
        encoder: hub id or local directory of the SigLIP so400m-patch14-384 model
            (a full ``SiglipModel`` checkpoint works; only the vision tower is loaded).
        pretrained: False builds a random SigLIP + random head (``seed``) from ``config``.
        config: of a random build: None = tiny (tests), "real" = SigLIP so400m, or a
            ``SiglipVisionConfig``.
        trust_remote_code: passed to ``from_pretrained`` (off unless asked).
    Metric: ``aesthetic_v25`` (batch mean score).
    """
    from transformers import SiglipVisionModel

    device, dtype = resolve_device_dtype(device, dtype)
    if pretrained:
        vision = _load_vision(SiglipVisionModel, encoder,
                              "the SigLIP vision model of aesthetic predictor v2.5", "encoder=",
                              dtype, trust_remote_code)
        head = AestheticV25Head(vision.config.hidden_size)
        filename = head_filename or V25_HEAD_FILE
        path = _head_file(model_path, None, filename, "the aesthetic predictor v2.5 head",
                          "model_path=", default_cache=torch_hub_checkpoint(filename),
                          url=V25_HEAD_URL)
        _load_head(head, path, strip=("layers.",), flag="model_path=")
    else:
        torch.manual_seed(seed)
        vision = SiglipVisionModel(
            _random_config(config, tiny_siglip_vision_config, real_siglip_vision_config))
        head = AestheticV25Head(vision.config.hidden_size)
    vision = _freeze(vision).to(device=device, dtype=dtype)
    head = _freeze(head).to(device=device, dtype=dtype)
    size = vision.config.image_size

    def preprocess(x):
        x = F.interpolate(x, size=(size, size), mode="bicubic", align_corners=False, antialias=True)
        return _normalise(x, (0.5, 0.5, 0.5), (0.5, 0.5, 0.5))

    def embed(x):
        return vision(pixel_values=x).pooler_output

    return _make_scorer(vision, head, preprocess, embed, device, dtype, "aesthetic_v25")
