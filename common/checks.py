"""The validation pass of every command: each file and folder a flag names, before any model loads.

A command lists ``(flag, kind, value)`` for the paths its flags name (the reward flags' come from
the registry records, :func:`rewards.file_options`) and calls :func:`check_paths`. Each is
checked for what a later load needs -- it exists, can be read, is the right kind of thing, and
is safe to load -- and the first problem is one :class:`PathCheckError` line naming the flag
and the file. Nothing here unpickles an object: a torch file is opened with ``weights_only``
(plain tensors, numbers and strings), and a file that needs more is refused, never loaded.

Kinds (``rewards.FILE_KINDS``):

``file``     an existing, readable file;
``dir``      an existing, listable folder;
``path``     a file or a folder (a weight file, or the folder holding it);
``image``    an image file that decodes (header and size; :func:`image_size`);
``weights``  a weight file or a folder of them (each safetensors / torch file in it is checked),
             or a hub id (``owner/name``) when no such path exists here;
``model``    a model folder (its ``config.json`` must parse, its weight files are checked), a hub
             id, or a built-in name (``tiny``, ``tiny-photo``, ...; passed as ``names``).
"""
from __future__ import annotations

import json
import os
import struct
import zipfile
from pathlib import Path
from typing import Any, Iterable

from .cli import UserError
from .hub import WeightFileError, load_torch_file, weight_format

WEIGHT_SUFFIXES = (".safetensors", ".pt", ".pth", ".bin", ".ckpt", ".tar")
MAX_ASPECT = 200        # Qwen-VL's processors refuse images more elongated than 200:1


class PathCheckError(UserError):
    """A path named by a flag cannot be used; the message names the flag and the file."""


def _fail(flag: str, path: Any, why: str) -> PathCheckError:
    return PathCheckError(f"{flag} {path}: {why}")


def looks_like_hub_id(value: str) -> bool:
    """``owner/name`` (what a model hub resolves), not a local-looking path."""
    s = str(value)
    return (s.count("/") == 1 and not s.startswith(("/", ".", "~")) and "\\" not in s
            and all(part.strip() for part in s.split("/")))


# --------------------------------------------------------------------------- single checks
def check_file(flag: str, value: Any) -> Path:
    p = Path(str(value)).expanduser()
    if p.is_dir():
        raise _fail(flag, value, "is a folder, expected a file")
    if not p.exists():
        raise _fail(flag, value, "file not found")
    try:
        with open(p, "rb") as f:
            f.read(1)
    except OSError as exc:
        raise _fail(flag, value, f"cannot be read ({exc.strerror or type(exc).__name__})") from None
    return p


def check_dir(flag: str, value: Any) -> Path:
    p = Path(str(value)).expanduser()
    if p.exists() and not p.is_dir():
        raise _fail(flag, value, "is a file, expected a folder")
    if not p.exists():
        raise _fail(flag, value, "folder not found")
    try:
        os.listdir(p)
    except OSError as exc:
        raise _fail(flag, value, f"cannot be listed ({exc.strerror or type(exc).__name__})") from None
    return p


def image_size(flag: str, value: Any) -> tuple[int, int]:
    """(height, width) of an image file, from its header; one line if it does not decode."""
    from PIL import Image, UnidentifiedImageError

    p = check_file(flag, value)
    try:
        with Image.open(p) as im:
            w, h = im.size
            im.verify()          # structure of the file, without decoding every pixel
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as exc:
        raise _fail(flag, value, f"is not an image that can be decoded ({type(exc).__name__}: "
                                 f"{' '.join(str(exc).split())[:120]})") from None
    if w < 1 or h < 1:
        raise _fail(flag, value, f"has no pixels ({w}x{h})")
    return h, w


def check_image(flag: str, value: Any, max_aspect: float | None = None) -> tuple[int, int]:
    """An image that decodes; ``max_aspect``: refuse more elongated ones (VLM inputs)."""
    h, w = image_size(flag, value)
    if max_aspect is not None and max(h, w) / min(h, w) > max_aspect:
        raise _fail(flag, value, f"is {w}x{h} pixels, more elongated than {max_aspect:g}:1, "
                                 f"which the vision-language models refuse")
    return h, w


def _check_safetensors(flag: str, p: Path) -> None:
    size = p.stat().st_size
    with open(p, "rb") as f:
        raw = f.read(8)
        n = struct.unpack("<Q", raw)[0] if len(raw) == 8 else -1
        if n <= 0 or 8 + n > size or n > 100_000_000:
            raise _fail(flag, p, "is truncated or not a safetensors file (its header length "
                                 "does not fit the file)")
        try:
            header = json.loads(f.read(n))
        except (ValueError, UnicodeDecodeError):
            raise _fail(flag, p, "is not a safetensors file (its header is not JSON)") from None
    if not isinstance(header, dict):
        raise _fail(flag, p, "is not a safetensors file (its header is not a JSON object)")
    end = 0
    for name, info in header.items():
        if name == "__metadata__":
            continue
        try:
            end = max(end, int(info["data_offsets"][1]))
        except (TypeError, KeyError, IndexError, ValueError):
            raise _fail(flag, p, f"is not a safetensors file (tensor {name!r} has no "
                                 f"data_offsets)") from None
    if 8 + n + end > size:
        raise _fail(flag, p, f"is truncated: its tensors need {8 + n + end} bytes, the file has "
                             f"{size}")


