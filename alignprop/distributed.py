"""Several processes: data-parallel (DDP) or sharded (FSDP2), both through accelerate.

The engine is accelerate's; this module only configures it and handles what a LoRA
trainer needs on top:

* :func:`make_accelerator` -- the ``Accelerator`` for the launch at hand. Under an FSDP
  config on a machine without GPUs (our CPU tests) accelerate 1.15 silently falls back to
  DDP on gloo; we switch its state to FSDP the way its own ``__init__`` does on GPUs, so
  the CPU tests run accelerate's FSDP2 code and never an unsharded stand-in.
* :func:`trainable_parameters` -- the LoRA parameters *after* ``prepare`` (FSDP2 replaces
  every parameter by a sharded ``DTensor`` one).
* :func:`full_tensor` / :func:`full_state` -- gather sharded tensors into whole ones
  (a collective: every rank must call them), so the LoRA is saved once, complete, in
  diffusers format, and checkpoints do not depend on the number of processes.
* :func:`grad_norm` -- the global gradient norm of sharded or replicated gradients.
"""
from __future__ import annotations

import os
from typing import Iterable

import torch


def _fsdp_requested() -> bool:
    # `accelerate launch --config_file <fsdp config>` / `--use_fsdp` export this.
    return os.environ.get("ACCELERATE_USE_FSDP", "false").lower() == "true"


def make_accelerator(**kwargs):
    """``Accelerator(**kwargs)`` for this launch (DDP, FSDP2, or one process).

    Several processes without CUDA: accelerate picks its gloo backend only when told
    the run is on CPU (``cpu=True``), and it then ignores an FSDP config; we re-enable
    FSDP on that process group (accelerate's own FSDP2 code works on gloo + CPU).
    """
    from accelerate import Accelerator, PartialState
    from accelerate.utils import DistributedType

    world = int(os.environ.get("WORLD_SIZE", "1"))
    cpu_multi = not torch.cuda.is_available() and world > 1
    accelerator = Accelerator(cpu=cpu_multi, **kwargs)
    if cpu_multi and _fsdp_requested():
        from accelerate.utils import FullyShardedDataParallelPlugin

        state = accelerator.state
        plugin = FullyShardedDataParallelPlugin()  # reads the FSDP_* variables of the launch
        if plugin.fsdp_version != 2:
            raise ValueError("on CPU only FSDP2 is supported (fsdp_version: 2 in the config)")
        if state.mixed_precision != "no":
            plugin.set_mixed_precision(state.mixed_precision)
        state.fsdp_plugin = plugin
        state.distributed_type = DistributedType.FSDP
        # As accelerate does: every later AcceleratorState() copies the partial state.
        PartialState._shared_state["distributed_type"] = DistributedType.FSDP
    return accelerator


def is_sharded(accelerator) -> bool:
    """True under FSDP2 (parameters are DTensor shards after ``prepare``)."""
    return bool(getattr(accelerator, "is_fsdp2", False))


def trainable_parameters(model: torch.nn.Module) -> list[torch.nn.Parameter]:
    """The parameters that train (the LoRA), as the prepared model holds them now."""
    return [p for p in model.parameters() if p.requires_grad]


def full_tensor(t: torch.Tensor) -> torch.Tensor:
    """The whole tensor behind ``t`` (all-gathered if sharded; every rank must call)."""
    if hasattr(t, "full_tensor"):  # torch.distributed.tensor.DTensor
        return t.full_tensor()
    return t


