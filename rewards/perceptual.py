"""LPIPS similarity to the input image, as a differentiable reward.

reward = 1 - LPIPS(images, inputs)

LPIPS (Zhang et al. 2018) is a distance: 0 for identical images, typically
0.1-0.7 for visibly different ones; it is not bounded above in theory but stays
below ~1.2 in practice. The reward is therefore <= 1, with 1 reached exactly
when the output equals the input (after resizing to ``resolution``).

Unlike the research code this replaces, the distance is computed WITH gradients
(the original computed it under ``no_grad`` and the term trained nothing).

Weights: the ``lpips`` wheel ships the calibrated linear heads
(``lpips/weights/v0.1/<net>.pth``); the backbone (AlexNet / VGG16 /
SqueezeNet1.1 ImageNet features) normally comes from torchvision's download.
We never let torchvision download: we build the backbone with random weights
and load the torchvision weight file ourselves, from ``backbone_path`` or from
torch hub's cache (``$TORCH_HOME/hub/checkpoints/``, where torchvision would
have stored it). ``pretrained=False`` keeps the random backbone (tests only).
"""
from __future__ import annotations

import os
import pickle
import re

import torch
import torch.nn.functional as F

from common.hub import (ModelUnavailableError, WeightFileError, brief, load_state_dict_file,
                        resolve_device_dtype,
                        resolve_weight_file, torch_hub_checkpoint)
from common.images import load_image

from .base import Metrics, batch_mean, check_images

# net -> torchvision weight URL of the ImageNet backbone that lpips uses.
BACKBONE_URLS = {
    "alex": "https://download.pytorch.org/models/alexnet-owt-7be5be79.pth",
    "vgg": "https://download.pytorch.org/models/vgg16-397923af.pth",
    "squeeze": "https://download.pytorch.org/models/squeezenet1_1-b8a52dc0.pth",
}


def _load_backbone(lp, net: str, backbone_path) -> None:
    """Copy torchvision ImageNet weights into the lpips trunk ``lp.net``.

    lpips splits torchvision's ``features`` Sequential into ``slice1..sliceN``
    while keeping each layer's index as its name, so ``sliceK.<i>.weight`` is
    torchvision's ``features.<i>.weight``.
    """
    url = BACKBONE_URLS[net]
    filename = url.rsplit("/", 1)[1]
    path = resolve_weight_file(
        backbone_path, filename, f"the LPIPS {net} backbone (torchvision ImageNet weights)",
        "backbone_path=", default_cache=torch_hub_checkpoint(filename), url=url)
    try:
        tv_state = load_state_dict_file(path, flag="backbone_path=")
    except Exception as exc:
        raise ModelUnavailableError(
            f"Could not read the LPIPS {net} backbone weights {path!r} "
            f"({type(exc).__name__}: {exc}); expected torchvision's {filename}.") from None
    own = lp.net.state_dict()
    mapped = {}
    for key in own:
        m = re.fullmatch(r"slice\d+\.(\d+)\.(.+)", key)
        src = f"features.{m.group(1)}.{m.group(2)}" if m else key
        if src not in tv_state or tv_state[src].shape != own[key].shape:
            raise ModelUnavailableError(
                f"{path!r} is not torchvision's {filename}: missing or mis-shaped {src!r}")
        mapped[key] = tv_state[src]
    lp.net.load_state_dict(mapped)


def build_lpips_model(net: str = "alex", pretrained: bool = True, backbone_path=None,
                      version: str = "0.1"):
    """Return a frozen ``lpips.LPIPS`` in eval mode, never downloading anything.

    The linear heads always come from the lpips wheel; the trunk is loaded from
    torchvision's weight file when ``pretrained`` (see module docstring).
    """
    if net not in BACKBONE_URLS:
        raise ValueError(f"unknown LPIPS net {net!r}; use one of {sorted(BACKBONE_URLS)}")
    if version not in ("0.1", "0.0"):
        raise ValueError(f"unknown LPIPS version {version!r}; use '0.1' or '0.0'")
    import warnings

    import lpips

    with warnings.catch_warnings():  # torchvision's "pretrained is deprecated" noise
        warnings.simplefilter("ignore", UserWarning)
        lp = lpips.LPIPS(net=net, version=version, pnet_rand=True, verbose=False)
    if pretrained:
        _load_backbone(lp, net, backbone_path)
    lp.eval().requires_grad_(False)
    return lp


