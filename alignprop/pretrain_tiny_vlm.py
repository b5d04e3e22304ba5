"""Pretrain a tiny VLM that answers questions about photos (InternVL3 or Qwen2.5-VL).

``tiny-vlm-photo`` (InternVL3, the default) or ``tiny-qwen-vl-photo`` (``--family qwen2.5-vl``):

    python -m alignprop.pretrain_tiny_vlm --output_dir outputs/tiny-vlm-photo
    python -m alignprop.pretrain_tiny_vlm --family qwen2.5-vl --vision_steps 450 --steps 600
        --output_dir outputs/tiny-qwen-vl-photo     (one line: the shipped Qwen model's recipe)

``--family qwen2.5-vl`` trains a widened tiny Qwen2.5-VL (:data:`QWEN_ARCH`: real
``Qwen2_5_VLForConditionalGeneration``, ``Qwen2_5_VLProcessor``, Qwen's chat template, patch 8
and a 64x64 pixel budget so that a crop is the same 16 tokens of 16x16 px after the 2x2 merger)
with everything below unchanged; only what differs between the families is in small
functions (:func:`build_model`, :func:`vision_modules`, :func:`image_tokens`,
:func:`vision_features`).

The project's tiny InternVL recipe (real ``InternVLForConditionalGeneration``, its
``InternVLProcessor`` and byte-level tokenizer, 64 px tiles of 16 tokens), widened
(:data:`ARCH`), trained on CPU from the photos ``tiny-photo`` was pretrained on (held out and
never seen: astronaut, chelsea, coffee, rocket), on augmented 64x64 crops
(:mod:`alignprop.tiny_vlm_data`), for the scorer's tasks with short questions:

* ``single``: "How bright is the photo?", "How warm are the colours?", "How colourful is the
  photo?", "How sharp is the photo?" (answer 0..9);
* ``pair``: "Which image is brighter / warmer / more colourful / sharper?" (answer 1 or 2;
  both orders occur in training);
* ``content-similarity``: "Same content in both?" (two edits of one crop vs crops of
  different photos);
* ``similarity`` (style): "Same colour grade in both?" (same look on two different photos vs
  different looks). The exact questions: :mod:`alignprop.tiny_vlm_data`.

Stage 1 teaches the vision tower and projector alone on dense targets; stage 2 the whole
language model on the questions, with deep supervision of the two-image questions: the
per-cell differences of the two images (:func:`comparison_loss`) and, with ``--route_heads N``
(off by default, as in the shipped model: docs/vlm.md says why), the attention that carries
image 1 to image 2 (:func:`routing_loss`). The defaults are the shipped model's recipe: run
with ``--force`` (its checks do not all pass), the command writes the shipped files byte for
byte on this kind of machine.

Every batch is asked through :class:`rewards.vlm.VLMReward` itself (its chat template, image
placeholders and answer tokens), and the loss is the cross-entropy of the answer log-probs it
reads with the target distribution (two nearest digits of the scaled statistic, a sigmoid of the
gap for pairs). Then the model is written in the ``save_pretrained`` layout to a temporary
folder and scored on held-out crops through the code users run (``make_vlm_reward`` on that
local folder, both calibrations); the folder becomes ``--output_dir`` only when every check
passes (:data:`THRESHOLDS`), or with ``--force``. ``manifest.json`` beside the weights holds
the sha256 of every file, the exact command, its time and the machine's load, and the held-out
report. The shipped copies in ``rewards/assets/tiny-vlm-photo`` and
``rewards/assets/tiny-qwen-vl-photo`` are copied there by hand: this
command refuses to write into a package's assets folder. Deterministic for a given machine and
library versions (seeded; 1 thread by default).
"""
from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from common.cli import (
    UserError,
    command_line,
    int_at_least,
    nonneg_float,
    nonneg_int,
    positive_float,
    positive_int,
    run_cli,
)
from common.paths import check_not_shipped, set_aside
from common.photos import HELD_OUT, MATPLOTLIB_TRAIN, SKIMAGE_TRAIN
from rewards.vlm import VLMReward, make_vlm_reward
from rewards.vlm_families import family_for_model_type
from rewards.vlm_families.internvl import build_tiny_internvl
from rewards.vlm_families.qwen2_5_vl import TINY_CHAT_TEMPLATE as QWEN_CHAT_TEMPLATE
from rewards.vlm_families.qwen2_5_vl import build_tiny_tokenizer as build_qwen_tokenizer
from rewards.vlm_families.qwen2_5_vl import special_ids as qwen_special_ids
from rewards.vlm_families.qwen2_5_vl import token_ids as qwen_token_ids
from rewards.vlm_families.tiny_tokenizer import padded_vocab
from rewards.vlm_model import VLMBundle, clear_cache
from rewards.vlm_named import ASSET_ROOT, MANIFEST, file_entries
from rewards.vlm_prompts import parse_answer_scale

from . import tiny_vlm_data as data

NAME = "tiny-vlm-photo"
# --family -> the name its model ships under (rewards/vlm_named.py)
NAMES = {"internvl": NAME, "qwen2.5-vl": "tiny-qwen-vl-photo"}
FAMILIES = tuple(NAMES)
DEFAULT_FAMILY = "internvl"
# The widened tiny InternVL: vision 64 x 2 layers (patch 8, 64 px, 16 tokens after the pixel
# shuffle), Qwen2 text 128 x 3 layers, 4 heads / 2 kv heads, the tiny byte-level vocabulary.
ARCH = {"vision_hidden": 96, "vision_layers": 3, "vision_heads": 4, "vision_mlp": 384,
        "text_hidden": 128, "text_layers": 3, "text_heads": 8, "text_kv_heads": 4,
        "text_mlp": 256, "ordinal_init": True}
THRESHOLDS = {"spearman_min": {"brightness": 0.95, "warmth": 0.95, "colourfulness": 0.95,
                               "sharpness": 0.80},
              "pair_accuracy_min": 0.90, "content_auc_min": 0.90, "style_auc_min": 0.90,
              "antisymmetry_max": 1e-5}
