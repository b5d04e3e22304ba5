"""``tiny-photo``: the built-in tiny FLUX Kontext with weights pretrained on bundled photos.

Same classes as ``tiny`` (FluxTransformer2DModel, AutoencoderKL, CLIPTextModel,
T5EncoderModel and the locally built tokenizers of :mod:`alignprop.tiny_kontext`); the VAE
and transformer have slightly larger configs and weights made by
``python -m alignprop.pretrain_tiny`` (see ``alignprop/assets/tiny-photo/manifest.json``
for the command, its time and its checks). The text encoders keep ``tiny``'s seeded
random weights (shipped too, so a change of initialisation elsewhere cannot change
the model): the transformer learned to read their embeddings.

What the base model does (checked on held-out photos by the pretraining script and
by tests/test_tiny_photo.py): reproduces its input for :data:`IDENTITY_PROMPT` (and
for the project's default prompt, and for instructions it does not know), and
follows the instructions in :data:`EDITS`.

The weights are loaded only after their sha256 matches the manifest: a mismatch is
one clear error, never a silently different model.
"""
from __future__ import annotations

import hashlib
import json
import math
from pathlib import Path

import torch

from common.hub import ModelUnavailableError

from .tiny_kontext import build_tiny_pipeline

NAME = "tiny-photo"
ASSET_DIR = Path(__file__).resolve().parent / "assets" / NAME
MANIFEST = "manifest.json"
COMPONENTS = ("transformer", "vae", "text_encoder", "text_encoder_2")

IDENTITY_PROMPT = "Keep this photo as it is."

# Instruction -> (statistic it moves, pixel-space edit that defines the target).
# The targets are what the model was trained to produce; the checks compare the
# statistic's move on the model's output with its move on the target image.
EDIT_PROMPTS = {
    "brighter": "Make it brighter.",
    "darker": "Make it darker.",
    "black_and_white": "Make it black and white.",
    "warmer": "Make it warmer.",
}
EDIT_STATISTIC = {"brighter": "luma", "darker": "luma", "black_and_white": "chroma",
                  "warmer": "warmth"}
BRIGHTNESS_STEP = 0.15
WARMTH_STEP = 0.10


def luma(images: torch.Tensor) -> torch.Tensor:
    """(B,3,H,W) in [0,1] -> (B,1,H,W) Rec. 601 luma."""
    w = torch.tensor([0.299, 0.587, 0.114], dtype=images.dtype, device=images.device)
    return (images * w.view(1, 3, 1, 1)).sum(1, keepdim=True)


def apply_edit(name: str, images: torch.Tensor) -> torch.Tensor:
    """The training target of edit ``name`` for images (B,3,H,W) in [0,1]."""
    if name == "identity":
        return images
    if name == "brighter":
        return (images + BRIGHTNESS_STEP).clamp(0, 1)
    if name == "darker":
        return (images - BRIGHTNESS_STEP).clamp(0, 1)
    if name == "black_and_white":
        return luma(images).expand_as(images).clone()
    if name == "warmer":
        shift = torch.tensor([WARMTH_STEP, 0.0, -WARMTH_STEP], dtype=images.dtype,
                             device=images.device).view(1, 3, 1, 1)
        return (images + shift).clamp(0, 1)
    raise KeyError(f"unknown edit {name!r}; known: identity, {', '.join(EDIT_PROMPTS)}")


def statistic(kind: str, images: torch.Tensor) -> torch.Tensor:
    """Per-image statistic (B,): mean luma, mean chroma (|RGB - luma|) or mean R - B."""
    if kind == "luma":
        return luma(images).mean(dim=(1, 2, 3))
    if kind == "chroma":
        return (images - luma(images)).abs().mean(dim=(1, 2, 3))
    if kind == "warmth":
        return (images[:, 0] - images[:, 2]).mean(dim=(1, 2))
    raise KeyError(kind)


