"""Checkpoints: atomic, rotated, exactly resumable, and free of pickle.

A checkpoint is ``<output_dir>/checkpoints/checkpoint-<step:06d>/`` holding

* ``pytorch_lora_weights.safetensors``: the LoRA in diffusers format,
* ``optimizer.safetensors`` + ``optimizer.json``: every tensor of the optimizer's
  state dict, and the JSON layout that puts them back where they were,
* ``scheduler.json``: the LR scheduler's state dict (plain numbers),
* ``grad_scaler.json``: the fp16 grad scaler, when there is one,
* ``rng_state_<rank>.json``: python, numpy and torch (CPU and CUDA) RNG states of each rank,
* ``trainer_state.json``: global step, samples consumed, epoch, skipped steps, LoRA rank.

Why our own format: accelerate's ``save_state`` pickles registered objects
(``custom_checkpoint_N.pkl``), RNG states and the optimizer, and its ``load_state``
unpickles them with ``weights_only=False``, so resuming from a checkpoint someone
else made could run their code. Here every file is read with ``json`` or
``safetensors``; neither can construct an object, so loading runs no code. Files
that an older version wrote with pickle (``*.pkl``, ``*.bin``) are never opened.

The folder is written as ``.tmp-checkpoint-<step>`` and renamed when complete, so
a crash (or a full disk) never leaves a half-written folder under a real
checkpoint name and ``--resume_from latest`` only ever sees complete ones.
"""
from __future__ import annotations

import json
import logging
import os
import random
import re
import shutil
from pathlib import Path
from typing import Any

import torch

from common.cli import UserError
from common.hub import brief
from common.paths import check_writable_dir

from .distributed import load_optimizer_state_full, optimizer_state_full

logger = logging.getLogger(__name__)

STATE_FILE = "trainer_state.json"
LORA_FILE = "pytorch_lora_weights.safetensors"
OPTIMIZER = "optimizer"      # optimizer.json (+ optimizer.safetensors)
SCHEDULER = "scheduler"      # scheduler.json (+ scheduler.safetensors if it holds tensors)
SCALER = "grad_scaler"
RNG = "rng_state_{rank}"
_NAME = re.compile(r"^checkpoint-(\d+)$")
# What accelerate's save_state wrote (and unpickled on load). Never read.
_PICKLED = (".pkl", ".bin", ".pt", ".pth")


class CheckpointError(UserError):
    """A checkpoint cannot be used (missing, corrupt, pickled, or for another model)."""


# --------------------------------------------------------------------- locating

def checkpoint_root(output_dir: str | Path) -> Path:
    return Path(output_dir) / "checkpoints"


def list_checkpoints(output_dir: str | Path) -> list[Path]:
    """Complete checkpoints, oldest first."""
    root = checkpoint_root(output_dir)
    if not root.is_dir():
        return []
    found = []
    for d in root.iterdir():
        m = _NAME.match(d.name)
        if m and d.is_dir() and (d / STATE_FILE).is_file():
            found.append((int(m.group(1)), d))
    return [d for _, d in sorted(found)]


def resolve_resume(resume_from: str | None, output_dir: str | Path) -> Path | None:
    """``None`` | ``'latest'`` | a folder -> the checkpoint folder to load (or None)."""
    if resume_from is None:
        return None
    if resume_from == "latest":
        found = list_checkpoints(output_dir)
        if not found:
            raise FileNotFoundError(f"--resume_from latest: no checkpoint in "
                                    f"{checkpoint_root(output_dir)}")
        return found[-1]
    path = Path(resume_from).expanduser()
    if not (path / STATE_FILE).is_file():
        raise FileNotFoundError(f"--resume_from {path}: not a complete checkpoint (no {STATE_FILE})")
    return path


