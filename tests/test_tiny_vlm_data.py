"""What ``tiny-vlm-photo`` is taught (``alignprop.tiny_vlm_data``): the style task's looks and
plain crops, and the pretraining's per-question weights (no model needed)."""
import random

import pytest
import torch

from alignprop import pretrain_tiny_vlm as pretrain
from alignprop import tiny_vlm_data as data
from alignprop.pretrain_tiny import random_crop


def photo():
    g = torch.Generator().manual_seed(0)
    x = torch.rand(1, 3, 8, 8, generator=g)
    return torch.nn.functional.interpolate(x, size=(96, 128), mode="bilinear")[0]


def test_plain_crop_keeps_the_photos_colours_and_the_augmented_draws_are_unchanged():
    p = photo()
    plain = random_crop([p], random.Random(3), colour=False)
    # a plain crop is a rescaled, possibly flipped window of the photo: its colour channels are
    # in the photo's order, never swapped or tinted (the mean R - B keeps the photo's sign)
    assert plain.shape == (3, 64, 64)
    red_photo = p.clone()
    red_photo[0] = 0.9
    red_photo[2] = 0.1
    for seed in range(20):
        c = random_crop([red_photo], random.Random(seed), colour=False)
        assert (c[0] - c[2]).mean() > 0.7
    # the default (tiny-photo's augmentation) draws exactly what it drew before the switch
    torch.manual_seed(0)
    a = random_crop([p], random.Random(5))
    torch.manual_seed(0)
    b = random_crop([p], random.Random(5), colour=True)
    torch.testing.assert_close(a, b, rtol=0, atol=0)


def test_crop_bank_plain_companion_leaves_the_augmented_bank_as_it_was():
    with_plain = data.crop_bank(12, 0, held_out=True, plain=6)
    without = data.crop_bank(12, 0, held_out=True)
    assert torch.equal(with_plain.crops, without.crops)
    assert without.plain is None and len(with_plain.plain) == 6
    assert with_plain.plain.plain is None


def test_style_pairs_are_two_photos_and_the_label_says_whether_the_look_is_the_same():
    bank = data.crop_bank(40, 0, held_out=True, plain=40)
    g = torch.Generator().manual_seed(1)
    b = data.style_batch(bank, 64, g, "looks")
    a, c = b.slots
    assert a.shape == c.shape == (64, 3, 64, 64)
    assert 0 < b.label.sum() < 64
    assert torch.equal(b.target.argmax(1) == 9, b.label.bool())
    # the toned looks leave no colour of the photo: mono pairs are grey, whatever the photo
    grey = lambda x: (x.max(1).values - x.min(1).values).amax(dim=(1, 2)) < 1e-6
    mono = data.apply_look(a[:8], [data.STYLE_LOOKS.index("mono")] * 8, g)
    assert grey(mono).all()


def test_the_grades_style_task_is_the_first_recipes_and_looks_need_plain_crops():
    bank = data.crop_bank(40, 0, held_out=True)
    g1, g2 = torch.Generator().manual_seed(3), torch.Generator().manual_seed(3)
    a = data.style_batch(bank, 16, g1)
    b = data.make_batch("style", bank, 16, None, g2, style_task="grades")
    assert all(torch.equal(x, y) for x, y in zip(a.slots, b.slots))
    with pytest.raises(ValueError, match="plain"):
        data.style_batch(bank, 4, g1, "looks")
    with pytest.raises(KeyError, match="grades, looks"):
        data.style_batch(bank, 4, g1, "tones")


def test_each_look_is_recognisable_from_its_colours():
    # a coloured crop under each look: the mean opponent colours differ from look to look
    x = data.crop_bank(24, 2, held_out=True, plain=24).plain.get(torch.arange(24))
    g = torch.Generator().manual_seed(0)
    means = []
    for k in range(len(data.STYLE_LOOKS)):
        y = data.apply_look(x, [k] * len(x), g)
        r, gg, bb = y.unbind(1)
        means.append(torch.stack([(r - gg).mean(), (0.5 * (r + gg) - bb).mean()]))
    means = torch.stack(means)
    gaps = torch.cdist(means, means) + torch.eye(len(means))
    assert gaps.min() > 0.02, gaps


