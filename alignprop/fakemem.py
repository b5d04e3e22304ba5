"""Memory and FLOP accounting of a traced run, for real-size models without weights.

:class:`Tracker` is a ``TorchDispatchMode``: every storage an op creates is recorded with
the label that was current at the time (``tracker.label("weights: transformer")``) and
forgotten when the storage is freed (a weak reference's finalizer). Live bytes per label and
the peak (with the per-label breakdown at that moment) are what a caching-free device
allocator would see. Run it on top of ``FakeTensorMode`` and nothing is allocated: a 12B
transformer and a 14B VLM are traced on a laptop CPU.

torch's own ``MemTracker`` refuses modules with frozen parameters (it hooks gradients), which
is every model here, hence this small tracker.

Values read back from fake tensors (``.item()``: metrics, checks) are fixed placeholders
(:func:`_placeholder`): nothing the trace measures depends on them.

FLOPs are counted per op with torch's FLOP formulas (``torch.utils.flop_counter``), split into
forward / backward / recompute: an op running inside ``loss.backward()`` with grad mode ON is
a gradient-checkpointing recompute (the engine runs backward ops with grad mode off).
CPU's fused attention kernel has no formula in torch, so one is registered here (the same
as for the CUDA flash kernel).
"""
from __future__ import annotations

import functools
import weakref
from collections import defaultdict
from contextlib import contextmanager

import torch
from torch.overrides import TorchFunctionMode
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten

aten = torch.ops.aten


def _register_cpu_attention_flops() -> None:
    from torch.utils import flop_counter as fc

    fwd = getattr(aten, "_scaled_dot_product_flash_attention_for_cpu", None)
    bwd = getattr(aten, "_scaled_dot_product_flash_attention_for_cpu_backward", None)
    if fwd is not None and fwd not in fc.flop_registry:
        @fc.register_flop_formula(fwd)
        def _fwd(query, key, value, *args, out_val=None, **kwargs) -> int:
            return fc.sdpa_flop_count(query, key, value)
    if bwd is not None and bwd not in fc.flop_registry:
        @fc.register_flop_formula(bwd)
        def _bwd(grad_out, query, key, value, *args, out_val=None, **kwargs) -> int:
            return fc.sdpa_backward_flop_count(grad_out, query, key, value)


_register_cpu_attention_flops()


@functools.cache
def _cuda_fp32_ops() -> frozenset:
    """Ops that CUDA autocast runs in float32 and CPU autocast leaves in bf16/fp16 (torch's
    autocast op lists), in the forms a model calls them: ``F.*``, ``torch.*``, ``Tensor.*``."""
    import torch.nn.functional as F

    names = ("layer_norm", "group_norm", "softmax", "log_softmax", "softmin", "softplus",
             "normalize", "cosine_similarity", "exp", "expm1", "log", "log1p", "log2", "log10",
             "pow", "rsqrt", "reciprocal", "sum", "prod", "cumsum", "cumprod", "norm",
             "acos", "asin", "cosh", "sinh", "tan", "erfinv", "cdist", "dist")
    return frozenset(fn for owner in (F, torch, torch.Tensor) for name in names
                     if (fn := getattr(owner, name, None)) is not None)


def _to_fp32(t):
    if isinstance(t, torch.Tensor) and t.dtype in (torch.bfloat16, torch.float16):
        return t.float()
    return t


class CudaAutocastPolicy(TorchFunctionMode):
    """Under CPU autocast, run in float32 what CUDA autocast runs in float32.

    The estimator traces on the CPU with CPU autocast standing in for CUDA's, but the two
    differ: CUDA runs layer/group norms, softmax, exp, pow, sums ... in fp32, so their outputs
    are fp32 and the fp32 copies of their inputs are what backward keeps; CPU keeps bf16.
    Measured on an H200, the VAE decode and the norms of every block kept several GB more than
    a CPU-autocast trace showed (docs/scale.md). Inside this mode those ops get fp32 inputs
    whenever CPU autocast is on, as CUDA's autocast would give them.
    """

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func in _cuda_fp32_ops() and torch.is_autocast_enabled("cpu"):
            args = tuple(_to_fp32(a) for a in args)
            kwargs = {k: _to_fp32(v) for k, v in kwargs.items()}
        return func(*args, **kwargs)