def check_new_run_dir(output_dir: str | Path) -> None:
    """Refuse to start a new run (no ``--resume_from``) in a folder holding another run.

    Otherwise the new run would append to the old ``metrics.jsonl`` and sit beside the
    old checkpoints, and a later ``--resume_from latest`` could resume the wrong run.
    """
    out = Path(output_dir)
    found = []
    ckpts = list_checkpoints(out)
    if ckpts:
        found.append(f"{len(ckpts)} checkpoint(s), last {ckpts[-1].name}")
    metrics = out / "metrics.jsonl"
    if metrics.is_file() and metrics.stat().st_size > 0:
        found.append("metrics.jsonl")
    if (out / "run_summary.json").is_file():
        found.append("run_summary.json")
    if found:
        raise UserError(f"--output_dir {out} already holds a run ({'; '.join(found)}); a new run "
                        f"is refused there: continue that run with --resume_from latest, or "
                        f"choose a new --output_dir")


def preflight(cfg) -> Path | None:
    """Checkpoint and output checks of a training config, before anything slow; returns the
    resume folder (the data folder is checked by :class:`alignprop.data.ImageFolder`)."""
    resume_dir = resolve_resume(cfg.resume_from, cfg.output_dir)
    if resume_dir is None:
        check_new_run_dir(cfg.output_dir)
    else:  # a checkpoint that cannot be resumed is found now, not after the model loads
        check_checkpoint(resume_dir)
        read_state(resume_dir)
        ranks = lora_ranks(resume_dir / LORA_FILE)
        if ranks and ranks != [cfg.lora_rank]:
            raise CheckpointError(
                f"{resume_dir / LORA_FILE}: the checkpoint's LoRA has rank "
                f"{'/'.join(map(str, ranks))} but --lora_rank is {cfg.lora_rank}; resume with "
                f"--lora_rank {ranks[0]}")
    check_writable_dir("--output_dir", cfg.output_dir)
    return resume_dir


def lora_ranks(file: Path) -> list[int]:
    """Ranks of the LoRA in a safetensors file, read from its header (no tensor is loaded)."""
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(str(file), framework="pt") as f:
            return sorted({f.get_slice(k).get_shape()[0] for k in f.keys()
                           if "lora_A" in k and len(f.get_slice(k).get_shape()) == 2})
    except (OSError, SafetensorError, RuntimeError, ValueError) as exc:
        raise CheckpointError(f"{file}: corrupt or truncated checkpoint file "
                              f"({_short(exc)})") from None


def set_aside_later_checkpoints(output_dir: str | Path, step: int) -> list[Path]:
    """After resuming at ``step``, move checkpoints of later steps out of ``latest``'s way.

    They belong to the abandoned continuation; they go to ``checkpoints/superseded-<step>/``
    (kept, not deleted) so ``--resume_from latest`` only sees this run's line.
    """
    later = [d for d in list_checkpoints(output_dir) if int(_NAME.match(d.name).group(1)) > step]
    if not later:
        return []
    dest = checkpoint_root(output_dir) / f"superseded-{step:06d}"
    dest.mkdir(exist_ok=True)
    moved = []
    for d in later:
        target = dest / d.name
        if target.exists():
            shutil.rmtree(target)
        os.replace(d, target)
        moved.append(target)
    return moved