def test_question_weights_flag():
    assert pretrain._question_weights("pair:sharpness=3, single:warmth=0.5") == {
        "pair:sharpness": 3.0, "single:warmth": 0.5}
    assert pretrain._question_weights("none") == {}
    for bad in ("pair:sharp=2", "pair:sharpness", "pair:sharpness=-1", "pair:sharpness=x"):
        with pytest.raises(Exception, match="pair:sharp"):
            pretrain._question_weights(bad)
    looks = pretrain._question_weights(pretrain.LOOKS_QUESTION_WEIGHTS)
    assert pretrain._question_weights(pretrain._format_weights(looks)) == looks
    assert pretrain._format_weights({}) == "none"


def test_route_kinds_flag():
    """Two-image kinds only, in the order they are asked; 'all' is every two-image kind and
    is what the recorded command writes for it."""
    assert pretrain._route_kinds("all") == pretrain.TWO_IMAGE_KINDS
    assert pretrain.TWO_IMAGE_KINDS == tuple(k for k in data.KINDS if not k.startswith("single"))
    assert pretrain._route_kinds("style, content") == ("content", "style")
    assert pretrain._format_kinds(pretrain._route_kinds("content")) == "content"
    assert pretrain._format_kinds(pretrain._route_kinds("all")) == "all"
    for bad in ("single:brightness", "contents", ""):
        with pytest.raises(Exception, match="expected 'all' or two-image kinds"):
            pretrain._route_kinds(bad)


def test_bad_question_weights_are_a_one_line_usage_error(capsys):
    with pytest.raises(SystemExit) as info:
        pretrain.main(["--output_dir", "x", "--question_weights", "style=0"])
    assert info.value.code == 2
    assert "--question_weights" in capsys.readouterr().err


@pytest.mark.parametrize("argv, message", [
    (["--steps", "0"], "argument --steps: must be a positive integer, got 0"),
    (["--vision_steps", "-1"], "argument --vision_steps: must be >= 0, got -1"),
    (["--route_heads", "9"], "argument --route_heads: invalid choice: 9"),
    (["--lr", "nan"], "argument --lr: must be a positive number, got nan"),
    (["--two_image_weight", "0"], "argument --two_image_weight: must be a positive number, got 0"),
    (["--vision_lr_scale", "-1"], "argument --vision_lr_scale: must be >= 0, got -1"),
    (["--eval_samples", "4"], "argument --eval_samples: must be >= 8, got 4"),
    (["--route_weight", "-1"], "argument --route_weight: must be >= 0, got -1"),
    (["--read_weight", "inf"], "argument --read_weight: must be >= 0, got inf"),
    (["--route_steps", "-1"], "argument --route_steps: must be >= 0, got -1"),
    (["--steps", "10", "--route_steps", "11"],
     "argument --route_steps: must be at most --steps (10), got 11"),
    (["--route_kinds", "single:warmth"], "argument --route_kinds: 'single:warmth': expected "
                                         "'all' or two-image kinds among pair:brightness"),
    (["--route_heads", "0", "--route_steps", "5"],
     "argument --route_steps: shapes the routing loss, which --route_heads 0 turns off"),
    (["--route_heads", "0", "--read_weight", "0.5"],
     "argument --read_weight: shapes the routing loss, which --route_heads 0 turns off"),
])
def test_pretrain_flags_are_one_line_before_anything_is_written(argv, message, tmp_path, capsys):
    """The pretraining script's numbers are checked by argparse types: one usage line, exit 2,
    no folder made."""
    out = tmp_path / "vlm"
    with pytest.raises(SystemExit) as exc:
        pretrain.main(["--output_dir", str(out)] + argv)
    assert exc.value.code == 2
    assert message in capsys.readouterr().err.strip().splitlines()[-1]
    assert not out.exists()
