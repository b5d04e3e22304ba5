"""Where commands write: never over their inputs, and found unwritable before any model loads.

Shared by every command that writes files (training, ``alignprop.generate``,
``alignprop.evaluate``, the demo, the scorer, the benchmark). Problems are an
:class:`OutputPathError` (a :class:`common.cli.UserError`): one line naming the flag.
Paths are compared after resolving symlinks, so ``out -> photos`` counts as ``photos``.
"""
from __future__ import annotations

import errno
import os
import tempfile
from pathlib import Path
from typing import Iterable, Mapping

from .cli import UserError


class OutputPathError(UserError):
    """An output path would overwrite an input, or cannot be written."""


def _real(p: str | os.PathLike) -> Path:
    return Path(p).expanduser().resolve()


def check_outputs_spare_inputs(outputs: Mapping[str, str | os.PathLike],
                               inputs: Mapping[str, str | os.PathLike]) -> None:
    """Refuse an output folder that is an input folder (outputs would land among the inputs).

    ``outputs`` / ``inputs`` map a flag name (``--output_dir``) to a folder.
    """
    for oflag, o in outputs.items():
        if o is None:
            continue
        for iflag, i in inputs.items():
            if i is not None and _real(o) == _real(i):
                raise OutputPathError(f"{oflag} {o} is the same folder as {iflag}: outputs would "
                                      f"be written over or among the input images; choose "
                                      f"another {oflag}")


def check_no_overwrite(planned: Iterable[str | os.PathLike], input_files: Iterable[str | os.PathLike],
                       out_flag: str) -> None:
    """Refuse when a file the command will write is one of its input files."""
    inputs = {_real(f): Path(f) for f in input_files}
    for f in planned:
        hit = inputs.get(_real(f))
        if hit is not None:
            raise OutputPathError(f"{out_flag}: the output {f} would overwrite the input {hit}; "
                                  f"choose another {out_flag}")


def check_distinct(planned: Iterable[tuple[str | os.PathLike, str]], out_flag: str) -> None:
    """Refuse two planned outputs on one path (the later would replace the earlier).

    ``planned``: (file the command will write, what it is: "the contact sheet", "the output of
    input cat.png") pairs; paths are compared resolved.
    """
    seen: dict[str, str] = {}
    for path, what in planned:
        key = str(_real(path))
        if key in seen:
            raise OutputPathError(f"{out_flag}: {what} and {seen[key]} would both be written to "
                                  f"{path}; rename the input or choose another output name")
        seen[key] = what


def check_writable_dir(flag: str, path: str | os.PathLike) -> Path:
    """Create ``path`` if needed and prove a file can be written there; one-line error if not."""
    p = Path(path).expanduser()
    for parent in [p, *p.parents]:
        if parent.exists():
            if not parent.is_dir():
                raise OutputPathError(f"{flag} {path}: {parent} is a file, not a folder")
            break
    try:
        p.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(prefix=".write-test-", dir=p)
        os.close(fd)
        os.unlink(probe)
    except OSError as exc:
        why = {errno.EROFS: "read-only file system", errno.EACCES: "permission denied",
               errno.EPERM: "permission denied", errno.ENOSPC: "no space left on the device",
               errno.ENOTDIR: "a part of the path is a file"}.get(exc.errno, exc.strerror or str(exc))
        raise OutputPathError(f"{flag} {path}: cannot write there ({why})") from None
    return p


def check_not_shipped(flag: str, path: str | os.PathLike, shipped: Iterable[str | os.PathLike]
                      ) -> None:
    """Refuse an output folder inside what the project ships (its model assets): nothing a
    command writes may replace them. Compared resolved: a symlink or ``..`` is no way in."""
    out = _real(path)
    for root in shipped:
        r = _real(root)
        if out == r or r in out.parents:
            raise OutputPathError(f"{flag} {path} is inside {r}, which holds the models the project "
                                  f"ships; write to another folder (e.g. outputs/...)")


def set_aside(folder: str | os.PathLike, names: Iterable[str], stamp: str) -> Path | None:
    """Move the files ``names`` that exist in ``folder`` into ``folder/replaced-<stamp>/``
    (kept, never deleted) before new ones are written; returns that folder, or None."""
    folder = Path(folder)
    present = [n for n in names if (folder / n).exists()]
    if not present:
        return None
    keep = folder / f"replaced-{stamp}"
    keep.mkdir(parents=True, exist_ok=False)
    for n in present:
        os.replace(folder / n, keep / n)
    return keep


def check_writable_file(flag: str, path: str | os.PathLike) -> Path:
    """The folder of an output file must be writable, and the file must not be a folder."""
    p = Path(path).expanduser()
    if p.is_dir():
        raise OutputPathError(f"{flag} {path} is a folder; give a file name")
    check_writable_dir(flag, p.parent if str(p.parent) else ".")
    return p


__all__ = ["OutputPathError", "check_outputs_spare_inputs", "check_no_overwrite",
           "check_writable_dir", "check_writable_file"]
