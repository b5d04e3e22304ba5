"""AIDE reward: input pack vs an independent scipy reference; loading through a stub clone."""
import argparse
import sys

import numpy as np
import pytest
import torch

from rewards import build_reward
from rewards.aide import build_aide_pack, import_aide_module, make_aide_reward, patch_grades
from common.hub import ModelUnavailableError


def _photo(h=96, w=80):
    from skimage import data
    import torch.nn.functional as F

    x = torch.from_numpy(data.coffee()).permute(2, 0, 1).float()[None] / 255.0
    return F.interpolate(x, size=(h, w), mode="bilinear", antialias=True, align_corners=False)


def _reference_pack(img: np.ndarray, window=32, stride=16, bands=6):
    """AIDE's pack from its description, with scipy's DCT and torchvision's Resize/Normalize."""
    from scipy.fft import dctn
    from torchvision import transforms

    c, h, w = img.shape
    starts = [(r, q) for r in range(0, h - window + 1, stride) for q in range(0, w - window + 1, stride)]
    grades = []
    for r, q in starts:
        coef = dctn(img[:, r:r + window, q:q + window].astype(np.float64), type=2, norm="ortho",
                    axes=(1, 2))
        energy = np.log(np.abs(coef) + 1)
        grade = 0.0
        for k in range(bands):
            lo, hi = 2.0 * window / bands * k, 2.0 * window / bands * (k + 1)
            mask = np.array([[0.0 if i + j > hi or i + j < lo else 1.0 for j in range(window)]
                             for i in range(window)])
            grade += 2 ** k * (energy * mask).sum() / mask.sum()
        grades.append(grade)
    order = np.argsort(grades, kind="stable")
    picks = [order[0], order[-1], order[1], order[-2]]
    t = transforms.Compose([transforms.Resize([256, 256]),
                            transforms.Normalize([0.485, 0.456, 0.406], [0.229, 0.224, 0.225])])
    full = torch.from_numpy(img).float()
    views = [t(full[:, starts[i][0]:starts[i][0] + window, starts[i][1]:starts[i][1] + window])
             for i in picks] + [t(full)]
    return torch.stack(views), np.array(grades)


def test_pack_matches_scipy_reference():
    x = _photo(96, 80)
    pack = build_aide_pack(x)
    ref, ref_grades = _reference_pack(x[0].numpy())
    assert pack.shape == (1, 5, 3, 256, 256)
    np.testing.assert_allclose(patch_grades(x)[0].numpy(), ref_grades, rtol=1e-4)
    torch.testing.assert_close(pack[0], ref, rtol=1e-4, atol=1e-4)


def test_pack_picks_flat_and_busy_patches_and_is_differentiable():
    x = torch.full((1, 3, 64, 64), 0.5)
    g = torch.Generator().manual_seed(0)
    x[..., 32:, 32:] = torch.rand(1, 3, 32, 32, generator=g)  # one busy (noisy) corner
    x.requires_grad_(True)
    pack = build_aide_pack(x)
    busy = pack[0, 1]  # highest-grade view = the noisy corner, resized
    flat = pack[0, 0]
    assert flat.std(dim=(-2, -1)).max() < 1e-5 and busy.std(dim=(-2, -1)).min() > 0.1
    pack[:, 1].sum().backward()
    assert x.grad[..., 32:, 32:].abs().sum() > 0 and x.grad[..., :16, :16].abs().sum() == 0
    with pytest.raises(ValueError, match="at least 32x32"):
        build_aide_pack(torch.rand(1, 3, 16, 64))


STUB = '''
import torch
import torch.nn as nn
from .srm_filter_kernel import KERNEL   # AIDE.py uses a relative import like this


class AIDE_Model(nn.Module):
    """Tiny stand-in with AIDE's interface: (B, 5, 3, H, W) -> (B, 2) logits."""

    def __init__(self, resnet_path, convnext_path):
        super().__init__()
        torch.load(resnet_path, weights_only=True)  # AIDE reads the ResNet file at build time
        self.hpf = nn.Conv2d(3, 4, 3, padding=1, bias=False)
        self.hpf.weight = nn.Parameter(KERNEL.repeat(4, 3, 1, 1), requires_grad=False)
        self.patch = nn.Sequential(nn.Conv2d(4, 8, 5, stride=4), nn.ReLU(), nn.AdaptiveAvgPool2d(1))
        self.sem = nn.Sequential(nn.Conv2d(3, 8, 8, stride=8), nn.AdaptiveAvgPool2d(1))
        self.fc = nn.Linear(16, 2)

    def forward(self, x):
        feats = [self.patch(self.hpf(x[:, i])).flatten(1) for i in range(4)]
        with torch.no_grad():   # like AIDE's ConvNeXt branch
            sem = self.sem(x[:, 4]).flatten(1)
        return self.fc(torch.cat([sum(feats) / 4, sem], dim=1))


def AIDE(resnet_path, convnext_path):
    return AIDE_Model(resnet_path, convnext_path)
'''


