"""Behaviour of the FFT anti-grid penalty (rewards.grid) on real and synthetic images."""
import numpy as np
import pytest
import torch

from rewards.grid_eval import add_grid
from rewards import build_reward
from rewards.grid import (COHERENT, GridConfig, GridPenalty, grid_penalty, grid_penalty_terms,
                          make_grid_reward)

# Bundled scikit-image photos; brick, text, page, grass and gravel are natural periodic-ish
# textures that must not score like a grid.
PHOTOS = ("astronaut", "camera", "coffee", "chelsea", "brick", "text", "page", "grass", "gravel", "moon")


def _photo(name: str, max_side: int = 512) -> torch.Tensor:
    import skimage.data
    import torch.nn.functional as F

    arr = np.asarray(getattr(skimage.data, name)(), dtype=np.float32) / 255.0
    if arr.ndim == 2:
        arr = np.repeat(arr[..., None], 3, -1)
    x = torch.from_numpy(arr[..., :3].copy()).permute(2, 0, 1)[None]
    h, w = x.shape[-2:]
    s = max_side / max(h, w)
    if s < 1:
        x = F.interpolate(x, size=(round(h * s), round(w * s)), mode="bilinear", antialias=True)
    return x.clamp(0, 1)


@pytest.fixture(scope="module")
def photos():
    return {n: _photo(n) for n in PHOTOS}


@pytest.mark.parametrize("kind", ["tile", "sinusoid", "lines"])
def test_one_percent_period16_grid_scores_above_clean_photo(photos, kind):
    for options in ({}, COHERENT):
        pen = GridPenalty(**options)
        rng = np.random.default_rng(1)
        for name, x in photos.items():
            clean = pen(x)[0].item()
            dirty = pen(add_grid(x[0], 16, 0.01, kind, rng)[None])[0].item()
            assert dirty > clean, f"{options} {name}/{kind}: grid {dirty:.4f} <= clean {clean:.4f}"


def test_natural_textures_score_low_compared_with_a_visible_grid(photos):
    for options in ({}, COHERENT):
        pen = GridPenalty(**options)
        rng = np.random.default_rng(2)
        textures = max(pen(photos[n])[0].item()
                       for n in ("brick", "text", "page", "grass", "gravel"))
        grid = pen(add_grid(photos["astronaut"][0], 16, 0.02, "tile", rng)[None])[0].item()
        assert grid > 2 * textures, options


def test_gradients_finite_and_nonzero_when_active(photos):
    x = add_grid(photos["astronaut"][0], 16, 0.02, "tile", np.random.default_rng(0))[None]
    for options in ({"mode": "global"}, {"mode": "local"}, {"mode": "combined"}, COHERENT,
                    {**COHERENT, "mode": "combined"}):
        xi = x.clone().requires_grad_(True)
        p = grid_penalty(xi, **options)
        assert p.item() > 0
        p.sum().backward()
        assert torch.isfinite(xi.grad).all()
        assert xi.grad.abs().sum() > 0
    # inactive (hinge above the score): zero but finite gradient
    xi = x.clone().requires_grad_(True)
    grid_penalty(xi, tau=100.0).sum().backward()
    assert torch.isfinite(xi.grad).all() and xi.grad.abs().sum() == 0


def test_reward_follows_contract_and_registry(photos):
    x = torch.cat([photos["camera"], photos["camera"]])
    x[1:] = add_grid(x[1], 16, 0.02, "tile", np.random.default_rng(0))
    fn = build_reward("grid", period=16, max_harm=3, sigma_bins=0.5, tau=0.0, eval_resize=512,
                      mode="combined")
    scores, metrics = fn(x, None, ["", ""])
    assert scores.shape == (2,)
    assert scores[1] < scores[0] <= 0           # reward = -penalty
    assert {"grid_penalty", "grid_global", "grid_local"} <= set(metrics)
    assert metrics["grid_penalty"] == pytest.approx(-scores.mean().item(), rel=1e-6)


