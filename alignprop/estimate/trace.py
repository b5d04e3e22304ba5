"""Trace one optimizer step of the training code at real size, without weights.

Every model is built at its real size inside torch's ``FakeTensorMode`` (no download, no GPU,
no large RAM) and one micro-batch goes through the code training runs:
:func:`alignprop.methods.run_method` with :class:`~alignprop.methods.Models` /
:class:`~alignprop.methods.Batch` (so ``--method``, ``--draft_lv_n``, ``--base_consistency_*``
and K act as in training), the sampler (:class:`alignprop.sampler.KontextSampler`), the
LoRA (:func:`alignprop.lora.add_lora`), the reward terms built by their own factories from
the registry's weightless records (:func:`rewards.build_weightless`: the same preprocessing,
token counts and model classes as training), the backward pass and the AdamW update
(:func:`alignprop.run.make_optimizer`, warm). Memory is the live-storage trace of
:mod:`alignprop.fakemem`; FLOPs come from torch's per-op formulas.

Shortcuts, each exact for what it replaces (the printout names the ones it took):

* every no-grad sampler step of a run has the same shapes: the first one of each kind (LoRA
  on, LoRA off for base consistency) is traced and the others add its FLOPs, so the trace
  takes seconds for any N (the loop itself still runs N times, in Python);
* with K > 2 backpropagated steps (``--method alignprop``), two are traced and the other K-2
  add the second one's FLOPs (forward, backward, recompute: its own backward is told apart by
  a gradient hook) and the activations it keeps until backward;
* the reward caches that fill on the first step (pmi_null's gray-image answers, the preference
  models' text features) and the AdamW state exist, as from the second step on;
* ``--method refl`` / ``imagerefl``: the no-grad steps before the grad step are charged at the
  mean of the uniform draw; ``imagerefl`` alternating: the reward step and the flow-matching step
  are both traced, the peak is the larger one and the FLOPs their mean.
"""
from __future__ import annotations

import math
import time
from collections import Counter
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, field
from typing import Any

import torch
from torch.utils._python_dispatch import _disable_current_modes

from rewards import NotWeightless, build_weightless, record
from rewards.base import CompositeReward, RewardTerm
from rewards.perceptual import build_lpips_model
from rewards.vlm_model import clear_weightless_cache

from ..fakemem import CudaAutocastPolicy, Tracker, fake_mode, param_counts
from ..lora import add_lora
from ..methods import Batch, Models, refl_start, refl_step, run_method
from ..reward_flags import reward_specs
from ..run import make_optimizer
from ..sampler import KontextSampler, PromptEmbeds
from .configs import (build_kontext, check_size, kontext_configs, scheduler_from,
                      vlm_config)
from .report import GB, Estimate, advice

VLM_REWARDS = ("internvl", "vlm", "vlm_answer", "original_vlm")
BACKPROP = "activations: transformer (backpropagated steps)"
NO_GRAD = "activations: transformer (no-grad steps, transient)"
K_TRACED = 2        # backpropagated steps traced; more are extrapolated from the second


# --------------------------------------------------------------------------- fake-tensor help
@contextmanager
def _causal_mask_as_on_real_tensors():
    """Let transformers skip the causal mask for a full, unpadded sequence under fake tensors.

    On real tensors a causal LM whose attention mask is all ones passes ``is_causal=True`` to
    SDPA and builds no mask. transformers treats fake tensors as tracing (it cannot read them to
    rule out padding) and materialises an L x L mask per layer instead (kept for backward):
    memory a real run never allocates. The VLM reward never pads (rows of a batch share one
    token sequence), so the mask is all ones here.
    """
    from transformers import masking_utils

    original = masking_utils._ignore_causal_mask_sdpa

    def ignore(padding_mask, q_length, kv_length, q_offset, kv_offset,
               local_attention_size=None):
        if local_attention_size is None and q_length in (1, kv_length):
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


