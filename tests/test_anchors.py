"""Brightness band anchor and crispness floor (rewards.anchors)."""
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from rewards import build_reward
from rewards.anchors import (DEFAULT_CRISPNESS_FLOOR, brightness_penalty, crispness_penalty,
                             make_brightness_anchor, make_crispness_floor, tenengrad)


def _camera(max_side=256):
    import skimage.data

    arr = np.asarray(skimage.data.camera(), dtype=np.float32) / 255.0
    x = torch.from_numpy(arr)[None, None].expand(1, 3, *arr.shape).clone()
    return F.interpolate(x, size=(max_side, max_side), mode="bilinear", antialias=True).clamp(0, 1)


def _blur(x, sigma):
    k = torch.arange(-3 * sigma, 3 * sigma + 1, dtype=x.dtype)
    k = torch.exp(-k ** 2 / (2 * sigma ** 2))
    k = (k / k.sum())
    c = x.shape[1]
    r = len(k) // 2
    x = F.conv2d(F.pad(x, (r, r, 0, 0), mode="replicate"), k.view(1, 1, 1, -1).expand(c, 1, 1, -1), groups=c)
    return F.conv2d(F.pad(x, (0, 0, r, r), mode="replicate"), k.view(1, 1, -1, 1).expand(c, 1, -1, 1), groups=c)


def test_brightness_exactly_zero_inside_band_and_positive_outside():
    fn = make_brightness_anchor(target=0.45, band=0.08)
    for level in (0.371, 0.40, 0.45, 0.50, 0.529):
        x = torch.full((2, 3, 17, 23), level)
        scores, metrics = fn(x, None, None)
        assert torch.equal(scores, torch.zeros(2)), level
        assert metrics["brightness_penalty"] == 0.0
    for level, excess in ((0.2, 0.17), (0.8, 0.27)):
        x = torch.full((1, 3, 8, 8), level)
        assert brightness_penalty(x).item() == pytest.approx(excess ** 2, rel=1e-4)
        assert brightness_penalty(x, hinge="linear").item() == pytest.approx(excess, rel=1e-4)


def test_brightness_gradient_points_back_into_the_band():
    x = torch.full((1, 3, 16, 16), 0.9, requires_grad=True)
    scores, _ = make_brightness_anchor()(x, None, None)
    scores.sum().backward()
    assert torch.isfinite(x.grad).all()
    assert (x.grad < 0).all()         # raising the reward means darkening
    y = torch.full((1, 3, 16, 16), 0.45, requires_grad=True)
    make_brightness_anchor()(y, None, None)[0].sum().backward()
    assert y.grad.abs().sum() == 0    # inside the band: no pull at all


def test_brightness_uses_rec709_luma():
    x = torch.zeros(1, 3, 4, 4)
    x[:, 1] = 1.0                     # pure green: luma 0.7152
    fn = make_brightness_anchor(target=0.7152, band=0.0)
    assert fn(x, None, None)[0].item() == pytest.approx(0.0, abs=1e-10)


def test_crispness_floor_separates_sharp_from_blurred():
    x = _camera()
    assert crispness_penalty(x).item() == 0.0
    blurred = _blur(x, 8)
    assert tenengrad(blurred).item() < DEFAULT_CRISPNESS_FLOOR
    assert crispness_penalty(blurred).item() > 0.0
    flat = torch.full((1, 3, 64, 64), 0.5)
    assert crispness_penalty(flat).item() == pytest.approx(1.0)


def test_crispness_gradient_and_brightness_shift_invariance():
    x = (_blur(_camera(128), 3) * 0.6 + 0.2).requires_grad_(True)
    fn = make_crispness_floor(floor=DEFAULT_CRISPNESS_FLOOR, eval_resize=512)
    scores, metrics = fn(x, None, None)
    assert scores.item() < 0 and metrics["crispness_penalty"] > 0
    scores.sum().backward()
    assert torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0
    with torch.no_grad():
        shifted = crispness_penalty(x + 0.1).item()
    assert shifted == pytest.approx(-scores.item(), rel=1e-4)


def test_crispness_is_resolution_normalised_and_takes_odd_sizes():
    x = _camera(512)
    big = F.interpolate(x, size=(1024, 1024), mode="bicubic").clamp(0, 1)
    t_big, t_x = tenengrad(big).item(), tenengrad(x).item()
    assert t_big == pytest.approx(t_x, rel=0.25)         # both measured at a 512 long side
    assert tenengrad(big, eval_resize=None).item() < 0.5 * t_x   # native: 4x fewer grad per px
    odd = torch.rand(2, 3, 37, 91)
    assert tenengrad(odd).shape == (2,)


def test_anchor_options_validated_and_registered():
    with pytest.raises(ValueError):
        make_brightness_anchor(band=-0.1)
    with pytest.raises(ValueError):
        make_brightness_anchor(hinge="cubic")
    with pytest.raises(ValueError):
        make_crispness_floor(floor=0.0)
    assert build_reward("brightness", target=0.5, band=0.1)(torch.full((1, 3, 8, 8), 0.5), None, None)[0].item() == 0.0
    assert build_reward("crispness", floor=1e-3, eval_resize=64)(_camera(64), None, None)[0].shape == (1,)