def test_invariant_to_global_brightness_shift(photos):
    x = photos["coffee"] * 0.7 + 0.1          # stays inside [0,1] after +-0.1
    x = add_grid(x[0], 16, 0.01, "sinusoid", np.random.default_rng(0))[None]
    base = grid_penalty_terms(x)
    for shift in (-0.1, 0.1):
        shifted = grid_penalty_terms(x + shift)
        for k in base:
            assert shifted[k].item() == pytest.approx(base[k].item(), rel=1e-4, abs=1e-6)


@pytest.mark.parametrize("shape", [(1, 3, 201, 333), (2, 3, 97, 64), (1, 3, 40, 50), (1, 3, 333, 201)])
def test_non_square_and_odd_sizes(shape):
    torch.manual_seed(0)
    for options in ({}, COHERENT):
        x = torch.rand(shape, requires_grad=True)
        p, terms = GridPenalty(**options)(x)
        assert p.shape == (shape[0],) and torch.isfinite(p).all()
        p.sum().backward()
        assert torch.isfinite(x.grad).all()


def test_downscaled_evaluation_still_detects_a_period16_grid(photos):
    import torch.nn.functional as F

    x = F.interpolate(photos["chelsea"], scale_factor=3.0, mode="bicubic").clamp(0, 1)  # ~768 px
    dirty = add_grid(x[0], 16, 0.01, "tile", np.random.default_rng(3))[None]
    for options in ({}, COHERENT):
        pen = GridPenalty(**options)
        assert pen(dirty)[0].item() > 2 * pen(x)[0].item(), options


def _sky_band_grid():
    """Gravel (textured everywhere) with a flat 'sky' band on top; a 1 % period-16 tile grid
    on the band only, and the same grid over the whole image."""
    x = _photo("gravel", 256)
    sky = torch.linspace(0.55, 0.75, 96).view(1, 1, 96, 1).expand(1, 3, 96, 256)
    x[..., :96, :] = sky
    grid = add_grid(torch.zeros(3, 256, 256) + 0.5, 16, 0.01, "tile", np.random.default_rng(4)) - 0.5
    band = x.clone()
    band[..., :96, :] = (band[..., :96, :] + grid[:, :96]).clamp(0, 1)
    return x, band, (x + grid).clamp(0, 1)


def test_local_term_catches_grid_confined_to_a_flat_region():
    x, dirty, _ = _sky_band_grid()
    t_clean, t_dirty = grid_penalty_terms(x), grid_penalty_terms(dirty)
    gain_local = t_dirty["local"].item() - t_clean["local"].item()
    gain_global = t_dirty["global"].item() - t_clean["global"].item()
    assert gain_local > 0.05
    assert gain_local > 1.5 * gain_global


def test_coherent_term_sees_a_grid_on_a_flat_region_as_well_as_everywhere():
    """The coherent statistic weights each window by the inverse of its own noise, so the flat
    band's windows carry the grid: confined to 37 % of the image it keeps most of the score it
    has everywhere, where the ring statistic (whole-image spectrum) loses most of it."""
    x, band, everywhere = _sky_band_grid()
    coh = [grid_penalty_terms(im, **COHERENT)["global"].item() for im in (x, band, everywhere)]
    ring = [grid_penalty_terms(im)["global"].item() for im in (x, band, everywhere)]
    assert coh[1] - coh[0] > 0.5 * (coh[2] - coh[0]) > 0
    assert ring[1] - ring[0] < 0.5 * (ring[2] - ring[0])


def test_coherent_statistic_is_near_exp1_without_a_grid_and_large_with_one():
    from rewards.grid import _coherent_contrast

    torch.manual_seed(0)
    pen = GridPenalty(**COHERENT)
    noise = 0.5 + 0.05 * torch.randn(8, 256, 256, dtype=torch.float64)
    tab = pen.coherent_tables(256, 256, 1.0, "", "cpu", torch.float64)
    t = _coherent_contrast(noise, tab).exp()                  # T (+ the 1e-3 log floor)
    # Exp(1) would have mean 1; a window's own tooth power is part of its weight, which
    # lowers T a little where the noise happens to be high (mean ~0.77)
    assert 0.65 < t.mean().item() < 1.0
    assert (t > 4).float().mean().item() < 2 * np.exp(-4)    # no heavier tail than Exp(1)
    y, x = torch.meshgrid(torch.arange(256.0), torch.arange(256.0), indexing="ij")
    grid = 0.02 * torch.cos(2 * np.pi * x / 16) * torch.cos(2 * np.pi * y / 16)
    lit = _coherent_contrast((noise + grid.double())[:1], tab)[0].exp()
    assert lit.max().item() > 20 * t.max().item()