def _checkpoint_with_cuda_policy(fn, *args):
    """diffusers' default checkpoint function, with the policy re-entered for the recompute."""
    from torch.utils.checkpoint import checkpoint

    return checkpoint(fn, *args, use_reentrant=False,
                      context_fn=lambda: (nullcontext(), CudaAutocastPolicy()))


@contextmanager
def _no_init():
    """Weights are never read here: skip their (value-reading) random initialisation."""
    from transformers.initialization import no_init_weights

    with no_init_weights():
        yield


@contextmanager
def _default_dtype(dtype: torch.dtype):
    old = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        yield
    finally:
        torch.set_default_dtype(old)


# --------------------------------------------------------------------------- the sampler
class TracedSampler(KontextSampler):
    """The training sampler, labelled for the tracker, with no-grad steps replayed.

    Nothing of the sampling arithmetic changes: every call goes to :class:`KontextSampler`,
    except a no-grad step whose twin (same shapes, LoRA on/off alike) was traced already: it
    adds that step's FLOPs and returns its input (the next latents have the same shape and
    dtype; no value is ever read). Backpropagated transformer calls are counted and their
    backward told apart by a gradient hook, for the extrapolation in K.
    """

    def __init__(self, *args, tracker: Tracker, lora_layer=None, **kwargs):
        # the scheduler reads its sigmas as numbers, and the schedule (N+1 sigmas and
        # timesteps) stays on the host in training: real tensors, outside the tracker
        with _disable_current_modes():
            super().__init__(*args, **kwargs)
        self.tr = tracker
        self._lora_layer = lora_layer     # tells LoRA-on from LoRA-off (base consistency)
        self._replay: dict[tuple, float] = {}
        self.calls: Counter = Counter()
        self.grad_calls: list[dict] = []  # per backpropagated call: forward FLOPs, bytes kept

    def _key(self, kind: str, latents: torch.Tensor) -> tuple:
        off = bool(self._lora_layer is not None and self._lora_layer.disable_adapters)
        return kind, tuple(latents.shape), off

    def _replayed(self, key) -> bool:
        if key not in self._replay:
            return False
        self.tr.flops["forward"] += self._replay[key]
        self.calls["no_grad"] += 1
        return True

    def step_velocity(self, latents, i, cond, transformer=None):
        if torch.is_grad_enabled():
            j = len(self.grad_calls)
            f0, b0 = self.tr.flops["forward"], self.tr.total
            with self.tr.label(BACKPROP):
                v = super().step_velocity(latents, i, cond, transformer)
            self.grad_calls.append({"forward": self.tr.flops["forward"] - f0,
                                    "bytes": self.tr.total - b0})
            self.calls["grad"] += 1
            if v.requires_grad:   # its backward starts when its gradient arrives
                v.register_hook(lambda g, j=j: self.tr.set_bucket(f"grad call {j}"))
            return v
        key = self._key("velocity", latents)
        if self._replayed(key):
            return torch.empty(latents.shape, dtype=self.dtype)
        f0 = self.tr.flops["forward"]
        with self.tr.label(NO_GRAD):
            v = super().step_velocity(latents, i, cond, transformer)
        self._replay[key] = self.tr.flops["forward"] - f0
        self.calls["no_grad"] += 1
        return v

    def ode_step(self, latents, i, cond, transformer=None):
        if torch.is_grad_enabled():
            b0 = self.tr.total
            out = super().ode_step(latents, i, cond, transformer)
            self.grad_calls[-1]["bytes"] = self.tr.total - b0    # + the Euler step's output
            return out
        key = self._key("ode", latents)
        if self._replayed(key):
            return latents
        f0, before = self.tr.flops["forward"], self.calls["no_grad"]
        out = super().ode_step(latents, i, cond, transformer)
        self._replay[key] = self.tr.flops["forward"] - f0
        self.calls["no_grad"] = before + 1
        return out

    def velocity_at(self, *args, **kwargs):
        with self.tr.label("activations: transformer (flow-matching step)"):
            return super().velocity_at(*args, **kwargs)

    def encode_image(self, images):
        with self.tr.label("activations: VAE encode of the input (no grad)"):
            return super().encode_image(images)

    def decode(self, tokens):
        with self.tr.label("activations: VAE decode"):
            return super().decode(tokens)

    def traced_kinds(self) -> int:
        """No-grad transformer calls traced (one per shape and LoRA on/off); the rest replayed."""
        return len({k[1:] for k in self._replay})

    def no_grad_step_flops(self) -> float:
        return max((f for k, f in self._replay.items() if k[0] == "ode"), default=0.0)


