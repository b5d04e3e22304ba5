"""The original project's anti-periodic loss variants, as named baselines.

Our own implementations, written from the descriptions of the original's benchmark columns
(``../shared/SEED_INTERFACE.md``), so that ``benchmark_anti_periodic.py`` can show old and new
penalties side by side with a ROC-AUC each. They are baselines, not rewards: the trainer uses
:mod:`rewards.grid`. All of them look at the *comb* of the grid period ``p`` and its
harmonics: the frequency lattice ``(a/p, b/p)``, ``|a|, |b| <= max_harm`` without DC, where
a grid of lines or tiles puts its energy, with Gaussian teeth ``sigma_bins`` FFT bins wide, on
the Rec.709 luma of the image:

* ``fft_global``: share of the (mean-removed) spectral energy on the comb, whole image.
* ``local``: the same per Hann-windowed sliding window (``window``, ``hop``), averaged.
* ``local_adaptive``: ``local`` with each window weighted by ``1 / (1 + edge_penalty * e)``,
  ``e`` its mean Sobel gradient magnitude, so edge-dense windows count less.
* ``template``: best correlation (over the p x p circular shifts) between the image folded
  to one period (the mean p x p tile) and a given tile template.
* ``combo``: ``relu(G - tau_global) + w_local * relu(L - tau_local)``; ``ratio`` mode: comb
  energy per bin over the off-comb background per bin (a guard band 3x as wide around the
  teeth; Hann-windowed), global G and mean local L; ``abs`` mode: comb energy per pixel.
* ``guard_dc_safe``: comb energy over the energy of that guard band, frequencies below
  ``1 / (2p)`` cut, no window.
* ``selective_local``: per window the comb excess ``relu(ratio - 1)``; mean of the top
  ``top_p`` windows blended with the share of windows whose excess passes ``margin``:
  ``(1 - alpha) * top + alpha * coverage``.
* ``proj_cosine``: per window, the cosine between the row- and column-mean profiles and their
  projection on the period's harmonics (``proj_harmonics``); mean of the top ``top_p``.
* ``amp_hinge``: per window the amplitude of those harmonics in the profiles (intensity
  units), hinged at ``amp_margin``; mean over windows.
* ``original_trainer``: ``proj_cosine + 0.5 * selective_local``, the original trainer's penalty.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

import torch
import torch.nn.functional as F

from .grid import _resize_long_side, luminance

COLUMNS = ("fft_global", "local", "local_adaptive", "template", "combo", "guard_dc_safe",
           "selective_local", "proj_cosine", "amp_hinge", "original_trainer")
COMBO_MODES = ("ratio", "abs")


@dataclass(frozen=True)
class BaselineConfig:
    period: float = 16.0
    max_harm: int = 6
    sigma_bins: float = 2.0
    resize: int | None = 512
    window: int = 128
    hop: int = 32
    edge_penalty: float = 8.0
    combo_mode: str = "ratio"
    w_local: float = 0.2
    tau_global: float = 0.0
    tau_local: float = 0.0
    selective_top_p: float = 0.35
    selective_coverage_alpha: float = 0.5
    selective_margin: float = 0.5
    proj_harmonics: tuple[int, ...] = (1, 2, 3)
    proj_top_p: float = 0.35
    proj_detach_norm: bool = True
    amp_margin: float = 2e-3
    tau: float = 0.0

    def __post_init__(self):
        if self.combo_mode not in COMBO_MODES:
            raise ValueError(f"combo_mode must be one of {COMBO_MODES}, got {self.combo_mode!r}")
        for name in ("selective_top_p", "proj_top_p", "selective_coverage_alpha"):
            if not 0 < getattr(self, name) <= 1 and name != "selective_coverage_alpha":
                raise ValueError(f"{name} must be in (0, 1], got {getattr(self, name)}")
        if not 0 <= self.selective_coverage_alpha <= 1:
            raise ValueError("selective_coverage_alpha must be in [0, 1]")
        if self.period < 2 or self.max_harm < 1 or self.sigma_bins <= 0:
            raise ValueError("period must be >= 2, max_harm >= 1 and sigma_bins > 0")


def parse_harmonics(text: str | Sequence[int]) -> tuple[int, ...]:
    if not isinstance(text, str):
        return tuple(int(h) for h in text)
    try:
        hs = tuple(int(h) for h in text.replace(" ", "").split(",") if h)
    except ValueError:
        raise ValueError(f"harmonics must be comma-separated integers like '1,2,3', got {text!r}") from None
    if not hs or min(hs) < 1:
        raise ValueError(f"harmonics must be integers >= 1, got {text!r}")
    return hs


# --------------------------------------------------------------------------- spectra
def _axis_teeth(n: int, period: float, max_harm: int, sigma: float, device,
                with_dc: bool = False) -> torch.Tensor:
    """[n] Gaussian weight of each FFT bin (fftfreq order) near k*n/period, k=1..max_harm
    (and k=0 when ``with_dc``)."""
    f = torch.fft.fftfreq(n, device=device).abs() * n            # |frequency| in bins
    centres = torch.arange(0 if with_dc else 1, max_harm + 1, device=device,
                           dtype=f.dtype) * n / period
    centres = centres[centres < n / 2 + 0.5]
    if centres.numel() == 0:
        return torch.zeros(n, device=device)
    d = (f[:, None] - centres[None]).abs().min(dim=1).values
    return torch.exp(-0.5 * (d / sigma) ** 2)


def comb_mask(h: int, w: int, period: float, max_harm: int, sigma: float, device=None) -> torch.Tensor:
    """[h, w] weights of the lattice (a/period, b/period), |a|,|b| <= max_harm, not both 0:
    where a period-``period`` grid (lines or tiles) puts its energy."""
    ty, tx = (_axis_teeth(n, period, max_harm, sigma, device) for n in (h, w))
    ty0, tx0 = (_axis_teeth(n, period, max_harm, sigma, device, with_dc=True) for n in (h, w))
    return torch.maximum(ty[:, None] * tx0[None, :], ty0[:, None] * tx[None, :])


def _power(x: torch.Tensor, hann: bool) -> torch.Tensor:
    """|FFT|^2 of (..., h, w) after removing the mean (and a Hann window)."""
    x = x - x.mean(dim=(-2, -1), keepdim=True)
    if hann:
        h, w = x.shape[-2:]
        win = torch.hann_window(h, periodic=False, device=x.device)[:, None] * \
            torch.hann_window(w, periodic=False, device=x.device)[None, :]
        x = x * win
    return torch.fft.fft2(x).abs() ** 2


def _windows(lum: torch.Tensor, window: int, hop: int) -> torch.Tensor:
    """(h, w) -> (n, win, win) sliding windows (the whole image when it is smaller)."""
    h, w = lum.shape
    win = min(window, h, w)
    tiles = lum.unfold(0, win, min(hop, win)).unfold(1, win, min(hop, win))
    return tiles.reshape(-1, win, win)


def _top_mean(v: torch.Tensor, p: float) -> torch.Tensor:
    k = max(1, math.ceil(p * v.numel()))
    return v.flatten().topk(k).values.mean()


# --------------------------------------------------------------------------- profiles
def _harmonic_basis(n: int, period: float, harmonics: Sequence[int], device) -> torch.Tensor:
    """[2H, n] orthonormalised cos/sin rows at frequencies h/period."""
    t = torch.arange(n, device=device, dtype=torch.float32)
    rows = []
    for hm in harmonics:
        f = hm / period
        if f >= 0.5:
            continue
        rows += [torch.cos(2 * math.pi * f * t), torch.sin(2 * math.pi * f * t)]
    if not rows:
        return torch.zeros(0, n, device=device)
    q, _ = torch.linalg.qr(torch.stack(rows).T)
    return q.T


def _profile_stats(tiles: torch.Tensor, period: float, harmonics: Sequence[int],
                   detach_norm: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """Per window: (cosine to the harmonic subspace, harmonic amplitude), max over the axes."""
    n = tiles.shape[-1]
    basis = _harmonic_basis(n, period, harmonics, tiles.device)
    cos, amp = [], []
    for prof in (tiles.mean(dim=1), tiles.mean(dim=2)):            # column / row means
        prof = prof - prof.mean(dim=1, keepdim=True)
        coef = prof @ basis.T                                      # (n_win, 2H)
        proj = coef.norm(dim=1)
        norm = prof.norm(dim=1)
        norm = norm.detach() if detach_norm else norm
        cos.append(proj / (norm + 1e-8))
        amp.append(proj * math.sqrt(2.0 / n))                      # amplitude of a sinusoid
    return torch.maximum(*cos), torch.maximum(*amp)


# --------------------------------------------------------------------------- all columns
def _gradient_magnitude(lum: torch.Tensor) -> torch.Tensor:
    """(h, w) Sobel gradient magnitude (intensity per pixel)."""
    k = lum.new_tensor([[-1.0, 0.0, 1.0], [-2.0, 0.0, 2.0], [-1.0, 0.0, 1.0]]) / 8.0
    g = F.conv2d(F.pad(lum[None, None], (1, 1, 1, 1), mode="replicate"),
                 torch.stack([k, k.t()])[:, None])
    return g.pow(2).sum(1).sqrt()[0]


def template_score(lum: torch.Tensor, template: torch.Tensor, period: float) -> torch.Tensor:
    """Best circular-shift correlation of the image folded to one period with ``template``."""
    p = max(2, int(round(period)))
    h, w = (lum.shape[0] // p) * p, (lum.shape[1] // p) * p
    if h == 0 or w == 0:
        return lum.new_tensor(0.0)
    tile = lum[:h, :w].reshape(h // p, p, w // p, p).mean(dim=(0, 2))
    tmpl = F.interpolate(template[None, None].to(lum), size=(p, p), mode="bilinear",
                         align_corners=False)[0, 0]
    a = tile - tile.mean()
    b = tmpl - tmpl.mean()
    # circular cross-correlation over every shift, via the FFT
    corr = torch.fft.ifft2(torch.fft.fft2(a) * torch.fft.fft2(b).conj()).real
    return (corr.max() / (a.norm() * b.norm() + 1e-12)).clamp(-1, 1)


def baseline_penalties(image: torch.Tensor, cfg: BaselineConfig,
                       template: torch.Tensor | None = None) -> dict[str, float]:
    """Every original column for one (3,H,W) image in [0,1]; ``template`` is (h, w) in [0,1]."""
    x = image[None] if image.dim() == 3 else image
    long = max(x.shape[-2:])
    x = _resize_long_side(x, cfg.resize, allow_upscale=False)
    period = cfg.period * max(x.shape[-2:]) / long                 # the comb follows the scale
    lum = luminance(x)[0]
    h, w = lum.shape
    out: dict[str, float] = {}

    def hinge(v: torch.Tensor) -> float:
        return float(torch.relu(v - cfg.tau))

    # global
    pw = _power(lum, hann=False)
    mask = comb_mask(h, w, period, cfg.max_harm, cfg.sigma_bins, lum.device)
    total = pw.sum() - pw[0, 0]
    g_share = (pw * mask).sum() / (total + 1e-12)
    out["fft_global"] = hinge(g_share)

    # local windows
    tiles = _windows(lum, cfg.window, cfg.hop)
    n = tiles.shape[-1]
    pt = _power(tiles, hann=True)
    tmask = comb_mask(n, n, period, cfg.max_harm, cfg.sigma_bins, lum.device)
    ttotal = pt.sum(dim=(-2, -1)) - pt[:, 0, 0]
    share = (pt * tmask).sum(dim=(-2, -1)) / (ttotal + 1e-12)
    out["local"] = hinge(share.mean())
    edges = _windows(_gradient_magnitude(lum), cfg.window, cfg.hop).mean(dim=(-2, -1))
    weights = 1.0 / (1.0 + cfg.edge_penalty * edges)
    out["local_adaptive"] = hinge((weights * share).sum() / weights.sum())

    if template is not None:
        out["template"] = hinge(template_score(lum, template, period))

    # comb energy per bin over the energy per bin of a guard band around the teeth (the
    # neighbouring frequencies), so a broadband texture gives ~1 and a grid gives more
    def guard_of(m_sigma: torch.Tensor, hh: int, ww: int) -> torch.Tensor:
        wide = comb_mask(hh, ww, period, cfg.max_harm, 3 * cfg.sigma_bins, lum.device)
        return (wide - m_sigma).clamp_min(0)

    def ratio(p: torch.Tensor, m: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
        dims = (-2, -1)
        on = (p * m).sum(dims) / m.sum()
        off = (p * g).sum(dims) / g.sum()
        return on / (off + 1e-12)

    guard = guard_of(mask, h, w)
    tguard = guard_of(tmask, n, n)
    local_ratio = ratio(pt, tmask, tguard)
    if cfg.combo_mode == "ratio":
        g_val = ratio(_power(lum, hann=True), mask, guard)
        l_val = local_ratio.mean()
    else:
        g_val = (pw * mask).sum() / (h * w) ** 2
        l_val = ((pt * tmask).sum(dim=(-2, -1)) / n ** 4).mean()
    out["combo"] = float(torch.relu(g_val - cfg.tau_global)
                         + cfg.w_local * torch.relu(l_val - cfg.tau_local))

    # the same guard band, with the lowest frequencies cut (no DC / gradient leakage)
    fy = torch.fft.fftfreq(h, device=lum.device).abs()[:, None]
    fx = torch.fft.fftfreq(w, device=lum.device).abs()[None, :]
    keep = (torch.maximum(fy, fx) >= 0.5 / period).float()
    out["guard_dc_safe"] = hinge((pw * mask * keep).sum() / ((pw * guard * keep).sum() + 1e-12))

    # selective local
    excess = torch.relu(local_ratio - 1.0)
    top = _top_mean(excess, cfg.selective_top_p)
    coverage = (excess > cfg.selective_margin).float().mean()
    a = cfg.selective_coverage_alpha
    out["selective_local"] = hinge((1 - a) * top + a * coverage)

    # projections on the harmonics
    cos, amp = _profile_stats(tiles, period, cfg.proj_harmonics, cfg.proj_detach_norm)
    out["proj_cosine"] = hinge(_top_mean(cos, cfg.proj_top_p))
    out["amp_hinge"] = float(torch.relu(amp - cfg.amp_margin).mean())
    out["original_trainer"] = out["proj_cosine"] + 0.5 * out["selective_local"]
    return out


__all__ = ["BaselineConfig", "COLUMNS", "COMBO_MODES", "baseline_penalties", "comb_mask",
           "parse_harmonics", "template_score"]