class Tracker(TorchDispatchMode):
    """Live storage bytes by label, their peak, and FLOPs by phase (see module doc)."""

    def __init__(self, group_of=None):
        """``group_of(label) -> str`` sorts labels into groups (e.g. the devices of a run
        whose reward models live on another GPU); each group's own peak is kept too."""
        super().__init__()
        from torch.utils.flop_counter import flop_registry

        self._groups = group_of is not None
        self._group_of = group_of or (lambda label: "all")
        self.group_total: dict[str, int] = defaultdict(int)
        self.group_peak: dict[str, int] = defaultdict(int)
        self.group_peak_at: dict[str, dict[str, int]] = {}

        self._flops_of = flop_registry
        self._label = "other"
        self._phase = "forward"
        self._live: dict[int, tuple[str, int]] = {}      # id(storage) -> (label, bytes)
        self.by_label: dict[str, int] = defaultdict(int)
        self.total = 0
        self.peak = 0
        self.peak_at: dict[str, int] = {}
        self.peak_where = ""
        self.flops: dict[str, int] = defaultdict(int)
        self.flops_by_label: dict[str, int] = defaultdict(int)
        # FLOPs by (bucket, phase): a gradient hook switches the bucket when the backward of
        # one traced call begins, which tells that call's backward apart from the others'
        self.bucket = "main"
        self.flops_by_bucket: dict[tuple[str, str], int] = defaultdict(int)

    # ------------------------------------------------------------------ context
    @contextmanager
    def label(self, name: str):
        """Storages created inside are charged to ``name``."""
        old, self._label = self._label, name
        try:
            yield
        finally:
            self._label = old

    @contextmanager
    def phase(self, name: str):
        """FLOPs inside are counted as ``name`` ('forward' or 'backward')."""
        old, self._phase = self._phase, name
        try:
            yield
        finally:
            self._phase = old

    def set_bucket(self, name: str) -> None:
        """FLOPs from now on are also counted under ``name`` (see ``flops_by_bucket``)."""
        self.bucket = name

    def reset_peak(self) -> None:
        self.peak = self.total
        self.peak_at = {k: v for k, v in self.by_label.items() if v}
        self.peak_where = self._label

    def reset_group_peaks(self) -> None:
        self.group_peak = defaultdict(int, self.group_total)
        self.group_peak_at = {g: self._group_live(g) for g in self.group_total}

    def _group_live(self, group: str) -> dict[str, int]:
        return {k: v for k, v in self.by_label.items() if v and self._group_of(k) == group}

    def live(self) -> dict[str, int]:
        return {k: v for k, v in self.by_label.items() if v}

    # ------------------------------------------------------------------ bookkeeping
    def _free(self, key: int) -> None:
        label, nbytes = self._live.pop(key, (None, 0))
        if label is not None:
            self.by_label[label] -= nbytes
            self.total -= nbytes
            if self._groups:
                self.group_total[self._group_of(label)] -= nbytes

    def track(self, t: torch.Tensor) -> None:
        """Record ``t``'s storage if it is new (also used for tensors made outside ops)."""
        try:
            st = t.untyped_storage()
        except (RuntimeError, NotImplementedError):
            return
        key = id(st)
        if key in self._live:
            return
        nbytes = int(st.nbytes())
        self._live[key] = (self._label, nbytes)
        self.by_label[self._label] += nbytes
        self.total += nbytes
        if self._groups:
            group = self._group_of(self._label)
            self.group_total[group] += nbytes
            if self.group_total[group] > self.group_peak[group]:
                self.group_peak[group] = self.group_total[group]
                self.group_peak_at[group] = self._group_live(group)
        weakref.finalize(st, self._free, key)
        if self.total > self.peak:
            self.peak = self.total
            self.peak_at = {k: v for k, v in self.by_label.items() if v}
            self.peak_where = self._label

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func is aten._local_scalar_dense.default and _is_fake(args[0]):
            return _placeholder(args[0])
        out = func(*args, **kwargs)
        packet = func._overloadpacket
        if packet in self._flops_of:
            n = int(self._flops_of[packet](*args, **kwargs, out_val=out))
            phase = self._phase
            if phase == "backward" and torch.is_grad_enabled():
                phase = "recompute"
            self.flops[phase] += n
            self.flops_by_label[self._label] += n
            self.flops_by_bucket[(self.bucket, phase)] += n
        label = self._label
        if func is aten._to_copy.default and _is_trainable_leaf(args[0]):
            # autocast's cast of a trainable weight: cached until the autocast region ends
            # (on CUDA as here), so it lives through the whole step, whichever call made it
            self._label = AUTOCAST_CACHE
        try:
            for t in tree_flatten(out)[0]:
                if isinstance(t, torch.Tensor):
                    self.track(t)
        finally:
            self._label = label
        return out


AUTOCAST_CACHE = "autocast cache: low-precision copies of LoRA weights"


def _is_trainable_leaf(t) -> bool:
    return isinstance(t, torch.Tensor) and t.requires_grad and t.is_leaf


def _is_fake(t) -> bool:
    from torch._subclasses.fake_tensor import FakeTensor

    return isinstance(t, FakeTensor)


def _placeholder(t: torch.Tensor):
    """What ``.item()`` of a fake tensor gives inside the trace: a fixed value of its kind.

    A trace knows shapes, not values. The code traced reads values only for its metrics,
    checks that hold on a real run (``torch._check`` of token counts, "all finite") and
    AdamW's step count: True, 1 and 1.0 keep all of them on the path a real step takes.
    """
    if t.dtype == torch.bool:
        return True
    return 1.0 if t.is_floating_point() else 1


@contextmanager
def fake_mode():
    """A FakeTensorMode that accepts the odd real tensor (tokenizer ids, scheduler constants).

    ``Module.to(dtype)`` on fake parameters swaps tensors, which fake tensors refuse (the mode
    keeps weak references to them; peft casts its adapters this way): inside, a refused swap
    falls back to ``param.data = new``, which is what ``Module._apply`` does for real tensors.
    """
    from torch._subclasses.fake_tensor import FakeTensorMode

    original = torch.utils.swap_tensors

    def swap(t1, t2):
        try:
            return original(t1, t2)
        except RuntimeError:
            t1.data = t2.data

    torch.utils.swap_tensors = swap
    try:
        with FakeTensorMode(allow_non_fake_inputs=True) as mode:
            yield mode
    finally:
        torch.utils.swap_tensors = original


def param_counts(module: torch.nn.Module) -> dict[str, int]:
    """total / frozen / trainable parameter counts (shared tensors counted once)."""
    seen, total, train = set(), 0, 0
    for p in module.parameters():
        if id(p) in seen:
            continue
        seen.add(id(p))
        total += p.numel()
        train += p.numel() if p.requires_grad else 0
    return {"total": total, "frozen": total - train, "trainable": train}


__all__ = ["AUTOCAST_CACHE", "Tracker", "fake_mode", "param_counts"]