class _Labelled:
    """A reward term (or LPIPS model) whose activations the tracker charges to ``label``."""

    def __init__(self, fn, tracker: Tracker, label: str):
        self.fn, self.tr, self.label = fn, tracker, label
        self.differentiable = getattr(fn, "differentiable", True)

    def __call__(self, *args, **kwargs):
        with self.tr.label(self.label):
            return self.fn(*args, **kwargs)


def _stand_in(images, inputs=None, prompts=None):
    """A term that is not traced: keeps the graph (as a math term does), costs nothing."""
    return images.float().mean(dim=(1, 2, 3)), {}


def _modules_of(fn) -> list[torch.nn.Module]:
    """The frozen models a built reward holds (for the parameter table)."""
    out = []
    bundle = getattr(fn, "bundle", None) or getattr(getattr(fn, "reward", None), "bundle", None)
    if bundle is not None:
        out.append(bundle.model)
    for name in ("model", "vision", "head", "net"):
        m = getattr(fn, name, None)
        if isinstance(m, torch.nn.Module):
            out.append(m)
    return out


@dataclass
class _Rewards:
    fn: Any
    params: dict = field(default_factory=dict)
    notes: list = field(default_factory=list)
    not_counted: list = field(default_factory=list)
    uses_vlm: bool = False


def _weightless_rewards(specs: list[dict], tr: Tracker, dtype: torch.dtype) -> _Rewards:
    """The run's reward terms built without weights through the registry (see module doc)."""
    out = _Rewards(fn=None)
    configs: dict[str, Any] = {}
    terms = []
    for spec in specs:
        name, term = spec["name"], spec["term"]
        rec = record(name)
        extra: dict[str, Any] = {"device": "cpu"}
        label = f"weights: {name} ({term})"
        if name in VLM_REWARDS:
            mid, flag = spec["model_id"], spec.get("model_flag", "--internvl_model_id")
            if mid not in configs:
                configs[mid] = vlm_config(mid, flag)
                out.notes.append(f"VLM config of {flag}: {configs[mid][1]}")
            extra["config"] = configs[mid][0]
            family = "InternVL" if configs[mid][0].model_type == "internvl" else "VLM"
            label = f"weights: {family} ({mid}, {spec.get('dtype', 'bfloat16')})"
        try:
            with tr.label(label), _no_init(), _default_dtype(torch.float32):
                built = build_weightless(spec, **extra)
        except NotWeightless as exc:
            if rec.negligible:
                out.notes.append(f"term {term!r} ({name}) not traced: {exc}")
            else:
                out.not_counted.append(f"term {term!r} ({name}: {exc})")
            terms.append(RewardTerm(term, spec["weight"], _Labelled(
                _stand_in, tr, f"activations: reward {term} (not traced)")))
            continue
        if not rec.files:
            out.notes.append(f"term {term!r} ({name}) traced as training runs it (no model)")
        out.uses_vlm |= name in VLM_REWARDS
        for m in _modules_of(built.fn):
            key = f"{name} ({spec['model_id']})" if name in VLM_REWARDS else f"{term}: {name}"
            out.params.setdefault(key, param_counts(m))
        terms.append(RewardTerm(term, built.weight, _Labelled(
            built.fn, tr, f"activations: reward {term} ({name})"), built.options,
            built.differentiable))
    out.fn = _Labelled(CompositeReward(terms), tr, "activations: rewards (sum)") if terms else None
    return out


# --------------------------------------------------------------------------- placement
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
            ("weights: transformer", "weights: VAE", "weights: text encoders",
             "weights: base-consistency")):
        return "reward"   # VLMs, LPIPS, FaceNet, CLIP / SigLIP, preference models
    return "training"


