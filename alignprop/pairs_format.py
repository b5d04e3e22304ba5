"""The pairs folder: sampled pairs of edits, their trajectories, and ``pairs.json``.

One definition shared by the command that writes a pairs folder
(``python -m alignprop.sample_pairs``), the annotation page
(``python -m alignprop.annotate``) and training on people's choices
(``--method d3po --preferences``).

Layout (every path in the manifest is relative to the folder)::

    DIR/pairs.json
    DIR/inputs/0000.png                 the input photo of pair 0000
    DIR/images/0000_a.png, 0000_b.png   the two edits (same input and instruction, different noise)
    DIR/trajectories/0000.safetensors   both samples' stored trajectories, a then b
    DIR/preferences.jsonl               people's choices (alignprop/preferences.py), appended

``pairs.json``::

    {"format": "alignprop-pairs/1", "created": "2026-12-05T10:00:00Z",
     "base_model": "tiny-photo", "lora": null, "sde_noise": 0.7, "num_steps": 4,
     "height": 64, "width": 64, "seed": 0,
     "pairs": [{"id": "0000", "input": "inputs/0000.png", "prompt": "Make it brighter.",
                "images": ["images/0000_a.png", "images/0000_b.png"],
                "trajectory": "trajectories/0000.safetensors"}, ...]}

The manifest is written last and atomically, so a folder with a ``pairs.json`` is
complete. :func:`load_pairs` refuses, in one line naming the file, a manifest with a
missing or mistyped key, a path that is absolute, climbs out with ``..`` or through a
symlink, a file that is missing, or a repeated pair id. The layout of the tensors
inside a trajectory file belongs to the sampler that writes it; here it is only
required to be a safetensors file.
"""
from __future__ import annotations

import datetime as _dt
import hashlib
import json
import os
import re
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Iterable, Mapping

from common.cli import UserError

FORMAT = "alignprop-pairs/1"
MANIFEST = "pairs.json"
PREFERENCES = "preferences.jsonl"

# Pair ids appear in URLs, file names and log lines: keep them plain.
_ID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
# Top-level keys and their JSON types (bool is excluded from the numbers below).
_TOP_KEYS: dict[str, tuple[type, ...]] = {
    "format": (str,), "created": (str,), "base_model": (str,), "lora": (str, type(None)),
    "sde_noise": (int, float), "num_steps": (int,), "height": (int,), "width": (int,),
    "seed": (int,), "pairs": (list,),
}
_PAIR_KEYS = ("id", "input", "prompt", "images", "trajectory")


class PairsFormatError(UserError):
    """A pairs folder or its ``pairs.json`` is not what the format promises."""


@dataclass(frozen=True)
class Pair:
    """One pair: an input, an instruction and two edits of it. Paths are relative to the folder."""

    id: str
    input: str
    prompt: str
    images: tuple[str, str]
    trajectory: str

    def as_dict(self) -> dict:
        return {"id": self.id, "input": self.input, "prompt": self.prompt,
                "images": list(self.images), "trajectory": self.trajectory}


@dataclass(frozen=True)
class PairsManifest:
    """A loaded, validated pairs folder."""

    root: Path                 # the folder, resolved
    created: str
    base_model: str
    lora: str | None
    sde_noise: float
    num_steps: int
    height: int
    width: int
    seed: int
    pairs: tuple[Pair, ...]
    sha256: str                # fingerprint of the manifest's content (see manifest_sha256)

    @property
    def manifest_path(self) -> Path:
        return self.root / MANIFEST

    @property
    def by_id(self) -> dict[str, Pair]:
        return {p.id: p for p in self.pairs}

    def path(self, relative: str) -> Path:
        """Absolute path of a file named in the manifest."""
        return self.root / relative

    def files(self) -> set[str]:
        """Every relative path the manifest names (inputs, images, trajectories)."""
        out: set[str] = set()
        for p in self.pairs:
            out.update((p.input, *p.images, p.trajectory))
        return out


def pair_files(pair_id: str) -> dict:
    """The conventional relative paths of pair ``pair_id`` (what sample_pairs writes)."""
    return {"input": f"inputs/{pair_id}.png",
            "images": [f"images/{pair_id}_a.png", f"images/{pair_id}_b.png"],
            "trajectory": f"trajectories/{pair_id}.safetensors"}