@pytest.fixture()
def stub_repo(tmp_path):
    models = tmp_path / "AIDE" / "models"
    models.mkdir(parents=True)
    (models / "AIDE.py").write_text(STUB)
    (models / "srm_filter_kernel.py").write_text(
        "import torch\nKERNEL = torch.tensor([[0., -1, 0], [-1, 4, -1], [0, -1, 0]]) / 4\n")
    # The reference model, built from the same stub code, writes a checkpoint the way AIDE does.
    pkg = import_aide_module(models.parent)
    empty = tmp_path / "empty.pth"
    torch.save({}, empty)
    torch.manual_seed(0)
    ref = pkg.AIDE(str(empty), None).eval()
    ckpt = tmp_path / "checkpoint-best.pth"
    torch.save({"model": ref.state_dict(), "epoch": 3, "args": argparse.Namespace(model="AIDE")}, ckpt)
    return models.parent, ckpt, ref


def test_reward_through_stub_clone(stub_repo):
    repo, ckpt, ref = stub_repo
    modules_before, path_before = set(sys.modules), list(sys.path)
    reward = make_aide_reward(aide_repo=str(repo), aide_resume=str(ckpt), device="cpu")
    assert "models" not in set(sys.modules) - modules_before and sys.path == path_before
    x = torch.cat([_photo(64, 64), torch.rand(1, 3, 64, 64)]).requires_grad_(True)
    p_real, metrics = reward(x, None, None)
    with torch.no_grad():
        expected = ref(build_aide_pack(x)).softmax(dim=1)[:, 0]
    torch.testing.assert_close(p_real, expected)
    assert p_real.shape == (2,) and ((p_real >= 0) & (p_real <= 1)).all()
    assert metrics["p_real"] == pytest.approx(expected.mean().item(), rel=1e-6)
    p_real.sum().backward()
    assert x.grad.abs().sum() > 0
    assert all(not p.requires_grad and p.grad is None for p in reward.model.parameters())
    fake_first = build_reward("aide", aide_repo=str(repo), aide_resume=str(ckpt), real_index=1,
                              device="cpu")
    torch.testing.assert_close(fake_first(x, None, None)[0], 1 - p_real)


def test_clear_errors(stub_repo, tmp_path):
    repo, ckpt, _ = stub_repo
    with pytest.raises(ModelUnavailableError, match="not found; clone"):
        make_aide_reward(aide_repo=str(tmp_path / "nowhere"), aide_resume=str(ckpt))
    with pytest.raises(ModelUnavailableError, match="models/AIDE.py"):
        make_aide_reward(aide_repo=str(tmp_path), aide_resume=str(ckpt))
    with pytest.raises(ModelUnavailableError, match="no model builder 'AIDE_v2'.*AIDE_Model"):
        make_aide_reward(aide_repo=str(repo), aide_resume=str(ckpt), model_name="AIDE_v2")
    with pytest.raises(ModelUnavailableError, match="--aide_resume"):
        make_aide_reward(aide_repo=str(repo), aide_resume=str(tmp_path / "missing.pth"))
    bad = tmp_path / "bad.pth"
    torch.save({"model": {"fc.weight": torch.zeros(2, 16)}}, bad)
    with pytest.raises(ModelUnavailableError, match="does not fit AIDE"):
        make_aide_reward(aide_repo=str(repo), aide_resume=str(bad))
    needs = tmp_path / "needs" / "models"
    needs.mkdir(parents=True)
    (needs / "AIDE.py").write_text("import open_clip_not_installed_here\n")
    with pytest.raises(ModelUnavailableError, match="open_clip_not_installed_here.*not installed"):
        make_aide_reward(aide_repo=str(needs.parent), aide_resume=str(ckpt))
    with pytest.raises(ValueError, match="real_index"):
        make_aide_reward(aide_repo=str(repo), aide_resume=str(ckpt), real_index=2)