# --------------------------------------------------------------------------- one micro-step
@dataclass
class _Traced:
    peak: int
    breakdown: dict
    flops: dict
    buckets: dict
    group_peak: dict
    group_peak_at: dict
    no_grad_calls: int
    grad_calls: list


def _trace_micro_step(tr: Tracker, sampler: TracedSampler, models: Models, batch: Batch, cfg,
                      amp, accum: int) -> _Traced:
    tr.flops.clear()
    tr.flops_by_bucket.clear()
    tr.set_bucket("reward and decode")
    tr.reset_peak()
    tr.reset_group_peaks()
    calls_before, grads_before = sampler.calls["no_grad"], len(sampler.grad_calls)
    with amp():    # the trainer runs the method under accelerator.autocast()
        out = run_method(batch, models, cfg)
    loss = out.loss / accum
    with tr.label("backward (gradients + transients)"), tr.phase("backward"):
        loss.backward()
    del loss, out
    tr.set_bucket("main")
    return _Traced(tr.peak, dict(tr.peak_at), dict(tr.flops), dict(tr.flops_by_bucket),
                   dict(tr.group_peak), {g: dict(v) for g, v in tr.group_peak_at.items()},
                   sampler.calls["no_grad"] - calls_before,
                   sampler.grad_calls[grads_before:])


def _warm_optimizer(optimizer, lora, tr: Tracker, label: str) -> None:
    """Allocate the AdamW state as from the second step on (one update of zero gradients)."""
    with tr.label(label):
        for p in lora:
            p.grad = torch.zeros_like(p)
        optimizer.step()
    optimizer.zero_grad(set_to_none=True)