# Pairs whose statistics differ by less than this (in digits of the 0..9 scale) are too close
# to call; they are left out of the pair accuracy (and counted in "pair_accuracy_all").
PAIR_MIN_GAP = 0.5
# Calibrations the checks hold for (both are reported and both are checked).
CHECKED_CALIBRATIONS = ("none", "pmi_null")
EVAL_SEED = 20261206        # the held-out crops and edits: fixed, whatever --seed is
EVAL_CROPS = 256
EVAL_SAMPLES = 256
WEIGHTS_MAX_BYTES = 10 * 1000 * 1000
PACKAGE_ASSETS = (ASSET_ROOT, Path(__file__).resolve().parent / "assets")
# The widened tiny Qwen2.5-VL, comparable with ARCH: the same text model (Qwen2 layers with
# Qwen2.5-VL's 3-D rotary positions, head_dim 16 split (4, 2, 2) over time, height, width), a
# vision tower of the same width and depth whose gated MLP (3 matrices) is 256 wide so that it
# holds what InternVL's 384-wide plain MLP holds, and Qwen's 2x2 patch merger. Patch 8 and a
# pixel budget of at most 64x64 keep the 64 px grid InternVL sees: 8x8 patches, 16 image
# tokens of 16x16 px (Qwen2.5-VL's own patch is 14, which would show a 64 px crop at 56 px, 4
# tokens). Windowed attention (32 px windows: 2x2 tokens) in the first two blocks, full
# attention in the last, as Qwen2.5-VL interleaves them.
QWEN_ARCH = {"vision_hidden": 96, "vision_layers": 3, "vision_heads": 4, "vision_mlp": 256,
             "patch": 8, "merge": 2, "window": 32, "full_attention_blocks": [2],
             "min_pixels": 32 * 32, "max_pixels": 64 * 64,
             "text_hidden": 128, "text_layers": 3, "text_heads": 8, "text_kv_heads": 4,
             "text_mlp": 256, "mrope_section": [4, 2, 2], "ordinal_init": True}


# --------------------------------------------------------------------------- model
def build_model(family: str, seed: int):
    """Untrained widened tiny model of ``--family`` + its processor."""
    return {"internvl": build_internvl, "qwen2.5-vl": build_qwen2_5_vl}[family](seed)


def architecture(family: str) -> dict:
    return {"internvl": ARCH, "qwen2.5-vl": QWEN_ARCH}[family]


def build_qwen2_5_vl(seed: int):
    """Untrained widened tiny Qwen2.5-VL (:data:`QWEN_ARCH`) + a real Qwen2_5_VLProcessor with
    the project's byte-level tokenizer and Qwen's chat template (default system turn)."""
    from transformers import (
        Qwen2_5_VLConfig,
        Qwen2_5_VLForConditionalGeneration,
        Qwen2_5_VLProcessor,
        Qwen2VLImageProcessor,
        Qwen2VLVideoProcessor,
    )

    a = QWEN_ARCH
    tokenizer = build_qwen_tokenizer()
    vision = {"depth": a["vision_layers"], "hidden_size": a["vision_hidden"],
              "intermediate_size": a["vision_mlp"], "num_heads": a["vision_heads"],
              "patch_size": a["patch"], "spatial_merge_size": a["merge"],
              "temporal_patch_size": 2, "window_size": a["window"],
              "fullatt_block_indexes": a["full_attention_blocks"],
              "out_hidden_size": a["text_hidden"], "tokens_per_second": 2}
    text = {"hidden_size": a["text_hidden"], "intermediate_size": a["text_mlp"],
            "num_hidden_layers": a["text_layers"], "num_attention_heads": a["text_heads"],
            "num_key_value_heads": a["text_kv_heads"], "vocab_size": padded_vocab(tokenizer),
            "max_position_embeddings": 1024, **qwen_special_ids(tokenizer),
            "rope_parameters": {"rope_type": "default", "rope_theta": 1e6,
                                "mrope_section": a["mrope_section"]}}
    config = Qwen2_5_VLConfig(vision_config=vision, text_config=text, tie_word_embeddings=True,
                              **qwen_token_ids(tokenizer))
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = Qwen2_5_VLForConditionalGeneration(config)
        if a.get("ordinal_init"):
            ordinal_digit_init(model, tokenizer, seed)
    grid = {"patch_size": a["patch"], "merge_size": a["merge"], "temporal_patch_size": 2}
    image_processor = Qwen2VLImageProcessor(**grid, min_pixels=a["min_pixels"],
                                            max_pixels=a["max_pixels"])
    processor = Qwen2_5_VLProcessor(image_processor=image_processor, tokenizer=tokenizer,
                                    video_processor=Qwen2VLVideoProcessor(**grid),
                                    chat_template=QWEN_CHAT_TEMPLATE)
    return model, processor


def vision_modules(model) -> list[torch.nn.Module]:
    """What stage 1 trains: everything that turns pixels into the language model's image
    tokens (InternVL: vision tower + projector; Qwen2.5-VL: ``visual``, its merger included)."""
    vlm = model.model
    if hasattr(vlm, "visual"):
        return [vlm.visual]
    return [vlm.vision_tower, vlm.multi_modal_projector]


def image_tokens(bundle: VLMBundle, layout) -> int:
    """Image tokens per 64 px image (InternVL: ``image_seq_length`` per tile; Qwen-VL: the
    patch grid after the 2x2 merger)."""
    if bundle.family.name == "InternVL3":
        return int(bundle.model.config.image_seq_length)
    t, h, w = layout
    return t * h * w // bundle.spec.merge_size ** 2