def read_state(path: str | Path) -> dict:
    """``trainer_state.json`` of a checkpoint folder; one-line error naming the file."""
    f = Path(path) / STATE_FILE
    try:
        state = json.loads(f.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise CheckpointError(f"{f}: corrupt or truncated checkpoint file ({_short(exc)})") from None
    if not isinstance(state, dict) or not isinstance(state.get("global_step"), int) \
            or not isinstance(state.get("samples_seen"), int):
        raise CheckpointError(f"{f}: not a trainer state (needs integer global_step and "
                              f"samples_seen)")
    return state


def _short(exc: BaseException) -> str:
    return brief(" ".join(str(exc).split())) or type(exc).__name__


# --------------------------------------------------------------------- pickle-free state files
# A state dict (nested dicts / lists / tuples of numbers, strings and tensors) is
# stored as JSON in which each tensor is replaced by {"__tensor__": key}, the tensors
# themselves going to a safetensors file. Dicts are stored as [key, value] pairs so
# integer keys (optimizer parameter ids) stay integers; tuples are marked so they
# come back as tuples (random.setstate needs them).

def _encode(obj: Any, tensors: dict, prefix: str) -> Any:
    if isinstance(obj, torch.Tensor):
        key = prefix or "t"
        tensors[key] = obj.detach().to("cpu").contiguous()
        return {"__tensor__": key}
    if isinstance(obj, dict):
        for k in obj:
            if not isinstance(k, (str, int)) or isinstance(k, bool):
                raise TypeError(f"cannot store a key of type {type(k).__name__} without pickle")
        return {"__dict__": [[k, _encode(v, tensors, f"{prefix}.{k}" if prefix else str(k))]
                             for k, v in obj.items()]}
    if isinstance(obj, tuple):
        return {"__tuple__": [_encode(v, tensors, f"{prefix}.{i}") for i, v in enumerate(obj)]}
    if isinstance(obj, list):
        return [_encode(v, tensors, f"{prefix}.{i}") for i, v in enumerate(obj)]
    if obj is None or isinstance(obj, (bool, int, float, str)):
        return obj
    raise TypeError(f"cannot store a {type(obj).__name__} in a checkpoint without pickle "
                    f"(at {prefix or 'top level'})")


def _decode(obj: Any, tensors: dict, where: Path) -> Any:
    if isinstance(obj, list):
        return [_decode(v, tensors, where) for v in obj]
    if isinstance(obj, dict):
        if set(obj) == {"__tensor__"}:
            try:
                return tensors[obj["__tensor__"]]
            except (KeyError, TypeError):
                raise CheckpointError(f"{where}: refers to tensor {obj['__tensor__']!r} that its "
                                      f".safetensors file does not hold") from None
        if set(obj) == {"__tuple__"}:
            return tuple(_decode(v, tensors, where) for v in obj["__tuple__"])
        if set(obj) == {"__dict__"}:
            return {k: _decode(v, tensors, where) for k, v in obj["__dict__"]}
        raise CheckpointError(f"{where}: unexpected entry {sorted(obj)[:3]}")
    return obj


def write_state_files(directory: Path, name: str, state: Any) -> list[Path]:
    """Write ``state`` as ``<name>.json`` (+ ``<name>.safetensors`` if it holds tensors)."""
    from safetensors.torch import save_file

    tensors: dict[str, torch.Tensor] = {}
    layout = _encode(state, tensors, "")
    written = []
    if tensors:
        f = directory / f"{name}.safetensors"
        save_file(tensors, str(f))
        written.append(f)
    f = directory / f"{name}.json"
    f.write_text(json.dumps({"format": 1, "state": layout}))
    written.append(f)
    return written


def read_state_files(directory: Path, name: str) -> Any:
    """Inverse of :func:`write_state_files`; one-line :class:`CheckpointError` naming the file."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    jf = directory / f"{name}.json"
    if not jf.is_file():
        raise CheckpointError(f"{jf}: missing from the checkpoint")
    try:
        layout = json.loads(jf.read_text())["state"]
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, KeyError, TypeError) as exc:
        raise CheckpointError(f"{jf}: corrupt or truncated checkpoint file ({_short(exc)})") from None
    tensors: dict = {}
    tf = directory / f"{name}.safetensors"
    if tf.is_file():
        try:
            tensors = load_file(str(tf))
        except (OSError, SafetensorError, RuntimeError, ValueError) as exc:
            raise CheckpointError(f"{tf}: corrupt or truncated checkpoint file "
                                  f"({_short(exc)})") from None
    return _decode(layout, tensors, jf)


# --------------------------------------------------------------------- RNG

def rng_state() -> dict:
    """This process's python, numpy and torch RNG states, as JSON-able numbers."""
    import numpy as np

    kind, keys, pos, has_gauss, cached = np.random.get_state()
    state = {"python": random.getstate(),
             "numpy": {"kind": kind, "keys": keys.tolist(), "pos": int(pos),
                       "has_gauss": int(has_gauss), "cached_gaussian": float(cached)},
             "torch": torch.get_rng_state().tolist()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = [s.tolist() for s in torch.cuda.get_rng_state_all()]
    return state


def set_rng_state(state: dict) -> None:
    import numpy as np

    random.setstate(state["python"])
    n = state["numpy"]
    np.random.set_state((n["kind"], np.asarray(n["keys"], dtype=np.uint32), n["pos"],
                         n["has_gauss"], n["cached_gaussian"]))
    torch.set_rng_state(torch.tensor(state["torch"], dtype=torch.uint8))
    if "cuda" in state and torch.cuda.is_available():
        cuda = [torch.tensor(s, dtype=torch.uint8) for s in state["cuda"]]
        if len(cuda) == torch.cuda.device_count():
            torch.cuda.set_rng_state_all(cuda)


# --------------------------------------------------------------------- save / load

def save_checkpoint(accelerator, output_dir: str | Path, step: int, state: dict,
                    total_limit: int | None = None, *, model=None, optimizer=None,
                    scheduler=None, save_model=None, save_rank=None, barrier: bool = True
                    ) -> Path:
    """Save LoRA, optimizer, scheduler, RNG and trainer state atomically; every rank calls this.

    ``save_model(directory)`` writes the trainable weights (the trainer passes the LoRA
    writer); rank 0 writes everything except the RNG state, which each rank writes, and
    what ``save_rank(directory)`` writes on every rank (GRPO / D3PO: an unfinished round).
    ``barrier=False`` (after an unexpected error, when the other ranks may not be
    listening): only the main process writes, its own RNG state included; a sharded run
    cannot save then (gathering its shards needs every rank) and says so.
    Sharded runs (FSDP2): ``save_model`` is called on every rank (it gathers the LoRA
    shards, a collective) and writes on rank 0 only; the optimizer state is gathered whole
    too, so the files are those of a one-process run and any number of processes resumes.
    """
    from safetensors import SafetensorError

    root = checkpoint_root(output_dir)
    final = root / f"checkpoint-{step:06d}"
    tmp = root / f".tmp-checkpoint-{step:06d}"
    main = accelerator.is_main_process
    sharded = bool(getattr(accelerator, "is_fsdp2", False))
    if not barrier:
        if sharded:
            logger.warning("not saving a checkpoint after the error: a sharded (FSDP) run "
                           "needs every process to gather its state; resume from the last "
                           "checkpoint")
            return final
        if not main:
            return final
        accelerator = _NoBarrier(accelerator)
    try:
        if main:
            if tmp.exists():
                shutil.rmtree(tmp)
            tmp.mkdir(parents=True)
        accelerator.wait_for_everyone()
        write_state_files(tmp, RNG.format(rank=accelerator.process_index), rng_state())
        if save_rank is not None:
            save_rank(tmp)
        if save_model is not None and (main or sharded):  # gathering shards is collective
            save_model(tmp)
        opt_state = None
        if optimizer is not None and (main or sharded):
            opt_state = optimizer_state_full(optimizer)  # collective when sharded
        if main:
            if opt_state is not None:
                write_state_files(tmp, OPTIMIZER, opt_state)
            if scheduler is not None:
                write_state_files(tmp, SCHEDULER, scheduler.state_dict())
            if getattr(accelerator, "scaler", None) is not None:
                write_state_files(tmp, SCALER, accelerator.scaler.state_dict())
        accelerator.wait_for_everyone()
        if main:
            (tmp / STATE_FILE).write_text(json.dumps(state, indent=2))
    except (OSError, SafetensorError) as exc:  # full disk, quota ...: keep the earlier ones
        shutil.rmtree(tmp, ignore_errors=True)
        earlier = list_checkpoints(output_dir)
        raise CheckpointError(
            f"could not save checkpoint {final} ({getattr(exc, 'strerror', None) or _short(exc)}); the earlier "
            f"checkpoints are intact ({earlier[-1].name if earlier else 'none yet'})") from None
    if main:
        if final.exists():  # same step saved twice (e.g. signal right after a save)
            old = root / f".old-checkpoint-{step:06d}"
            if old.exists():
                shutil.rmtree(old)
            os.replace(final, old)
            shutil.rmtree(old)
        os.replace(tmp, final)
        if total_limit is not None:
            for old in list_checkpoints(output_dir)[:-total_limit]:
                shutil.rmtree(old, ignore_errors=True)
    accelerator.wait_for_everyone()
    return final


class _NoBarrier:
    """The accelerator seen by a main process saving alone (no collective calls)."""

    def __init__(self, accelerator):
        self.is_main_process = True
        self.process_index = accelerator.process_index
        self.scaler = getattr(accelerator, "scaler", None)

    def wait_for_everyone(self):
        pass


def check_checkpoint(path: str | Path) -> None:
    """Refuse a folder without our pickle-free files before anything is loaded."""
    path = Path(path)
    pickled = sorted(p.name for p in path.iterdir() if p.suffix in _PICKLED)
    needed = [LORA_FILE, f"{OPTIMIZER}.json", f"{SCHEDULER}.json", STATE_FILE]
    missing = [n for n in needed if not (path / n).is_file()]
    if missing and pickled:
        raise CheckpointError(
            f"{path}: written in the old pickled format ({', '.join(pickled[:3])}); it is not "
            f"loaded because unpickling a file can run code. Start a new run, or load only its "
            f"LoRA ({LORA_FILE}) with --lora_path where a command takes one")
    if missing:
        raise CheckpointError(f"{path}: incomplete checkpoint, missing {', '.join(missing)}")
    if pickled:
        logger.warning("%s: ignoring %s (pickle files are never loaded)", path, ", ".join(pickled))


def load_checkpoint(accelerator, path: str | Path, *, optimizer=None, scheduler=None,
                    load_model=None) -> dict:
    """Load a checkpoint written by :func:`save_checkpoint`; returns its trainer state.

    ``load_model(directory)`` restores the trainable weights. Only JSON and safetensors
    files are read, so a crafted checkpoint cannot run code.
    """
    path = Path(path)
    check_checkpoint(path)
    state = read_state(path)
    if load_model is not None:
        load_model(path)
    if optimizer is not None:
        opt_state = read_state_files(path, OPTIMIZER)
        try:
            load_optimizer_state_full(optimizer, opt_state)  # cut to this run's shards
        except (ValueError, KeyError, TypeError, RuntimeError) as exc:
            raise CheckpointError(f"{path / (OPTIMIZER + '.json')}: does not fit this run's "
                                  f"optimizer ({_short(exc)})") from None
    if scheduler is not None:
        sched_state = read_state_files(path, SCHEDULER)
        try:
            scheduler.load_state_dict(sched_state)
        except (ValueError, KeyError, TypeError, AttributeError) as exc:
            raise CheckpointError(f"{path / (SCHEDULER + '.json')}: does not fit this run's LR "
                                  f"scheduler ({_short(exc)})") from None
    scaler = getattr(accelerator, "scaler", None)
    if scaler is not None and (path / f"{SCALER}.json").is_file():
        scaler.load_state_dict(read_state_files(path, SCALER))
    rng_name = RNG.format(rank=accelerator.process_index)
    if (path / f"{rng_name}.json").is_file():
        rng = read_state_files(path, rng_name)
        try:
            set_rng_state(rng)
        except (KeyError, TypeError, ValueError, RuntimeError) as exc:
            raise CheckpointError(f"{path / (rng_name + '.json')}: not an RNG state "
                                  f"({_short(exc)})") from None
    else:  # resuming on more processes than the run was saved with
        logger.warning("%s: no RNG state for process %d; it keeps its fresh seed", path,
                       accelerator.process_index)
    return state


__all__ = ["save_checkpoint", "load_checkpoint", "check_checkpoint", "resolve_resume",
           "check_new_run_dir", "set_aside_later_checkpoints", "preflight",
           "list_checkpoints", "read_state", "checkpoint_root", "write_state_files",
           "read_state_files", "CheckpointError", "STATE_FILE", "LORA_FILE"]