def check_weight_file(flag: str, value: Any) -> Path:
    """A weight file whose content is complete and holds only tensors, numbers and strings.

    Read by content, not by name. A torch file is opened with ``weights_only=True`` (lazily,
    memory-mapped when it is a zip); one that holds other Python objects is refused: loading
    it could run code.
    """
    p = check_file(flag, value)
    kind = weight_format(p)
    if kind == "safetensors":
        _check_safetensors(flag, p)
        return p
    if kind == "unknown":
        raise _fail(flag, p, "is not a weight file (neither safetensors nor a torch file)")
    if kind == "torch-zip":
        try:
            with zipfile.ZipFile(p) as z:
                if not any(n.endswith("data.pkl") for n in z.namelist()):
                    raise _fail(flag, p, "is a zip archive but not a torch weight file")
        except zipfile.BadZipFile:
            raise _fail(flag, p, "is truncated or corrupt (its zip directory cannot be read)") \
                from None
    try:
        load_torch_file(p, mmap=kind == "torch-zip")
    except WeightFileError as exc:
        raise _fail(flag, p, str(exc).split(": ", 1)[1]) from None
    return p


def _weight_files(folder: Path, depth: int = 2) -> list[Path]:
    out = []
    for entry in sorted(folder.iterdir()):
        if entry.is_dir() and depth > 1 and not entry.name.startswith("."):
            out += _weight_files(entry, depth - 1)
        elif entry.is_file() and entry.name.lower().endswith(WEIGHT_SUFFIXES) \
                and not entry.name.startswith("."):
            out.append(entry)
    return out


def check_weights(flag: str, value: Any, hub_ok: bool = True) -> Path | None:
    """A weight file, a folder of weight files (each checked), or a hub id (None)."""
    p = Path(str(value)).expanduser()
    if not p.exists():
        if hub_ok and looks_like_hub_id(str(value)):
            return None        # resolved (or refused in one line) by the loader
        raise _fail(flag, value, "not found (neither a file nor a folder here"
                                 + (", nor a hub id owner/name)" if hub_ok else ")"))
    if p.is_dir():
        check_dir(flag, value)
        for f in _weight_files(p):
            check_weight_file(flag, f)
        return p
    return check_weight_file(flag, p)


def check_model(flag: str, value: Any, names: Iterable[str] = ()) -> Path | None:
    """A model folder (config.json parses; weight files checked), a hub id or a built-in name."""
    if str(value) in set(names):
        return None
    p = Path(str(value)).expanduser()
    if not p.exists():
        if looks_like_hub_id(str(value)):
            return None
        raise _fail(flag, value, "not found (neither a model folder here, nor a hub id "
                                 "owner/name" + (f", nor one of {sorted(set(names))})"
                                                 if names else ")"))
    if not p.is_dir():
        raise _fail(flag, value, "is a file, expected a model folder")
    check_dir(flag, value)
    cfg = p / "config.json"
    if cfg.exists():
        check_json(flag, cfg)
    for f in _weight_files(p):
        check_weight_file(flag, f)
    return p


def check_json(flag: str, value: Any) -> Any:
    p = check_file(flag, value)
    try:
        return json.loads(p.read_text(encoding="utf-8"))
    except UnicodeDecodeError:
        raise _fail(flag, value, "is not a text (UTF-8) file") from None
    except json.JSONDecodeError as exc:
        raise _fail(flag, value, f"is not valid JSON (line {exc.lineno}: {exc.msg})") from None


# --------------------------------------------------------------------------- the pass
def check_path(flag: str, kind: str, value: Any, names: Iterable[str] = (),
               max_aspect: float | None = None) -> None:
    """One path of a flag, by kind (module doc)."""
    if value is None:
        return
    if kind == "file":
        check_file(flag, value)
    elif kind == "dir":
        check_dir(flag, value)
    elif kind == "path":
        p = Path(str(value)).expanduser()
        if not p.exists():
            raise _fail(flag, value, "not found")
        (check_dir if p.is_dir() else check_file)(flag, value)
    elif kind == "image":
        check_image(flag, value, max_aspect)
    elif kind == "weights":
        check_weights(flag, value)
    elif kind == "model":
        check_model(flag, value, names)
    else:
        raise ValueError(f"unknown path kind {kind!r}")


def check_paths(items: Iterable[tuple[str, str, Any]], names: Iterable[str] = ()) -> None:
    """The validation pass: ``(flag, kind, value)`` for every path a command's flags name."""
    names = tuple(names)
    for flag, kind, value in items:
        check_path(flag, kind, value, names)


__all__ = ["MAX_ASPECT", "PathCheckError", "WEIGHT_SUFFIXES", "check_dir", "check_file",
           "check_image", "check_json", "check_model", "check_path", "check_paths",
           "check_weight_file", "check_weights", "image_size", "looks_like_hub_id"]
