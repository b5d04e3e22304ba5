"""The demo's reward terms and the README's demo figures (from the committed run summary)."""
import json
from pathlib import Path

import pytest
import torch

from alignprop.demo import (SSIM_FLOOR, colour_cast, colourfulness, demo_checks,
                            demo_reward, demo_reward_flags, gamut_gain, held_out_figures,
                            neutral_tint, readme_line, saturation_error, structure_error)
from alignprop.reward_flags import build_reward_from_flags
from rewards.grid import luminance

ROOT = Path(__file__).resolve().parents[1]


def _photo():
    from alignprop.pretrain_tiny import held_out_photos

    return held_out_photos(32)


def test_colourfulness_ranks_vivid_above_grey():
    x = _photo()
    grey = x.mean(1, keepdim=True).expand_as(x)
    vivid = (x + 0.5 * (x - x.mean(1, keepdim=True))).clamp(0, 1)
    assert (colourfulness(vivid) > colourfulness(x)).all()
    assert (colourfulness(x) > colourfulness(grey) + 0.05).all()


def test_structure_ignores_tone_but_sees_content():
    x = _photo()
    brighter = (x * 0.8 + 0.15).clamp(0, 1)
    shuffled = x.flip(-1).flip(-2)
    assert structure_error(brighter, x).max() < 0.05
    assert (structure_error(shuffled, x) > 0.5).all()


def test_saturation_target_keeps_grey_grey():
    # Half orange, half black: saturating scales colours away from grey, so the black half
    # must stay black. (Scaling around the image's mean colour pushed it toward teal.)
    x = torch.zeros(1, 3, 8, 16)
    x[:, :, :, :8] = torch.tensor([0.7, 0.45, 0.2])[:, None, None]
    x[:, :, :, 8:] = 0.05
    gain = 1.5
    grey_c = x.mean(1, keepdim=True)
    saturated = grey_c + gain * (x - grey_c)  # in [0, 1] here; the black half is unchanged
    teal = saturated.clone()
    teal[:, :, :, 8:] = torch.tensor([0.0, 0.12, 0.14])[:, None, None]
    assert saturated.min() >= 0 and saturated.max() <= 1
    assert saturation_error(saturated, x, gain) < 1e-10
    assert saturation_error(teal, x, gain) > 1e-3
    assert neutral_tint(saturated, x) < 1e-6 and neutral_tint(teal, x) > 0.1
    assert colour_cast(saturated, x, gain) < 1e-10 and colour_cast(teal, x, gain) > 1e-3


def test_saturation_target_stays_inside_the_rgb_cube():
    # a muted colour gets the whole gain; a saturated red (G, B near 0) only what keeps G and B
    # >= 0: a target the clamped decoder cannot reach has no gradient on those pixels
    x = torch.tensor([[0.5, 0.4, 0.3], [0.9, 0.05, 0.02], [0.3, 0.3, 0.3]]).T.reshape(1, 3, 1, 3)
    gain = gamut_gain(x, 2.0)[0]
    assert gain[0] == pytest.approx(2.0) and gain[2] == pytest.approx(2.0)
    assert 1.0 <= gain[1] < 1.1
    grey = luminance(x)[:, None]
    target = grey + gain.reshape(1, 1, 1, 3) * (x - grey)
    assert target.min() >= -1e-6 and target.max() <= 1 + 1e-6


def test_readme_demo_figures_are_what_the_demo_printed():
    # media/demo_summary.json is written by `python -m alignprop.demo --media_dir media`
    # (the run that made media/demo_grid.png); the README must quote it exactly.
    summary = json.loads((ROOT / "media" / "demo_summary.json").read_text())
    readme = (ROOT / "README.md").read_text()
    assert readme_line(summary) in readme, readme_line(summary)
    assert demo_checks(summary) == summary["checks"]
    # the checks that decide `make demo`'s exit status (the first set's) pass
    assert all(summary["checks"].values())
    assert summary["ssim_floor"] == SSIM_FLOOR
    sets = summary["held_out_sets"]
    assert set(sets) == {"skimage", "second"} and len(sets["second"]["photos"]) == 12
    for entry in sets.values():
        assert demo_checks(entry) == entry["checks"]
    assert sets["skimage"]["checks"] == summary["checks"]
    assert any("psnr" in k and "base" in k for k in summary)
    assert f"{summary['train_seconds']:.0f} s" in readme


