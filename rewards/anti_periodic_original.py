"""The original project's anti-periodic (grid) measures, to its values.

Written for ``--semantics original`` (docs/original_mode.md) from the definitions of the
original's ``anti_periodic_loss.py`` (promptable-differentiable-rewards at 9acac9f) and checked
against the values its own code gives (``tests/data/original_reference.json``, written by
``benchmarks/original_reference.py``). Not to be confused with :mod:`rewards.grid_original`,
our baselines written earlier from descriptions of the benchmark's columns only.

All measures take (B,3,H,W) in [0, 1] and return [B] (per image; the original's trainer and
benchmark average over the batch). Shared definitions:

* luminance: Rec.709 weights on sRGB-decoded values (``linear_luminance``); most measures use
  its log, ``log(Y + 1e-4)``;
* comb: Gaussian bumps ``sigma_bins`` FFT bins wide at the frequencies ``(a/p, b/p)``,
  ``|a|, |b| <= max_harm``, not both 0 (``comb_mask``), or, for the "line" measures, Gaussian
  ridges at ``|f_x| = k/p`` or ``|f_y| = k/p`` (``line_masks``, a notch and a guard band 3x wide);
* windows: ``F.unfold`` with zero padding ``window // 2`` and stride ``hop`` (so a window
  hangs over the border), each Hann-windowed (periodic Hann);
* edge gate: the mean absolute 3x3 Sobel response of a raw window (zero padding).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from functools import lru_cache
from typing import Sequence

import torch
import torch.nn.functional as F

REC709 = (0.2126, 0.7152, 0.0722)
LOG_EPS = 1e-4


# --------------------------------------------------------------------------- colour
def srgb_decode(x: torch.Tensor) -> torch.Tensor:
    """sRGB -> linear light (no clamping: callers clamp where the original did)."""
    return torch.where(x <= 0.04045, x / 12.92, ((x + 0.055) / 1.055).pow(2.4))


def linear_luminance(x: torch.Tensor, clamp: bool = True) -> torch.Tensor:
    """(B,3,H,W) -> (B,H,W) relative luminance of the sRGB-decoded values."""
    lin = srgb_decode(x.clamp(0, 1) if clamp else x)
    r, g, b = lin.unbind(dim=-3)
    return REC709[0] * r + REC709[1] * g + REC709[2] * b


def log_luminance(x: torch.Tensor) -> torch.Tensor:
    return (linear_luminance(x) + LOG_EPS).log()


# --------------------------------------------------------------------------- masks
def hann2d(h: int, w: int, device=None) -> torch.Tensor:
    return (torch.hann_window(h, periodic=True, device=device)[:, None]
            * torch.hann_window(w, periodic=True, device=device)[None, :])


def comb_mask(h: int, w: int, period: float, max_harm: int, sigma_bins: float,
              device=None) -> torch.Tensor:
    """(h, w) in FFT order: the largest Gaussian bump over the comb points (DC set to 0)."""
    return _comb_mask(h, w, float(period), int(max_harm), float(sigma_bins)).to(device)


@lru_cache(maxsize=32)
def _comb_mask(h: int, w: int, period: float, max_harm: int, sigma_bins: float) -> torch.Tensor:
    device = None
    fy = torch.fft.fftfreq(h, device=device)
    fx = torch.fft.fftfreq(w, device=device)
    sy, sx = sigma_bins / h, sigma_bins / w
    orders = torch.arange(-max_harm, max_harm + 1, device=device, dtype=fy.dtype)
    dy = (fy[None, :] - orders[:, None] / period) / sy          # (A, h)
    dx = (fx[None, :] - orders[:, None] / period) / sx          # (A, w)
    mask = torch.zeros(h, w, device=device)
    for i, a in enumerate(orders.tolist()):
        for j, b in enumerate(orders.tolist()):
            if a == 0 and b == 0:
                continue
            bump = torch.exp(-0.5 * (dy[i][:, None] ** 2 + dx[j][None, :] ** 2))
            mask = torch.maximum(mask, bump)
    mask[0, 0] = 0.0
    return mask


def _centred_freqs(h: int, w: int, device=None):
    yy = torch.arange(h, device=device).view(h, 1).expand(h, w)
    xx = torch.arange(w, device=device).view(1, w).expand(h, w)
    uy = (yy - h // 2) / float(h)
    ux = (xx - w // 2) / float(w)
    return uy, ux, torch.sqrt(uy * uy + ux * ux)


def _ridge(v: torch.Tensor, centre: float, width: float) -> torch.Tensor:
    return torch.exp(-((v - centre) ** 2) / (2.0 * width ** 2))


def line_masks(h: int, w: int, period: float, max_harm: int, sigma_bins: float,
               guard_mul: float = 3.0, device=None) -> tuple[torch.Tensor, torch.Tensor]:
    """(notch, guard), centred (fftshift) coordinates: per harmonic the SUM of the four
    ridges at +-k/p on each axis, the maximum over harmonics below Nyquist."""
    notch, guard = _line_masks(h, w, float(period), int(max_harm), float(sigma_bins),
                               float(guard_mul))
    return notch.to(device), guard.to(device)


@lru_cache(maxsize=32)
def _line_masks(h: int, w: int, period: float, max_harm: int, sigma_bins: float,
                guard_mul: float) -> tuple[torch.Tensor, torch.Tensor]:
    device = None
    uy, ux, _ = _centred_freqs(h, w, device)
    sy, sx = float(sigma_bins) / h, float(sigma_bins) / w
    notch = torch.zeros(h, w, device=device)
    guard = torch.zeros(h, w, device=device)
    for k in range(1, int(max_harm) + 1):
        f = k / float(period)
        if f >= 0.5:
            break
        n = _ridge(ux, f, sx) + _ridge(ux, -f, sx) + _ridge(uy, f, sy) + _ridge(uy, -f, sy)
        g = (_ridge(ux, f, guard_mul * sx) + _ridge(ux, -f, guard_mul * sx)
             + _ridge(uy, f, guard_mul * sy) + _ridge(uy, -f, guard_mul * sy))
        notch = torch.maximum(notch, n)
        guard = torch.maximum(guard, g)
    return notch, guard


# --------------------------------------------------------------------------- windows
def windows(y: torch.Tensor, window: int, hop: int) -> torch.Tensor:
    """(B,H,W) -> (B,L,window,window), zero padding window // 2."""
    b = y.shape[0]
    cols = F.unfold(y[:, None], kernel_size=window, stride=hop, padding=window // 2)
    return cols.transpose(1, 2).reshape(b, cols.shape[-1], window, window)


_SOBEL = ((-1.0, 0.0, 1.0), (-2.0, 0.0, 2.0), (-1.0, 0.0, 1.0))


def sobel(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(..., h, w) -> the 3x3 Sobel responses (d/dx, d/dy) with zero padding, as conv2d
    (cross-correlation) with _SOBEL and its transpose gives them; by slices, which is many
    times faster than conv2d on thousands of single-channel windows."""
    p = F.pad(x, (1, 1, 1, 1))
    left, right = p[..., :, :-2], p[..., :, 2:]
    dx = right - left                                   # per row: x[j+1] - x[j-1]
    gx = dx[..., :-2, :] + 2.0 * dx[..., 1:-1, :] + dx[..., 2:, :]
    up, down = p[..., :-2, :], p[..., 2:, :]
    dy = down - up
    gy = dy[..., :, :-2] + 2.0 * dy[..., :, 1:-1] + dy[..., :, 2:]
    return gx, gy


def sobel_mean(patches: torch.Tensor) -> torch.Tensor:
    """(..., h, w) -> (...) mean of |Sobel_x| + |Sobel_y| (zero padding)."""
    gx, gy = sobel(patches)
    return (gx.abs() + gy.abs()).mean(dim=(-1, -2))


def _spectrum(p: torch.Tensor, centred: bool) -> torch.Tensor:
    f = torch.fft.fft2(p)
    if centred:
        f = torch.fft.fftshift(f, dim=(-2, -1))
    return f.abs() ** 2


def _hinge(v: torch.Tensor, tau: float | None) -> torch.Tensor:
    return v if tau is None else F.relu(v - float(tau))


def _top_count(n: int, top_p: float) -> int:
    return max(1, int(round(n * float(top_p))))


# --------------------------------------------------------------------------- global
def comb_energy(x: torch.Tensor, period: float = 16, max_harm: int = 6, sigma_bins: float = 2.0,
                tau: float | None = None) -> torch.Tensor:
    """``fft_global``: comb energy of the Hann-windowed log luminance."""
    y = log_luminance(x)
    h, w = y.shape[-2:]
    p = _spectrum(y * hann2d(h, w, y.device), centred=False)
    e = (p * comb_mask(h, w, period, max_harm, sigma_bins, y.device)).sum(dim=(-1, -2))
    return _hinge(e, tau)


def comb_ratio(x: torch.Tensor, period: float = 16, max_harm: int = 6, sigma_bins: float = 2.0,
               tau: float | None = None) -> torch.Tensor:
    """Comb energy over total energy of the Hann-windowed log luminance."""
    y = log_luminance(x)
    h, w = y.shape[-2:]
    p = _spectrum(y * hann2d(h, w, y.device), centred=False)
    mask = comb_mask(h, w, period, max_harm, sigma_bins, y.device)
    r = (p * mask).sum(dim=(-1, -2)) / (p.sum(dim=(-1, -2)) + 1e-8)
    return _hinge(r, tau)


def guard_ratio(x: torch.Tensor, period: float = 16, max_harm: int = 6, sigma_bins: float = 2.0,
                guard_mul: float = 3.0, lowfreq_cut: float = 0.02,
                tau: float | None = None) -> torch.Tensor:
    """``guard_dc_safe``: notch energy over the guard ring around it (low frequencies cut)."""
    y = log_luminance(x)
    h, w = y.shape[-2:]
    y = y * hann2d(h, w, y.device)
    y = y - y.mean(dim=(-2, -1), keepdim=True)
    p = _spectrum(y, centred=True)
    notch, guard = line_masks(h, w, period, max_harm, sigma_bins, guard_mul, y.device)
    _, _, r = _centred_freqs(h, w, y.device)
    ring = (guard - notch).clamp_min(0.0) * (1.0 - (r < float(lowfreq_cut)).to(p.dtype))
    ratio = (p * notch).sum(dim=(-2, -1)) / ((p * ring).sum(dim=(-2, -1)) + 1e-12)
    return _hinge(ratio, tau)


# --------------------------------------------------------------------------- local
def _local_spectra(x: torch.Tensor, window: int, hop: int):
    y = log_luminance(x)
    raw = windows(y, window, hop)
    return raw, _spectrum(raw * hann2d(window, window, y.device), centred=False)


def local_energy(x, period=16, max_harm=6, sigma_bins=2.0, window=128, hop=32, tau=None):
    """``local``: comb energy per window, averaged over windows."""
    _, p = _local_spectra(x, window, hop)
    mask = comb_mask(window, window, period, max_harm, sigma_bins, x.device)
    return _hinge((p * mask).sum(dim=(-1, -2)).mean(dim=1), tau)


def local_ratio(x, period=16, max_harm=6, sigma_bins=2.0, window=128, hop=32, tau=None):
    """Comb share of each window's energy, averaged over windows."""
    _, p = _local_spectra(x, window, hop)
    mask = comb_mask(window, window, period, max_harm, sigma_bins, x.device)
    r = (p * mask).sum(dim=(-1, -2)) / (p.sum(dim=(-1, -2)) + 1e-8)
    return _hinge(r.mean(dim=1), tau)


def local_adaptive(x, period=16, max_harm=6, sigma_bins=2.0, window=128, hop=32,
                   edge_penalty=8.0, tau=None):
    """``local_adaptive``: window comb energy times a gate that is low on strong edges."""
    raw, p = _local_spectra(x, window, hop)
    mask = comb_mask(window, window, period, max_harm, sigma_bins, x.device)
    eh = (p * mask).sum(dim=(-1, -2))
    rel = eh / (p.sum(dim=(-1, -2)) + 1e-8)
    gate = ((rel / (1.0 + edge_penalty * sobel_mean(raw))).clamp(0.0, 1.0) * 2.0).clamp(0.0, 1.0)
    return _hinge((eh * gate).mean(dim=1), tau)


def template_match(x: torch.Tensor, template: torch.Tensor, period: int = 16,
                   tau: float | None = None) -> torch.Tensor:
    """``template``: mean squared response of the log luminance to the zero-mean, unit-norm
    template (a ``period x period`` tile, 'same' convolution)."""
    t = template.to(device=x.device, dtype=torch.float32)
    if t.numel() != period * period:
        raise ValueError(f"a {tuple(t.shape)} template does not fit period {period}: the "
                         f"template is a period x period tile")
    t = t - t.mean()
    t = t / (t.norm() + 1e-8)
    y = log_luminance(x)
    r = F.conv2d(y[:, None], t.view(1, 1, period, period), padding=period // 2)
    return _hinge((r ** 2).mean(dim=(-1, -2, -3)), tau)


def _centred_local(x: torch.Tensor, window: int, hop: int, luminance: str):
    """(raw windows, centred power) of zero-mean Hann-windowed windows."""
    y = log_luminance(x) if luminance == "log" else linear_luminance(x)
    raw = windows(y, window, hop)
    p = raw * hann2d(window, window, y.device)
    p = p - p.mean(dim=(-1, -2), keepdim=True)
    return raw, p


def selective_local(x, period=16, max_harm=6, window=128, hop=32, sigma_bins=1.0,
                    ratio_margin=0.0, rel_margin=0.002, edge_penalty=10.0, top_p=0.35,
                    coverage_alpha=0.5):
    """``selective_local``: per window notch/guard ratio; windows ranked by ratio excess x
    comb share excess x edge gate; ``alpha`` x mean ratio of the top-p windows +
    ``1 - alpha`` x mean ratio of every window with positive weight."""
    raw, p = _centred_local(x, window, hop, "log")
    power = _spectrum(p, centred=True)
    notch, guard = line_masks(window, window, period, max_harm, sigma_bins, 3.0, x.device)
    ring = (guard - notch).clamp_min(0.0)
    eh = (power * notch).sum(dim=(-1, -2))
    ratio = eh / ((power * ring).sum(dim=(-1, -2)) + 1e-12)
    rel = eh / (power.sum(dim=(-1, -2)) + 1e-12)
    gate = torch.exp(-float(edge_penalty) * sobel_mean(raw)).clamp(0.0, 1.0)
    weight = F.relu(ratio - float(ratio_margin)) * F.relu(rel - float(rel_margin)) * gate
    _, idx = torch.topk(weight, k=_top_count(weight.shape[1], top_p), dim=1, largest=True,
                        sorted=False)
    top = torch.gather(ratio, 1, idx).mean(dim=1)
    above = (weight > 0).to(ratio.dtype)
    anyr = (ratio * above).sum(dim=1) / above.sum(dim=1).clamp_min(1)
    return float(coverage_alpha) * top + (1.0 - float(coverage_alpha)) * anyr


def _harmonic_bases(window: int, period: float, harmonics: Sequence[int], device=None):
    y = torch.arange(window, device=device).view(window, 1).expand(window, window)
    xx = torch.arange(window, device=device).view(1, window).expand(window, window)
    out = []
    for k in harmonics:
        w = 2.0 * math.pi * k / float(period)
        for m in (torch.cos(w * y), torch.sin(w * y), torch.cos(w * xx), torch.sin(w * xx)):
            m = m - m.mean()
            out.append(m / (m.norm() + 1e-8))
    return torch.stack(out)


def projection(x, period=16, harmonics=(1, 2, 3), window=128, hop=32, edge_penalty=12.0,
               top_p=0.35, detach_norm=True):
    """``proj_cosine``: energy of each zero-mean Hann-windowed window (linear luminance) on
    the cos/sin bases of the period's harmonics, over its total energy; mean over the top-p
    windows ranked by that ratio times the edge gate."""
    y = linear_luminance(x, clamp=False).clamp_min(1e-6)
    raw = windows(y, window, hop)
    p = raw * hann2d(window, window, y.device)
    p = p - p.mean(dim=(-1, -2), keepdim=True)
    bases = _harmonic_bases(window, period, harmonics, y.device)
    coeffs = torch.einsum("blhw,khw->blk", p, bases)
    eh = (coeffs ** 2).sum(dim=-1)
    en = (p ** 2).sum(dim=(-1, -2)) + 1e-12
    if detach_norm:
        en = en.detach()
    ratio = eh / en
    gate = torch.exp(-float(edge_penalty) * sobel_mean(raw)).clamp(0.0, 1.0)
    _, idx = torch.topk(ratio * gate, k=_top_count(ratio.shape[1], top_p), dim=1, largest=True,
                        sorted=False)
    return torch.gather(ratio, 1, idx).mean(dim=1)


def amplitude_hinge(x, period=16, max_harm=6, window=128, hop=32, sigma_bins=1.0,
                    amp_margin=1e-3):
    """``amp_hinge``: notch share of each window's energy, averaged, hinged at ``amp_margin``."""
    _, p = _centred_local(x, window, hop, "log")
    power = _spectrum(p, centred=True)
    notch, _ = line_masks(window, window, period, max_harm, sigma_bins, 3.0, x.device)
    share = (power * notch).sum(dim=(-1, -2)) / (power.sum(dim=(-1, -2)) + 1e-12)
    return F.relu(share.mean(dim=1) - float(amp_margin))


# --------------------------------------------------------------------------- the trainer's term
def trainer_grid_penalty(x: torch.Tensor, period: int = 16, max_harm: int = 3) -> torch.Tensor:
    """[B] the original trainer's grid penalty: ``proj_cosine + 0.5 * selective_local`` with
    the trainer's fixed settings (windows 128 / hop 32, edge penalty 12, top 30 %, projection
    on harmonics 1-3 with a detached norm; selective with at least 4 harmonics, bins 1.0 wide,
    coverage 0.7). Only ``period`` and ``max_harm`` (above 4) come from the flags."""
    proj = projection(x, period=period, harmonics=(1, 2, 3), window=128, hop=32,
                      edge_penalty=12.0, top_p=0.30, detach_norm=True)
    sel = selective_local(x, period=period, max_harm=max(4, int(max_harm)), window=128, hop=32,
                          sigma_bins=1.0, ratio_margin=0.0, rel_margin=0.002, edge_penalty=12.0,
                          top_p=0.30, coverage_alpha=0.7)
    return proj + 0.5 * sel


# ------------------------------------------------------------------- the benchmark's columns
COLUMNS = ("fft_global", "local", "local_adaptive", "template", "combo", "guard_dc_safe",
           "selective_local", "proj_cosine", "amp_hinge")
COMBO_MODES = ("ratio", "abs")


@dataclass(frozen=True)
class BenchmarkSettings:
    """The original benchmark's options (its command-line defaults)."""

    period: int = 16
    max_harm: int = 6
    sigma_bins: float = 2.0
    window: int = 128
    hop: int = 32
    edge_penalty: float = 8.0
    tau: float | None = None
    combo_mode: str = "ratio"
    w_local: float = 0.2
    tau_global: float | None = None
    tau_local: float | None = None
    selective_top_p: float = 0.35
    selective_coverage_alpha: float = 0.5
    proj_harmonics: tuple[int, ...] = (1, 2, 3)
    proj_top_p: float = 0.35
    proj_detach_norm: bool = True

    def __post_init__(self):
        if self.combo_mode not in COMBO_MODES:
            raise ValueError(f"combo_mode must be one of {COMBO_MODES}, got {self.combo_mode!r}")


@torch.no_grad()
def benchmark_columns(x: torch.Tensor, s: BenchmarkSettings,
                      template: torch.Tensor | None = None) -> dict[str, float]:
    """The original benchmark's nine columns for one image (1,3,H,W) in [0, 1]
    (``template`` is NaN without a template)."""
    common = dict(period=s.period, max_harm=s.max_harm, sigma_bins=s.sigma_bins)
    local = dict(common, window=s.window, hop=s.hop)
    if s.combo_mode == "ratio":
        combo = (comb_ratio(x, **common, tau=s.tau_global)
                 + s.w_local * local_ratio(x, **local, tau=s.tau_local))
    else:
        combo = (comb_energy(x, **common, tau=s.tau_global)
                 + s.w_local * local_adaptive(x, **local, edge_penalty=s.edge_penalty,
                                              tau=s.tau_local))
    values = {
        "fft_global": comb_energy(x, **common, tau=s.tau),
        "local": local_energy(x, **local, tau=s.tau),
        "local_adaptive": local_adaptive(x, **local, edge_penalty=s.edge_penalty, tau=s.tau),
        "template": (template_match(x, template, s.period, s.tau) if template is not None
                     else None),
        "combo": combo,
        "guard_dc_safe": guard_ratio(x, **common),
        "selective_local": selective_local(x, period=s.period, max_harm=s.max_harm,
                                           window=s.window, hop=s.hop, sigma_bins=s.sigma_bins,
                                           edge_penalty=s.edge_penalty, top_p=s.selective_top_p,
                                           coverage_alpha=s.selective_coverage_alpha),
        "proj_cosine": projection(x, period=s.period, harmonics=s.proj_harmonics,
                                  window=s.window, hop=s.hop, edge_penalty=s.edge_penalty,
                                  top_p=s.proj_top_p, detach_norm=s.proj_detach_norm),
        "amp_hinge": amplitude_hinge(x, period=s.period, max_harm=s.max_harm, window=s.window,
                                     hop=s.hop, sigma_bins=s.sigma_bins, amp_margin=1e-3),
    }
    return {k: float("nan") if v is None else float(v.mean()) for k, v in values.items()}


__all__ = ["COLUMNS", "BenchmarkSettings", "benchmark_columns", "trainer_grid_penalty",
           "linear_luminance", "log_luminance", "comb_mask", "line_masks", "comb_energy",
           "comb_ratio", "guard_ratio", "local_energy", "local_ratio", "local_adaptive",
           "template_match", "selective_local", "projection", "amplitude_hinge", "srgb_decode"]
