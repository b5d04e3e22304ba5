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

import re

import torch
import torch.nn.functional as F

from .base import Metrics, check_images
from .hub import (ModelUnavailableError, load_state_dict_file, resolve_device_dtype,
                  resolve_weight_file, torch_hub_checkpoint)

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
        tv_state = load_state_dict_file(path)
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


def make_lpips_reward(net: str = "alex", resolution: int | None = 256, pretrained: bool = True,
                      backbone_path=None, version: str = "0.1", device=None, dtype="float32"):
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
    Metrics: ``distance`` (mean LPIPS distance).
    """
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
        metrics: Metrics = {"distance": dist.detach().mean().item()}
        return 1.0 - dist, metrics

    reward.model = model  # exposed for inspection and tests
    return reward
