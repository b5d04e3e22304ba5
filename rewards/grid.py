"""FFT anti-periodic (grid artifact) penalties.

Over-optimised FLUX outputs acquire a faint periodic texture whose period is the
VAE stride times the transformer patch (8 x 2 = 16 px). This module measures the
evidence on the *comb* of that period's harmonics. By default (``statistic="ring"``) each
tooth's power is compared with its 8 neighbours' in the whole image's spectrum (a local
spectral contrast), so broadband natural textures (brick, text, foliage) are not mistaken
for a grid. ``statistic="coherent"`` (opt in with :data:`COHERENT`) combines each tooth's
complex coefficient over windows side by side, each window weighted by the inverse of its own
noise at that tooth: an exact grid has the same coefficient in every window, a photo's texture
does not, and a flat window, where a grid shows, weighs most. It reads the luma and, by
default, the two opponent colours (a grid of colour without luma is invisible in the luma).
The design, the parameter choices and the measured detection figures are in
docs/anti_grid.md.

Public API
----------
* :func:`make_grid_reward` -- registry factory, reward = -penalty.
* :class:`GridPenalty` -- the callable penalty with its cached masks.
* :func:`grid_penalty` / :func:`grid_penalty_terms` -- plain functions -> [B].
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Sequence

import torch
import torch.nn.functional as F

from .base import as_reward, batch_mean, check_images

MODES = ("global", "local", "combined")
# How the global term reads a comb tooth: "ring" (the default) compares the tooth's power in the
# whole image's spectrum with its 8 neighbours'; "coherent" combines the tooth's complex
# coefficient over windows side by side, each weighted by the inverse of its own noise there.
STATISTICS = ("ring", "coherent")
# The coherent statistic as measured (docs/anti_grid.md: ROC-AUC 0.978 at 0.5 % amplitude, 0.998
# on colour-only grids): opt in with GridPenalty(**COHERENT) / make_grid_reward(**COHERENT), or
# the trainer's --grid_ratio_statistic coherent. It is not the default: it sees the 4-px token
# pattern the demo's LoRA adds (the ring statistic does not), and no guard tried removes that
# pattern without removing the demo's edit, so the demos report it beside their grid check.
COHERENT = {"statistic": "coherent", "max_harm": 0, "mode": "global", "period_temperature": 0.01}
# Default noise margins (luma, colour) per statistic, measured on the synthetic set
# (docs/anti_grid.md): the coherent statistic is ~Exp(1) under no grid, the ring's ~F(2, 16).
DEFAULT_MARGINS = {"coherent": (1.0, 1.25), "ring": (0.5, 1.25)}
# Coherent windows hold this many of the longest period (the lcm of the effective periods).
COHERENT_PERIODS_PER_WINDOW = 2
# log(T + floor): keeps the log finite (T = 0 on a flat image); T is ~Exp(1) without a grid.
COHERENT_LOG_FLOOR = 1e-3
# Rec.709 luma weights applied to the [0,1] (gamma-encoded) values.
REC709 = (0.2126, 0.7152, 0.0722)


def luminance(images: torch.Tensor) -> torch.Tensor:
    """(B,3,H,W) -> (B,H,W) Rec.709 luma of the gamma-encoded values."""
    w = images.new_tensor(REC709).view(1, 3, 1, 1)
    return (images * w).sum(1)


def _resize_long_side(x: torch.Tensor, size: int | None, allow_upscale: bool) -> torch.Tensor:
    """Resize (B,C,H,W) so the long side is ``size`` (antialiased bilinear, differentiable)."""
    if not size:
        return x
    h, w = x.shape[-2:]
    long = max(h, w)
    if long == size or (long < size and not allow_upscale):
        return x
    s = size / long
    nh, nw = max(1, round(h * s)), max(1, round(w * s))
    return F.interpolate(x, size=(nh, nw), mode="bilinear", antialias=long > size,
                         align_corners=False)


@dataclass(frozen=True)
class GridConfig:
    """Every parameter of the grid penalty (validated; see docs/anti_grid.md)."""

    period: float = 16.0          # grid period in pixels of the *input* image
    max_harm: int = 3             # harmonics a, b in -max_harm..max_harm (0: all below Nyquist)
    sigma_bins: float = 0.5       # Gaussian weight of the bins of a tooth that falls between bins
    tau: float = 0.0              # hinge: penalty = relu(score - tau)
    eval_resize: int | None = 512  # downscale so the long side is at most this (0/None: never)
    mode: str = "combined"        # "global" | "local" | "combined"
    statistic: str = "ring"       # global term: "ring" (whole image) | "coherent" (windows)
    extra_periods: tuple[float, ...] = (8.0, 32.0)  # octaves also covered by the comb
    ring: tuple[float, float] = (1.0, 1.5)  # neighbour ring (Chebyshev bins) around each tooth
    local_window: int = 128       # local window side (eval pixels)
    local_stride: int = 128       # local window stride (= window: side by side)
    min_amplitude: float = 5e-5   # energy floor: a tone this weak ([0,1] units) counts as nothing
    margin: float | None = None   # log-contrast a tooth needs before it counts (None: the
                                  # statistic's, DEFAULT_MARGINS; the local term uses the ring's)
    period_temperature: float = 0.05  # soft max over the periods' scores (0 = hard max)
    local_top: float = 0.25       # local score = mean of the top fraction of windows
    local_weight: float = 0.5     # combined = global + local_weight * local
    # Colour: the opponent channels R-G and (R+G)/2-B are read too, each with its own comb
    # evidence, and the image's evidence is the larger of luma's and colour's. Their margin
    # is higher: natural colour photos (JPEG-born ones especially) carry faint colour combs
    # of their own. They are read at 1/chroma_scale of the resolution (box average): colour
    # costs 2/chroma_scale^2 of the luma's FFTs.
    chroma: bool = True
    chroma_margin: float | None = None
    chroma_scale: int = 2

    def __post_init__(self):
        periods = (self.period, *self.extra_periods)
        if any(not (p >= 2.0) for p in periods):
            raise ValueError(f"grid periods must be >= 2 px, got {periods}")
        if not (isinstance(self.max_harm, int) and self.max_harm >= 0):
            raise ValueError(f"max_harm must be an int >= 0 (0: every harmonic below Nyquist), "
                             f"got {self.max_harm!r}")
        if self.statistic not in STATISTICS:
            raise ValueError(f"unknown grid statistic {self.statistic!r}; use one of "
                             f"{', '.join(STATISTICS)}")
        if not (self.sigma_bins > 0):
            raise ValueError(f"sigma_bins must be > 0, got {self.sigma_bins}")
        if not math.isfinite(self.tau):
            raise ValueError(f"tau must be finite, got {self.tau}")
        if self.eval_resize not in (None, 0) and self.eval_resize < 32:
            raise ValueError(f"eval_resize must be >= 32 (or 0/None to disable), got {self.eval_resize}")
        if self.mode not in MODES:
            raise ValueError(f"unknown grid mode {self.mode!r}; use one of {', '.join(MODES)}")
        r_in, r_out = self.ring
        if not (0 < r_in <= r_out):
            raise ValueError(f"ring must satisfy 0 < inner <= outer, got {self.ring}")
        if self.local_window < 16 or self.local_stride < 1:
            raise ValueError("local_window must be >= 16 and local_stride >= 1")
        if not (self.min_amplitude > 0):
            raise ValueError(f"min_amplitude must be > 0, got {self.min_amplitude}")
        for name in ("margin", "chroma_margin"):
            value = getattr(self, name)
            if value is not None and not (value >= 0 and math.isfinite(value)):
                raise ValueError(f"{name} must be >= 0 (or None: the statistic's default), "
                                 f"got {value}")
        if not (self.period_temperature >= 0 and math.isfinite(self.period_temperature)):
            raise ValueError(f"period_temperature must be >= 0, got {self.period_temperature}")
        if not (0 < self.local_top <= 1):
            raise ValueError(f"local_top must be in (0, 1], got {self.local_top}")
        if not (self.local_weight >= 0 and math.isfinite(self.local_weight)):
            raise ValueError(f"local_weight must be >= 0, got {self.local_weight}")
        if not (isinstance(self.chroma_scale, int) and self.chroma_scale >= 1):
            raise ValueError(f"chroma_scale must be an int >= 1, got {self.chroma_scale!r}")
        if self.chroma and (self.local_window % self.chroma_scale
                            or self.local_stride % self.chroma_scale):
            raise ValueError(f"local_window ({self.local_window}) and local_stride "
                             f"({self.local_stride}) must be multiples of chroma_scale "
                             f"({self.chroma_scale}), so colour windows cover the luma's")

    @property
    def periods(self) -> tuple[float, ...]:
        return tuple(dict.fromkeys(float(p) for p in (self.period, *self.extra_periods)))

    def margins(self, statistic: str) -> tuple[float, float]:
        """(luma, colour) noise margins of ``statistic``: the given ones, else its defaults."""
        luma, colour = DEFAULT_MARGINS[statistic]
        return (luma if self.margin is None else self.margin,
                colour if self.chroma_margin is None else self.chroma_margin)


@dataclass
class BinTable:
    """Where to read given bins of an (h, w) image's periodic-component spectrum (any shape)."""

    index: torch.Tensor      # long, flat index into the (h, w//2+1) half spectrum
    col_index: torch.Tensor  # long, column of each bin (0..w//2)
    row_index: torch.Tensor  # long, row of each bin (0..h-1)
    row_coef: torch.Tensor   # complex: smooth-component coefficient of the row jump
    col_coef: torch.Tensor   # complex: smooth-component coefficient of the column jump