def full_state(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """``{name: whole tensor on CPU}`` of a (possibly sharded) state dict; collective."""
    return {k: full_tensor(v).detach().cpu().contiguous() for k, v in state.items()}


def grad_norm(params: Iterable[torch.nn.Parameter]) -> float:
    """L2 norm of all gradients, whole-model (sharded gradients reduced across ranks)."""
    norms = [torch.linalg.vector_norm(p.grad.detach().float()) for p in params if p.grad is not None]
    if not norms:
        return 0.0
    total = torch.linalg.vector_norm(torch.stack([full_tensor(n) for n in norms]))
    return float(total)



# --------------------------------------------------------------------------- checkpoints
# A checkpoint holds whole tensors in the layout of a one-process run (the optimizer state
# keyed by parameter index, as ``torch.optim.Optimizer.state_dict()`` gives it). So it does
# not depend on how many processes wrote it or whether they sharded: any run can resume it.

def distribute_like(full: torch.Tensor, param: torch.Tensor) -> torch.Tensor:
    """``full`` cut the way ``param`` is sharded (unchanged if ``param`` is a plain tensor).

    Every process holds ``full`` (each read the same file), so no data is sent.
    """
    if not hasattr(param, "device_mesh"):
        return full
    from torch.distributed.tensor import distribute_tensor

    if tuple(full.shape) != tuple(param.shape):
        raise ValueError(f"shape {tuple(full.shape)} does not fit the parameter's "
                         f"{tuple(param.shape)}")
    return distribute_tensor(full.to(param.device), param.device_mesh, param.placements,
                             src_data_rank=None)


def shard_like_model(model: torch.nn.Module, state: dict[str, torch.Tensor],
                     adapter: str = "default") -> dict[str, torch.Tensor]:
    """Whole LoRA tensors (peft keys, without the adapter name) cut like ``model``'s
    sharded parameters, so ``load_state_dict`` can copy them; unchanged if not sharded."""
    params = {n.replace(f".{adapter}.", "."): p for n, p in model.named_parameters()
              if hasattr(p, "device_mesh")}
    if not params:
        return state
    return {k: distribute_like(v.to(params[k].dtype), params[k]) if k in params else v
            for k, v in state.items()}


def optimizer_state_full(optimizer) -> dict:
    """``optimizer.state_dict()`` with every sharded tensor whole, on CPU; collective."""
    state = optimizer.state_dict()
    # A fixed order: full_tensor() is a collective that every rank must call alike.
    state["state"] = {i: {k: full_tensor(v).detach().cpu() if isinstance(v, torch.Tensor) else v
                          for k, v in sorted(s.items())}
                      for i, s in sorted(state["state"].items())}
    return state


def load_optimizer_state_full(optimizer, state: dict) -> None:
    """Inverse of :func:`optimizer_state_full`: whole tensors cut to this run's shards."""
    params = [p for group in optimizer.param_groups for p in group["params"]]
    saved = sum(len(g["params"]) for g in state.get("param_groups", []))
    if len(params) != saved:
        raise ValueError(f"the checkpoint's optimizer has {saved} parameters, this run's "
                         f"has {len(params)}")
    cut = {}
    for i, s in state["state"].items():
        p = params[int(i)]
        cut[i] = {k: distribute_like(v, p) if isinstance(v, torch.Tensor) and v.ndim else v
                  for k, v in s.items()}
    optimizer.load_state_dict({**state, "state": cut})


# --------------------------------------------------------------------------- frozen modules
def find_modules(obj, _seen=None, _depth=0) -> list[torch.nn.Module]:
    """The top-level ``nn.Module`` objects a reward holds (attributes, closures, lists).

    Rewards are callables built by factories (closures or small classes); this finds the
    models inside them without the rewards package having to expose them.
    """
    seen = set() if _seen is None else _seen
    if id(obj) in seen or _depth > 6 or obj is None:
        return []
    seen.add(id(obj))
    if isinstance(obj, torch.nn.Module):
        return [obj]
    if isinstance(obj, (str, bytes, int, float, bool, torch.Tensor, type)):
        return []
    found: list[torch.nn.Module] = []
    children: list = []
    if isinstance(obj, dict):
        children = list(obj.values())
    elif isinstance(obj, (list, tuple, set)):
        children = list(obj)
    else:
        closure = getattr(obj, "__closure__", None)
        if closure:
            for cell in closure:
                try:
                    children.append(cell.cell_contents)
                except ValueError:  # empty cell
                    pass
        if hasattr(obj, "__dict__") and not callable(getattr(obj, "__self__", None)):
            children.extend(vars(obj).values())
    for child in children:
        found.extend(find_modules(child, seen, _depth + 1))
    return found


def shard_frozen(module: torch.nn.Module) -> int:
    """Shard a frozen model over all processes with FSDP2 (each layer one unit).

    The layer classes are the model's own ``_no_split_modules`` (transformers models
    declare them); the rest of the model is the root unit. Returns the number of units.
    Every process must then run the model's forward the same number of times.
    """
    from torch.distributed.fsdp import FSDPModule, fully_shard

    if isinstance(module, FSDPModule):
        return 0
    names: set[str] = set()
    for m in module.modules():
        names.update(getattr(m, "_no_split_modules", None) or [])
    layers = [(n, m) for n, m in module.named_modules() if n and type(m).__name__ in names]
    # outermost matches only (a layer inside a layer stays in its parent's unit)
    layers = [(n, m) for n, m in layers if not any(n.startswith(o + ".") for o, _ in layers)]
    for _, m in reversed(layers):  # bottom-up, as FSDP2 expects
        fully_shard(m)
    fully_shard(module)
    return len(layers) + 1


__all__ = ["make_accelerator", "is_sharded", "trainable_parameters", "full_tensor",
           "full_state", "grad_norm", "distribute_like", "shard_like_model", "optimizer_state_full",
           "load_optimizer_state_full", "find_modules", "shard_frozen"]