def test_gradient_removes_the_grid(photos):
    """Descending the coherent penalty removes the grid: its gradient is more aligned with the
    grid than the ring statistic's (its weights are a noise estimate without gradient, so it
    does not point at hiding the grid under noise), and a few steps lower the penalty and
    bring the image back toward the clean photo."""
    clean = photos["astronaut"]
    grid = add_grid(torch.full((3, 512, 512), 0.5), 32, 0.01, "tile",
                    np.random.default_rng(7)) - 0.5

    def cosine(**options):
        x = (clean + grid).clamp(0, 1).requires_grad_(True)
        grid_penalty(x, **options).sum().backward()
        return torch.nn.functional.cosine_similarity(x.grad.flatten(), grid.flatten(), dim=0)

    assert cosine(**COHERENT) > max(0.08, 2 * cosine())
    x = (clean + grid).clamp(0, 1)
    p0, d0 = grid_penalty(x, **COHERENT).item(), (x - clean).norm().item()
    for _ in range(3):
        xi = x.clone().requires_grad_(True)
        p = grid_penalty(xi, **COHERENT)
        p.sum().backward()
        x = (x - 0.5 * p.item() / xi.grad.norm() ** 2 * xi.grad).detach()
    assert grid_penalty(x, **COHERENT).item() < 0.5 * p0
    assert (x - clean).norm().item() < d0


def test_periods_that_are_not_whole_pixels_fall_back_to_the_ring_statistic(photos):
    pen = GridPenalty(period=12.5, extra_periods=(), **COHERENT)
    assert pen.coherent_tables(512, 512, 1.0, "", "cpu", torch.float32) is None
    x = add_grid(photos["camera"][0], 16, 0.02, "tile", np.random.default_rng(0))[None]
    ring = GridPenalty(period=12.5, extra_periods=(), **{**COHERENT, "statistic": "ring"})
    assert pen(x)[0].item() == pytest.approx(ring(x)[0].item(), rel=1e-6)


def test_masks_are_cached_not_rebuilt():
    x = torch.rand(2, 3, 128, 160)
    pen = GridPenalty()
    pen(x)
    n = len(pen._cache)
    tab = pen.tables(128, 160, 1.0, "global", x.device, x.dtype)
    pen(x)
    assert len(pen._cache) == n
    assert pen.tables(128, 160, 1.0, "global", x.device, x.dtype) is tab
    coherent = GridPenalty(**COHERENT)
    coherent(x)
    n = len(coherent._cache)
    tab = coherent.coherent_tables(128, 160, 1.0, "", x.device, x.dtype)
    assert tab is not None
    coherent(x)
    assert len(coherent._cache) == n
    assert coherent.coherent_tables(128, 160, 1.0, "", x.device, x.dtype) is tab
    fn = make_grid_reward()
    fn(x, None, None)
    before = dict(fn.penalty._cache)
    fn(x, None, None)
    assert all(fn.penalty._cache[k] is v for k, v in before.items())


def test_flat_image_gives_zero_and_bad_options_raise():
    assert grid_penalty(torch.full((1, 3, 64, 64), 0.3)).item() == 0.0
    assert grid_penalty(torch.full((1, 3, 64, 64), 0.3), **COHERENT).item() == 0.0
    with pytest.raises(ValueError, match="mode"):
        make_grid_reward(mode="fourier")
    with pytest.raises(ValueError, match="period"):
        GridConfig(period=1)
    with pytest.raises(ValueError, match="max_harm"):
        GridConfig(max_harm=-1)
    with pytest.raises(ValueError, match="statistic"):
        GridConfig(statistic="median")
    with pytest.raises(ValueError, match="chroma_margin"):
        GridConfig(chroma_margin=-1.0)
    with pytest.raises(ValueError):
        build_reward("grid", nonsense=1)