def test_held_out_figures_are_plain_numbers_the_summary_can_store():
    """The demo's held-out figures come from the reward's metrics, which stay tensors on the
    device during training (rewards.base.metrics_to_floats reads them): the summary must get
    floats, or writing demo_summary.json fails after the whole run (as it once did)."""
    torch.manual_seed(0)
    inputs = torch.rand(2, 3, 32, 32)
    before, after = (inputs * 0.9).clamp(0, 1), (inputs * 1.1).clamp(0, 1)
    figures = held_out_figures(demo_reward(build_reward_from_flags(demo_reward_flags())),
                               inputs, before, after)
    lists = {"grid_excess_per_draw"}
    assert type(figures.pop("noise_draws")) is int
    assert all(type(v) is float for k, v in figures.items() if k not in lists), {
        k: type(v) for k, v in figures.items() if type(v) is not float and k not in lists}
    assert all(type(v) is float for k in lists for v in figures[k])
    json.dumps(figures)


def test_held_out_figures_over_several_draws_are_means_over_the_draws():
    """The demo's checks read every figure as a mean over EVAL_DRAWS noise draws of each
    photo (stacked draw after draw): one draw's grid verdict was partly noise."""
    torch.manual_seed(0)
    reward = demo_reward(build_reward_from_flags(demo_reward_flags()))
    inputs = torch.rand(2, 3, 32, 32)
    before = torch.cat([(inputs * 0.9).clamp(0, 1), (inputs * 0.8 + 0.1).clamp(0, 1)])
    after = (before + 0.05 * torch.rand_like(before)).clamp(0, 1)
    pooled = held_out_figures(reward, inputs, before, after)
    one = [held_out_figures(reward, inputs, b, a)
           for b, a in zip(before.chunk(2), after.chunk(2))]
    assert pooled["noise_draws"] == 2 and one[0]["noise_draws"] == 1
    for key in ("grid_penalty_after", "grid_penalty_matched_edit", "texture_after",
                "mean_luma_after", "held_out_reward_after"):
        assert pooled[key] == pytest.approx((one[0][key] + one[1][key]) / 2, rel=1e-4), key
    assert pooled["grid_excess_per_draw"] == pytest.approx(
        [o["grid_excess_per_draw"][0] for o in one], rel=1e-4)
    assert one[1]["grid_excess_per_draw"][0] != pytest.approx(
        one[0]["grid_excess_per_draw"][0], rel=1e-3)  # the draws differ
    with pytest.raises(ValueError, match="whole number of draws"):
        held_out_figures(reward, inputs, before[:3], after[:3])


def test_coherent_grid_figure_is_reported_not_checked():
    """The demo reports the coherent statistic of base / LoRA / matched edit beside the grid
    check (the README quotes both sets' figures), and its exit status does not read it."""
    import copy

    import torch.nn.functional as F

    from alignprop.demo import UPSAMPLE, build_grid_figure, coherent_grid_flags
    from rewards.grid import COHERENT, make_grid_reward

    summary = json.loads((ROOT / "media" / "demo_summary.json").read_text())
    readme = " ".join((ROOT / "README.md").read_text().split())
    stated = {"skimage": "{b} -> {a} against the matched edit's {m} on the first set",
              "second": "{b} -> {a} against {m} on the second"}
    for name, entry in summary["held_out_sets"].items():
        b, a, m = (f"{entry[f'grid_coherent_{k}']:.3f}" for k in ("before", "after", "matched_edit"))
        assert stated[name].format(b=b, a=a, m=m) in readme, name
        bad = copy.deepcopy(entry)
        bad["grid_coherent_after"] = bad["grid_coherent_matched_edit"] + 1.0
        assert demo_checks(bad) == entry["checks"]
    # the figure is the demo's grid term (period 4, native size, 2x upsampled) read with
    # rewards.grid.COHERENT
    torch.manual_seed(0)
    x = (0.3 + 0.2 * torch.rand(2, 3, 32, 32))
    x[:, :, ::4, ::4] += 0.05
    up = F.interpolate(x, scale_factor=UPSAMPLE, mode="nearest")
    want = make_grid_reward(period=4, eval_resize=0, **COHERENT).penalty(up)[0]
    got = build_grid_figure(coherent_grid_flags())(x)
    assert float(want.min()) > 0.1 and torch.allclose(got, want)
