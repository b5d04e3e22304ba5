"""AIDE photorealism (AI-generated image detector) as a differentiable reward.

reward = P(real) = softmax(AIDE(pack(images)))[:, real_index]   in [0, 1]

AIDE (Yan et al., "A Sanity Check for AI-generated Image Detection",
github.com/shilinyan99/AIDE) classifies an image from a *pack* of five views:

  0 ``x_minmin``  the 32x32 patch with the LOWEST DCT frequency-energy grade
  1 ``x_maxmax``  the patch with the HIGHEST grade
  2 ``x_minmin1`` the second lowest
  3 ``x_maxmax1`` the second highest
  4 ``x_0``       the whole image

each resized to 256x256 (bilinear, antialiased) and normalised with ImageNet
mean/std, stacked as (B, 5, 3, 256, 256). Patches are taken on the image at its
native resolution, 32x32 windows with stride 16. A patch's grade is
``sum_k 2^k * mean_{(u,v) in band k} sum_c log(|DCT(patch_c)[u,v]| + 1)`` over
6 diagonal bands ``u + v in [64k/6, 64(k+1)/6]`` (orthonormal 2-D DCT-II).
AIDE passes each selected patch through a DCT and back with an all-pass
filter, which is the identity; we take the pixel patch directly.

This module builds the pack in torch: the grades (which only choose WHICH
patches) are computed without gradient, the chosen patches are sliced from
``images`` with gradient, so the reward backpropagates into the pixels. Note
that AIDE's own forward runs its ConvNeXt (semantic, whole-image) branch under
``torch.no_grad``: gradients reach the pixels only through the four patch
views (its SRM-filter + ResNet branches).

Model: we import ``models/AIDE.py`` from the user's clone (``aide_repo``) and
build it with the function named ``model_name`` (default ``AIDE``, as AIDE's
``--model`` flag), then load ``aide_resume`` (a checkpoint written by AIDE's
training script: ``{"model": state_dict, ...}``; read with ``weights_only=True``).
Labels in AIDE's data loader: ``0_real`` -> 0, ``1_fake`` -> 1, so
``real_index=0``. Running the clone's code is what passing ``aide_repo``
asks for; nothing is downloaded (pass ``convnext_path`` only if your AIDE.py
needs the open_clip ConvNeXt file to build; the checkpoint overwrites it).
"""
from __future__ import annotations

import importlib.util
import os
import sys
import tempfile

import torch
import torch.nn.functional as F

from common.hub import ModelUnavailableError, load_state_dict_file, resolve_device_dtype

from .base import Metrics, batch_mean, check_images

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


# ---------------------------------------------------------------- input pack
def dct_matrix(n: int, dtype=torch.float64) -> torch.Tensor:
    """Orthonormal DCT-II matrix D (n x n): D @ x is the DCT of column vector x."""
    k = torch.arange(n, dtype=dtype)[:, None]
    j = torch.arange(n, dtype=dtype)[None, :]
    d = torch.cos(torch.pi * (j + 0.5) * k / n) * (2.0 / n) ** 0.5
    d[0] = d[0] / 2 ** 0.5
    return d


def band_masks(window: int = 32, bands: int = 6) -> torch.Tensor:
    """(bands, window, window) masks of the diagonal frequency bands AIDE grades on."""
    s = torch.arange(window)[:, None] + torch.arange(window)[None, :]
    edges = [2.0 * window / bands * k for k in range(bands + 1)]
    return torch.stack([((s >= edges[k]) & (s <= edges[k + 1])).float() for k in range(bands)])


def patch_grades(images: torch.Tensor, window: int = 32, stride: int = 16, bands: int = 6) -> torch.Tensor:
    """Frequency-energy grade of every window x window patch: (B, L), row-major order."""
    with torch.no_grad():
        x = images.detach().float()
        b, c = x.shape[:2]
        patches = F.unfold(x, kernel_size=window, stride=stride)  # (B, C*w*w, L)
        patches = patches.transpose(1, 2).reshape(b, -1, c, window, window)
        d = dct_matrix(window, torch.float32).to(x.device)
        coef = d @ patches @ d.T  # 2-D DCT of each channel of each patch
        energy = torch.log(coef.abs() + 1).sum(dim=2)  # (B, L, w, w), summed over channels
        masks = band_masks(window, bands).to(x.device)
        per_band = torch.einsum("bluv,kuv->blk", energy, masks) / masks.sum(dim=(1, 2))
        weights = 2.0 ** torch.arange(bands, device=x.device, dtype=per_band.dtype)
        return per_band @ weights


