"""Face-identity reward: facenet-pytorch on our torch/numpy, MTCNN crop path on a real photo."""
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from rewards import build_reward
from rewards.face import VGGFACE2_FILE, make_face_identity_reward
from common.hub import ModelUnavailableError

# skimage's astronaut (Eileen Collins) at 256 px: MTCNN finds her face near
# x 90-134, y 31-86 (measured once; asserted loosely below).
SIZE = 256


@pytest.fixture(scope="module")
def astronaut():
    from skimage import data

    x = torch.from_numpy(data.astronaut()).permute(2, 0, 1).float()[None] / 255.0
    return F.interpolate(x, size=(SIZE, SIZE), mode="bilinear", antialias=True, align_corners=False)


def _calibrate_batchnorm(net, photo):
    """Re-estimate BatchNorm statistics of a random net on crops of a photo.

    A randomly initialised InceptionResnetV1 with default BN statistics maps every
    image to nearly the same embedding (cosine ~0.9998 even for a black image);
    real VGGFace2 weights do not. Recalibrating BN (a standard trick, no training)
    centres the embeddings so that the tests can see rankings.
    """
    import torchvision.transforms.functional as TF

    for m in net.modules():
        if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
            m.reset_running_stats()
            m.momentum = None  # cumulative average over the calibration batch
    g = torch.Generator().manual_seed(0)
    crops = torch.stack([
        TF.resized_crop(photo[0], int(torch.randint(0, 90, (1,), generator=g)),
                        int(torch.randint(0, 90, (1,), generator=g)), 120, 120, [160, 160],
                        antialias=True) for _ in range(16)])
    net.train()
    with torch.no_grad():
        net((crops * 255 - 127.5) / 128)
    net.eval()


@pytest.fixture(scope="module")
def reward(astronaut):
    torch.manual_seed(0)
    r = make_face_identity_reward(pretrained=False, device="cpu")
    _calibrate_batchnorm(r.model, astronaut)
    return r


def test_facenet_pytorch_runs_with_our_torch_and_numpy(astronaut):
    import facenet_pytorch

    assert int(np.__version__.split(".")[0]) >= 2 and torch.__version__ >= "2.3"
    mtcnn = facenet_pytorch.MTCNN(device="cpu")
    boxes, probs = mtcnn.detect((astronaut[0].permute(1, 2, 0) * 255).numpy().astype(np.uint8))
    assert boxes.shape == (1, 4) and probs[0] > 0.99
    emb = facenet_pytorch.InceptionResnetV1().eval()(torch.rand(2, 3, 160, 160))
    torch.testing.assert_close(emb.norm(dim=1), torch.ones(2))


def test_mtcnn_box_on_real_face(reward, astronaut):
    (box, prob), = reward.detect(astronaut)
    x1, y1, x2, y2 = box
    assert prob > 0.99
    assert 75 < x1 < 105 and 120 < x2 < 150 and 15 < y1 < 45 and 70 < y2 < 100, box


def test_only_the_face_box_matters(reward, astronaut):
    """Changes outside the detected face leave the score at 1; inside they lower it."""
    g = torch.Generator().manual_seed(0)
    outside = astronaut.clone()
    outside[..., 150:, :] = torch.rand(outside[..., 150:, :].shape, generator=g)  # body / background
    inside = astronaut.clone()
    inside[..., 40:80, 95:130] = torch.rand(inside[..., 40:80, 95:130].shape, generator=g)
    same, metrics = reward(astronaut, astronaut, None)
    assert same.item() == pytest.approx(1.0, abs=1e-5)
    assert metrics["no_face_rate"] == 0.0 and metrics["face_prob"] > 0.99
    assert reward(outside, astronaut, None)[0].item() == pytest.approx(1.0, abs=1e-5)
    assert reward(inside, astronaut, None)[0].item() < 0.99


