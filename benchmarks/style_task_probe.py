"""Is the tiny VLM's style question decidable from the two images? A probe without the VLM.

    PYTHONPATH=. python benchmarks/style_task_probe.py [--sets looks grades]

Pairs are made as ``alignprop.tiny_vlm_data.style_batch`` makes them (two crops of different
photos, a mild exposure change, then a grade on each; positives share it), for a set of grades:
``looks`` (the style task's :data:`STYLE_LOOKS`) or ``grades`` (the 12 :data:`GRADES` the first
recipe asked about), on plain crops (the photo's own colours) and on crops with tiny-photo's
random tints and channel swaps. Each image is reduced to colour statistics (means and spreads of
luma and the opponent colours, chroma, their covariances and slopes against luma, the chroma
left after that slope); an MLP on the pair's statistics is trained on pairs from the
pretraining photos and its AUC printed on pairs from the held-out photos. A set the MLP cannot
tell apart is one a tiny VLM cannot be expected to (docs/vlm.md). One torch thread, ~25 s per
row on a 2-core CPU.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

sys.path[:0] = [str(Path(__file__).resolve().parents[1])]
from alignprop import tiny_vlm_data as data  # noqa: E402
from alignprop.pretrain_tiny_vlm import auc  # noqa: E402

SETS = {"looks": (data.STYLE_LOOKS, data.apply_look), "grades": (data.GRADES, data.apply_grade)}


def colour_statistics(x: torch.Tensor) -> torch.Tensor:
    """(B,3,H,W) -> (B,12)."""
    w = x.new_tensor([0.2126, 0.7152, 0.0722]).view(1, 3, 1, 1)
    y = (x * w).sum(1).flatten(1)
    r, g, b = x.unbind(1)
    rg, yb = (r - g).flatten(1), (0.5 * (r + g) - b).flatten(1)
    chroma = (rg ** 2 + yb ** 2).sqrt()
    c = lambda t: t - t.mean(1, keepdim=True)
    cov = lambda a, b_: (c(a) * c(b_)).mean(1)
    var_y = cov(y, y) + 1e-4
    s_rg, s_yb = cov(rg, y) / var_y, cov(yb, y) / var_y
    rest = ((c(rg) - s_rg[:, None] * c(y)) ** 2 + (c(yb) - s_yb[:, None] * c(y)) ** 2).mean(1)
    return torch.stack([y.mean(1), y.std(1), rg.mean(1), rg.std(1), yb.mean(1), yb.std(1),
                        chroma.mean(1), cov(rg, y), cov(yb, y), s_rg, s_yb, rest.sqrt()], 1)


def pairs(bank: data.CropBank, n: int, grades, apply, g: torch.Generator):
    idx = torch.randint(len(bank), (n,), generator=g)
    idx_b = data._other_photo(bank, idx, g)
    same = torch.rand(n, generator=g) < 0.5
    ga = torch.randint(len(grades), (n,), generator=g)
    gb = torch.where(same, ga, (ga + torch.randint(1, len(grades), (n,), generator=g))
                     % len(grades))
    a = apply(data.mild_exposure(bank.get(idx), g), ga.tolist(), g)
    b = apply(data.mild_exposure(bank.get(idx_b), g), gb.tolist(), g)
    fa, fb = colour_statistics(a), colour_statistics(b)
    return torch.cat([(fa - fb).abs(), fa * fb, fa + fb], 1), same.float()


def probe(name: str, colour: bool, seed: int = 0) -> float:
    grades, apply = SETS[name]
    g = torch.Generator().manual_seed(seed)
    train_bank = data.crop_bank(3000, 1, colour=colour)
    test_bank = data.crop_bank(400, 2, held_out=True, colour=colour)
    x, y = pairs(train_bank, 8000, grades, apply, g)
    xh, yh = pairs(test_bank, 1000, grades, apply, g)
    mu, sd = x.mean(0), x.std(0) + 1e-6
    torch.manual_seed(seed)
    net = torch.nn.Sequential(torch.nn.Linear(x.shape[1], 128), torch.nn.GELU(),
                              torch.nn.Linear(128, 128), torch.nn.GELU(), torch.nn.Linear(128, 1))
    opt = torch.optim.Adam(net.parameters(), 1e-3)
    for _ in range(1500):
        k = torch.randint(len(x), (256,), generator=g)
        loss = torch.nn.functional.binary_cross_entropy_with_logits(
            net((x[k] - mu) / sd)[:, 0], y[k])
        opt.zero_grad()
        loss.backward()
        opt.step()
    with torch.no_grad():
        return auc(net((xh - mu) / sd)[:, 0], yh)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sets", nargs="+", choices=sorted(SETS), default=["looks", "grades"])
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    print("| grades | crops | held-out AUC |\n|---|---|---:|")
    for name in args.sets:
        for colour in (False, True):
            crops = "tints and channel swaps" if colour else "plain"
            print(f"| {name} ({len(SETS[name][0])}) | {crops} | {probe(name, colour):.3f} |",
                  flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