def manifest_sha256(document: Mapping) -> str:
    """sha256 of the manifest's canonical JSON: the same content gives the same fingerprint
    whatever its whitespace or key order. A preferences file records it, so choices made on
    one sampling are never read against another (a new sampling has a new ``created``)."""
    canonical = json.dumps(document, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(canonical.encode("utf-8")).hexdigest()


def utc_now() -> str:
    """Current UTC time as ISO 8601 with milliseconds and a ``Z``."""
    now = _dt.datetime.now(_dt.timezone.utc)
    return now.strftime("%Y-%m-%dT%H:%M:%S.") + f"{now.microsecond // 1000:03d}Z"


# --------------------------------------------------------------------------- validation

def _type_name(types: tuple[type, ...]) -> str:
    names = {str: "a string", int: "an integer", float: "a number", list: "a list",
             type(None): "null"}
    return " or ".join(dict.fromkeys(names.get(t, t.__name__) for t in types))


def _is(value, types: tuple[type, ...]) -> bool:
    return isinstance(value, types) and not isinstance(value, bool)


def check_relative_path(root: Path, rel, where: str, manifest: Path,
                        must_exist: bool = True) -> str:
    """``rel`` as a clean relative POSIX path that stays inside ``root`` (symlinks resolved)."""
    if not isinstance(rel, str) or not rel:
        raise PairsFormatError(f"{manifest}: {where} must be a non-empty relative path, got "
                               f"{rel!r}")
    if "\\" in rel or "\x00" in rel:
        raise PairsFormatError(f"{manifest}: {where} {rel!r} has a backslash or NUL; use / "
                               f"between folders")
    pure = PurePosixPath(rel)
    if pure.is_absolute() or re.match(r"^[A-Za-z]:", rel):
        raise PairsFormatError(f"{manifest}: {where} {rel!r} is absolute; paths must be relative "
                               f"to {root}")
    if any(part in ("..", ".") for part in pure.parts) or str(pure) != rel:
        raise PairsFormatError(f"{manifest}: {where} {rel!r} is not a plain relative path "
                               f"(no '.', '..' or repeated '/')")
    target = root / rel
    try:
        real = target.resolve(strict=False)
    except (OSError, RuntimeError) as exc:  # symlink loops
        raise PairsFormatError(f"{manifest}: {where} {rel!r} cannot be resolved: {exc}") from None
    if real != root and root not in real.parents:
        raise PairsFormatError(f"{manifest}: {where} {rel!r} leads outside the folder "
                               f"(to {real}) through a symlink")
    if must_exist and not real.is_file():
        missing = "is missing" if not real.exists() else "is not a file"
        raise PairsFormatError(f"{manifest}: {where} {rel!r} {missing}")
    return rel


def _check_pair(root: Path, manifest: Path, index: int, raw, check_files: bool) -> Pair:
    if not isinstance(raw, dict):
        raise PairsFormatError(f"{manifest}: pairs[{index}] must be an object, got "
                               f"{type(raw).__name__}")
    missing = [k for k in _PAIR_KEYS if k not in raw]
    if missing:
        raise PairsFormatError(f"{manifest}: pairs[{index}] is missing {', '.join(missing)}")
    pid = raw["id"]
    if not isinstance(pid, str) or not _ID_RE.match(pid):
        raise PairsFormatError(f"{manifest}: pairs[{index}] id {pid!r} must be 1-64 letters, "
                               f"digits, '_', '.' or '-' (not starting with a symbol)")
    where = f"pair {pid!r}"
    if not isinstance(raw["prompt"], str):
        raise PairsFormatError(f"{manifest}: {where} prompt must be a string")
    images = raw["images"]
    if not isinstance(images, list) or len(images) != 2:
        raise PairsFormatError(f"{manifest}: {where} images must be a list of two paths")
    if images[0] == images[1]:
        raise PairsFormatError(f"{manifest}: {where} names the same image twice ({images[0]!r})")
    inp = check_relative_path(root, raw["input"], f"{where} input", manifest, check_files)
    imgs = tuple(check_relative_path(root, im, f"{where} images[{k}]", manifest, check_files)
                 for k, im in enumerate(images))
    traj = check_relative_path(root, raw["trajectory"], f"{where} trajectory", manifest,
                               check_files)
    return Pair(id=pid, input=inp, prompt=raw["prompt"], images=imgs, trajectory=traj)


def validate_manifest(document, root: Path, manifest: Path, check_files: bool = True
                      ) -> PairsManifest:
    """Check a parsed ``pairs.json`` against the format; one-line :class:`PairsFormatError`."""
    if not isinstance(document, dict):
        raise PairsFormatError(f"{manifest}: expected a JSON object at the top")
    missing = [k for k in _TOP_KEYS if k not in document]
    if missing:
        raise PairsFormatError(f"{manifest}: missing key(s) {', '.join(missing)}")
    if document["format"] != FORMAT:
        raise PairsFormatError(f"{manifest}: format {document['format']!r} is not {FORMAT!r}")
    for key, types in _TOP_KEYS.items():
        if not _is(document[key], types):
            raise PairsFormatError(f"{manifest}: {key} must be {_type_name(types)}, got "
                                   f"{document[key]!r}")
    for key in ("num_steps", "height", "width"):
        if document[key] < 1:
            raise PairsFormatError(f"{manifest}: {key} must be at least 1, got {document[key]}")
    if document["sde_noise"] < 0:
        raise PairsFormatError(f"{manifest}: sde_noise must be >= 0, got {document['sde_noise']}")
    if not document["pairs"]:
        raise PairsFormatError(f"{manifest}: pairs is empty")
    pairs: list[Pair] = []
    seen: dict[str, int] = {}
    for i, raw in enumerate(document["pairs"]):
        pair = _check_pair(root, manifest, i, raw, check_files)
        if pair.id in seen:
            raise PairsFormatError(f"{manifest}: pair id {pair.id!r} appears twice (pairs["
                                   f"{seen[pair.id]}] and pairs[{i}])")
        seen[pair.id] = i
        pairs.append(pair)
    return PairsManifest(root=root, created=document["created"], base_model=document["base_model"],
                         lora=document["lora"], sde_noise=float(document["sde_noise"]),
                         num_steps=document["num_steps"], height=document["height"],
                         width=document["width"], seed=document["seed"], pairs=tuple(pairs),
                         sha256=manifest_sha256(document))


def load_pairs(directory: str | os.PathLike, check_files: bool = True) -> PairsManifest:
    """Read and validate ``DIR/pairs.json``; every file it names must exist inside DIR."""
    d = Path(directory).expanduser()
    if not d.is_dir():
        raise PairsFormatError(f"{d}: not a folder (expected a pairs folder with {MANIFEST}, as "
                               f"written by python -m alignprop.sample_pairs)")
    root = d.resolve()
    manifest = d / MANIFEST
    if not manifest.is_file():
        raise PairsFormatError(f"{manifest}: missing (a pairs folder is written by "
                               f"python -m alignprop.sample_pairs)")
    try:
        document = json.loads(manifest.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise PairsFormatError(f"{manifest}: not valid JSON ({exc})") from None
    return validate_manifest(document, root, manifest, check_files)


# --------------------------------------------------------------------------- writing

def atomic_write_text(path: Path, text: str) -> None:
    """Write to a temporary name, fsync, rename, fsync the folder: all or nothing."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    with open(tmp, "w", encoding="utf-8") as fh:
        fh.write(text)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)
    fsync_dir(path.parent)


def fsync_dir(folder: Path) -> None:
    """Make a new directory entry durable (no-op where folders cannot be opened)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def write_pairs(directory: str | os.PathLike, pairs: Iterable[Mapping | Pair], *,
                base_model: str, lora: str | None, sde_noise: float, num_steps: int,
                height: int, width: int, seed: int, created: str | None = None,
                overwrite: bool = False) -> PairsManifest:
    """Write ``DIR/pairs.json`` for files already in DIR; validated first, written atomically.

    Call it last, after every input, image and trajectory is on disk: a folder with a
    manifest is then always complete. An existing manifest is refused unless
    ``overwrite`` (a new sampling would orphan the choices recorded against the old one).
    """
    d = Path(directory).expanduser()
    root = d.resolve()
    manifest = d / MANIFEST
    if manifest.exists() and not overwrite:
        raise PairsFormatError(f"{manifest}: already exists; write the new pairs to another "
                               f"folder")
    document = {
        "format": FORMAT, "created": created or utc_now(), "base_model": base_model,
        "lora": lora, "sde_noise": sde_noise, "num_steps": num_steps, "height": height,
        "width": width, "seed": seed,
        "pairs": [p.as_dict() if isinstance(p, Pair) else dict(p) for p in pairs],
    }
    loaded = validate_manifest(document, root, manifest, check_files=True)
    atomic_write_text(manifest, json.dumps(document, indent=1, ensure_ascii=False) + "\n")
    return loaded


__all__ = ["FORMAT", "MANIFEST", "PREFERENCES", "Pair", "PairsManifest", "PairsFormatError",
           "pair_files", "load_pairs", "write_pairs", "validate_manifest", "manifest_sha256",
           "check_relative_path", "atomic_write_text", "fsync_dir", "utc_now"]