# --------------------------------------------------------------------------- training
def estimate_training(cfg, reward_flags, images_dtype: str | None = None) -> Estimate:
    """Trace one optimizer step of ``alignprop_fluxkontext.py`` with these flags."""
    t0 = time.perf_counter()
    mp = cfg.mixed_precision or "bf16"
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(mp, torch.float32)
    b, h, w = cfg.train_batch_size, cfg.image_height, cfg.image_width
    kcfg, ksource = kontext_configs(cfg.pretrained_model)
    check_size(h, w, kcfg)
    specs = reward_specs(reward_flags, device="cuda")   # dtypes as on a GPU
    n, (k_lo, k_hi) = cfg.sample_num_steps, cfg.k_range()
    method = cfg.method
    k = k_hi if method == "alignprop" else 1
    k_trace = min(k, K_TRACED)
    accum = cfg.train_gradient_accumulation_steps
    what = {"alignprop": f"K={k_lo if k_lo == k_hi else f'U[{k_lo},{k_hi}]'}",
            "draft-lv": f"DRaFT-LV n={cfg.draft_lv_n}",
            "refl": f"ReFL from step >= {math.ceil(cfg.refl_start_fraction * n)}",
            "imagerefl": f"ImageReFL from a real image noised to step "
                         f"{refl_start(cfg, n)}"}.get(method, method)
    est = Estimate(title=f"training step ({method}), {ksource}, {w}x{h}, batch {b} x "
                         f"accumulation {accum}, N={n}, {what}, "
                         f"{'gradient checkpointing' if cfg.gradient_checkpointing else 'no checkpointing'}, "
                         f"{mp}, LoRA rank {cfg.lora_rank}"
                         + (f", base consistency {cfg.base_consistency_metric} x "
                            f"{cfg.base_consistency_weight:g}"
                            if cfg.base_consistency_weight > 0 else ""))
    est.images_per_step, est.pixels = b * accum, h * w
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

    traces: list[_Traced] = []
    try:
        with fake_mode(), tr, CudaAutocastPolicy(), _causal_mask_as_on_real_tensors(), \
                _default_dtype(dtype):
            # ------------------------------------------------------- set-up: text encoding
            m = build_kontext(kcfg, tr, with_text=True)
            for name in ("transformer", "vae", "text_encoder", "text_encoder_2"):
                est.params[name] = param_counts(m[name])
            seq = cfg.max_sequence_length
            with torch.no_grad(), tr.label("set-up: prompt encoding (transient)"):
                m["text_encoder"](torch.zeros(1, 77, dtype=torch.long), output_hidden_states=False)
                m["text_encoder_2"](torch.zeros(1, seq, dtype=torch.long))
            est.setup_peak_bytes, est.setup_breakdown = tr.peak, dict(tr.peak_at)
            setup_flops = dict(tr.flops)
            del m["text_encoder"], m["text_encoder_2"]

            # ------------------------------------------------------- reward models (registry)
            rewards = _weightless_rewards(specs, tr, dtype)
            est.params.update(rewards.params)
            est.notes += rewards.notes
            est.not_counted += rewards.not_counted
            lpips = None
            if cfg.base_consistency_weight > 0 and cfg.base_consistency_metric == "lpips":
                with tr.label("weights: base-consistency LPIPS"), _default_dtype(torch.float32):
                    lpips = build_lpips_model(reward_flags.lpips_net, pretrained=False)
                lpips = _Labelled(lpips, tr, "activations: base consistency (LPIPS)")

            # ------------------------------------------------------- LoRA + warm AdamW
            transformer = m["transformer"]
            with tr.label("LoRA weights (fp32)"):
                lora = add_lora(transformer, cfg.lora_rank, cfg.lora_alpha, cfg.target_modules(),
                                cfg.lora_dropout)
            est.params["transformer"] = param_counts(transformer)
            n_lora = sum(p.numel() for p in lora)
            if cfg.use_8bit_adam:   # bitsandbytes is CUDA-only: its state, two bytes a weight
                with tr.label("AdamW state (8-bit)"):
                    state8 = [(torch.zeros(p.shape, dtype=torch.uint8),
                               torch.zeros(p.shape, dtype=torch.uint8)) for p in lora]
                optimizer = None
            else:
                optimizer = make_optimizer(cfg, lora)
                for group in optimizer.param_groups:   # CUDA's default implementation
                    group["foreach"] = True
                _warm_optimizer(optimizer, lora, tr, "AdamW state (fp32)")
            if accum > 1:   # later micro-batches start with the gradients of the earlier ones
                with tr.label("LoRA gradients (fp32)"):
                    for p in lora:
                        p.grad = torch.zeros_like(p)
            if cfg.gradient_checkpointing:
                # the recompute runs inside backward, where no torch-function mode is active:
                # give it CudaAutocastPolicy again, or it would recompute other dtypes
                transformer.enable_gradient_checkpointing(_checkpoint_with_cuda_policy)
            transformer.train()

            # ------------------------------------------------------- sampler + batch
            from peft.tuners.tuners_utils import BaseTunerLayer

            layer = next((mod for mod in transformer.modules()
                          if isinstance(mod, BaseTunerLayer)), None)
            sampler = TracedSampler(transformer, m["vae"], scheduler_from(kcfg), transformer.config,
                                    h, w, n, cfg.guidance_scale, dtype=dtype, tracker=tr,
                                    lora_layer=layer)
            tcfg = transformer.config
            with tr.label("inputs and prompt embeddings"):
                inputs = torch.rand(b, 3, h, w, dtype=torch.float32)
                text = PromptEmbeds(torch.zeros(b, seq, tcfg.joint_attention_dim, dtype=dtype),
                                    torch.zeros(b, tcfg.pooled_projection_dim, dtype=dtype),
                                    torch.zeros(seq, 3, dtype=dtype))
                targets = (torch.rand(b, 3, h, w) if method == "imagerefl"
                           and cfg.imagerefl_target_dir else None)
            reward_fn = rewards.fn or CompositeReward([RewardTerm("none", 1.0, _stand_in)])
            models = Models(sampler, reward_fn, transformer, lpips)
            if rewards.fn is not None:   # fill the reward caches, as after the first step
                with torch.no_grad(), amp():
                    reward_fn(torch.rand(b, 3, h, w), inputs, ["x"] * b)
            tr.flops.clear()

            # ImageReFL holds two graphs (the regulariser's and the reward's) unless its
            # draw m equals the start step: trace a draw where they differ (the larger peak)
            seed = next((s for s in range(64) if refl_step(cfg, n, s) != refl_start(cfg, n)),
                        0) if method == "imagerefl" else 0

            def batch(step: int) -> Batch:
                return Batch(inputs, ["x"] * b, text, torch.Generator().manual_seed(0),
                             seed=seed, step=step, k=k_trace, targets=targets)

            # ------------------------------------------------------- the step(s)
            traces.append(_trace_micro_step(tr, sampler, models, batch(0), cfg, amp, accum))

            # ------------------------------------------------------- clip + AdamW update
            tr.reset_peak()
            tr.flops.clear()
            with tr.label("optimizer update (transients)"):
                for p in lora:
                    if p.grad is None:
                        p.grad = torch.zeros_like(p)
                if cfg.max_grad_norm > 0:
                    torch.nn.utils.clip_grad_norm_(lora, cfg.max_grad_norm, foreach=True)
                if optimizer is not None:
                    optimizer.step()
                else:
                    with torch.no_grad():
                        for p, _ in zip(lora, state8):
                            p.add_(p.grad, alpha=-1e-4)
            update_peak, update_at = tr.peak, dict(tr.peak_at)
    finally:
        clear_weightless_cache()

    # ---------------------------------------------------------------- totals
    worst = max(traces, key=lambda t: t.peak)
    est.peak_bytes, est.breakdown = worst.peak, worst.breakdown
    if update_peak > est.peak_bytes:
        est.peak_bytes, est.breakdown = update_peak, update_at
    micro = Counter()
    for t in traces:
        for kk, vv in t.flops.items():
            micro[kk] += vv / len(traces)
    per_step = {"bytes": 0, "flops": {}}
    if k > k_trace:
        # the second backpropagated step stands for each of the other K-2 (module doc)
        second = traces[0].grad_calls[1]
        bucket = {ph: v for (bk, ph), v in traces[0].buckets.items() if bk == "grad call 1"}
        per_step = {"bytes": second["bytes"],
                    "flops": {"forward": second["forward"], **bucket}}
        for kk, vv in per_step["flops"].items():
            micro[kk] += (k - k_trace) * vv
        est.peak_bytes += (k - k_trace) * per_step["bytes"]
        est.breakdown[BACKPROP] = est.breakdown.get(BACKPROP, 0) + (k - k_trace) * per_step["bytes"]
        est.notes.append(
            f"K={k}: {k_trace} backpropagated steps traced, the other {k - k_trace} add the "
            f"second one's FLOPs ({sum(per_step['flops'].values()) / 1e12:.3g} TFLOP) and the "
            f"{per_step['bytes'] / GB:.2f} GB it keeps until backward")
    if method in ("refl", "imagerefl"):
        lo = refl_start(cfg, n)
        drawn = refl_step(cfg, n, seed)
        mean_i = (lo + n - 1) / 2
        micro["forward"] += (mean_i - drawn) * sampler.no_grad_step_flops()
        est.notes.append(f"{'ImageReFL' if method == 'imagerefl' else 'ReFL'}: the grad step is "
                         f"drawn from steps {lo}..{n - 1}; the no-grad steps before it are "
                         f"charged at the mean ({mean_i:g})")
    est.flops = {kk: float(vv) * accum for kk, vv in micro.items()}
    if separate:
        est.cards = {"training": worst.group_peak.get("training", 0)
                     + (k - k_trace) * per_step["bytes"],
                     "reward": worst.group_peak.get("reward", 0)}
        est.card_breakdown = {g: dict(worst.group_peak_at.get(g, {})) for g in est.cards}
        if k > k_trace:
            tb = est.card_breakdown["training"]
            tb[BACKPROP] = tb.get(BACKPROP, 0) + (k - k_trace) * per_step["bytes"]
        est.notes.append("--reward_device: the reward models' weights and activations are "
                         "charged to their own card, the gradient buffers of the backward pass "
                         "to the training card")
    no_grad = traces[0].no_grad_calls
    est.details = {"lora_parameters": n_lora, "setup_flops": setup_flops,
                   "sampler_calls": {"no_grad": no_grad,
                                     "grad": len(traces[0].grad_calls) + (k - k_trace)},
                   "traced_no_grad_calls": sampler.traced_kinds(),
                   "k_estimated": k, "method": method}
    if no_grad > 1:
        est.notes.append(f"{no_grad} no-grad transformer calls: one traced per kind, the others "
                         f"add its FLOPs")
    if cfg.truncated_backprop == "alignprop":
        est.notes.append(f"random K per micro-batch (AlignProp's truncation, K = N - t_b): "
                         f"memory and FLOPs for the largest K={k_hi}; its draws are mostly "
                         f"smaller (mean t_b {cfg.alignprop_backprop_mean:g} of 50 steps)")
    elif k_lo != k_hi and method == "alignprop":
        est.notes.append(f"random K: memory and FLOPs for the largest K={k_hi} (the mean K "
                         f"{(k_lo + k_hi) / 2:g} costs proportionally less backward)")
    est.advice = advice(est, cfg, reward_flags, n_lora, rewards.uses_vlm, per_step["bytes"])
    est.seconds = time.perf_counter() - t0
    return est


