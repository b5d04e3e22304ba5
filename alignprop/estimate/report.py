"""What ``--estimate`` prints: the :class:`Estimate` of one traced step, verdicts, advice."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

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
    pixels: int = 512 * 512          # image size of the step (the time model's scale)
    seconds: float = 0.0
    details: dict[str, Any] = field(default_factory=dict)
    # --reward_device on another card: each card's own peak and what holds it then
    cards: dict[str, int] = field(default_factory=dict)
    card_breakdown: dict[str, dict[str, int]] = field(default_factory=dict)
    reward_device: str = ""
    # reward terms whose models are not traced: the peak and verdicts are then lower bounds
    not_counted: list[str] = field(default_factory=list)

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


def advice(est: Estimate, cfg, reward_flags, n_lora: int, uses_vlm: bool, per_step: int) -> list[str]:
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
    out.append("lower resolution (--image_height/--image_width): transformer and VAE activations "
               "grow with the pixel count (the transformer's attention faster)")
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



def measured_rate_seconds(flops: dict, pixels: int) -> dict[str, float]:
    """Seconds per step on each GPU of ``GPU_PEAKS`` from ``MEASURED_RATES`` (see there)."""
    r = MEASURED_RATES
    scale = (pixels / r["pixels"]) ** r["exponent"]
    h200 = (flops.get("forward", 0.0) / r["forward"]
            + (flops.get("backward", 0.0) + flops.get("recompute", 0.0)) / r["backward"]) / scale
    return {gpu: h200 * r["peak"] / peak for gpu, peak in GPU_PEAKS.items()}


__all__ = ["CONTEXT_GB", "Estimate", "FRAGMENTATION", "GB", "GPU_PEAKS", "GPU_SIZES_GB", "MFU",
           "MEASURED_RATES", "measured_rate_seconds", "advice"]
