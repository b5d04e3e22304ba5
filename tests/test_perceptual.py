"""LPIPS reward: parity with the lpips package, gradients, ranking, weight loading."""

import pytest
import torch
import torch.nn.functional as F

from rewards import build_reward
from common.hub import ModelUnavailableError
from rewards.perceptual import BACKBONE_URLS, make_lpips_reward


def _photo(size=64):
    from skimage import data

    x = torch.from_numpy(data.astronaut()).permute(2, 0, 1).float()[None] / 255.0
    return F.interpolate(x, size=(size, size), mode="bilinear", antialias=True, align_corners=False)


def _blur(x, sigma):
    import torchvision.transforms.functional as TF

    k = int(2 * round(3 * sigma) + 1)
    return TF.gaussian_blur(x, [k, k], [sigma, sigma])


@pytest.mark.filterwarnings("ignore:.*deprecated since 0.13:UserWarning")  # torchvision, via lpips
@pytest.mark.parametrize("net", ["alex", "squeeze"])
def test_distance_equals_lpips_package(net):
    import lpips

    torch.manual_seed(0)
    reward = make_lpips_reward(net=net, resolution=None, pretrained=False, device="cpu")
    ref = lpips.LPIPS(net=net, pnet_rand=True, verbose=False).eval()
    ref.load_state_dict(reward.model.state_dict())  # same random trunk, same shipped heads
    a, b = torch.rand(2, 3, 64, 64), torch.rand(2, 3, 64, 64)
    scores, metrics = reward(a, b, None)
    expected = ref(2 * a - 1, 2 * b - 1).reshape(2)
    torch.testing.assert_close(1 - scores, expected, rtol=1e-5, atol=1e-6)
    assert metrics["distance"] == pytest.approx(expected.mean().item(), rel=1e-5)


def test_gradients_reach_pixels_and_params_stay_frozen():
    reward = make_lpips_reward(pretrained=False, resolution=64, device="cpu")
    x = _photo(80).clone().requires_grad_(True)  # 80 px -> resized to 64 inside, with grad
    y = _photo(80).flip(-1)
    scores, _ = reward(x, y, None)
    scores.sum().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0
    assert all(not p.requires_grad and p.grad is None for p in reward.model.parameters())


def test_identity_is_max_and_score_falls_with_blur_and_noise():
    reward = make_lpips_reward(pretrained=False, resolution=64, device="cpu")
    x = _photo(64)
    same, _ = reward(x, x, None)
    assert same.item() == pytest.approx(1.0, abs=1e-6)
    blurred = [reward(_blur(x, s), x, None)[0].item() for s in (0.5, 1.0, 2.0, 4.0)]
    g = torch.Generator().manual_seed(0)
    noise = torch.randn(x.shape, generator=g)
    noisy = [reward((x + s * noise).clamp(0, 1), x, None)[0].item() for s in (0.02, 0.05, 0.1, 0.3)]
    for seq in (blurred, noisy):
        assert all(v < 1.0 for v in seq)
        assert seq == sorted(seq, reverse=True), seq


def test_missing_backbone_names_file_and_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    with pytest.raises(ModelUnavailableError) as err:
        make_lpips_reward(net="alex", pretrained=True, device="cpu")
    msg = str(err.value)
    assert "alexnet-owt-7be5be79.pth" in msg
    assert str(tmp_path / "hub" / "checkpoints") in msg and "backbone_path" in msg


def test_backbone_loaded_from_torch_cache_and_from_path(tmp_path, monkeypatch):
    """The torchvision weight file is read by us (weights_only) into the lpips trunk."""
    import torchvision

    torch.manual_seed(1)
    tv = torchvision.models.squeezenet1_1(weights=None)
    ckpt = tmp_path / "hub" / "checkpoints" / BACKBONE_URLS["squeeze"].rsplit("/", 1)[1]
    ckpt.parent.mkdir(parents=True)
    torch.save(tv.state_dict(), ckpt)
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    for kwargs in ({}, {"backbone_path": str(ckpt)}, {"backbone_path": str(ckpt.parent)}):
        reward = make_lpips_reward(net="squeeze", pretrained=True, device="cpu", **kwargs)
        torch.testing.assert_close(getattr(reward.model.net.slice1, "0").weight, tv.features[0].weight)
        torch.testing.assert_close(getattr(reward.model.net.slice7, "12").expand3x3.weight,
                                   tv.features[12].expand3x3.weight)
    wrong = tmp_path / "wrong.pth"
    torch.save({"features.0.weight": torch.zeros(1)}, wrong)
    with pytest.raises(ModelUnavailableError, match="is not torchvision's"):
        make_lpips_reward(net="squeeze", pretrained=True, backbone_path=str(wrong), device="cpu")


def test_bad_options_and_missing_inputs():
    with pytest.raises(ValueError, match="unknown LPIPS net"):
        make_lpips_reward(net="resnet", pretrained=False)
    with pytest.raises(ValueError, match="resolution"):
        make_lpips_reward(resolution=8, pretrained=False)
    reward = build_reward("lpips", pretrained=False, resolution=64, device="cpu")
    with pytest.raises(ValueError, match="inputs is None"):
        reward(torch.rand(1, 3, 64, 64), None, None)
    with pytest.raises(ValueError, match="differ in size"):
        make_lpips_reward(pretrained=False, resolution=None, device="cpu")(
            torch.rand(1, 3, 64, 64), torch.rand(1, 3, 48, 48), None)
