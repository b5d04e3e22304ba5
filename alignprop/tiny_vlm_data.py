"""What ``tiny-vlm-photo`` is taught: questions, the statistics behind their answers, and the
augmented photo crops it sees (``python -m alignprop.pretrain_tiny_vlm``).

Every answer is a measurable property of the pixels the model sees (64x64 crops in [0, 1]):

* ``brightness``: mean Rec.709 luma (:func:`rewards.anchors.mean_brightness`, the project's
  brightness anchor);
* ``warmth``: mean R - B;
* ``colourfulness``: Hasler & Suesstrunk's M = sigma_rgyb + 0.3 mu_rgyb of the opponent colours
  rg = R - G, yb = (R + G) / 2 - B ("Measuring colourfulness in natural images", 2003; on [0, 1]
  values, not 0..255);
* ``sharpness``: log of the mean |Laplacian| (4-neighbour) of the luma, replicate borders.

A ``single`` question is answered with the digit the statistic falls on after scaling it
linearly from its 2nd..98th percentile on the training crops to 0..9 (:class:`Scales`);
``pair`` ("which image is brighter?", images labelled Image 1 and Image 2) with P("1") = sigmoid(gap / PAIR_TAU) in
digit units; ``content-similarity`` with 9 when both images are edits of the same crop and
0 for crops of different photos; ``similarity`` (style) with 9 when both images (two different
photos) carry the same colour grade and 0 for different ones -- the 12 :data:`GRADES` on
augmented crops (the first recipe) or the six :data:`STYLE_LOOKS` on plain crops
(:func:`style_batch`).

The crops come from the photos ``tiny-photo`` was pretrained on (:mod:`alignprop.pretrain_tiny`);
its four held-out photos (astronaut, chelsea, coffee, rocket) are never seen in training and give
the held-out figures. Everything is drawn from seeded generators, so a seed fixes the data.
"""
from __future__ import annotations

import math
import random
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from common.photos import HELD_OUT, MATPLOTLIB_TRAIN, SKIMAGE_TRAIN, load_files
from rewards.anchors import mean_brightness

from .pretrain_tiny import random_crop as _random_crop

SIZE = 64
ATTRIBUTES = ("brightness", "warmth", "colourfulness", "sharpness")

# Short questions on purpose: the tiny tokenizer spends one token per character.
QUESTIONS = {
    "brightness": "How bright is the photo? Answer 0 to 9.",
    "warmth": "How warm are the colours? Answer 0 to 9.",
    "colourfulness": "How colourful is the photo? Answer 0 to 9.",
    "sharpness": "How sharp is the photo? Answer 0 to 9.",
}
PAIR_QUESTIONS = {
    "brightness": "Which image is brighter? Answer 1 or 2.",
    "warmth": "Which image is warmer? Answer 1 or 2.",
    "colourfulness": "Which image is more colourful? Answer 1 or 2.",
    "sharpness": "Which image is sharper? Answer 1 or 2.",
}
CONTENT_QUESTION = "Same content in both? Answer 0 to 9."
STYLE_QUESTION = "Same colour grade in both? Answer 0 to 9."
# P("1") of a pair = sigmoid(gap / PAIR_TAU), gap in digits (0..9 scale): one digit -> 0.95.
PAIR_TAU = 1.0 / 3.0