# --------------------------------------------------------------------------- generate
def estimate_generate(pretrained: str, height: int, width: int, num_steps: int, batch_size: int,
                      dtype: torch.dtype = torch.bfloat16, max_sequence_length: int = 512,
                      guidance_scale: float = 2.5, lora_rank: int = 0) -> Estimate:
    """Trace one pipeline call of ``python -m alignprop.generate`` (all models on the device)."""
    t0 = time.perf_counter()
    kcfg, ksource = kontext_configs(pretrained)
    check_size(height, width, kcfg, "the planned size (--max_area, the inputs)")
    est = Estimate(title=f"generate, {ksource}, {width}x{height}, batch {batch_size}, "
                         f"{num_steps} steps, {str(dtype).replace('torch.', '')}")
    est.images_per_step, est.pixels = batch_size, height * width
    tr = Tracker()
    with fake_mode(), tr, torch.no_grad(), _default_dtype(dtype):
        m = build_kontext(kcfg, tr, with_text=True)
        for name in ("transformer", "vae", "text_encoder", "text_encoder_2"):
            est.params[name] = param_counts(m[name])
        with tr.label("activations: prompt encoding"):
            m["text_encoder"](torch.zeros(batch_size, 77, dtype=torch.long))
            m["text_encoder_2"](torch.zeros(batch_size, max_sequence_length, dtype=torch.long))
        tcfg = m["transformer"].config
        sampler = TracedSampler(m["transformer"], m["vae"], scheduler_from(kcfg), tcfg, height,
                                width, num_steps, guidance_scale, dtype=dtype, tracker=tr)
        text = PromptEmbeds(
            torch.zeros(batch_size, max_sequence_length, tcfg.joint_attention_dim),
            torch.zeros(batch_size, tcfg.pooled_projection_dim),
            torch.zeros(max_sequence_length, 3))
        inputs = torch.rand(batch_size, 3, height, width, dtype=torch.float32)
        sampler.sample(inputs, text, generator=torch.Generator().manual_seed(0))
    est.peak_bytes, est.breakdown = tr.peak, dict(tr.peak_at)
    est.flops = {"forward": float(tr.flops["forward"])}
    est.notes.append("all pipeline components on the device (no --cpu_offload); a LoRA adds "
                     "its (small) weights")
    if num_steps > 1:
        est.notes.append(f"{num_steps} sampler steps: the first traced, the others add its FLOPs")
    est.advice = ["--cpu_offload keeps the idle text encoders / VAE on the CPU",
                  "a smaller --max_area lowers activations (not weights)",
                  "--batch_size 1"]
    est.seconds = time.perf_counter() - t0
    return est


__all__ = ["TracedSampler", "estimate_generate", "estimate_training"]