def vision_features(bundle: VLMBundle, pixels: torch.Tensor, layout
                    ) -> tuple[torch.Tensor, torch.Tensor]:
    """Prepared pixels of R images -> (image tokens the language model reads (R, T, D), in the
    order of the 16 x 16 px cells row-major; the vision tower's last patch states (R, 64, Dv),
    8 x 8 px patches row-major): what the dense stage-1 targets are read off."""
    vlm = bundle.model.model
    if bundle.family.name == "InternVL3":
        out = vlm.get_image_features(pixel_values=pixels.flatten(0, 1))
        return out.pooler_output, out.last_hidden_state[:, 1:]      # drop the CLS position
    from transformers.vision_utils import get_vision_window_index

    r = pixels.shape[0]
    grid = torch.tensor([list(layout)] * r)
    out = vlm.visual(pixels.flatten(0, 1), grid_thw=grid)
    tokens = out.pooler_output.view(r, -1, out.pooler_output.shape[-1])  # merged groups, row-major
    # the patch states come out in the window attention's order: put the merged groups back
    # (as the merger's output is), then undo the 2x2-inside-a-group order of Qwen's patches
    cfg = vlm.visual.config
    window, _ = get_vision_window_index(grid, cfg.spatial_merge_size, cfg.window_size,
                                        cfg.patch_size)
    m = cfg.spatial_merge_size
    states = out.last_hidden_state.view(-1, m * m, out.last_hidden_state.shape[-1])
    states = states[torch.argsort(window)]
    _, h, w = layout
    states = states.view(r, h // m, w // m, m, m, -1).permute(0, 1, 3, 2, 4, 5)
    return tokens, states.reshape(r, h * w, -1)


def build_internvl(seed: int):
    """Untrained widened tiny InternVL + the project's tiny InternVL processor."""
    from transformers import (
        InternVLConfig,
        InternVLForConditionalGeneration,
        InternVLVisionConfig,
        Qwen2Config,
    )

    tiny, processor = build_tiny_internvl()     # the processor, tokenizer and chat template
    base = tiny.config
    a = ARCH
    vision = InternVLVisionConfig(
        hidden_size=a["vision_hidden"], num_hidden_layers=a["vision_layers"],
        num_attention_heads=a["vision_heads"], intermediate_size=a["vision_mlp"],
        image_size=base.vision_config.image_size, patch_size=base.vision_config.patch_size)
    text = Qwen2Config(hidden_size=a["text_hidden"], intermediate_size=a["text_mlp"],
                       num_hidden_layers=a["text_layers"], num_attention_heads=a["text_heads"],
                       num_key_value_heads=a["text_kv_heads"],
                       vocab_size=padded_vocab(processor.tokenizer),
                       max_position_embeddings=1024, tie_word_embeddings=True,
                       initializer_range=a.get("init", 0.02))
    config = InternVLConfig(vision_config=vision, text_config=text,
                            image_token_id=base.image_token_id,
                            image_seq_length=base.image_seq_length,
                            downsample_ratio=base.downsample_ratio)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = InternVLForConditionalGeneration(config)
        if a.get("ordinal_init"):
            ordinal_digit_init(model, processor.tokenizer, seed)
    return model, processor


def ordinal_digit_init(model, tokenizer, seed: int) -> None:
    """Start the digit tokens' (tied) embeddings on a quadratic curve e_k = a_k + k b + k^2 c.

    The logits of the ten answers are then ``h . a_k + k (h . b) + k^2 (h . c)``: a discretised
    Gaussian over 0..9 whose mean and width are two linear read-outs of the last hidden state,
    so the ordinal structure of the scale is there from the first step instead of being found
    digit by digit. "7" and " 7" (both read as the answer 7) start equal. Training moves them
    freely afterwards.
    """
    emb = model.get_input_embeddings().weight
    g = torch.Generator().manual_seed(seed + 3)
    dim = emb.shape[1]
    b = torch.randn(dim, generator=g)
    c = torch.randn(dim, generator=g)
    b, c = 0.2 * b / b.norm(), 0.2 / 9 * c / c.norm()
    with torch.no_grad():
        for k in range(10):
            row = emb[tokenizer.convert_tokens_to_ids(str(k))].clone() * 0.5 + k * b + k * k * c
            for tok in (str(k), "\u0120" + str(k)):
                emb[tokenizer.convert_tokens_to_ids(tok)] = row


def training_bundle(model, processor) -> VLMBundle:
    family = family_for_model_type(model.config.model_type)
    return VLMBundle(model=model, processor=processor, model_id="tiny VLM (training)",
                     dtype=torch.float32, device=torch.device("cpu"), family=family,
                     spec=family.image_spec(model, processor))


def task_rewards(bundle: VLMBundle) -> dict[str, VLMReward]:
    """One reward per task kind, built exactly as make_vlm_reward builds it."""
    out = {}
    for kind in data.KINDS:
        task, question = data.task_of(kind)
        out[kind] = VLMReward(task, bundle, question, parse_answer_scale(None, task))
    return out


# --------------------------------------------------------------------------- stage 1: vision
def local_targets(x: torch.Tensor, cell: int = 16) -> torch.Tensor:
    """(B,3,64,64) -> (B, (64/cell)^2, 7): per cell x cell square, row-major (the order of the
    vision tower's patches for cell 8, of InternVL's image tokens after its pixel shuffle for
    cell 16), mean luma, R-B, rg, yb, std of rg and yb, log mean |Laplacian|."""
    pool = lambda t: F.avg_pool2d(t, cell).flatten(2).transpose(1, 2)
    w = x.new_tensor([0.2126, 0.7152, 0.0722]).view(1, 3, 1, 1)
    y = (x * w).sum(1, keepdim=True)
    r, g, b = x[:, :1], x[:, 1:2], x[:, 2:]
    rg, yb = r - g, 0.5 * (r + g) - b
    m_rg, m_yb = pool(rg), pool(yb)
    sd_rg = (pool(rg ** 2) - m_rg ** 2).clamp_min(0).add(1e-6).sqrt()
    sd_yb = (pool(yb ** 2) - m_yb ** 2).clamp_min(0).add(1e-6).sqrt()
    lap = torch.log(pool(data.laplacian(y).abs()) + 1e-3)
    out = torch.cat([pool(y), pool(r - b), m_rg, m_yb, sd_rg, sd_yb, lap], -1)
    # roughly unit scale per target (the Laplacian's log is around -4 +- 1.5)
    return (out - out.new_tensor([0.5, 0, 0, 0, 0.1, 0.1, -4.0])) \
        / out.new_tensor([0.25, 0.2, 0.15, 0.2, 0.1, 0.1, 1.5])


# weight of each local target (mean luma, R-B, rg, yb, std rg, std yb, log |Laplacian|): the
# Laplacian is what the vision tower finds hardest (sharpness), so it counts more
LOCAL_WEIGHTS = (1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 4.0)


def _weighted_mse(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    w = pred.new_tensor(LOCAL_WEIGHTS)
    return (((pred - target) ** 2) * w).mean() / w.mean()


# Weight of the grade target in stage 1 (which grade a view carries, or with --style_task
# looks which look a plain crop carries): the style question needs it.
GRADE_WEIGHT = 2.0
# Stage 1: plain crops (no colour augmentation) graded with the style task's looks, per step,
# as a fraction of --vision_batch; and how many plain crops the banks hold.
LOOK_FRACTION = 0.5
PLAIN_CROPS = 2000


class VisionProbes(torch.nn.Module):
    """Heads on the image tokens the language model reads (dropped after stage 1)."""

    def __init__(self, dim: int, tokens: int, grades: int, vision_dim: int):
        super().__init__()
        mlp = lambda o: torch.nn.Sequential(torch.nn.Linear(dim, 256), torch.nn.GELU(),
                                            torch.nn.Linear(256, o))
        self.local = torch.nn.Linear(dim, 7)
        self.patch = torch.nn.Linear(vision_dim, 7)
        self.stats = mlp(len(data.ATTRIBUTES))
        self.grade = mlp(grades)
        self.content = torch.nn.Linear(dim * tokens, 64)


def pretrain_vision(model, processor, bank: data.CropBank, scales: data.Scales, steps: int,
                    batch: int, lr: float, seed: int, log, grade_weight: float = GRADE_WEIGHT,
                    style_task: str = "grades") -> dict:
    """Stage 1: the vision tower and projector alone, with dense auxiliary targets.

    The language model costs ~10x more per image than the vision tower, and an answer token
    carries a few bits; so the image features are first taught directly, on many more images:
    per-token local statistics (:func:`local_targets`), the four global statistics, the
    colour grade (``style_task`` "grades": which of the 12 grades each view carries; "looks":
    which of the six looks a plain crop, graded as the style task grades it, carries -- on
    ``batch * LOOK_FRACTION`` more images), and content (InfoNCE between two independently
    edited and graded views of one crop). The heads are thrown away; stage 2 trains the whole
    model on the questions.
    """
    bundle = training_bundle(model, processor)
    family = bundle.family
    _, layout = family.prepare(bundle, torch.zeros(1, 3, data.SIZE, data.SIZE), {"max_tiles": 1})
    tokens = image_tokens(bundle, layout)
    looks = style_task == "looks"
    probes = VisionProbes(model.config.text_config.hidden_size, tokens,
                          len(data.STYLE_LOOKS if looks else data.GRADES),
                          model.config.vision_config.hidden_size)
    n_look = max(1, round(batch * LOOK_FRACTION))
    params = ([p for m in vision_modules(model) for p in m.parameters()]
              + list(probes.parameters()))
    model.train().requires_grad_(True)
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=0.01)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: _lr(s, steps, min(50, steps)))
    g = torch.Generator().manual_seed(seed + 2)
    ema: dict[str, float] = {}
    t0 = time.time()
    for step in range(steps):
        idx = torch.randint(len(bank), (batch,), generator=g)
        crops = bank.get(idx)
        grades = torch.randint(len(data.GRADES), (2, batch), generator=g)
        views = [data.apply_grade(data.random_edit(crops, g), grades[v].tolist(), g)
                 for v in range(2)]
        if looks:
            # the style task's looks on plain crops: the grade target is read off these
            grade_of = torch.randint(len(data.STYLE_LOOKS), (n_look,), generator=g)
            plain = bank.plain.get(torch.randint(len(bank.plain), (n_look,), generator=g))
            views.append(data.apply_look(data.mild_exposure(plain, g), grade_of.tolist(), g))
            graded = slice(2 * batch, None)
        else:
            grade_of, graded = grades.flatten(), slice(None)
        x = torch.cat(views)
        pixels, layout = family.prepare(bundle, x, {"max_tiles": 1})
        # (2B, 16, text hidden): what the LM reads; (2B, 64, vision hidden): 8x8 px patches
        feats, patches = vision_features(bundle, pixels, layout)
        pooled = feats.mean(1)
        stats = torch.stack([scales.digits(a, data.statistic(a, x)) / 9.0
                             for a in data.ATTRIBUTES], 1)
        z = F.normalize(probes.content(feats.flatten(1)), dim=-1)
        za, zb = z[:batch], z[batch:2 * batch]
        logits = za @ zb.T / 0.1
        target = torch.arange(batch)
        losses = {
            "local": _weighted_mse(probes.local(feats), local_targets(x)),
            "patch": _weighted_mse(probes.patch(patches), local_targets(x, 8)),
            "stats": F.mse_loss(probes.stats(pooled), stats) * 10,
            "grade": grade_weight * F.cross_entropy(probes.grade(pooled[graded]), grade_of),
            "content": 0.5 * (F.cross_entropy(logits, target) + F.cross_entropy(logits.T, target)),
        }
        loss = sum(losses.values())
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        sched.step()
        for k, v in losses.items():
            ema[k] = v.item() if k not in ema else 0.95 * ema[k] + 0.05 * v.item()
        if step % 100 == 0 or step == steps - 1:
            log(f"vision step {step}/{steps} " + " ".join(f"{k} {v:.3f}" for k, v in ema.items())
                + f" {time.time() - t0:.0f}s")
    model.eval().requires_grad_(False)
    return probes