def _resize(x: torch.Tensor, resolution: int | None) -> torch.Tensor:
    if resolution is None or tuple(x.shape[-2:]) == (resolution, resolution):
        return x
    return F.interpolate(x, size=(resolution, resolution), mode="bilinear",
                         align_corners=False, antialias=True)


LPIPS_FORMS = ("linear", "exp")


def make_lpips_reward(net: str = "alex", resolution: int | None = 256, pretrained: bool = True,
                      backbone_path=None, version: str = "0.1", device=None, dtype="float32",
                      form: str = "linear"):
    """LPIPS similarity of ``images`` to ``inputs``: ``1 - LPIPS distance`` (<= 1).

    Args:
        net: LPIPS trunk, "alex" (default, the lpips authors' recommendation for a
            loss), "vgg" or "squeeze".
        resolution: both images are resized (bilinear, antialiased, in torch) to
            ``resolution x resolution`` before comparison; None compares at native
            size (then images and inputs must have the same size).
        pretrained: load the ImageNet trunk (False: random trunk, for tests).
        backbone_path: torchvision weight file of the trunk, or a directory holding
            it; default: torch hub's cache.
        version: lpips head version ("0.1", the default of the package).
        form: "linear" = ``1 - d``; "exp" = ``exp(-5 d)`` floored at 1e-4, the original
            project's similarity (in (0, 1]; its slope at d = 0 is 5, not 1), here with
            gradients (the original computed it without).
    Metrics: ``distance`` (mean LPIPS distance).
    """
    if form not in LPIPS_FORMS:
        raise ValueError(f"form must be one of {LPIPS_FORMS}, got {form!r}")
    if resolution is not None and (not isinstance(resolution, int) or resolution < 32):
        raise ValueError(f"resolution must be an int >= 32 or None, got {resolution!r}")
    device, dtype = resolve_device_dtype(device, dtype)
    model = build_lpips_model(net, pretrained, backbone_path, version).to(device=device, dtype=dtype)

    def reward(images: torch.Tensor, inputs: torch.Tensor | None, prompts=None):
        check_images(images)
        if inputs is None:
            raise ValueError("the lpips reward compares with the input images; inputs is None")
        check_images(inputs, "inputs")
        x = _resize(images.to(device=device, dtype=dtype), resolution)
        y = _resize(inputs.detach().to(device=device, dtype=dtype), resolution)
        if x.shape != y.shape:
            raise ValueError(f"images {tuple(x.shape)} and inputs {tuple(y.shape)} differ in size; "
                             "set a resolution to compare them")
        # normalize=True maps [0,1] to the [-1,1] range lpips expects.
        dist = model(x, y, normalize=True).reshape(x.shape[0]).float()
        metrics: Metrics = {"distance": batch_mean(dist)}
        if form == "exp":
            return torch.exp((-5.0 * dist).clamp(max=20)).clamp_min(1e-4), metrics
        return 1.0 - dist, metrics

    reward.model = model  # exposed for inspection and tests
    return reward


# ================================================================ DreamSim
# DreamSim (Fu et al. 2023): distance = 1 - cosine of embeddings from ViT backbones
# fine-tuned (LoRA) on human similarity judgements; it weighs layout, pose and semantic
# content, and less fine texture, than LPIPS does. We build the model with the ``dreamsim``
# package's own classes (as ``dreamsim.dreamsim()`` does) but never download: the files of
# its checkpoint zip must be in ``model_dir``. Types whose backbone comes from files only:
DREAMSIM_TYPES = {
    # type -> (backbone file, LoRA folder)
    "open_clip_vitb32": ("open_clip_vitb32_pretrain.pth.tar", "open_clip_vitb32_single_lora"),
    "clip_vitb32": ("clip_vitb32_pretrain.pth.tar", "clip_vitb32_single_lora"),
}
# The package's "ensemble" and DINO types fetch their DINO backbone code with torch.hub
# from GitHub (running that repository's code), which we do not do.
DREAMSIM_REFUSED = ("ensemble", "dino_vitb16", "dinov2_vitb14", "synclr_vitb16")
DREAMSIM_FLAG = "model_dir="  # renamed to --dreamsim_dir by the commands
DREAMSIM_SIZE = 224  # the package's img_size