def _bin_table(h: int, w: int, bu: torch.Tensor, bv: torch.Tensor, device, dtype) -> BinTable:
    """Absolute (row, col) bins (float64, any sign) -> a :class:`BinTable`.

    Periodic + smooth decomposition (Moisan 2011): the smooth component's spectrum is
    S = (A[v] (1 - e^{2pi i u/h}) + B[u] (1 - e^{2pi i v/w})) / (2cos(2pi u/h) + 2cos(2pi v/w) - 4)
    with A, B the 1-D FFTs of the boundary jumps (last row - first row, last col - first col);
    the coefficients of A and B are stored per bin.
    """
    # Map any (row, col) to the stored half spectrum using X(u, v) = conj X(-u, -v).
    iu, iv = bu.long() % h, bv.long() % w
    flip = iv > w // 2
    iu = torch.where(flip, (-iu) % h, iu)
    iv = torch.where(flip, (w - iv) % w, iv)
    tu, tv = 2 * math.pi * iu.double() / h, 2 * math.pi * iv.double() / w
    den = 2 * torch.cos(tu) + 2 * torch.cos(tv) - 4
    safe = torch.where(den == 0, torch.ones_like(den), den)
    cdtype = torch.complex128 if dtype == torch.float64 else torch.complex64
    row_coef = torch.where(den == 0, 0, (1 - torch.exp(1j * tu)) / safe)
    col_coef = torch.where(den == 0, 0, (1 - torch.exp(1j * tv)) / safe)
    return BinTable(index=(iu * (w // 2 + 1) + iv).to(device), col_index=iv.to(device),
                    row_index=iu.to(device), row_coef=row_coef.to(device, cdtype),
                    col_coef=col_coef.to(device, cdtype))


def _periodic_fft(x: torch.Tensor):
    """(N,h,w) -> what :func:`_read_bins` needs: the mean-free image's half spectrum and the
    1-D spectra of its border jumps (periodic + smooth decomposition, Moisan 2011)."""
    x = x - x.mean(dim=(-2, -1), keepdim=True)
    spec = torch.fft.rfft2(x, norm="backward").reshape(x.shape[0], -1)
    jump_rows = torch.fft.rfft(x[:, -1, :] - x[:, 0, :], dim=-1)
    jump_cols = torch.fft.fft(x[:, :, -1] - x[:, :, 0], dim=-1)
    return spec, jump_rows, jump_cols


def _power(z: torch.Tensor) -> torch.Tensor:
    """|z|^2 of a complex tensor as re^2 + im^2 (no square root; finite gradient at 0)."""
    return torch.view_as_real(z).pow(2).sum(-1)


def _read_bins(fft, bins: BinTable) -> torch.Tensor:
    """Complex periodic-component spectrum (N, *bins shape) at the bins of ``bins``."""
    spec, jump_rows, jump_cols = fft
    shape = bins.index.shape
    u = spec[:, bins.index.reshape(-1)]
    smooth = (jump_rows[:, bins.col_index.reshape(-1)] * bins.row_coef.reshape(-1)
              + jump_cols[:, bins.row_index.reshape(-1)] * bins.col_coef.reshape(-1))
    return (u - smooth).reshape(spec.shape[0], *shape)


@dataclass
class CombTables:
    """Gather indices and weights that read comb teeth and their rings from a spectrum.

    One row per (period, tooth); a tooth shared by two periods' combs has a row in each.
    """

    bins: BinTable           # (T, K) where to read each tooth's and neighbour's bin
    peak_w: torch.Tensor     # (T, K) tooth weights (1 on an exact bin; see sigma_bins)
    ring_w: torch.Tensor     # (T, K) neighbour weights (sum 1 per tooth)
    group: torch.Tensor      # (n_periods, T) averaging matrix: tooth scores -> period scores
    eps: float               # power of a just-visible grid (floor of both energies)
    teeth: int = field(default=0)


def _harmonics(period_px: float, max_harm: int) -> int:
    """Largest harmonic order read: ``max_harm``, or (0) every one below Nyquist."""
    return max_harm if max_harm > 0 else max(1, int(math.ceil(period_px / 2)))


def _period_groups(periods_of: Sequence[set[int]]) -> torch.Tensor:
    """(n_periods present, T) averaging matrix: row g averages the teeth whose set in
    ``periods_of`` (one per tooth) holds the g-th period present."""
    present = sorted(set().union(*periods_of))
    group = torch.zeros(len(present), len(periods_of), dtype=torch.float64)
    for gi, pi in enumerate(present):
        sel = torch.tensor([pi in ps for ps in periods_of])
        group[gi, sel] = 1.0 / float(sel.sum())
    return group


def _comb_points(h: int, w: int, period_px: float, max_harm: int) -> list[tuple[float, float]]:
    """Fractional (row, col) bin positions of one period's 2-D comb in the rfft2 half plane."""
    pts = set()
    max_harm = _harmonics(period_px, max_harm)
    for a in range(-max_harm, max_harm + 1):
        for b in range(0, max_harm + 1):
            if b == 0 and a <= 0:
                continue  # DC and the conjugate half of the column axis
            u, v = a * h / period_px, b * w / period_px
            # drop teeth at or past Nyquist (aliased by the resize; degenerate at Nyquist)
            if abs(u) > h / 2 - 1 or v > w / 2 - 1:
                continue
            pts.add((round(u, 6), round(v, 6)))
    return sorted(pts)


def _build_tables(h: int, w: int, periods_px: Sequence[float], cfg: GridConfig,
                  device, dtype) -> CombTables | None:
    combs = [_comb_points(h, w, p, cfg.max_harm) for p in periods_px]
    rows = [(i, pt) for i, pts in enumerate(combs) for pt in pts]
    if not rows:
        return None
    r_in, r_out = cfg.ring
    R = int(math.ceil(r_out)) + 1
    offs = torch.arange(-R, R + 1, dtype=torch.float64)
    du, dv = torch.meshgrid(offs, offs, indexing="ij")
    du, dv = du.reshape(-1), dv.reshape(-1)                          # (K,)
    P = torch.tensor([pt for _, pt in rows], dtype=torch.float64)     # (T, 2)
    cu, cv = P[:, :1], P[:, 1:]
    bu, bv = torch.round(cu) + du, torch.round(cv) + dv               # (T, K) absolute bins
    # Chebyshev distances (bins) from each bin to its own tooth and to the nearest tooth of
    # the union comb (conjugates included: the spectrum is Hermitian), so a ring never
    # counts another tooth's energy as "background".
    d_own = torch.maximum((bu - cu).abs(), (bv - cv).abs())
    allp = torch.tensor(sorted({pt for pts in combs for pt in pts}), dtype=torch.float64)
    allp = torch.cat([allp, -allp], 0)
    d_any = torch.maximum((bu[..., None] - allp[:, 0]).abs(),
                          (bv[..., None] - allp[:, 1]).abs()).amin(-1)
    # With whole periods in the (periodic) image a tooth is one exact bin (weight 1). A
    # fractional tooth (image not cropped to whole periods) spreads over the bins within 1 bin:
    # they are summed with a Gaussian weight, so no energy is double-counted by the ring.
    g = torch.exp(-((bu - cu) ** 2 + (bv - cv) ** 2) / (2 * cfg.sigma_bins ** 2))
    peak = torch.where(d_own < 1 - 1e-6, g, torch.zeros_like(g))
    ring_w = ((d_own >= r_in - 1e-6) & (d_own <= r_out + 1e-6) & (d_any >= r_in - 1e-6)).double()
    # DC-safe: low frequencies (< 2 bins) hold the image's large-scale shading, never a grid.
    radius = torch.sqrt((bu / max(h, 1)) ** 2 + (bv / max(w, 1)) ** 2) * max(h, w)
    low = radius < 2.0
    peak = peak.masked_fill(low, 0.0)
    ring_w = ring_w.masked_fill(low, 0.0)
    ok = (peak.sum(1) > 0) & (ring_w.sum(1) > 0)
    if not bool(ok.any()):
        return None
    period_of = torch.tensor([i for i, _ in rows])[ok]
    peak, ring_w, bu, bv = peak[ok], ring_w[ok], bu[ok], bv[ok]
    ring_w = ring_w / ring_w.sum(1, keepdim=True)
    bins = _bin_table(h, w, bu, bv, device, dtype)
    group = _period_groups([{p} for p in period_of.tolist()])
    # A sinusoid of amplitude A on an exact bin has |X| = A/2 * h * w (no window).
    eps = float((cfg.min_amplitude / 2 * h * w) ** 2)
    return CombTables(bins=bins, peak_w=peak.to(device, dtype), ring_w=ring_w.to(device, dtype),
                      group=group.to(device, dtype), eps=eps, teeth=int(ok.sum()))


@dataclass
class CoherentTables:
    """The comb teeth read by the coherent statistic, in an L x L window's spectrum (the tooth
    and its 8 neighbours) and in the whole (h, w) image's (the tooth's 8 neighbours)."""

    window: int              # L: a whole number of every period
    tooth: BinTable          # (T,) window bins of the teeth (each distinct frequency once)
    win_ring: BinTable       # (T, 8) window bins of the neighbours
    win_ring_w: torch.Tensor  # (T, 8) their weights (sum 1 per tooth; 0: left out)
    glob_ring: BinTable      # (T, 8) whole-image bins of the neighbours
    glob_ring_w: torch.Tensor  # (T, 8)
    group: torch.Tensor      # (n_periods, T) averaging matrix: tooth scores -> period scores
    eps: float               # window power of a tone of min_amplitude (noise floor per window)
    teeth: int = field(default=0)


def _build_coherent_tables(h: int, w: int, periods_px: Sequence[int], cfg: GridConfig,
                           device, dtype) -> CoherentTables | None:
    """Tables for whole-pixel periods dividing h and w; windows of
    COHERENT_PERIODS_PER_WINDOW x lcm(periods). None when no window fits or no tooth is left."""
    lcm = math.lcm(*periods_px)
    L = COHERENT_PERIODS_PER_WINDOW * lcm
    if h % lcm or w % lcm or min(h, w) < L:
        return None
    freqs: dict[tuple[int, int], set[int]] = {}     # (row, col) in window bins -> periods
    for i, p in enumerate(periods_px):
        H = _harmonics(p, cfg.max_harm)
        for a in range(-H, H + 1):
            for b in range(0, H + 1):
                if b == 0 and a <= 0:
                    continue    # DC and the conjugate half of the column axis
                u, v = a * L // p, b * L // p
                # teeth within 1 bin of the window's Nyquist are dropped (aliased, degenerate);
                # the lowest window bins hold the window's large-scale shading, not a grid
                if abs(u) > L / 2 - 1 or v > L / 2 - 1 or math.hypot(u, v) < 2:
                    continue
                freqs.setdefault((u, v), set()).add(i)
    if not freqs:
        return None
    keys = sorted(freqs)
    P = torch.tensor(keys, dtype=torch.float64)                     # (T, 2) window bins
    offs = torch.tensor([(du, dv) for du in (-1, 0, 1) for dv in (-1, 0, 1) if du or dv],
                        dtype=torch.float64)                        # (8, 2)
    teeth_all = torch.cat([P, -P], 0)

    def ring(size_u: int, size_v: int):
        """The 8 neighbours of every tooth in a (size_u, size_v) spectrum: a frequency of a/p
        cycles/px sits at a * size / p, size / L times the window's bin."""
        ku, kv = size_u / L, size_v / L
        bu = P[:, :1] * ku + offs[:, 0]
        bv = P[:, 1:] * kv + offs[:, 1]
        d_any = torch.maximum((bu[..., None] - ku * teeth_all[:, 0]).abs(),
                              (bv[..., None] - kv * teeth_all[:, 1]).abs()).amin(-1)
        radius = torch.sqrt((bu / size_u) ** 2 + (bv / size_v) ** 2) * max(size_u, size_v)
        ok = ((d_any >= 1) & (radius >= 2)).double()    # no other tooth, no shading
        return bu, bv, ok

    wu, wv, w_ok = ring(L, L)
    gu, gv, g_ok = ring(h, w)
    keep = (w_ok.sum(1) > 0) & (g_ok.sum(1) > 0)
    if not bool(keep.any()):
        return None
    P, wu, wv, w_ok, gu, gv, g_ok = (t[keep] for t in (P, wu, wv, w_ok, gu, gv, g_ok))
    kept = [k for k, m in zip(keys, keep.tolist()) if m]
    group = _period_groups([freqs[k] for k in kept])
    return CoherentTables(
        window=L, tooth=_bin_table(L, L, P[:, 0], P[:, 1], device, dtype),
        win_ring=_bin_table(L, L, wu, wv, device, dtype),
        win_ring_w=(w_ok / w_ok.sum(1, keepdim=True)).to(device, dtype),
        glob_ring=_bin_table(h, w, gu, gv, device, dtype),
        glob_ring_w=(g_ok / g_ok.sum(1, keepdim=True)).to(device, dtype),
        group=group.to(device, dtype), eps=float((cfg.min_amplitude / 2 * L * L) ** 2),
        teeth=len(kept))


def _coherent_contrast(x: torch.Tensor, tab: CoherentTables) -> torch.Tensor:
    """(N,h,w) channel -> (N,T) log of each tooth's coherent statistic over the windows.

    The image is cut into L x L windows side by side, each a whole number of every period, so
    an exact grid has the *same* complex coefficient G at a tooth in every window, while a
    photo's texture varies from window to window. Per window w, X_w is the tooth's coefficient
    (periodic component of the window) and s_w its noise power there: the whole image's
    8-neighbour power at the tooth (the scale, at full resolution) shared out over the windows
    in proportion to each window's own power at and around the tooth (the shape). With
    v_w = 1 / (s_w + eps), T = |sum_w v_w X_w|^2 / sum_w v_w is the inverse-variance weighted
    coherent sum: near Exp(1) without a grid (a little lower: each window's own tooth power is
    part of its weight), |G|^2 sum_w v_w with one. Flat windows, where a
    grid shows, weigh most; a textured window counts little. The weights are a noise estimate
    and carry no gradient: the penalty falls by removing the coherent tooth, not by adding
    noise to hide it.
    """
    N, h, w = x.shape
    L = tab.window
    nh, nw = h // L, w // L
    n = nh * nw
    tiles = x[:, : nh * L, : nw * L].reshape(N, nh, L, nw, L).permute(0, 1, 3, 2, 4)
    fft_w = _periodic_fft(tiles.reshape(N * n, L, L))
    X = _read_bins(fft_w, tab.tooth).reshape(N, n, -1)                   # (N, n, T)
    with torch.no_grad():
        ring_g = (_power(_read_bins(_periodic_fft(x.detach()), tab.glob_ring))
                  * tab.glob_ring_w).sum(-1)                              # (N, T)
        ring_w = (_power(_read_bins(tuple(t.detach() for t in fft_w), tab.win_ring))
                  * tab.win_ring_w).sum(-1).reshape(N, n, -1)             # (N, n, T)
        rel = _power(X.detach()) + ring_w
        share = rel / rel.sum(1, keepdim=True).clamp_min(torch.finfo(rel.dtype).tiny)
        # units: the whole image's coefficient is the sum of the n windows' coefficients
        v = 1.0 / (ring_g[:, None] * share + n * tab.eps)
    t = _power((v * X).sum(1)) / v.sum(1)
    return torch.log(t + COHERENT_LOG_FLOOR)


def _eval_geometry(h: int, w: int, cfg: GridConfig) -> tuple[int, int, float, int]:
    """(resized h, resized w, scale, crop multiple) used to evaluate an (h, w) image.

    The scale is rounded down to a multiple of 1/min(period), so every effective period
    stays a whole number of pixels (16 px at 1024 -> 512 becomes 8 px); the image is then
    centre-cropped to a multiple of the largest effective period, which puts every comb
    tooth on an exact FFT bin (the Hann main lobe is then 3 bins wide, see the docs).
    """
    long = max(h, w)
    scale = 1.0
    if cfg.eval_resize and long > cfg.eval_resize:
        s0 = cfg.eval_resize / long
        q = min(cfg.periods)
        scale = math.floor(s0 * q) / q if s0 * q >= 1 else s0
    nh, nw = max(1, round(h * scale)), max(1, round(w * scale))
    eff = [p * scale for p in cfg.periods]
    multiple = 1
    if all(abs(e - round(e)) < 1e-6 for e in eff):
        multiple = math.lcm(*(int(round(e)) for e in eff))
        if nh // multiple < 2 or nw // multiple < 2:
            multiple = 1  # too small to crop to whole periods: teeth become fractional
    return nh, nw, scale, multiple


def _top_mean(x: torch.Tensor, frac: float) -> torch.Tensor:
    """Mean of the largest ``frac`` of the last dimension (at least one element)."""
    k = max(1, int(math.ceil(frac * x.shape[-1])))
    return torch.topk(x, k, dim=-1).values.mean(-1)


class GridPenalty:
    """Callable penalty ``images (B,3,H,W) in [0,1] -> (penalty[B], terms)``.

    ``terms`` holds the unhinged ``global`` and ``local`` scores [B]. Masks, windows and
    gather tables are cached per (shape, device, dtype), so repeated calls on a training
    batch only run the FFTs.
    """

    def __init__(self, config: GridConfig | None = None, **options):
        self.config = config if config is not None else GridConfig(**options)
        self._cache: dict[tuple, CombTables | CoherentTables | None] = {}

    # -- cached tables -------------------------------------------------------------
    def tables(self, h: int, w: int, scale: float, kind: str, device, dtype) -> CombTables | None:
        """Gather tables for an (h, w) image; ``scale`` = eval px per input px.

        ``kind`` ("global" / "local") only separates the cache entries.
        """
        key = (kind, h, w, round(scale, 6), str(device), dtype)
        if key not in self._cache:
            periods_px = [p * scale for p in self.config.periods]
            self._cache[key] = _build_tables(h, w, periods_px, self.config, device, dtype)
        return self._cache[key]

    def coherent_tables(self, h: int, w: int, scale: float, kind: str, device, dtype
                        ) -> CoherentTables | None:
        """Tables of the coherent statistic for an (h, w) image, or None where it cannot be
        read (a period that is not a whole number of pixels at this scale, a size that is not
        a whole number of periods, or an image smaller than one window): then the global term
        falls back to the ring statistic."""
        key = ("coherent", kind, h, w, round(scale, 6), str(device), dtype)
        if key not in self._cache:
            eff = [p * scale for p in self.config.periods]
            tab = None
            if all(abs(e - round(e)) < 1e-6 and round(e) >= 2 for e in eff):
                tab = _build_coherent_tables(h, w, [int(round(e)) for e in eff], self.config,
                                             device, dtype)
            self._cache[key] = tab
        return self._cache[key]

    # -- scores ------------------------------------------------------------------------
    def _contrast(self, lum: torch.Tensor, tab: CombTables) -> torch.Tensor:
        """(N,h,w) luminance -> (N,T) log contrast of each comb tooth over its ring.

        The spectrum is that of the image's periodic component (periodic + smooth
        decomposition), so no window is needed: the image borders leave no cross in the
        spectrum and an exactly periodic grid puts all its energy in one bin per tooth.
        """
        # mean-free: exact invariance to brightness shifts. Only the few bins the comb reads
        # are gathered: the full power spectrum is never formed (this, not the FFT, dominated
        # the time and memory of the backward)
        vals = _power(_read_bins(_periodic_fft(lum), tab.bins))                 # (N, T, K)
        e_peak = (vals * tab.peak_w).sum(-1)
        e_ring = (vals * tab.ring_w).sum(-1)
        return torch.log((e_peak + tab.eps) / (e_ring + tab.eps))

    def _score(self, contrast: torch.Tensor, tab: CombTables | CoherentTables,
               margin: float) -> torch.Tensor:
        """(N, T) tooth contrasts -> (N,) evidence (``(N, C, T)`` -> ``(N,)``: per period
        the largest over the C channels).

        Per period: mean over its comb's teeth of the excess over the noise margin; then a
        soft maximum over the periods, so a grid that lights a few teeth of one comb is not
        diluted by the teeth of the other periods.
        """
        per_period = torch.relu(contrast - margin) @ tab.group.T   # (N, [C,] n_periods)
        if per_period.ndim == 3:
            per_period = per_period.amax(1)
        t = self.config.period_temperature
        if t == 0 or per_period.shape[-1] == 1:
            return per_period.amax(-1)
        return (torch.softmax(per_period / t, dim=-1) * per_period).sum(-1)

    def prepare(self, images: torch.Tensor) -> tuple[torch.Tensor, float]:
        """Images -> evaluated luminance (B,h,w) (resized, cropped to whole periods), scale."""
        lum, _, scale = self.prepare_channels(images)
        return lum, scale

    def prepare_channels(self, images: torch.Tensor
                         ) -> tuple[torch.Tensor, torch.Tensor | None, float]:
        """Images -> luma (B,h,w), opponent colours (B,2,h/s,w/s) or None, and the scale.

        Resized and cropped to whole periods as described in docs/anti_grid.md; the colour
        channels are box-averaged by ``chroma_scale`` (s) after that crop.
        """
        check_images(images)
        cfg = self.config
        H0, W0 = images.shape[-2:]
        nh, nw, scale, multiple = _eval_geometry(H0, W0, cfg)
        x = images.float() if images.dtype in (torch.float16, torch.bfloat16) else images
        if (nh, nw) != (H0, W0):
            x = F.interpolate(x, size=(nh, nw), mode="bilinear", antialias=True,
                              align_corners=False)
        if multiple > 1:
            ch, cw = nh // multiple * multiple, nw // multiple * multiple
            top, left = (nh - ch) // 2, (nw - cw) // 2
            x = x[..., top:top + ch, left:left + cw]
        lum = luminance(x)
        if not cfg.chroma:
            return lum, None, scale
        r, g, b = x.unbind(1)
        colour = torch.stack([r - g, 0.5 * (r + g) - b], 1)
        s = cfg.chroma_scale
        if s > 1:
            h, w = colour.shape[-2:]
            colour = F.avg_pool2d(colour[..., : h // s * s, : w // s * s], s)
        return lum, colour, scale

    def _channel_terms(self, x: torch.Tensor, scale: float, channel: int, kind: str,
                       window: int, stride: int, need: tuple[str, ...]
                       ) -> dict[str, torch.Tensor]:
        """Global and local scores [B] of one group of channels x (B,C,h,w); ``channel``:
        0 = luma, 1 = colour (which noise margin applies)."""
        B, C, h, w = x.shape
        zero = x.sum(dim=(1, 2, 3)) * 0.0   # keeps the graph (finite zero gradient)
        out: dict[str, torch.Tensor] = {}
        ring_margin = self.config.margins("ring")[channel]
        if "global" in need:
            coh = (self.coherent_tables(h, w, scale, kind, x.device, x.dtype)
                   if self.config.statistic == "coherent" else None)
            if coh is not None:
                c = _coherent_contrast(x.reshape(B * C, h, w), coh).reshape(B, C, -1)
                out["global"] = self._score(c, coh, self.config.margins("coherent")[channel])
            else:
                tab = self.tables(h, w, scale, kind + "global", x.device, x.dtype)
                out["global"] = zero if tab is None else self._score(
                    self._contrast(x.reshape(B * C, h, w), tab).reshape(B, C, -1), tab,
                    ring_margin)
        if "local" in need:
            L, S = window, stride
            if min(h, w) < L:
                L = S = min(h, w)
            tab = self.tables(L, L, scale, kind + "local", x.device, x.dtype)
            if tab is None:
                out["local"] = zero
            else:
                if S == L:   # side by side: a reshape, whose backward is cheap
                    nh, nw = h // L, w // L
                    tiles = x[..., : nh * L, : nw * L].reshape(B, C, nh, L, nw, L)
                    tiles = tiles.permute(0, 2, 4, 1, 3, 5)               # (B,nh,nw,C,L,L)
                else:
                    tiles = x.unfold(2, L, S).unfold(3, L, S).permute(0, 2, 3, 1, 4, 5)
                n_tiles = tiles.shape[1] * tiles.shape[2]
                tiles = tiles.reshape(B * n_tiles * C, L, L)
                c = self._contrast(tiles, tab).reshape(B * n_tiles, C, -1)
                per_window = self._score(c, tab, ring_margin).reshape(B, n_tiles)
                out["local"] = _top_mean(per_window, self.config.local_top)
        return out

    def terms(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        """Unhinged ``global`` and/or ``local`` scores [B] (only those the mode needs): the
        larger of the luma's and the colour channels' evidence."""
        cfg = self.config
        lum, colour, scale = self.prepare_channels(images)
        need = ("global", "local") if cfg.mode == "combined" else (cfg.mode,)
        out = self._channel_terms(lum[:, None], scale, 0, "", cfg.local_window,
                                  cfg.local_stride, need)
        if colour is not None:
            s = cfg.chroma_scale
            col = self._channel_terms(colour, scale / s, 1, "chroma ",
                                      cfg.local_window // s, cfg.local_stride // s, need)
            out = {k: torch.maximum(v, col[k]) for k, v in out.items()}
        return out

    def __call__(self, images: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        terms = self.terms(images)
        if self.config.mode == "combined":
            score = terms["global"] + self.config.local_weight * terms["local"]
        else:
            score = terms[self.config.mode]
        penalty = torch.relu(score - self.config.tau)
        return penalty, terms


def _fine_texture_energy(images: torch.Tensor, block: int) -> torch.Tensor:
    """(B,3,H,W) -> (B, H/block, W/block): energy of the detail finer than 3 px (image minus
    its 3x3 box blur) in luma + half of it in each opponent colour, per block x block cell.
    Linear up to the square, so it also reads differences of images."""
    x = images.float()
    r, g, b = x.unbind(1)
    y = torch.stack([REC709[0] * r + REC709[1] * g + REC709[2] * b, r - g, 0.5 * (r + g) - b], 1)
    fine = y - F.avg_pool2d(F.pad(y, (1, 1, 1, 1), mode="replicate"), 3, stride=1)
    e = fine.pow(2)
    e = e[:, 0] + 0.5 * (e[:, 1] + e[:, 2])
    return F.avg_pool2d(e[:, None], block)[:, 0]


def texture_added(images: torch.Tensor, inputs: torch.Tensor, block: int = 4,
                  gain: float = 1.5, floor: float = 2e-5) -> torch.Tensor:
    """[B] fine texture the output adds over its input, cell by cell (differentiable).

    A periodic-comb penalty sees a grid, not noise: a model that puts a different offset
    on every token (4 px for the tiny model, 16 for FLUX) makes blocky *aperiodic* texture,
    whose spectrum has no comb teeth. This measures it where it shows: per ``block`` x
    ``block`` cell, the fine-detail energy (luma and colour, :func:`_fine_texture_energy`)
    above ``gain``^2 times the input's (an edit may raise contrast by ``gain``) and above
    ``floor`` (what the base model already adds), averaged over the cells. A flat dark sky
    that turns blocky scores; detail the input had, sharpened by up to ``gain``, does not.
    """
    check_images(images)
    check_images(inputs, "inputs")
    if images.shape != inputs.shape:
        raise ValueError(f"texture_added: images {tuple(images.shape)} and inputs "
                         f"{tuple(inputs.shape)} differ in shape")
    out = _fine_texture_energy(images, block)
    ref = _fine_texture_energy(inputs, block)
    return torch.relu(out - gain ** 2 * ref - floor).mean(dim=(1, 2))


def _monomials(x: torch.Tensor, degree: int) -> torch.Tensor:
    """(B,3,N) -> (B,P,N): every monomial r^i g^j b^k with i+j+k <= ``degree`` (1 first)."""
    r, g, b = x.unbind(1)
    terms = [r ** i * g ** j * b ** k for i in range(degree + 1) for j in range(degree + 1 - i)
             for k in range(degree + 1 - i - j)]
    return torch.stack(terms, 1)


def matched_global_edit(source: torch.Tensor, target: torch.Tensor, degree: int = 3,
                        ridge: float = 1e-9) -> torch.Tensor:
    """``source`` with the global, pixel-wise colour edit that best matches ``target`` (no grad).

    Per image and output channel, a polynomial of degree ``degree`` in the source pixel's
    (r, g, b) is fitted to ``target`` in least squares, applied to ``source`` and clamped to
    [0,1]: any brightness, contrast, tone curve, saturation or white-balance edit, shadow lift
    or highlight clip is such a map (degree 3 fits them to ~1e-3; target pixels at 0 or 1 are
    left out of the fit, the clamp reproduces them). Every output pixel is a
    function of the same source pixel and nothing else, so this edit adds no texture of its
    own: a flat area stays flat, and detail it shows is the source's, scaled by the edit's
    slope; blocky offsets or a grid that do not follow the source's colours are left out of
    the fit. A check or guard that compares an output with the matched edit of its reference
    measures what the output adds *beyond* a clean edit of the same strength, not the edit (a
    brighter, more colourful image has more fine energy and more grid contrast everywhere).
    ``ridge`` (x each image's pixel count) only keeps the normal equations solvable.
    """
    check_images(source, "source")
    check_images(target, "target")
    if source.shape != target.shape:
        raise ValueError(f"matched_global_edit: source {tuple(source.shape)} and target "
                         f"{tuple(target.shape)} differ in shape")
    if not (isinstance(degree, int) and degree >= 1):
        raise ValueError(f"degree must be an int >= 1, got {degree!r}")
    with torch.no_grad():
        x = source.detach().double().flatten(2)                       # (B,3,N)
        t = target.detach().double().flatten(2)
        feats = _monomials(x, degree)                                  # (B,P,N)
        P, N = feats.shape[1], feats.shape[2]
        # target pixels clipped at 0 or 1 say only "at least" / "at most": fitted on the
        # rest, the clamp below reproduces a clipping edit exactly (a polynomial cannot)
        w = ((t > 0.5 / 255) & (t < 254.5 / 255)).to(x.dtype)          # (B,3,N)
        fw = feats[:, None] * w[:, :, None]                            # (B,3,P,N)
        gram = fw @ feats[:, None].transpose(-1, -2)                   # (B,3,P,P)
        eye = torch.eye(P, dtype=x.dtype, device=x.device)
        rhs = (fw @ t[..., None])[..., 0]                              # (B,3,P)
        coef = torch.linalg.solve(gram + ridge * N * eye, rhs)         # (B,3,P)
        out = coef @ feats                                             # (B,3,N)
        return out.reshape(source.shape).clamp(0, 1).to(source.dtype)


def detail_beyond_edit(images: torch.Tensor, reference: torch.Tensor) -> torch.Tensor:
    """[B] fine-detail energy of what ``images`` change in ``reference`` beyond a global edit.

    The reference given the images' own global tone and colour edit
    (:func:`matched_global_edit`, no grad) is subtracted from the images, and the detail
    finer than 3 px of that difference (image minus its 3x3 box blur; luma + half of each
    opponent colour, the measure of :func:`texture_added`) is averaged over the image.
    Differentiable in ``images``. Any pixel-wise edit of the reference (brighter, more
    colourful, a tone curve) scores 0; blocky offsets per token, a grid, grain, and detail
    moved or lost score their energy. Unlike :func:`texture_added` it is two-sided: an
    output cannot lower it by blurring (the blur is itself a difference in fine detail).
    """
    check_images(images)
    check_images(reference, "reference")
    matched = matched_global_edit(reference, images)
    return _fine_texture_energy(images - matched, 1).mean(dim=(1, 2))


_DEFAULT_PENALTIES: dict[GridConfig, GridPenalty] = {}


def _penalty_for(options: dict) -> GridPenalty:
    cfg = GridConfig(**options)
    if cfg not in _DEFAULT_PENALTIES:
        if len(_DEFAULT_PENALTIES) > 16:
            _DEFAULT_PENALTIES.clear()
        _DEFAULT_PENALTIES[cfg] = GridPenalty(cfg)
    return _DEFAULT_PENALTIES[cfg]


def grid_penalty(images: torch.Tensor, **options) -> torch.Tensor:
    """Hinged grid penalty [B] (>= 0) with :class:`GridConfig` options; differentiable."""
    return _penalty_for(options)(images)[0]


def grid_penalty_terms(images: torch.Tensor, **options) -> dict[str, torch.Tensor]:
    """Unhinged ``global`` and ``local`` scores [B] (``mode`` is forced to ``combined``)."""
    options = {**options, "mode": "combined"}
    return _penalty_for(options).terms(images)


def make_grid_reward(period: float = 16, max_harm: int = 3, sigma_bins: float = 0.5,
                     tau: float = 0.0, eval_resize: int | None = 512, mode: str = "combined",
                     extra_periods: Sequence[float] = (8, 32), ring: Sequence[float] = (1.0, 1.5),
                     local_window: int = 128, local_stride: int = 128, min_amplitude: float = 5e-5,
                     margin: float | None = None, local_top: float = 0.25,
                     local_weight: float = 0.5, period_temperature: float = 0.05,
                     chroma: bool = True, chroma_margin: float | None = None,
                     chroma_scale: int = 2, statistic: str = "ring"):
    """Anti-grid reward: ``fn(images, inputs, prompts) -> (-penalty[B], metrics)``.

    ``extra_periods=()`` restricts the comb to ``period`` alone; ``chroma=False`` reads the
    luma only; ``**COHERENT`` selects the coherent statistic as measured (docs/anti_grid.md).
    Metrics (batch means):
    ``grid_penalty`` (hinged, positive) and the unhinged ``grid_global`` / ``grid_local``.
    """
    penalty = GridPenalty(GridConfig(
        period=float(period), max_harm=int(max_harm), sigma_bins=float(sigma_bins), tau=float(tau),
        eval_resize=eval_resize, mode=mode, extra_periods=tuple(float(p) for p in extra_periods),
        ring=tuple(float(r) for r in ring), local_window=int(local_window),
        local_stride=int(local_stride), min_amplitude=float(min_amplitude),
        margin=None if margin is None else float(margin), local_top=float(local_top),
        local_weight=float(local_weight), period_temperature=float(period_temperature),
        chroma=bool(chroma), chroma_margin=None if chroma_margin is None else float(chroma_margin),
        chroma_scale=int(chroma_scale), statistic=str(statistic)))

    def grid_reward(images, inputs=None, prompts=None):
        pen, terms = penalty(images)
        metrics = {"grid_penalty": batch_mean(pen)}
        for name, value in terms.items():
            metrics[f"grid_{name}"] = batch_mean(value)
        return -pen, metrics

    grid_reward.penalty = penalty  # exposes the cache and config (tests, benchmarks)
    return as_reward(grid_reward)


__all__ = ["COHERENT", "STATISTICS", "GridConfig", "GridPenalty", "detail_beyond_edit", "grid_penalty",
           "grid_penalty_terms", "luminance", "make_grid_reward", "matched_global_edit",
           "texture_added"]