# --------------------------------------------------------------------------- stage 2: questions
# Comparison targets read off the second image's tokens after AUX_LAYER language-model layers:
# the 7 local statistics of the same 16x16 cell, image 2 minus image 1, then "same content" and
# "same colour grade" (content and style batches).
AUX_LAYER = 2
COMPARE_TARGETS = 9
# Routing: in a two-image question, ROUTE_HEADS heads of the first language-model layer are
# taught to attend from image-2 token k to image-1 token k (the same cell of the other image,
# a fixed offset back), and one head of the last layer to attend from the answer position to
# image 2's tokens. Without it the language model did not learn to compare the two images at
# all in this budget (content and style loss stayed at ln 2 for 600 steps, even with the
# content question alone for 150 steps) although a linear probe on the frozen image features
# told same from different content with held-out AUC 0.999; with it, the content question
# alone reached held-out AUC 0.997 in 400 steps.
ROUTE_HEADS = 6
ROUTE_WEIGHT = 1.0      # --route_weight: the first-layer term (image 2 token k -> image 1 token k)
READ_WEIGHT = 1.0       # --read_weight: the last-layer term (the answer -> image 2)
# The two-image kinds, all of which carry the routing loss by default (--route_kinds).
TWO_IMAGE_KINDS = tuple(k for k in data.KINDS if not k.startswith("single:"))
# Weight of each kind's answer loss in the mix (others 1). The content and style questions
# are learned last (their answer needs the routed comparison first) and only when their
# gradient is not drowned by the eight others': trained alone from a mixed model, content went
# from ln 2 to held-out AUC 0.995 in 250 steps -- and the single questions were forgotten.
TWO_IMAGE_WEIGHT = 4.0          # content and style (1 for the other kinds)


def routing_loss(out, input_ids: torch.Tensor, image_token: int, heads: int = ROUTE_HEADS,
                 route_weight: float = ROUTE_WEIGHT, read_weight: float = READ_WEIGHT
                 ) -> torch.Tensor:
    """Cross-entropy of the attention that carries image 1 to image 2 (``heads`` heads of the
    first layer, weighted ``route_weight``) and image 2 to the answer (one head of the last
    layer, weighted ``read_weight``) in a two-image question."""
    pos = (input_ids[0] == image_token).nonzero()[:, 0]
    n = len(pos) // 2
    p1, p2 = pos[:n], pos[n:]
    first = out.attentions[0][:, :heads]                          # (R, H, L, L)
    to_partner = first[:, :, p2][:, :, torch.arange(n), p1]       # (R, H, n)
    loss = -to_partner.clamp_min(1e-6).log().mean()
    last = out.attentions[-1][:, 0, -1]                           # (R, L): the answer position
    read = last[:, p2].sum(-1)
    return route_weight * loss + read_weight * -read.clamp_min(1e-6).log().mean()