def _moisan_periodic_power(u: torch.Tensor) -> torch.Tensor:
    """Reference: |FFT|^2 of the periodic component (Moisan 2011), by the textbook recipe."""
    h, w = u.shape
    v = torch.zeros_like(u)
    v[0] += u[-1] - u[0]
    v[-1] -= u[-1] - u[0]
    v[:, 0] += u[:, -1] - u[:, 0]
    v[:, -1] -= u[:, -1] - u[:, 0]
    q = torch.arange(h, dtype=u.dtype)[:, None]
    r = torch.arange(w, dtype=u.dtype)[None, :]
    den = 2 * torch.cos(2 * np.pi * q / h) + 2 * torch.cos(2 * np.pi * r / w) - 4
    den[0, 0] = 1.0
    s_hat = torch.fft.fft2(v) / den
    s_hat[0, 0] = 0
    return (torch.fft.fft2(u - u.mean()) - s_hat).abs() ** 2


def test_spectrum_is_the_periodic_component_and_a_grid_lights_one_bin():
    torch.manual_seed(0)
    pen = GridPenalty()
    h, w = 96, 128
    u = torch.rand(h, w, dtype=torch.float64)
    tab = pen.tables(h, w, 1.0, "global", "cpu", torch.float64)
    contrast = pen._contrast(u[None], tab)[0]
    ref = _moisan_periodic_power(u)[:, : w // 2 + 1].reshape(-1)[tab.bins.index]  # (T, K)
    ref_c = torch.log(((ref * tab.peak_w).sum(-1) + tab.eps) / ((ref * tab.ring_w).sum(-1) + tab.eps))
    assert torch.allclose(contrast, ref_c, atol=1e-8)
    # A smooth ramp (large border jump, no window) plus a 1 % period-16 sinusoid: the grid's
    # teeth stand far above their 8 neighbours, the ramp alone leaves no cross on them.
    y, x = torch.meshgrid(torch.arange(h, dtype=torch.float64), torch.arange(w, dtype=torch.float64),
                          indexing="ij")
    ramp = 0.3 + 0.4 * y / h + 0.2 * x / w
    grid = 0.01 * torch.cos(2 * np.pi * x / 16) * torch.cos(2 * np.pi * y / 16)
    lit = pen._contrast((ramp + grid)[None], tab)[0].max()
    assert lit > np.log(1e3)
    assert pen.terms((ramp + grid).expand(1, 3, h, w))["global"] > 5 * pen.terms(ramp.expand(1, 3, h, w))["global"]


def test_a_grid_lighting_few_teeth_is_not_diluted_by_the_other_periods_combs(photos):
    x = add_grid(photos["camera"][0], 32, 0.01, "sinusoid", np.random.default_rng(5))[None]
    for options in ({}, COHERENT):
        union = grid_penalty_terms(x, **options)["global"].item()       # combs of 16, 8 and 32
        alone = grid_penalty_terms(x, period=32, extra_periods=(), **options)["global"].item()
        assert union > 0.9 * alone > 0, options


def test_texture_added_sees_blocky_noise_on_flat_areas_not_edits_or_kept_detail(photos):
    from rewards.grid import texture_added

    torch.manual_seed(0)
    flat = torch.full((1, 3, 64, 64), 0.15)
    # a different offset on every 4x4 token: aperiodic, so no comb tooth lights up
    blocks = 0.03 * torch.randn(1, 3, 16, 16).repeat_interleave(4, -1).repeat_interleave(4, -2)
    blocky = (flat + blocks).clamp(0, 1)
    assert texture_added(blocky, flat).item() > 1e-4
    assert texture_added(flat + 0.3, flat).item() == 0.0          # a brightness edit adds none
    x = photos["astronaut"][..., :128, :128]
    contrast = ((x - 0.5) * 1.3 + 0.5).clamp(0, 1)
    assert texture_added(contrast, x).item() < 1e-5               # detail kept, sharpened < gain
    assert texture_added(x, x).item() == 0.0
    noisy = (x + 0.03 * torch.randn_like(x)).clamp(0, 1)
    assert texture_added(noisy, x).item() > texture_added(x, x).item()
    xi = blocky.clone().requires_grad_(True)
    texture_added(xi, flat).sum().backward()
    assert torch.isfinite(xi.grad).all() and xi.grad.abs().sum() > 0
    with pytest.raises(ValueError, match="differ in shape"):
        texture_added(blocky, x)