def _tiny_dreamsim_backbone(patch_size: int = 32):
    """A small random backbone shaped like DreamSim's CLIP-as-DINO ViT (for tests)."""
    from functools import partial

    from dreamsim.feature_extraction.vision_transformer import VisionTransformer

    vit = VisionTransformer(patch_size=patch_size, embed_dim=32, depth=2, num_heads=2,
                            qkv_bias=True, norm_layer=partial(torch.nn.LayerNorm, eps=1e-5))
    vit.pos_drop = torch.nn.LayerNorm(32)
    return vit, torch.randn(32, 16) / 32 ** 0.5


def build_dreamsim_model(dreamsim_type: str = "open_clip_vitb32", model_dir=None,
                         pretrained: bool = True, seed: int = 0):
    """DreamSim's ``PerceptualModel`` with its LoRA, in eval mode, frozen.

    ``pretrained`` loads the backbone and LoRA files of ``dreamsim_type`` from ``model_dir``
    (the unzipped checkpoint of the ``dreamsim`` package); False builds a small random one.
    """
    import json

    if dreamsim_type in DREAMSIM_REFUSED:
        raise ValueError(
            f"DreamSim type {dreamsim_type!r} loads its DINO backbone code through torch.hub "
            f"from GitHub, which this project does not run; use one of {sorted(DREAMSIM_TYPES)}")
    if dreamsim_type not in DREAMSIM_TYPES:
        raise ValueError(f"unknown DreamSim type {dreamsim_type!r}; use one of "
                         f"{sorted(DREAMSIM_TYPES)}")
    backbone_file, lora_dir = DREAMSIM_TYPES[dreamsim_type]
    if pretrained:
        where = os.fspath(model_dir) if model_dir is not None else None
        missing = [f for f in (backbone_file, lora_dir)
                   if where is None or not os.path.exists(os.path.join(where, f))]
        if missing:
            raise ModelUnavailableError(
                f"Could not load DreamSim {dreamsim_type}: {', '.join(missing)} not found in "
                f"{where!r}. On a machine with network access download the package's checkpoint "
                f"zip (dreamsim.config.dreamsim_weights[{dreamsim_type!r}]), unzip it and pass "
                f"the folder with {DREAMSIM_FLAG}.", DREAMSIM_FLAG)
    import peft
    from dreamsim.config import dreamsim_args
    from dreamsim.feature_extraction.extractor import ViTExtractor
    from dreamsim.model import PerceptualModel

    cfg = dreamsim_args["model_config"][dreamsim_type]
    torch.manual_seed(seed)
    if pretrained:
        try:
            model = PerceptualModel(**cfg, device="cpu", load_dir=os.fspath(model_dir),
                                    normalize_embeds=True)
            with open(os.path.join(model_dir, lora_dir, "adapter_config.json")) as f:
                adapter = json.load(f)
            lora = peft.LoraConfig(**{k: adapter[k] for k in
                                      ("r", "lora_alpha", "lora_dropout", "bias",
                                       "target_modules")})
            model = peft.get_peft_model(model, lora)
            model = peft.PeftModel.from_pretrained(model.base_model.model,
                                                   os.path.join(model_dir, lora_dir))
        except pickle.UnpicklingError:   # torch's own words advise the unsafe path
            raise WeightFileError(
                f"DreamSim {dreamsim_type} in {os.fspath(model_dir)!r}: a weight file holds "
                f"pickled Python objects besides tensors; it is not loaded (unpickling them "
                f"could run code); pass the checkpoint's folder with {DREAMSIM_FLAG}",
                DREAMSIM_FLAG) from None
        except (RuntimeError, OSError, EOFError, KeyError, TypeError, ValueError) as exc:
            raise WeightFileError(
                f"DreamSim {dreamsim_type} in {os.fspath(model_dir)!r} cannot be loaded "
                f"({type(exc).__name__}: {brief(exc, 160)}); pass the unzipped checkpoint's "
                f"folder with {DREAMSIM_FLAG}", DREAMSIM_FLAG) from None
    else:
        # The package builds its backbone inside ViTExtractor from files; hand it a small
        # random one instead for the duration of the build.
        original = ViTExtractor.create_model
        ViTExtractor.create_model = staticmethod(lambda *a, **k: _tiny_dreamsim_backbone())
        try:
            model = PerceptualModel(**cfg, device="cpu", load_dir="", normalize_embeds=True)
        finally:
            ViTExtractor.create_model = original
        model = peft.get_peft_model(model, peft.LoraConfig(r=4, lora_alpha=4,
                                                           target_modules=["qkv"]))
        for name, p in model.named_parameters():
            if "lora_B" in name:  # peft starts B at 0; random so the adapter matters
                torch.nn.init.normal_(p, std=0.05)
    return model.eval().requires_grad_(False)