def test_gradients_reach_face_pixels_only_and_params_frozen(reward, astronaut):
    x = (astronaut * 0.9 + 0.05).requires_grad_(True)
    scores, _ = reward(x, astronaut, None)
    scores.sum().backward()
    grad = x.grad.abs().sum(dim=1)[0]
    assert grad[40:80, 95:130].sum() > 0
    assert grad[150:, :].sum() == 0 and grad[:, 200:].sum() == 0  # far from the face box
    assert all(not p.requires_grad and p.grad is None for p in reward.model.parameters())


def test_identity_is_max_and_falls_with_blur_and_noise(reward, astronaut):
    import torchvision.transforms.functional as TF

    blurred = [reward(TF.gaussian_blur(astronaut, [2 * round(3 * s) + 1] * 2, [s, s]), astronaut,
                      None)[0].item() for s in (0.5, 1.5, 3.0, 6.0)]
    noise = torch.randn(astronaut.shape, generator=torch.Generator().manual_seed(1))
    noisy = [reward((astronaut + s * noise).clamp(0, 1), astronaut, None)[0].item()
             for s in (0.02, 0.05, 0.1, 0.3)]
    for seq in (blurred, noisy):
        assert all(-1.0 <= v < 1.0 for v in seq)
        assert seq == sorted(seq, reverse=True), seq


def test_box_is_rescaled_when_output_size_differs(reward, astronaut):
    big = F.interpolate(astronaut, scale_factor=2, mode="bilinear", align_corners=False)
    up, _ = reward(big, astronaut, None)
    shifted, _ = reward(big.roll(shifts=(40, 40), dims=(-2, -1)), astronaut, None)
    assert up.item() > 0.95 and up.item() > shifted.item()


def test_no_face_fallbacks(astronaut):
    blank = torch.full((1, 3, SIZE, SIZE), 0.5) + 0.2 * torch.linspace(0, 1, SIZE)
    batch_in = torch.cat([astronaut, blank])
    batch_out = (batch_in * 0.9).requires_grad_(True)
    torch.manual_seed(0)
    whole = make_face_identity_reward(pretrained=False, no_face="whole_image", device="cpu")
    s, m = whole(batch_out, batch_in, None)
    assert m["no_face_rate"] == 0.5 and s.shape == (2,) and -1 <= s[1].item() <= 1 and s[1].item() != 0
    skip = make_face_identity_reward(pretrained=False, no_face="skip", device="cpu")
    s, m = skip(batch_out, batch_in, None)
    assert s[1].item() == 0.0 and m["no_face_rate"] == 0.5
    s.sum().backward()
    assert batch_out.grad[1].abs().sum() == 0 and batch_out.grad[0].abs().sum() > 0
    strict = make_face_identity_reward(pretrained=False, no_face="error", device="cpu")
    with pytest.raises(ValueError, match="no face found on input 1"):
        strict(batch_out, batch_in, None)


def test_weights_missing_and_loaded_from_path(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    with pytest.raises(ModelUnavailableError) as err:
        make_face_identity_reward(pretrained=True, device="cpu")
    assert VGGFACE2_FILE in str(err.value) and str(tmp_path / "checkpoints") in str(err.value)
    from facenet_pytorch import InceptionResnetV1

    torch.manual_seed(3)
    src = InceptionResnetV1(classify=True, num_classes=8631)  # same layout as the VGGFace2 file
    path = tmp_path / "checkpoints" / VGGFACE2_FILE
    path.parent.mkdir()
    torch.save(src.state_dict(), path)
    for kwargs in ({}, {"weights_path": str(path)}):  # facenet cache, explicit file
        r = make_face_identity_reward(pretrained=True, device="cpu", **kwargs)
        torch.testing.assert_close(r.model.last_linear.weight, src.last_linear.weight)
    with pytest.raises(ModelUnavailableError, match="neither an existing file"):
        make_face_identity_reward(weights_path=str(tmp_path / "nope.pt"), device="cpu")


def test_bad_options():
    with pytest.raises(ValueError, match="no_face"):
        build_reward("face", no_face="ignore", pretrained=False)
    with pytest.raises(ValueError, match="min_face_prob"):
        make_face_identity_reward(min_face_prob=2.0, pretrained=False)
