"""Shift views of the VLM reward (``shift_views`` / ``--internvl_shift_views``,
rewards/vlm_shift.py): the mean over sub-patch translations, for every family and task."""
import json

import pytest
import torch

import internvl_scorer
from alignprop import demo_vlm
from alignprop import tiny_vlm_data as data
from alignprop.config import parse_config
from alignprop.pretrain_tiny import held_out_photos
from alignprop.reward_flags import RewardFlags, build_reward_from_flags
from benchmarks import bench_demo_seeds
from benchmarks.vlm_gradient_shift import direction_cosine, within_patch_share
from common.images import load_image, save_image
from rewards.base import shared_call
from rewards.vlm import make_vlm_reward
from rewards.vlm_shift import check_views, shift_offsets, translate


def photo_reward(attr="brightness", views=1):
    return make_vlm_reward("single", model_id="tiny-vlm-photo", dtype="float32", device="cpu",
                           prompt=data.QUESTIONS[attr], calibration="pmi_null",
                           shift_views=views)


@pytest.fixture(scope="module")
def photos():
    return held_out_photos(data.SIZE)


# --------------------------------------------------------------------------- the views
def test_translate_moves_the_content_and_mirrors_the_strip_that_enters():
    x = torch.arange(2 * 3 * 6 * 7, dtype=torch.float32).reshape(2, 3, 6, 7)
    y = translate(x, 2, 3)
    assert y.shape == x.shape
    assert torch.equal(y[..., 2:, 3:], x[..., :-2, :-3])          # moved down 2, right 3
    assert torch.equal(y[..., 0, 3:], x[..., 2, :-3])              # row 2 mirrored into row 0
    assert torch.equal(y[..., 2:, 0], x[..., :-2, 3])              # column 3 into column 0
    assert translate(x, 0, 0) is x
    with pytest.raises(ValueError, match="smaller than the image"):
        translate(x, 6, 0)


def test_offsets_cover_the_patch_phases_of_each_models_own_patch():
    assert shift_offsets(4, 8) == [(0, 0), (0, 4), (4, 0), (4, 4)]
    assert [dx for _, dx in shift_offsets(16, 8)[:4]] == [0, 2, 4, 6]
    for model_id, half in (("tiny-vlm-photo", 4), ("tiny-qwen2.5-vl", 7), ("tiny-qwen3-vl", 8)):
        r = make_vlm_reward("single", model_id=model_id, dtype="float32", device="cpu",
                            shift_views=4)
        assert r.shift_offsets == [(0, 0), (0, half), (half, 0), (half, half)], model_id
        assert r.describe()["shift_views"] == 4


@pytest.mark.parametrize("model_id, task", [
    ("tiny-vlm-photo", "single"), ("tiny-vlm-photo", "content-similarity"),
    ("tiny-vlm-photo", "pair"), ("tiny-qwen2.5-vl", "pair"), ("tiny-qwen3-vl", "single"),
    ("tiny-qwen3-vl", "content-similarity")])
def test_score_is_the_mean_of_the_shifted_images_scored_one_by_one(model_id, task):
    torch.manual_seed(0)
    images, inputs = torch.rand(2, 3, 64, 64), torch.rand(2, 3, 64, 64)
    one = make_vlm_reward(task, model_id=model_id, dtype="float32", device="cpu",
                          calibration="pmi_null")
    views = make_vlm_reward(task, model_id=model_id, dtype="float32", device="cpu",
                            calibration="pmi_null", shift_views=4)
    def score(reward, a, b):
        out = reward.score_slots(reward.slots_for(a, b))
        return out.scores, out.logprobs[-1]

    with torch.no_grad():
        got, got_logp = score(views, images, inputs)
        # the images of one sample are shifted alike
        each = [score(one, translate(images, dy, dx), translate(inputs, dy, dx))
                for dy, dx in views.shift_offsets]
        plain_logp = score(one, images, inputs)[1]
    assert got.shape == (2,)
    torch.testing.assert_close(got, torch.stack([s for s, _ in each]).mean(0), rtol=0, atol=1e-6)
    torch.testing.assert_close(got_logp, torch.stack([lp for _, lp in each]).mean(0), rtol=0,
                               atol=1e-5)
    assert not torch.allclose(got_logp, plain_logp, atol=1e-5)  # the views change the answer
    if task == "pair":                                      # debiasing kept: s(A,B) + s(B,A) = 1
        with torch.no_grad():
            torch.testing.assert_close(got + views(inputs, images)[0], torch.ones(2))


def test_a_constant_reference_is_not_shifted_and_terms_share_the_shifted_vision_pass():
    torch.manual_seed(1)
    images, ref = torch.rand(2, 3, 64, 64), torch.rand(3, 64, 64)
    kw = dict(model_id="tiny-vlm-photo", dtype="float32", device="cpu")
    one = make_vlm_reward("similarity", reference=ref, **kw)
    views = make_vlm_reward("similarity", reference=ref, shift_views=4, **kw)
    with torch.no_grad():
        got = views(images)[0]
        want = torch.stack([one(translate(images, dy, dx))[0]
                            for dy, dx in views.shift_offsets]).mean(0)
    torch.testing.assert_close(got, want, rtol=0, atol=1e-6)
    # two questions about the same image in one shared call: one vision pass of the views
    a, b = photo_reward("brightness", 4), photo_reward("warmth", 4)
    before = a.vision_passes + b.vision_passes
    with torch.no_grad(), shared_call():
        a(images), b(images)
    assert a.vision_passes + b.vision_passes - before == 1