# --------------------------------------------------------------------------- statistics
def _opponent(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    r, g, b = x.unbind(1)
    return (r - g).flatten(1), (0.5 * (r + g) - b).flatten(1)


def laplacian(y: torch.Tensor) -> torch.Tensor:
    """(B,1,H,W) -> (B,1,H,W) 4-neighbour Laplacian, replicate borders."""
    k = y.new_tensor([[0.0, 1.0, 0.0], [1.0, -4.0, 1.0], [0.0, 1.0, 0.0]]).view(1, 1, 3, 3)
    return F.conv2d(F.pad(y, (1, 1, 1, 1), mode="replicate"), k)


def statistic(name: str, images: torch.Tensor) -> torch.Tensor:
    """(B,3,H,W) in [0,1] -> (B,) the statistic behind attribute ``name`` (differentiable)."""
    x = images.float()
    if name == "brightness":
        return mean_brightness(x)
    if name == "warmth":
        return (x[:, 0] - x[:, 2]).mean(dim=(1, 2))
    if name == "colourfulness":
        rg, yb = _opponent(x)
        sigma = (rg.var(1, unbiased=False) + yb.var(1, unbiased=False) + 1e-12).sqrt()
        mu = (rg.mean(1) ** 2 + yb.mean(1) ** 2 + 1e-12).sqrt()
        return sigma + 0.3 * mu
    if name == "sharpness":
        w = x.new_tensor([0.2126, 0.7152, 0.0722]).view(1, 3, 1, 1)
        y = (x * w).sum(1, keepdim=True)
        return torch.log(laplacian(y).abs().mean(dim=(1, 2, 3)) + 1e-3)
    raise KeyError(f"unknown attribute {name!r}; known: {', '.join(ATTRIBUTES)}")


@dataclass(frozen=True)
class Scales:
    """Per attribute (2nd, 98th) percentile of the statistic on training crops -> digits 0..9."""

    low: dict
    high: dict

    def digits(self, name: str, values: torch.Tensor) -> torch.Tensor:
        lo, hi = self.low[name], self.high[name]
        return ((values - lo) / (hi - lo) * 9.0).clamp(0.0, 9.0)

    def as_dict(self) -> dict:
        return {n: {"p2": self.low[n], "p98": self.high[n]} for n in self.low}

    @classmethod
    def from_images(cls, images: torch.Tensor) -> Scales:
        low, high = {}, {}
        for name in ATTRIBUTES:
            v = statistic(name, images)
            low[name] = float(torch.quantile(v, 0.02))
            high[name] = float(torch.quantile(v, 0.98))
        return cls(low, high)


def two_hot(digits: torch.Tensor, k: int = 10) -> torch.Tensor:
    """(B,) values in [0, k-1] -> (B, k) target putting the mass on the two nearest integers."""
    lo = digits.floor().clamp(0, k - 1)
    frac = digits - lo
    out = torch.zeros(digits.shape[0], k)
    out.scatter_(1, lo.long()[:, None], (1 - frac)[:, None])
    out.scatter_add_(1, (lo + 1).clamp(max=k - 1).long()[:, None], frac[:, None])
    return out


# --------------------------------------------------------------------------- photos and crops
def _capped(photos: list[torch.Tensor], short: int = 256) -> list[torch.Tensor]:
    out = []
    for p in photos:
        s = min(p.shape[-2:])
        if s > short:
            p = F.interpolate(p[None], scale_factor=short / s, mode="area")[0]
        out.append(p.clamp(0, 1))
    return out


def photo_set(held_out: bool) -> list[torch.Tensor]:
    """The pretraining photos of tiny-photo, or its four held-out photos."""
    if held_out:
        return _capped(load_files(HELD_OUT))
    return _capped(load_files(SKIMAGE_TRAIN + MATPLOTLIB_TRAIN))


@dataclass
class CropBank:
    """(N,3,64,64) uint8 crops and the index of the photo each was cut from; ``plain``: crops
    of the same photos without colour augmentation (the style task's, :func:`style_batch`)."""

    crops: torch.Tensor
    photo: torch.Tensor
    plain: CropBank | None = None

    def __len__(self) -> int:
        return len(self.crops)

    def get(self, idx: torch.Tensor) -> torch.Tensor:
        return self.crops[idx].float() / 255.0


# Seed offset of the plain companion bank (so the augmented bank is the same with or without it).
PLAIN_SEED_OFFSET = 7919


def crop_bank(n: int, seed: int, held_out: bool = False, plain: int = 0,
              colour: bool = True) -> CropBank:
    """``n`` augmented multi-scale crops (tiny-photo's crop augmentation), photos in turn;
    ``plain`` > 0 adds that many crops without colour augmentation (``colour=False``: the
    multi-scale crop and flips only) as ``.plain``, drawn from their own seed."""
    photos = photo_set(held_out)
    rng = random.Random(seed)
    torch.manual_seed(seed)          # random_crop's channel permutation draws from torch too
    crops = torch.empty(n, 3, SIZE, SIZE, dtype=torch.uint8)
    photo = torch.empty(n, dtype=torch.long)
    for i in range(n):
        k = i % len(photos)
        crops[i] = (_random_crop([photos[k]], rng, colour=colour) * 255).round().to(torch.uint8)
        photo[i] = k
    companion = (crop_bank(plain, seed + PLAIN_SEED_OFFSET, held_out, colour=False)
                 if plain else None)
    return CropBank(crops, photo, companion)


# --------------------------------------------------------------------------- edits
def gaussian_blur(x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
    """Per-image separable Gaussian blur (replicate borders); ``sigma`` (B,) in px, 0 = none.

    One grouped convolution per direction for the whole batch: each image's kernel is its own
    Gaussian (a unit impulse where sigma is 0), truncated at 3 sigma of the largest."""
    b, c, h, w = x.shape
    r = max(1, math.ceil(3 * float(sigma.max())))
    t = torch.arange(-r, r + 1, dtype=x.dtype)
    s = sigma.to(x.dtype).clamp_min(1e-3)[:, None]
    k = torch.exp(-0.5 * (t[None] / s) ** 2)
    k = k / k.sum(1, keepdim=True)                       # sigma 1e-3: exactly the impulse
    k = k.repeat_interleave(c, 0)                        # (B*C, 2r+1)
    y = F.pad(x.reshape(1, b * c, h, w), (r, r, r, r), mode="replicate")
    y = F.conv2d(y, k.view(b * c, 1, 1, -1), groups=b * c)
    y = F.conv2d(y, k.view(b * c, 1, -1, 1), groups=b * c)
    return y.reshape(b, c, h, w)


def _u(g: torch.Generator, n: int, lo: float, hi: float) -> torch.Tensor:
    return torch.rand(n, generator=g) * (hi - lo) + lo


def _on(g: torch.Generator, n: int, p: float) -> torch.Tensor:
    return torch.rand(n, generator=g) < p


def random_edit(x: torch.Tensor, g: torch.Generator) -> torch.Tensor:
    """Random photo edits that spread every statistic: exposure, contrast, saturation,
    warmth, blur and sharpening (each applied to part of the batch)."""
    n = x.shape[0]
    v = lambda t: t.view(-1, 1, 1, 1)
    gamma = torch.where(_on(g, n, 0.6), torch.exp(_u(g, n, -1.0, 1.0)), torch.ones(n))
    x = x.clamp(0, 1) ** v(gamma)
    contrast = torch.where(_on(g, n, 0.5), torch.exp(_u(g, n, -0.5, 0.35)), torch.ones(n))
    offset = torch.where(_on(g, n, 0.5), _u(g, n, -0.2, 0.2), torch.zeros(n))
    x = (x - 0.5) * v(contrast) + 0.5 + v(offset)
    sat = torch.where(_on(g, n, 0.6), _u(g, n, 0.0, 2.2), torch.ones(n))
    sat = torch.where(_on(g, n, 0.1), torch.zeros(n), sat)
    grey = x.mean(1, keepdim=True)
    x = grey + v(sat) * (x - grey)
    warm = torch.where(_on(g, n, 0.6), _u(g, n, -0.25, 0.25), torch.zeros(n))
    x = x + v(warm) * x.new_tensor([1.0, 0.0, -1.0]).view(1, 3, 1, 1)
    x = x.clamp(0, 1)
    sigma = torch.where(_on(g, n, 0.5), torch.exp(_u(g, n, math.log(0.3), math.log(3.0))),
                        torch.zeros(n))
    x = gaussian_blur(x, sigma)
    amount = torch.where(_on(g, n, 0.15) & (sigma == 0), _u(g, n, 0.3, 1.2), torch.zeros(n))
    if bool((amount > 0).any()):
        x = x + v(amount) * (x - gaussian_blur(x, torch.ones(n)))
    return x.clamp(0, 1)


# Colour grades ("looks") of the style task: each maps an image to its graded version with a
# strength s ~ 1 (jittered per image).
def _luma3(x):
    y = (x * x.new_tensor([0.2126, 0.7152, 0.0722]).view(1, 3, 1, 1)).sum(1, keepdim=True)
    return y.expand_as(x)


def _grade(name: str, x: torch.Tensor, s: torch.Tensor) -> torch.Tensor:
    v = s.view(-1, 1, 1, 1)
    c = lambda *rgb: x.new_tensor(rgb).view(1, 3, 1, 1)
    if name == "neutral":
        return x
    if name == "warm":
        return x * (1 + v * c(0.2, 0.0, -0.35)) + v * c(0.1, 0.03, -0.06)
    if name == "cool":
        return x * (1 + v * c(-0.35, 0.0, 0.2)) + v * c(-0.06, 0.03, 0.12)
    if name == "mono":
        return _luma3(x)
    if name == "sepia":
        y = _luma3(x)
        return y * c(1.07, 0.86, 0.62) + c(0.03, 0.0, -0.02)
    if name == "vivid":
        grey = x.mean(1, keepdim=True)
        return (grey + (1 + 0.9 * v) * (x - grey) - 0.5) * (1 + 0.25 * v) + 0.5
    if name == "faded":
        grey = x.mean(1, keepdim=True)
        y = grey + (1 - 0.55 * v) * (x - grey)
        return 0.2 * v + (1 - 0.4 * v) * y
    if name == "green":
        return x * (1 + v * c(-0.2, 0.15, -0.2)) + v * c(-0.03, 0.1, -0.03)
    if name == "magenta":
        return x * (1 + v * c(0.12, -0.3, 0.12)) + v * c(0.08, -0.05, 0.08)
    if name == "teal_orange":
        y = _luma3(x)[:, :1]
        shadows, highlights = (1 - y) ** 2, y ** 2
        return x + v * (shadows * c(-0.15, 0.05, 0.15) + highlights * c(0.15, 0.03, -0.15))
    if name == "noir":
        y = _luma3(x)
        return ((y - 0.5) * (1 + 0.8 * v) + 0.5 - 0.12 * v)
    if name == "cross":      # cross-processing: a different tone curve per channel
        return x.clamp_min(1e-6) ** torch.stack([1 - 0.35 * s, 1 + 0.15 * s, 1 + 0.6 * s],
                                                1).view(-1, 3, 1, 1)
    raise KeyError(name)


GRADES = ("neutral", "warm", "cool", "mono", "sepia", "vivid", "faded", "green", "magenta",
          "teal_orange", "noir", "cross")


def _look(name: str, x: torch.Tensor, s: torch.Tensor) -> torch.Tensor:
    """The style task's looks (:data:`STYLE_LOOKS`): strong, and each recognisable from the
    graded image alone whatever the photo's own colours were."""
    v = s.view(-1, 1, 1, 1)
    c = lambda *rgb: x.new_tensor(rgb).view(1, 3, 1, 1)
    if name == "mono":
        return _luma3(x)
    if name == "sepia":                 # brown toning of the luma
        return _luma3(x) * c(1.07, 0.86, 0.62) + c(0.03, 0.0, -0.02)
    if name == "cyanotype":             # blue toning of the luma
        return _luma3(x) * c(0.75, 0.95, 1.12) + c(-0.02, 0.0, 0.03)
    if name == "duotone":               # teal shadows, cream highlights (luma split-toned)
        y = _luma3(x)[:, :1]
        return (1 - y) * c(0.05, 0.2, 0.3) + y * c(1.0, 0.85, 0.6)
    if name == "warm":                  # strong warm cast (red up, blue down)
        return x * (1 + v * c(0.3, 0.0, -0.5)) + v * c(0.12, 0.03, -0.1)
    if name == "cool":                  # strong cool cast
        return x * (1 + v * c(-0.5, 0.0, 0.3)) + v * c(-0.1, 0.03, 0.14)
    raise KeyError(name)


# The style task's colour grades ("same colour grade in both?"): six looks that differ strongly.
# Four tone the luma (the photo's colours are replaced), two cast a strong colour over them. A
# subtle grade on one photo cannot be told from a photo that has those colours itself (a grade
# is a change relative to the photo); with these, an MLP on 12 colour statistics of each image
# (luma, opponent colours and their slopes against luma) tells same from different looks on
# held-out pairs with AUC 0.998-1.0 (0.81-0.83 for the 12 :data:`GRADES`).
STYLE_LOOKS = ("mono", "sepia", "cyanotype", "duotone", "warm", "cool")


def _apply_each(x: torch.Tensor, kinds: list[int], names: tuple[str, ...], transform,
                g: torch.Generator) -> torch.Tensor:
    """Image i through ``transform(names[kinds[i]], ...)`` at a jittered strength (0.8..1.2),
    the images of one kind in one call."""
    s = _u(g, x.shape[0], 0.8, 1.2)
    out = torch.empty_like(x)
    for k in set(kinds):
        idx = torch.tensor([i for i, ki in enumerate(kinds) if ki == k])
        out[idx] = transform(names[k], x[idx].clamp(0, 1), s[idx])
    return out.clamp(0, 1)


def apply_look(x: torch.Tensor, looks: list[int], g: torch.Generator) -> torch.Tensor:
    """Grade image i with ``STYLE_LOOKS[looks[i]]`` at a jittered strength (0.8..1.2)."""
    return _apply_each(x, looks, STYLE_LOOKS, _look, g)


def apply_grade(x: torch.Tensor, grades: list[int], g: torch.Generator) -> torch.Tensor:
    """Grade image i with ``GRADES[grades[i]]`` at a jittered strength (0.8..1.2)."""
    return _apply_each(x, grades, GRADES, _grade, g)


# --------------------------------------------------------------------------- task batches
@dataclass
class Batch:
    """One question's training or evaluation batch: image slots and the answer target."""

    kind: str                       # "single:brightness", "pair:warmth", "content", "style"
    slots: list[torch.Tensor]       # per image slot: (B,3,64,64) in [0,1]
    target: torch.Tensor            # (B, K) distribution over the answer scale's words
    label: torch.Tensor             # (B,) the truth the evaluation compares with


def _pick(bank: CropBank, n: int, g: torch.Generator) -> torch.Tensor:
    return torch.randint(len(bank), (n,), generator=g)


def _other_photo(bank: CropBank, idx: torch.Tensor, g: torch.Generator) -> torch.Tensor:
    """For each crop, a crop of another photo."""
    out = _pick(bank, len(idx), g)
    for _ in range(20):
        same = bank.photo[out] == bank.photo[idx]
        if not bool(same.any()):
            break
        out[same] = _pick(bank, int(same.sum()), g)
    return out


def single_images(bank: CropBank, n: int, g: torch.Generator) -> list[torch.Tensor]:
    return [random_edit(bank.get(_pick(bank, n, g)), g)]


def pair_images(bank: CropBank, n: int, g: torch.Generator) -> list[torch.Tensor]:
    """Half the pairs are two edits of one crop (an edit compared with its input), half two
    different crops."""
    idx = _pick(bank, n, g)
    same = _on(g, n, 0.5)
    idx_b = torch.where(same, idx, _pick(bank, n, g))
    return [random_edit(bank.get(idx), g), random_edit(bank.get(idx_b), g)]


def single_batch(bank: CropBank, attr: str, n: int, scales: Scales, g: torch.Generator,
                 images: list[torch.Tensor] | None = None) -> Batch:
    x = (images or single_images(bank, n, g))[0]
    stat = statistic(attr, x)
    return Batch(f"single:{attr}", [x], two_hot(scales.digits(attr, stat)), stat)


def pair_batch(bank: CropBank, attr: str, n: int, scales: Scales, g: torch.Generator,
               images: list[torch.Tensor] | None = None) -> Batch:
    """P("1") follows the statistic's gap in digits (the pair scale is ("1", "2"))."""
    a, b = images or pair_images(bank, n, g)
    gap = scales.digits(attr, statistic(attr, a)) - scales.digits(attr, statistic(attr, b))
    p1 = torch.sigmoid(gap / PAIR_TAU)
    return Batch(f"pair:{attr}", [a, b], torch.stack([p1, 1 - p1], 1),
                 statistic(attr, a) - statistic(attr, b))


def content_batch(bank: CropBank, n: int, g: torch.Generator) -> Batch:
    """Positives: two edits (and grades) of one crop; negatives: crops of different photos."""
    idx = _pick(bank, n, g)
    same = _on(g, n, 0.5)
    idx_b = torch.where(same, idx, _other_photo(bank, idx, g))
    grades_a = torch.randint(len(GRADES), (n,), generator=g).tolist()
    grades_b = torch.randint(len(GRADES), (n,), generator=g).tolist()
    a = apply_grade(random_edit(bank.get(idx), g), grades_a, g)
    b = apply_grade(random_edit(bank.get(idx_b), g), grades_b, g)
    target = two_hot(same.float() * 9.0)
    return Batch("content", [a, b], target, same.float())


# The style task as sampled: "grades" (the first recipe: the 12 GRADES on augmented crops) or
# "looks" (the six STYLE_LOOKS on plain crops, docs/vlm.md).
STYLE_TASKS = ("grades", "looks")


def style_batch(bank: CropBank, n: int, g: torch.Generator, task: str = "grades") -> Batch:
    """Two crops of different photos; positives share the colour grade, negatives do not.

    ``task="looks"``: one of :data:`STYLE_LOOKS` on the bank's plain crops (the photo's own
    colours, no random tint or channel swap under the look); ``"grades"``: one of the 12
    :data:`GRADES` on the augmented crops. A mild exposure change on both first, so the grade
    (not the photo's raw tone) is what matches."""
    if task not in STYLE_TASKS:
        raise KeyError(f"unknown style task {task!r}; known: {', '.join(STYLE_TASKS)}")
    looks = task == "looks"
    if looks and bank.plain is None:
        raise ValueError("the looks style task needs a crop bank with plain crops")
    src = bank.plain if looks else bank
    names, apply = (STYLE_LOOKS, apply_look) if looks else (GRADES, apply_grade)
    idx = _pick(src, n, g)
    idx_b = _other_photo(src, idx, g)
    same = _on(g, n, 0.5)
    ga = torch.randint(len(names), (n,), generator=g)
    shift = torch.randint(1, len(names), (n,), generator=g)
    gb = torch.where(same, ga, (ga + shift) % len(names))
    a = apply(mild_exposure(src.get(idx), g), ga.tolist(), g)
    b = apply(mild_exposure(src.get(idx_b), g), gb.tolist(), g)
    return Batch("style", [a, b], two_hot(same.float() * 9.0), same.float())


def mild_exposure(x: torch.Tensor, g: torch.Generator) -> torch.Tensor:
    n = x.shape[0]
    gamma = torch.exp(_u(g, n, -0.3, 0.3)).view(-1, 1, 1, 1)
    return x.clamp(0, 1) ** gamma


KINDS = tuple([f"single:{a}" for a in ATTRIBUTES] + [f"pair:{a}" for a in ATTRIBUTES]
              + ["content", "style"])


def make_batch(kind: str, bank: CropBank, n: int, scales: Scales, g: torch.Generator,
               images: list[torch.Tensor] | None = None, style_task: str = "grades") -> Batch:
    """One batch of ``kind``; ``images`` (single, pair) asks about given images instead;
    ``style_task``: how the style pairs are made (:func:`style_batch`)."""
    if kind.startswith("single:"):
        return single_batch(bank, kind.split(":", 1)[1], n, scales, g, images)
    if kind.startswith("pair:"):
        return pair_batch(bank, kind.split(":", 1)[1], n, scales, g, images)
    if kind == "content":
        return content_batch(bank, n, g)
    if kind == "style":
        return style_batch(bank, n, g, style_task)
    raise KeyError(f"unknown task kind {kind!r}; known: {', '.join(KINDS)}")


def task_of(kind: str) -> tuple[str, str]:
    """(scorer task, question) of a batch kind."""
    if kind.startswith("single:"):
        return "single", QUESTIONS[kind.split(":", 1)[1]]
    if kind.startswith("pair:"):
        return "pair", PAIR_QUESTIONS[kind.split(":", 1)[1]]
    if kind == "content":
        return "content-similarity", CONTENT_QUESTION
    if kind == "style":
        return "similarity", STYLE_QUESTION
    raise KeyError(kind)