def build_aide_pack(images: torch.Tensor, window: int = 32, stride: int = 16, size: int = 256,
                    bands: int = 6) -> torch.Tensor:
    """AIDE's five-view input (B, 5, 3, size, size) from images (B, 3, H, W) in [0, 1].

    Differentiable w.r.t. ``images`` (patch choice is not, as in AIDE).
    """
    check_images(images)
    h, w = images.shape[-2:]
    if h < window or w < window:
        raise ValueError(f"AIDE needs images of at least {window}x{window}, got {h}x{w}")
    grades = patch_grades(images, window, stride, bands)  # (B, L)
    n_cols = (w - window) // stride + 1
    order = grades.argsort(dim=1)  # ascending
    second = 1 if order.shape[1] > 1 else 0
    picks = torch.stack([order[:, 0], order[:, -1], order[:, second], order[:, -1 - second]], dim=1)
    views = []
    for i in range(len(images)):
        crops = []
        for idx in picks[i].tolist():
            r, c = divmod(idx, n_cols)
            crops.append(images[i, :, r * stride:r * stride + window, c * stride:c * stride + window])
        crops.append(images[i])
        resized = [F.interpolate(v[None], size=(size, size), mode="bilinear", align_corners=False,
                                 antialias=True)[0] for v in crops]
        views.append(torch.stack(resized))
    pack = torch.stack(views)  # (B, 5, 3, size, size)
    mean = torch.tensor(IMAGENET_MEAN, device=pack.device, dtype=pack.dtype).view(1, 1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD, device=pack.device, dtype=pack.dtype).view(1, 1, 3, 1, 1)
    return (pack - mean) / std


# ---------------------------------------------------------------- model loading
def import_aide_module(aide_repo, module: str = "models/AIDE.py"):
    """Import ``<aide_repo>/models/AIDE.py`` as a package module (relative imports work).

    The repo's ``models`` folder is loaded under a private package name so that it
    cannot clash with another ``models`` package; the repo root is on ``sys.path``
    only while importing.
    """
    repo = os.path.abspath(os.fspath(aide_repo))
    if not os.path.isdir(repo):
        raise ModelUnavailableError(
            f"AIDE repository {aide_repo!r} not found; clone https://github.com/shilinyan99/AIDE "
            "and pass its directory with --aide_repo.")
    path = os.path.join(repo, module)
    if not os.path.isfile(path):
        raise ModelUnavailableError(
            f"{path!r} does not exist: --aide_repo must point at a clone of "
            "https://github.com/shilinyan99/AIDE (it holds models/AIDE.py).")
    pkg_dir = os.path.dirname(path)
    pkg_name = "_aide_models_" + str(abs(hash(pkg_dir)))
    mod_name = f"{pkg_name}.{os.path.splitext(os.path.basename(path))[0]}"
    if mod_name in sys.modules:
        return sys.modules[mod_name]
    pkg_spec = importlib.util.spec_from_loader(pkg_name, loader=None, is_package=True)
    pkg = importlib.util.module_from_spec(pkg_spec)
    pkg.__path__ = [pkg_dir]
    sys.modules[pkg_name] = pkg
    spec = importlib.util.spec_from_file_location(mod_name, path)
    mod = importlib.util.module_from_spec(spec)
    sys.path.insert(0, repo)
    try:
        sys.modules[mod_name] = mod
        spec.loader.exec_module(mod)
    except ModuleNotFoundError as exc:
        sys.modules.pop(mod_name, None)
        raise ModelUnavailableError(
            f"{path!r} imports {exc.name!r}, which is not installed; install AIDE's requirements "
            f"(see its docs/install.md) into this environment.") from None
    except BaseException:
        sys.modules.pop(mod_name, None)
        raise
    finally:
        sys.path.remove(repo)
    return mod