def make_dreamsim_reward(model_dir=None, dreamsim_type: str = "open_clip_vitb32", reference=None,
                         pretrained: bool = True, device=None, dtype="float32", seed: int = 0):
    """DreamSim similarity ``1 - distance`` of ``images`` to ``inputs`` (content) or to a
    fixed ``reference`` image (style); 1 = identical.

    Args:
        model_dir: folder of the unzipped DreamSim checkpoint (holding e.g.
            ``open_clip_vitb32_pretrain.pth.tar`` and ``open_clip_vitb32_single_lora/``).
        dreamsim_type: "open_clip_vitb32" (default) or "clip_vitb32".
        reference: a (3,H,W) / (1,3,H,W) tensor in [0,1] or an image path; when given every
            image is compared with it instead of with ``inputs``.
        pretrained: False builds a small random model (tests).
    Images are resized (bicubic, antialiased, in torch) to 224 x 224 as the package's
    preprocessing does; the model normalises them itself. Metric: ``distance``.
    """
    device, dtype = resolve_device_dtype(device, dtype)
    model = build_dreamsim_model(dreamsim_type, model_dir, pretrained, seed).to(device=device,
                                                                               dtype=dtype)
    base = model.base_model.model if hasattr(model, "base_model") else model
    for extractor in base.extractor_list:  # kept as plain attributes by the package
        extractor.device = device
        if torch.is_tensor(getattr(extractor, "proj", None)):
            extractor.proj = extractor.proj.to(device=device, dtype=dtype)

    def preprocess(x):
        return F.interpolate(x, size=(DREAMSIM_SIZE, DREAMSIM_SIZE), mode="bicubic",
                             align_corners=False, antialias=True).clamp(0, 1)

    ref = None
    if reference is not None:
        if isinstance(reference, (str, os.PathLike)):
            reference = load_image(reference)
        ref = reference if reference.ndim == 4 else reference[None]
        check_images(ref, "reference")
        with torch.no_grad():
            ref_embed = model.embed(preprocess(ref.to(device=device, dtype=dtype)))

    def reward(images: torch.Tensor, inputs: torch.Tensor | None, prompts=None):
        check_images(images)
        e = model.embed(preprocess(images.to(device=device, dtype=dtype)))
        if ref is not None:
            other = ref_embed.expand_as(e)
        else:
            if inputs is None:
                raise ValueError("the dreamsim reward compares with the input images (or a "
                                 "reference image); inputs is None")
            check_images(inputs, "inputs")
            with torch.no_grad():
                other = model.embed(preprocess(inputs.detach().to(device=device, dtype=dtype)))
        dist = (1 - F.cosine_similarity(e, other, dim=-1)).float().reshape(len(images))
        metrics: Metrics = {"distance": batch_mean(dist)}
        return 1.0 - dist, metrics

    reward.model, reward.preprocess = model, preprocess
    return reward
