"""Checkpoints: atomic, rotated, resumable.

A checkpoint is ``<output_dir>/checkpoints/checkpoint-<step:06d>/`` holding

* accelerate's state (optimizer, LR scheduler, RNG states of every rank, grad scaler),
* the LoRA as diffusers ``pytorch_lora_weights.safetensors`` (written by the save
  hook the trainer registers, instead of the full transformer state dict),
* ``trainer_state.json``: global step, samples consumed, epoch, skipped steps.

It is written into ``.tmp-checkpoint-<step>`` and renamed when complete, so a
crash never leaves a half-written folder under a real checkpoint name and
``--resume_from latest`` only ever sees complete ones.
"""
from __future__ import annotations

import json
import os
import re
import shutil
from pathlib import Path

STATE_FILE = "trainer_state.json"
_NAME = re.compile(r"^checkpoint-(\d+)$")


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


def read_state(path: str | Path) -> dict:
    return json.loads((Path(path) / STATE_FILE).read_text())


def save_checkpoint(accelerator, output_dir: str | Path, step: int, state: dict,
                    total_limit: int | None = None) -> Path:
    """Save the accelerate state + trainer state atomically; every rank must call this."""
    root = checkpoint_root(output_dir)
    final = root / f"checkpoint-{step:06d}"
    tmp = root / f".tmp-checkpoint-{step:06d}"
    if accelerator.is_main_process:
        if tmp.exists():
            shutil.rmtree(tmp)
        tmp.mkdir(parents=True)
    accelerator.wait_for_everyone()
    accelerator.save_state(str(tmp))  # each rank writes its RNG state; main writes the rest
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        (tmp / STATE_FILE).write_text(json.dumps(state, indent=2))
        if final.exists():  # same step saved twice (e.g. signal right after a save)
            old = root / f".old-checkpoint-{step:06d}"
            os.replace(final, old)
            shutil.rmtree(old)
        os.replace(tmp, final)
        if total_limit is not None:
            for old in list_checkpoints(output_dir)[:-total_limit]:
                shutil.rmtree(old, ignore_errors=True)
    accelerator.wait_for_everyone()
    return final


__all__ = ["save_checkpoint", "resolve_resume", "list_checkpoints", "read_state",
           "checkpoint_root", "STATE_FILE"]
