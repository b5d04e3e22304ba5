"""Rewards without a gradient: JPEG compressibility (DDPO / D3PO) and a VLM's hard answer."""
import io

import pytest
import torch

from rewards import build_rewards, is_differentiable


def test_jpeg_compressibility_is_minus_the_jpeg_size_in_kb():
    from PIL import Image

    g = torch.Generator().manual_seed(0)
    flat = torch.full((3, 32, 32), 0.5)
    noisy = torch.rand(3, 32, 32, generator=g)
    images = torch.stack([flat, noisy]).requires_grad_(True)
    comp = build_rewards([{"name": "jpeg_compressibility"}])
    scores, metrics = comp(images)
    assert not scores.requires_grad and not comp.differentiable
    assert scores[0] > scores[1]               # a flat image compresses better than noise
    # the size by hand: 8-bit rounding, PIL JPEG at quality 95, kB = 1000 bytes
    arr = (noisy * 255).round().clamp(0, 255).to(torch.uint8).permute(1, 2, 0).numpy()
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="JPEG", quality=95)
    assert scores[1].item() == pytest.approx(-buf.tell() / 1000)
    assert metrics["jpeg_compressibility/kb"] == pytest.approx(-scores.mean().item())


def test_jpeg_quality_is_checked():
    from rewards.compressibility import JpegCompressibility

    with pytest.raises(ValueError, match="quality"):
        JpegCompressibility(0)


@pytest.fixture(scope="module")
def tiny_vlm():
    from rewards.vlm import make_vlm_reward

    return make_vlm_reward("single", model_id="tiny", dtype="float32", device="cpu")


def test_vlm_answer_is_the_value_of_the_most_likely_answer(tiny_vlm):
    from rewards.vlm_answer import VLMAnswer

    judge = VLMAnswer(tiny_vlm)
    images = torch.rand(4, 3, 64, 64, generator=torch.Generator().manual_seed(1))
    images.requires_grad_(True)
    scores, metrics = judge(images)
    assert not scores.requires_grad
    probs = tiny_vlm.score_slots([images.detach()]).probs[0]
    digits = probs.argmax(-1).float() / 9          # answers 0..9 -> [0, 1]
    assert torch.equal(scores, digits)
    assert "soft_expected" in metrics and judge.differentiable is False
    assert not is_differentiable("vlm_answer") and is_differentiable("vlm")


def test_vlm_answer_pair_is_debiased_like_the_soft_score():
    from rewards.vlm import make_vlm_reward
    from rewards.vlm_answer import VLMAnswer

    judge = VLMAnswer(make_vlm_reward("pair", model_id="tiny", dtype="float32", device="cpu"))
    g = torch.Generator().manual_seed(2)
    a, b = torch.rand(3, 3, 64, 64, generator=g), torch.rand(3, 3, 64, 64, generator=g)
    ab, _ = judge(a, b)
    ba, _ = judge(b, a)
    assert torch.allclose(ab + ba, torch.ones(3))
