import pytest
import torch

from rewards import CompositeReward, RewardTerm, available_rewards, build_reward, build_rewards


def _const(value):
    def fn(images, inputs, prompts):
        return images.mean(dim=(1, 2, 3)) * 0 + value, {"seen": float(images.shape[0])}
    return fn


def test_unknown_reward_lists_known_names():
    with pytest.raises(ValueError) as err:
        build_reward("definitely_not_a_reward")
    for name in available_rewards():
        assert name in str(err.value)


def test_composite_weighted_sum_and_metrics():
    comp = CompositeReward([RewardTerm("a", 2.0, _const(1.0)), RewardTerm("b", -1.0, _const(3.0))])
    x = torch.rand(4, 3, 8, 8)
    total, metrics = comp(x, None, ["p"] * 4)
    assert total.shape == (4,)
    assert torch.allclose(total, torch.full((4,), 2.0 * 1.0 - 3.0))
    assert metrics["a"] == 1.0 and metrics["b/weighted"] == -3.0
    assert metrics["a/seen"] == 4.0 and metrics["reward"] == pytest.approx(-1.0)


def test_composite_rejects_bad_shapes_and_duplicates():
    with pytest.raises(ValueError):
        CompositeReward([RewardTerm("a", 1.0, _const(0.0)), RewardTerm("a", 1.0, _const(0.0))])
    comp = CompositeReward([RewardTerm("a", 1.0, lambda x, i, p: (x.mean(), {}))])
    with pytest.raises(ValueError, match="shape"):
        comp(torch.rand(2, 3, 8, 8))
    with pytest.raises(ValueError, match=r"\(B, 3, H, W\)"):
        comp(torch.rand(2, 8, 8))


def test_zero_weight_terms_are_skipped_and_names_checked():
    with pytest.raises(ValueError, match="without 'name'"):
        build_rewards([{"weight": 1.0}])


def test_device_dtype_resolution_is_shared_and_strict():
    """One resolver serves rewards, generate, evaluate and the InternVL flags."""
    from common.hub import resolve_device_dtype

    expected_device = "cuda" if torch.cuda.is_available() else "cpu"
    device, dtype = resolve_device_dtype("auto", "auto")
    assert device.type == expected_device
    assert dtype == (torch.bfloat16 if expected_device == "cuda" else torch.float32)
    assert resolve_device_dtype("cpu", "bf16") == (torch.device("cpu"), torch.bfloat16)
    with pytest.raises(ValueError, match="unknown dtype"):
        resolve_device_dtype("cpu", "float64x")