def load_aide_checkpoint(path) -> dict:
    """State dict from an AIDE checkpoint, read with ``weights_only=True``.

    AIDE's trainer saves ``{"model", "optimizer", "epoch", "scaler", "args"}`` with
    ``args`` an ``argparse.Namespace``; that one class is allow-listed.
    """
    if not os.path.isfile(os.fspath(path)):
        raise ModelUnavailableError(
            f"AIDE checkpoint {os.fspath(path)!r} not found; download a released AIDE checkpoint "
            "(see the AIDE README) and pass the file with --aide_resume.")
    # by content, weights_only; argparse.Namespace (AIDE's "args") is allow-listed there
    ckpt = load_state_dict_file(path, flag="aide_resume=")
    for key in ("model", "model_ema", "state_dict", "module"):
        if isinstance(ckpt, dict) and isinstance(ckpt.get(key), dict):
            ckpt = ckpt[key]
            break
    return {k[len("module."):] if k.startswith("module.") else k: v for k, v in ckpt.items()}


def make_aide_reward(aide_repo, aide_resume, model_name: str = "AIDE", real_index: int = 0,
                     resnet_path=None, convnext_path=None, trust_remote_code: bool = False,
                     device=None, dtype="float32"):
    """AIDE's probability that ``images`` are real photos (in [0, 1]); ``inputs`` ignored.

    Args:
        aide_repo: your clone of github.com/shilinyan99/AIDE (its code is imported).
        aide_resume: AIDE checkpoint (``checkpoint-*.pth`` from its trainer).
        model_name: builder in ``models/AIDE.py`` (AIDE's ``--model``), called as
            ``builder(resnet_path=..., convnext_path=...)``.
        real_index: logit index of the "real" class (0 in AIDE's data loader).
        resnet_path / convnext_path: passed to the builder; default: an empty state
            dict file / None, since the checkpoint holds every weight.
        trust_remote_code: accepted for a uniform interface; AIDE always runs the
            clone's code, which is what passing ``aide_repo`` asks for.
    Metric: ``p_real`` (batch mean).
    """
    if real_index not in (0, 1):
        raise ValueError(f"real_index must be 0 or 1, got {real_index}")
    device, dtype = resolve_device_dtype(device, dtype)
    module = import_aide_module(aide_repo)
    builder = getattr(module, model_name, None)
    if builder is None or not callable(builder):
        names = sorted(n for n in dir(module) if not n.startswith("_") and callable(getattr(module, n)))
        raise ModelUnavailableError(
            f"{module.__file__!r} has no model builder {model_name!r}; it defines: {', '.join(names)}")
    state = load_aide_checkpoint(aide_resume)
    with tempfile.TemporaryDirectory() as tmp:
        if resnet_path is None:  # AIDE's builder torch.loads it; the checkpoint overwrites all
            resnet_path = os.path.join(tmp, "empty_resnet.pth")
            torch.save({}, resnet_path)
        model = builder(resnet_path=resnet_path, convnext_path=convnext_path)
    try:
        model.load_state_dict(state)
    except RuntimeError as exc:
        raise ModelUnavailableError(
            f"AIDE checkpoint {os.fspath(aide_resume)!r} does not fit {model_name} from "
            f"{module.__file__!r}: {str(exc).splitlines()[0]}") from None
    model = model.eval().requires_grad_(False).to(device=device, dtype=dtype)

    def reward(images: torch.Tensor, inputs=None, prompts=None):
        check_images(images)
        pack = build_aide_pack(images.to(device=device, dtype=dtype).clamp(0, 1))
        logits = model(pack)
        if logits.ndim != 2 or logits.shape[1] != 2:
            raise ValueError(f"AIDE returned logits of shape {tuple(logits.shape)}, expected (B, 2)")
        p_real = logits.float().softmax(dim=1)[:, real_index]
        metrics: Metrics = {"p_real": batch_mean(p_real)}
        return p_real, metrics

    reward.model = model
    return reward