def comparison_loss(head, kind: str, batch: data.Batch, hidden: torch.Tensor,
                    input_ids: torch.Tensor, image_token: int) -> torch.Tensor:
    """Deep supervision of the comparison a two-image question needs.

    The answer token carries a few bits per sample, and the language model first has to find
    out that a token of image 2 should look at the same cell of image 1 (a fixed offset back):
    every image-2 token is asked, through a linear head dropped after training, for the
    difference of the local statistics of its cell between the two images (and, for the content
    and style questions, whether the images are the same crop / carry the same grade). Dense
    targets on 16 tokens per sample teach that comparison far faster than the answer alone.
    """
    r = hidden.shape[0]
    tokens = hidden[input_ids == image_token].view(r, 2, -1, hidden.shape[-1])[:, 1]  # image 2
    pred = head(tokens)                                                           # (R, 16, 9)
    diff = local_targets(batch.slots[1]) - local_targets(batch.slots[0])
    loss = F.mse_loss(pred[..., :7], diff)
    if kind in ("content", "style"):
        col = 7 if kind == "content" else 8
        flag = batch.label.view(-1, 1).expand(-1, pred.shape[1])
        loss = loss + F.binary_cross_entropy_with_logits(pred[..., col], flag)
    return loss


# Questions that lag with equal weights get more (the others 1; content and style:
# --two_image_weight). Measured: docs/vlm.md.
QUESTION_WEIGHTS: dict[str, float] = {}
# The "looks" recipe measured in docs/vlm.md (not shipped): colourfulness and the sharpness pair
# x2, style x1 (content stays at --two_image_weight).
LOOKS_QUESTION_WEIGHTS = "single:colourfulness=2,pair:sharpness=2,style=1"


def _format_weights(w: dict[str, float]) -> str:
    return ",".join(f"{k}={v:g}" for k, v in w.items()) or "none"


def _question_weights(text: str) -> dict[str, float]:
    """'kind=w,...' -> {kind: w} (argparse type; 'none' -> {})."""
    if text.strip().lower() == "none":
        return {}
    out = {}
    for item in text.split(","):
        kind, sep, value = item.strip().partition("=")
        if not sep or kind not in data.KINDS:
            raise argparse.ArgumentTypeError(
                f"{item.strip()!r}: expected kind=weight with kind one of {', '.join(data.KINDS)}")
        try:
            w = float(value)
        except ValueError:
            w = float("nan")
        if not (math.isfinite(w) and w > 0):
            raise argparse.ArgumentTypeError(f"{item.strip()!r}: the weight must be a positive "
                                             f"number")
        out[kind] = w
    return out


def _route_kinds(text: str) -> tuple[str, ...]:
    """'all' or 'kind,...' of two-image kinds -> the kinds whose batches carry the routing loss
    (argparse type), in data.KINDS order."""
    if text.strip().lower() == "all":
        return TWO_IMAGE_KINDS
    chosen = {k.strip() for k in text.split(",")}
    bad = sorted(chosen - set(TWO_IMAGE_KINDS))
    if bad:
        raise argparse.ArgumentTypeError(f"{bad[0]!r}: expected 'all' or two-image kinds among "
                                         f"{', '.join(TWO_IMAGE_KINDS)}")
    return tuple(k for k in TWO_IMAGE_KINDS if k in chosen)


def _format_kinds(kinds: tuple[str, ...]) -> str:
    return "all" if tuple(kinds) == TWO_IMAGE_KINDS else ",".join(kinds)


def _lr(step: int, total: int, warmup: int) -> float:
    if step < warmup:
        return (step + 1) / warmup
    return 0.5 * (1 + math.cos(math.pi * (step - warmup) / max(1, total - warmup)))


def train(model, processor, bank: data.CropBank, scales: data.Scales, steps: int, batch: int,
          lr: float, seed: int, log, kinds=data.KINDS, warmup: int = 100,
          vision_lr_scale: float = 1.0, expected_weight: float = 0.0,
          route_heads: int = 0, two_image_weight: float = TWO_IMAGE_WEIGHT,
          question_weights: dict[str, float] | None = None, style_task: str = "grades",
          route_weight: float = ROUTE_WEIGHT, read_weight: float = READ_WEIGHT,
          route_steps: int = 0, route_kinds: tuple[str, ...] = TWO_IMAGE_KINDS) -> dict:
    """Every step asks every task kind one batch; returns the last losses per kind.

    ``route_heads`` 0 (no routing loss, the default attention implementation) is the shipped
    model's recipe; with ``two_image_weight`` 1 as well, the first shipped model's. With
    ``route_heads`` > 0 the routing loss is weighted ``route_weight`` / ``read_weight``, taught
    on the batches of ``route_kinds`` only and during the first ``route_steps`` steps only (0:
    every step); those defaults are the routed recipe of docs/vlm.md."""
    weights = {"content": two_image_weight, "style": two_image_weight,
               **(question_weights or {})}
    bundle = training_bundle(model, processor)
    rewards = task_rewards(bundle)
    model.train().requires_grad_(True)
    vision = [p for m in vision_modules(model) for p in m.parameters()]
    ids = {id(p) for p in vision}
    rest = [p for p in model.parameters() if id(p) not in ids]
    if vision_lr_scale == 0:
        for p in vision:
            p.requires_grad_(False)
        groups = [{"params": rest, "lr": lr}]
    else:
        groups = [{"params": rest, "lr": lr}, {"params": vision, "lr": lr * vision_lr_scale}]
    compare = torch.nn.Linear(model.config.text_config.hidden_size, COMPARE_TARGETS)
    groups.append({"params": list(compare.parameters()), "lr": lr})
    image_token = int(model.config.image_token_id)
    # the routing loss reads attention maps, which only the eager attention returns (the
    # weights are the same for every implementation; the saved config keeps the default)
    attention = model.config._attn_implementation
    if route_heads:
        model.set_attn_implementation("eager")
    params = [p for grp in groups for p in grp["params"]]
    opt = torch.optim.AdamW(groups, lr=lr, weight_decay=0.01)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: _lr(s, steps, min(warmup, steps)))
    g = torch.Generator().manual_seed(seed + 1)
    ema: dict[str, float] = {}
    t0 = time.time()
    for step in range(steps):
        opt.zero_grad(set_to_none=True)
        # the four single (and the four pair) questions are asked about the same images in a
        # step: the same pixels with different targets is what teaches the model to read the
        # question
        shared = {"single": data.single_images(bank, batch, g),
                  "pair": data.pair_images(bank, batch, g)}
        for kind in kinds:
            b = data.make_batch(kind, bank, batch, scales, g, shared.get(kind.split(":")[0]),
                                style_task)
            reward = rewards[kind]
            if len(b.slots) == 2:
                logp, out, ids = reward.answer_logprobs(b.slots, inner=True)
                aux = comparison_loss(compare, kind, b, out.hidden_states[AUX_LAYER], ids,
                                      image_token)
                if route_heads and kind in route_kinds and (not route_steps
                                                             or step < route_steps):
                    aux = aux + routing_loss(out, ids, image_token, route_heads, route_weight,
                                             read_weight)
            else:
                logp, aux = reward.answer_logprobs(b.slots), 0.0
            loss = -(b.target * logp).sum(1).mean()
            if expected_weight:
                # the score the reward reports (expected answer value), against the target's
                values = logp.new_tensor(reward.answer_scale.normalised_values())
                loss = loss + expected_weight * F.mse_loss(logp.softmax(-1) @ values,
                                                           b.target @ values)
            ((weights.get(kind, 1.0) * loss + aux) / len(kinds)).backward()
            ema[kind] = loss.item() if kind not in ema else 0.95 * ema[kind] + 0.05 * loss.item()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        sched.step()
        if step % 50 == 0 or step == steps - 1:
            log(f"step {step}/{steps} " + " ".join(f"{k.split(':')[-1][:6]} {v:.3f}"
                                                   for k, v in ema.items())
                + f" {time.time() - t0:.0f}s")
    if route_heads:
        model.set_attn_implementation(attention)
    model.eval().requires_grad_(False)
    return ema