def psnr(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Per-image PSNR (B,) in dB of images in [0,1]."""
    mse = ((a.float() - b.float()) ** 2).mean(dim=(1, 2, 3)).clamp_min(1e-10)
    return -10 * torch.log10(mse)


# --------------------------------------------------------------------------- configs
def transformer_config() -> dict:
    return dict(patch_size=1, in_channels=16, num_layers=1, num_single_layers=2,
                attention_head_dim=32, num_attention_heads=2, joint_attention_dim=32,
                pooled_projection_dim=32, axes_dims_rope=[8, 12, 12], guidance_embeds=True)


def vae_config() -> dict:
    # tiny's VAE (stride 2, 4 latent channels); shift/scaling are set from the
    # trained encoder's latent statistics and stored in the manifest.
    return dict(in_channels=3, out_channels=3,
                down_block_types=("DownEncoderBlock2D", "DownEncoderBlock2D"),
                up_block_types=("UpDecoderBlock2D", "UpDecoderBlock2D"),
                block_out_channels=(8, 16), layers_per_block=1, latent_channels=4,
                norm_num_groups=4, sample_size=64, use_quant_conv=False,
                use_post_quant_conv=False)


def build_untrained(shift_factor: float = 0.0, scaling_factor: float = 1.0, seed: int = 0):
    """The tiny-photo pipeline with freshly initialised VAE/transformer (for pretraining)."""
    from diffusers import AutoencoderKL, FluxKontextPipeline, FluxTransformer2DModel

    base = build_tiny_pipeline()  # tokenizers, text encoders and scheduler of `tiny`
    torch.manual_seed(seed)
    transformer = FluxTransformer2DModel(**transformer_config())
    torch.manual_seed(seed + 1)
    vae = AutoencoderKL(**vae_config(), shift_factor=shift_factor, scaling_factor=scaling_factor)
    pipe = FluxKontextPipeline(
        scheduler=base.scheduler, vae=vae, text_encoder=base.text_encoder,
        tokenizer=base.tokenizer, text_encoder_2=base.text_encoder_2,
        tokenizer_2=base.tokenizer_2, transformer=transformer)
    pipe.tokenizer_max_length = 77
    for module in (transformer, vae, pipe.text_encoder, pipe.text_encoder_2):
        module.eval()
    return pipe


# --------------------------------------------------------------------------- loading
def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def read_manifest(asset_dir: Path = ASSET_DIR) -> dict:
    """The manifest, checked field by field: valid JSON of the wrong shape is one line too."""
    path = Path(asset_dir) / MANIFEST
    try:
        manifest = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise ModelUnavailableError(
            f"--pretrained_model {NAME}: cannot read {path} ({type(exc).__name__}); "
            f"restore it with git or rebuild the model with `python -m alignprop.pretrain_tiny`."
        ) from None

    def bad(what: str) -> ModelUnavailableError:
        return ModelUnavailableError(f"--pretrained_model {NAME}: {path} is not this model's "
                                     f"manifest ({what}); restore it with git")

    if not isinstance(manifest, dict):
        raise bad(f"a JSON {type(manifest).__name__}, not an object")
    files = manifest.get("files")
    if not isinstance(files, dict):
        raise bad("no 'files' object")
    for name in COMPONENTS:
        entry = files.get(f"{name}.safetensors")
        if not (isinstance(entry, dict) and isinstance(entry.get("sha256"), str)
                and len(entry["sha256"]) == 64):
            raise bad(f"no sha256 for {name}.safetensors")
    factors = manifest.get("vae_factors")
    if not (isinstance(factors, dict) and all(
            isinstance(factors.get(k), (int, float)) and not isinstance(factors.get(k), bool)
            and math.isfinite(factors[k]) for k in ("shift_factor", "scaling_factor"))):
        raise bad("no finite vae_factors shift_factor / scaling_factor")
    return manifest


def verify_assets(asset_dir: Path = ASSET_DIR) -> dict:
    """Check every weight file against the manifest's sha256; returns the manifest."""
    asset_dir = Path(asset_dir)
    manifest = read_manifest(asset_dir)
    for name in COMPONENTS:
        entry = manifest["files"][f"{name}.safetensors"]
        path = asset_dir / f"{name}.safetensors"
        if not path.is_file():
            raise ModelUnavailableError(
                f"--pretrained_model {NAME}: {path} is missing; rebuild it with "
                f"`{manifest.get('command', 'python -m alignprop.pretrain_tiny')}`.")
        digest = sha256_file(path)
        if digest != entry["sha256"]:
            raise ModelUnavailableError(
                f"--pretrained_model {NAME}: sha256 of {path} is {digest[:16]}..., the manifest "
                f"expects {entry['sha256'][:16]}... (corrupt or replaced file; restore it "
                f"with git or rebuild with `{manifest.get('command')}`).")
    return manifest


def load_tiny_photo_pipeline(dtype: torch.dtype = torch.float32, asset_dir: Path = ASSET_DIR):
    """The pretrained tiny Kontext (weights verified against their sha256 first)."""
    from safetensors.torch import load_model

    manifest = verify_assets(asset_dir)
    vae_factors = manifest["vae_factors"]
    pipe = build_untrained(vae_factors["shift_factor"], vae_factors["scaling_factor"])
    for name in COMPONENTS:
        module = getattr(pipe, name)
        # safetensors holds tensors only (nothing is unpickled); strict: every weight present
        # (load_model also restores T5's tied embedding, stored once).
        load_model(module, str(Path(asset_dir) / f"{name}.safetensors"), strict=True)
        module.eval()
    if dtype != torch.float32:
        pipe.to(dtype=dtype)
    return pipe


__all__ = ["NAME", "IDENTITY_PROMPT", "EDIT_PROMPTS", "EDIT_STATISTIC", "apply_edit", "statistic",
           "psnr", "load_tiny_photo_pipeline", "verify_assets", "build_untrained"]