def test_gradient_is_less_locked_to_the_patches_and_the_ranking_holds(photos):
    """tiny-vlm-photo's brightness answer: with 4 views less of the pixel gradient lies within
    the 8-px patches and more of it brightens the whole photo (benchmarks/vlm_gradient_shift.py
    prints the figures); the answer still ranks a brighter photo above a darker one."""
    luma = (0.2126, 0.7152, 0.0722)
    measured = {}
    for views in (1, 4):
        x = photos.clone().requires_grad_(True)
        g, = torch.autograd.grad(photo_reward("brightness", views)(x)[0].sum(), x)
        measured[views] = (within_patch_share(g, 8), direction_cosine(g, luma))
    (share1, cos1), (share4, cos4) = measured[1], measured[4]
    assert (share4 < share1).all(), (share1, share4)
    assert share4.mean() < share1.mean() - 0.1, (share1, share4)
    assert (cos4 > cos1).all(), (cos1, cos4)
    # brighter vs darker by 0.15 on every channel: pmi_null gaps 0.09-0.77 with 1 view, the
    # same with 4 (0.09-0.76); the warmth question barely moves
    brighter, darker = (photos + 0.15).clamp(0, 1), (photos - 0.15).clamp(0, 1)
    with torch.no_grad():
        gap = photo_reward("brightness", 4)(brighter)[0] - photo_reward("brightness", 4)(darker)[0]
        other = photo_reward("warmth", 4)(brighter)[0] - photo_reward("warmth", 4)(darker)[0]
    assert (gap > 0.05).all(), gap
    assert other.abs().mean() < gap.mean() / 10, (other, gap)


# --------------------------------------------------------------------------- flags, errors
def test_the_flag_reaches_every_vlm_term_and_is_off_by_default():
    flags = RewardFlags(aesthetic_model_type="internvl", internvl_model_id="tiny",
                        aesthetic_prompt=data.QUESTIONS["brightness"], internvl_shift_views=4,
                        similarity_backend="qwen-content", qwen_model_id="tiny-qwen2.5-vl",
                        image_reward_scale=1.0)
    composite = build_reward_from_flags(flags)
    vlms = [t.fn for t in composite.terms if hasattr(t.fn, "shift_views")]
    assert len(vlms) == 2 and {r.shift_views for r in vlms} == {4}
    assert {r.family.name for r in vlms} == {"InternVL3", "Qwen2.5-VL"}
    assert RewardFlags().internvl_shift_views == 1


@pytest.mark.parametrize("bad", [0, 2, 3, -4, 8])
def test_bad_view_counts_are_one_line_errors(bad):
    with pytest.raises(ValueError, match="--internvl_shift_views must be 1 .* or a square"):
        RewardFlags(internvl_shift_views=bad)
    with pytest.raises(ValueError, match="shift_views must be 1"):
        make_vlm_reward("single", model_id="tiny", dtype="float32", device="cpu",
                        shift_views=bad)
    with pytest.raises(ValueError, match="must be 1"):
        check_views(bad)


def test_more_views_than_the_patch_has_phases_is_refused():
    with pytest.raises(ValueError, match="more than the model's 8-px vision patch"):
        make_vlm_reward("single", model_id="tiny", dtype="float32", device="cpu",
                        shift_views=81)


def test_trainer_and_demo_refuse_a_bad_count_in_one_line(capsys):
    with pytest.raises(ValueError, match="--internvl_shift_views must be 1"):
        parse_config(["--data_dir", "x", "--internvl_shift_views", "3"])
    with pytest.raises(SystemExit) as info:
        demo_vlm.main(["--shift_views", "3", "--output_dir", "never_written"])
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert "argument --shift_views: the view count must be 1 (off) or a square" in err


def test_scorer_takes_the_views_and_refuses_them_for_the_original(tmp_path, capsys):
    torch.manual_seed(2)
    image = torch.rand(3, 64, 64)
    save_image(image, tmp_path / "a.png")
    assert internvl_scorer.main([str(tmp_path / "a.png"), "--model_id", "tiny-vlm-photo",
                                 "--prompt", data.QUESTIONS["brightness"], "--shift_views", "4",
                                 "--format", "json"]) == 0
    row = json.loads(capsys.readouterr().out)[0]
    reward = make_vlm_reward("single", model_id="tiny-vlm-photo", dtype="float32", device="cpu",
                             prompt=data.QUESTIONS["brightness"], shift_views=4)  # scorer: none
    with torch.no_grad():
        want = reward(load_image(tmp_path / "a.png")[None])[0]
    assert abs(row["score"] - float(want)) < 1e-4
    assert internvl_scorer.main([str(tmp_path / "a.png"), "--model_id", "tiny",
                                 "--semantics", "original", "--shift_views", "4"]) == 2
    assert "--shift_views is ours" in capsys.readouterr().err
    with pytest.raises(SystemExit) as info:
        internvl_scorer.main([str(tmp_path / "a.png"), "--shift_views", "2"])
    assert info.value.code == 2
    with pytest.raises(ValueError, match="--internvl_shift_views is ours"):
        RewardFlags(semantics="original", internvl_shift_views=4)


def test_bench_demo_seeds_gives_the_flags_after_dashes_to_every_seeds_demo(tmp_path,
                                                                          monkeypatch):
    calls = []
    monkeypatch.setattr(bench_demo_seeds.subprocess, "call",
                        lambda cmd, **kw: calls.append(cmd) or 0)
    # no demo ran, so no summary: the table says so and the exit status is 1
    assert bench_demo_seeds.main(["--demo", "vlm", "--seeds", "3", "5", "--out_dir",
                                  str(tmp_path), "--", "--shift_views", "4"]) == 1
    assert [c[c.index("-m") + 1] for c in calls] == ["alignprop.demo_vlm"] * 2
    assert all(c[-2:] == ["--shift_views", "4"] for c in calls)
    assert [c[c.index("--seed") + 1] for c in calls] == ["3", "5"]