# --------------------------------------------------------------------------- evaluation
def spearman(a: torch.Tensor, b: torch.Tensor) -> float:
    from scipy.stats import spearmanr

    return float(spearmanr(a.numpy(), b.numpy()).statistic)


def auc(scores: torch.Tensor, labels: torch.Tensor) -> float:
    """Area under the ROC curve (ties count half): P(score of a positive > a negative)."""
    from scipy.stats import rankdata

    ranks = torch.tensor(rankdata(scores.numpy()))
    pos = labels.bool()
    n_pos, n_neg = int(pos.sum()), int((~pos).sum())
    return float((ranks[pos].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def held_out_batches(scales: data.Scales, crops: int = EVAL_CROPS,
                     samples: int = EVAL_SAMPLES, style_task: str = "grades"
                     ) -> dict[str, data.Batch]:
    """Fixed batches of every task kind from the held-out photos (never seen in training); the
    style pairs as ``style_task`` makes them (the same way as in training)."""
    bank = data.crop_bank(crops, EVAL_SEED, held_out=True,
                          plain=crops if style_task == "looks" else 0)
    out = {}
    for i, kind in enumerate(data.KINDS):
        g = torch.Generator().manual_seed(EVAL_SEED + i)
        out[kind] = data.make_batch(kind, bank, samples, scales, g, style_task=style_task)
    return out


@torch.no_grad()
def _scores(reward: VLMReward, slots: list[torch.Tensor], chunk: int = 64) -> torch.Tensor:
    n = slots[0].shape[0]
    return torch.cat([reward.score_slots([s[i:i + chunk] for s in slots]).scores
                      for i in range(0, n, chunk)])


def evaluate(model_dir: Path, scales: data.Scales, batches: dict[str, data.Batch]) -> dict:
    """Held-out figures of the saved model, scored through make_vlm_reward (both calibrations)."""
    report: dict = {"pair_min_gap_digits": PAIR_MIN_GAP, "samples_per_task": None}
    for calibration in ("none", "pmi_null"):
        rep: dict = {"spearman": {}, "pair_accuracy": {}, "pair_accuracy_all": {},
                     "pair_antisymmetry_max": {}}
        for kind, b in batches.items():
            task, question = data.task_of(kind)
            reward = make_vlm_reward(task, model_id=str(model_dir), dtype="float32",
                                     device="cpu", prompt=question, calibration=calibration)
            report["samples_per_task"] = b.slots[0].shape[0]
            if task == "single":
                s = _scores(reward, b.slots)
                rep["spearman"][kind.split(":")[1]] = spearman(s, b.label)
            elif task == "pair":
                attr = kind.split(":")[1]
                s_ab = _scores(reward, b.slots)
                s_ba = _scores(reward, b.slots[::-1])
                gap = b.label / (scales.high[attr] - scales.low[attr]) * 9.0
                decided = gap.abs() >= PAIR_MIN_GAP
                right = (s_ab > 0.5) == (gap > 0)
                rep["pair_accuracy"][attr] = float(right[decided].float().mean())
                rep["pair_accuracy_all"][attr] = float(right[gap != 0].float().mean())
                rep["pair_antisymmetry_max"][attr] = float((s_ab + s_ba - 1).abs().max())
            else:
                s = _scores(reward, b.slots)
                rep["content_auc" if kind == "content" else "style_auc"] = auc(s, b.label)
        report[calibration] = rep
    return report


def checks(report: dict) -> dict[str, bool]:
    t = THRESHOLDS
    out = {}
    for cal in CHECKED_CALIBRATIONS:
        rep = report[cal]
        for attr, lo in t["spearman_min"].items():
            out[f"{cal}/spearman_{attr}_at_least_{lo}"] = rep["spearman"][attr] >= lo
        for attr, acc in rep["pair_accuracy"].items():
            out[f"{cal}/pair_{attr}_accuracy_at_least_{t['pair_accuracy_min']}"] = \
                acc >= t["pair_accuracy_min"]
        out[f"{cal}/pair_scores_sum_to_one"] = \
            max(rep["pair_antisymmetry_max"].values()) <= t["antisymmetry_max"]
        out[f"{cal}/content_auc_at_least_{t['content_auc_min']}"] = \
            rep["content_auc"] >= t["content_auc_min"]
        out[f"{cal}/style_auc_at_least_{t['style_auc_min']}"] = \
            rep["style_auc"] >= t["style_auc_min"]
    return out


def print_report(report: dict, print_=print) -> None:
    for cal in ("none", "pmi_null"):
        rep = report[cal]
        print_(f"held-out, calibration {cal}:")
        print_("  spearman     " + "  ".join(f"{a} {v:.3f}" for a, v in rep["spearman"].items()))
        print_("  pair acc     " + "  ".join(f"{a} {v:.3f}" for a, v in rep["pair_accuracy"].items())
               + f"  (|gap| >= {PAIR_MIN_GAP} digit)")
        print_("  pair acc all " + "  ".join(f"{a} {v:.3f}"
                                            for a, v in rep["pair_accuracy_all"].items()))
        print_(f"  max |s(A,B) + s(B,A) - 1| {max(rep['pair_antisymmetry_max'].values()):.2e}")
        print_(f"  content AUC {rep.get('content_auc', float('nan')):.3f}  style AUC {rep.get('style_auc', float('nan')):.3f}")


# --------------------------------------------------------------------------- output
def earlier_run(out: Path) -> bool:
    """True when ``out`` holds what this command wrote before (its manifest names the model)."""
    try:
        return json.loads((out / MANIFEST).read_text()).get("model") in NAMES.values()
    except (OSError, ValueError, AttributeError):
        return False


def check_output_dir(out: Path) -> None:
    """A new or empty folder, or an earlier run of this command (replaced when this one is
    written; its files are set aside first); anything else is refused: nothing of the user's
    is written over. The shipped weights are copied in by hand: never into a package's assets."""
    check_not_shipped("--output_dir", out, PACKAGE_ASSETS)
    if out.exists() and not out.is_dir():
        raise UserError(f"--output_dir {out} is a file, not a folder")
    if out.is_dir() and any(out.iterdir()) and not earlier_run(out):
        raise UserError(f"--output_dir {out} is not an empty folder nor an earlier run of this "
                        f"command ({' / '.join(NAMES.values())}); "
                        f"give a new one (nothing is written over)")


def save(model, processor, folder: Path) -> None:
    folder.mkdir(parents=True)
    model.save_pretrained(folder)
    processor.save_pretrained(folder)
    for p in folder.iterdir():
        os.chmod(p, 0o644)       # safetensors writes 0600; shipped files are world-readable


def _versions() -> dict:
    import transformers

    return {"torch": torch.__version__, "transformers": transformers.__version__}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m alignprop.pretrain_tiny_vlm",
                                     description=__doc__.splitlines()[0])
    parser.add_argument("--output_dir", required=True,
                        help=f"New folder for the model (save_pretrained layout) and "
                             f"{MANIFEST}; never inside a package's assets folder.")
    parser.add_argument("--family", choices=FAMILIES, default=DEFAULT_FAMILY,
                        help="Which tiny VLM to train: 'internvl' (InternVL3, shipped as "
                             f"{NAMES['internvl']}) or 'qwen2.5-vl' (Qwen2.5-VL, shipped as "
                             f"{NAMES['qwen2.5-vl']}); same stages, tasks and checks.")
    parser.add_argument("--vision_steps", type=nonneg_int, default=600,
                        help="Stage 1: optimizer steps of the vision tower and projector alone "
                             "on dense targets (0 skips it).")
    parser.add_argument("--vision_batch", type=positive_int, default=64,
                        help="Stage 1: crops per step (each seen in two edited views).")
    parser.add_argument("--vision_lr", type=positive_float, default=2e-3,
                        help="Stage 1: peak AdamW learning rate (cosine).")
    parser.add_argument("--vision_lr_scale", type=nonneg_float, default=0.0,
                        help="Stage 2: learning rate of the vision tower and projector as a "
                             "fraction of --lr (0: frozen after stage 1, and cheaper).")
    parser.add_argument("--steps", type=positive_int, default=900,
                        help="Stage 2: optimizer steps of the whole model on the questions; each "
                             "asks every task kind one batch.")
    parser.add_argument("--batch", type=positive_int, default=8,
                        help="Images (or pairs) per task kind per step.")
    parser.add_argument("--lr", type=positive_float, default=3e-3,
                        help="Stage 2: peak AdamW learning rate (cosine, 100 warm-up steps).")
    parser.add_argument("--crops", type=positive_int, default=6000,
                        help="Augmented training crops.")
    parser.add_argument("--grade_weight", type=positive_float, default=GRADE_WEIGHT,
                        help="Stage 1: weight of the look target (which of the style task's "
                             "looks a plain crop carries; the first shipped model: 1, on "
                             "another task).")
    parser.add_argument("--route_heads", type=int, default=0,
                        choices=range(ARCH["text_heads"] + 1), metavar="N",
                        help="Stage 2: first-layer heads taught to carry image 1 to image 2 in "
                             "two-image questions (default 0: no routing loss, the shipped "
                             f"model's recipe; the routed recipe of docs/vlm.md: {ROUTE_HEADS}).")
    parser.add_argument("--route_weight", type=nonneg_float, default=ROUTE_WEIGHT,
                        help="Stage 2: weight of the routing loss's first-layer term (image-2 "
                             "token k attending to image-1 token k; with --route_heads > 0).")
    parser.add_argument("--read_weight", type=nonneg_float, default=READ_WEIGHT,
                        help="Stage 2: weight of the routing loss's last-layer term (the answer "
                             "attending to image 2; with --route_heads > 0).")
    parser.add_argument("--route_steps", type=nonneg_int, default=0,
                        help="Stage 2: teach the routing loss during the first N steps only, "
                             "then the answers alone (0: every step; at most --steps; with "
                             "--route_heads > 0).")
    parser.add_argument("--route_kinds", type=_route_kinds, default=TWO_IMAGE_KINDS,
                        help="Stage 2: the two-image questions whose batches carry the routing "
                             "loss, 'all' or 'kind,...' among " + ", ".join(TWO_IMAGE_KINDS)
                             + " (default all; with --route_heads > 0).")
    parser.add_argument("--two_image_weight", type=positive_float, default=TWO_IMAGE_WEIGHT,
                        help="Stage 2: weight of the content and style answers in the mix "
                             "(the others: 1; the first shipped model: 1).")
    parser.add_argument("--question_weights", type=_question_weights, default=QUESTION_WEIGHTS,
                        help="Stage 2: weight of chosen questions' answers in the mix, "
                             "'kind=w,...' with kinds " + ", ".join(data.KINDS) + " (over "
                             "--two_image_weight for content and style; others 1; 'none': all "
                             "1). Default: " + _format_weights(QUESTION_WEIGHTS) + "; the looks "
                             "recipe of docs/vlm.md: " + LOOKS_QUESTION_WEIGHTS + ".")
    parser.add_argument("--style_task", choices=data.STYLE_TASKS, default="grades",
                        help="How the style pairs are made (both in training and in the held-out "
                             "evaluation): 'grades', the 12 grades on augmented crops (the "
                             "shipped model's); 'looks', six strongly distinct looks on plain "
                             "crops (docs/vlm.md), with a look target in stage 1.")
    parser.add_argument("--eval_samples", type=int_at_least(8), default=EVAL_SAMPLES,
                        help="Held-out samples per task kind.")
    parser.add_argument("--seed", type=nonneg_int, default=0)
    parser.add_argument("--threads", type=positive_int, default=1,
                        help="torch CPU threads (1: reproducible and best on a shared machine).")
    parser.add_argument("--force", action="store_true",
                        help="Write the model even when a quality check fails.")
    args = parser.parse_args(argv)
    if args.route_steps > args.steps:
        parser.error(f"argument --route_steps: must be at most --steps ({args.steps}), got "
                     f"{args.route_steps}")
    routing = {"--route_weight": args.route_weight != ROUTE_WEIGHT,
               "--read_weight": args.read_weight != READ_WEIGHT,
               "--route_steps": args.route_steps != 0,
               "--route_kinds": args.route_kinds != TWO_IMAGE_KINDS}
    if not args.route_heads and any(routing.values()):
        flag = next(f for f, given in routing.items() if given)
        parser.error(f"argument {flag}: shapes the routing loss, which --route_heads 0 turns off")
    out = Path(args.output_dir)
    check_output_dir(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    torch.set_num_threads(args.threads)
    start, cpu0, load0 = time.time(), time.process_time(), os.getloadavg()

    def log(msg):
        print(f"[{time.time() - start:6.0f}s] {msg}", flush=True)

    # the plain crops' bank draws its own seeds, but only exists for the looks task: seeding
    # it moves torch's global generator (which initialises the probe heads)
    bank = data.crop_bank(args.crops, args.seed,
                          plain=PLAIN_CROPS if args.style_task == "looks" else 0)
    g = torch.Generator().manual_seed(args.seed)
    scales = data.Scales.from_images(data.random_edit(bank.get(torch.arange(min(4096, len(bank)))),
                                                      g))
    log(f"{len(bank)} crops from {len(SKIMAGE_TRAIN) + len(MATPLOTLIB_TRAIN)} photos; scales "
        + json.dumps({k: [round(v["p2"], 3), round(v["p98"], 3)]
                      for k, v in scales.as_dict().items()}))
    model, processor = build_model(args.family, args.seed)
    family_name = family_for_model_type(model.config.model_type).name
    n_params = sum(p.numel() for p in model.parameters())
    log(f"{family_name} {n_params / 1e6:.2f}M parameters")
    if args.vision_steps:
        pretrain_vision(model, processor, bank, scales, args.vision_steps, args.vision_batch,
                        args.vision_lr, args.seed, log, args.grade_weight, args.style_task)
    vision_s = time.time() - start
    losses = train(model, processor, bank, scales, args.steps, args.batch, args.lr, args.seed, log,
                   vision_lr_scale=args.vision_lr_scale, route_heads=args.route_heads,
                   two_image_weight=args.two_image_weight,
                   question_weights=args.question_weights, style_task=args.style_task,
                   route_weight=args.route_weight, read_weight=args.read_weight,
                   route_steps=args.route_steps, route_kinds=args.route_kinds)
    train_s, train_cpu = time.time() - start, time.process_time() - cpu0
    load1 = os.getloadavg()

    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        folder = tmp / "model"
        save(model, processor, folder)
        batches = held_out_batches(scales, samples=args.eval_samples,
                                   style_task=args.style_task)
        report = evaluate(folder, scales, batches)
        clear_cache()                 # the temporary folder's copy
        report["checks"] = checks(report)
        print_report(report, log)
        passed = all(report["checks"].values())
        for name, ok in report["checks"].items():
            print(f"check {name}: {'PASS' if ok else 'FAIL'}")
        files = file_entries(folder)
        weights = sum(f["bytes"] for f in files.values())
        shown = {**vars(args), "question_weights": _format_weights(args.question_weights),
                 "route_kinds": _format_kinds(args.route_kinds)}
        if args.family == DEFAULT_FAMILY:
            # the InternVL command is recorded as before the flag existed
            del shown["family"]
        if not args.route_heads:
            # the routing loss's shape means nothing without it (and is refused): an unrouted
            # command is recorded as before those flags existed
            for flag in routing:
                del shown[flag.removeprefix("--")]
        command = command_line("python -m alignprop.pretrain_tiny_vlm", shown,
                               skip=("output_dir",))
        manifest = {
            "model": NAMES[args.family], "family": family_name, "command": command,
            "parameters": n_params, "architecture": architecture(args.family),
            "train_seconds": round(train_s, 1), "train_cpu_seconds": round(train_cpu, 1),
            "vision_stage_seconds": round(vision_s, 1),
            "total_seconds": round(time.time() - start, 1), "threads": args.threads,
            "load_average_start": [round(v, 2) for v in load0],
            "load_average_end_of_training": [round(v, 2) for v in load1],
            "held_out": list(HELD_OUT), "train_photos": list(SKIMAGE_TRAIN + MATPLOTLIB_TRAIN),
            "questions": {"single": data.QUESTIONS, "pair": data.PAIR_QUESTIONS,
                          "content-similarity": data.CONTENT_QUESTION,
                          "similarity": data.STYLE_QUESTION},
            "style_task": args.style_task,
            "grades": list(data.STYLE_LOOKS if args.style_task == "looks" else data.GRADES),
            "question_weights": {"content": args.two_image_weight,
                                 "style": args.two_image_weight, **args.question_weights},
            "scales": scales.as_dict(),
            "final_train_losses": {k: round(v, 4) for k, v in losses.items()},
            "thresholds": THRESHOLDS, "report": report, "passed": passed,
            "files": files, "total_bytes": weights, "versions": _versions(),
        }
        (folder / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")
        os.chmod(folder / MANIFEST, 0o644)
        if weights > WEIGHTS_MAX_BYTES:
            log(f"the files take {weights / 1e6:.2f} MB, over the {WEIGHTS_MAX_BYTES / 1e6:.0f} MB "
                f"limit")
            passed = False
        if not passed and not args.force:
            print(f"not written: a check failed (pass --force to write {out} anyway)")
            return 1
        # an earlier run's files are kept in out/replaced-<time>/, never deleted
        out.mkdir(parents=True, exist_ok=True)
        names = sorted(p.name for p in folder.iterdir())
        kept = set_aside(out, names, time.strftime("%Y%m%d-%H%M%S"))
        for n in names:
            os.replace(folder / n, out / n)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    if kept:
        print(f"the earlier run's files are in {kept}")
    print(f"wrote {out} ({weights / 1e6:.2f} MB) after {train_s / 60:.1f} min of training "
          f"({train_cpu / 60:.1f} CPU min; load average {load0[0]:.1f} at start, {load1[0]:.1f} "
          f"at the end of training)")
    return 0 if passed else 1


def cli(argv=None) -> int:
    return run_cli(main, argv, "alignprop.pretrain_tiny_vlm")


if __name__ == "__main__":
    sys.exit(cli())
