"""Pretrained tiny VLMs shipped with the project, selectable by name like ``tiny``.

``tiny-vlm-photo`` (InternVL3 family) is a tiny VLM trained on bundled photos to answer questions
about brightness, warmth, colourfulness and sharpness, to compare two images, and to say whether
two images show the same content or carry the same colour grade (``python -m
alignprop.pretrain_tiny_vlm``; docs/vlm.md). ``tiny-qwen-vl-photo`` is the same training of a
tiny Qwen2.5-VL (``--family qwen2.5-vl``). Its files live in ``rewards/assets/<name>/`` in the
real ``save_pretrained`` layout (config.json, model.safetensors, tokenizer and processor files),
so it loads through the same local-directory path as a downloaded checkpoint; ``manifest.json``
beside them holds the sha256 of every file, the command that made them and its held-out figures.

:func:`named_vlm_dir` turns a name into that folder after checking every file against the
manifest: a missing or changed file is one error line, never a silently different model.
``tiny`` stays the random-weight model.
"""
from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

from common.hub import ModelUnavailableError

from .vlm_families import tiny_names

ASSET_ROOT = Path(__file__).resolve().parent / "assets"
MANIFEST = "manifest.json"
# name -> folder under rewards/assets
NAMED_VLMS = {"tiny-vlm-photo": "tiny-vlm-photo", "tiny-qwen-vl-photo": "tiny-qwen-vl-photo"}
# files every shipped folder must hold (the rest are listed in its manifest)
REQUIRED = ("config.json", "model.safetensors")


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def file_entries(folder: Path) -> dict[str, dict]:
    """{file name: {sha256, bytes}} of every file in ``folder`` but the manifest."""
    return {p.name: {"sha256": sha256_file(p), "bytes": p.stat().st_size}
            for p in sorted(Path(folder).iterdir()) if p.is_file() and p.name != MANIFEST}


def read_manifest(folder: Path, name: str) -> dict:
    path = Path(folder) / MANIFEST
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise ModelUnavailableError(
            f"{name}: cannot read {path} ({type(exc).__name__}); restore it with git or "
            f"rebuild it with `python -m alignprop.pretrain_tiny_vlm`") from None


def verify_folder(folder: Path, name: str) -> dict:
    """Check every file of a shipped VLM against its manifest's sha256; returns the manifest."""
    folder = Path(folder)
    manifest = read_manifest(folder, name)
    files = manifest.get("files") or {}
    command = manifest.get("command", "python -m alignprop.pretrain_tiny_vlm")
    for required in REQUIRED:
        if required not in files:
            raise ModelUnavailableError(f"{name}: {folder / MANIFEST} lists no {required}")
    for file, entry in files.items():
        path = folder / file
        if not path.is_file():
            raise ModelUnavailableError(f"{name}: {path} is missing; restore it with git or "
                                        f"rebuild with `{command}`")
        digest = sha256_file(path)
        if digest != entry.get("sha256"):
            raise ModelUnavailableError(
                f"{name}: sha256 of {path} is {digest[:16]}..., the manifest expects "
                f"{str(entry.get('sha256'))[:16]}... (corrupt or replaced file; restore it with "
                f"git or rebuild with `{command}`)")
    return manifest


def named_vlm_dir(model_id: Any) -> Path | None:
    """The verified folder of a shipped VLM name, or None when ``model_id`` is not one."""
    if not isinstance(model_id, str) or model_id not in NAMED_VLMS:
        return None
    folder = ASSET_ROOT / NAMED_VLMS[model_id]
    verify_folder(folder, model_id)
    return folder


def named_vlms() -> list[str]:
    return list(NAMED_VLMS)


def vlm_names() -> list[str]:
    """Every model name a VLM flag takes besides a folder or hub id: the built-in random tiny
    models and the shipped pretrained ones (the validation passes accept these)."""
    return tiny_names() + named_vlms()


__all__ = ["ASSET_ROOT", "MANIFEST", "NAMED_VLMS", "file_entries", "named_vlm_dir", "named_vlms",
           "read_manifest", "sha256_file", "verify_folder", "vlm_names"]
