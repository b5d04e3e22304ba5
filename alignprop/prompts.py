"""``--prompt_file``: one reader, one meaning, for training and ``alignprop.generate``.

A prompt file is either

* a text file (any extension but ``.json``): ONE INSTRUCTION PER LINE; blank lines and
  lines starting with ``#`` are skipped. Each sample draws one line at random,
  reproducibly from ``--seed`` and the sample's number (so a one-line file means "this
  instruction for everything"). This is the original project's ``--prompt_list_file``.
* a ``.json`` object ``{"file name or stem": "instruction", ...}``: per-image
  instructions; images it does not list use ``--prompt``.
"""
from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Mapping, Sequence, Union

from common.cli import UserError

Prompts = Union[list, dict]  # list of lines, or {name or stem: instruction}


def read_prompt_file(path: str | Path, flag: str = "--prompt_file") -> Prompts:
    """The lines (list) or the name -> instruction table (dict) of a prompt file."""
    p = Path(path).expanduser()
    if not p.is_file():
        what = "is a folder, expected a file" if p.is_dir() else "file not found"
        raise UserError(f"{flag}: {what}: {path}")
    try:
        text = p.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise UserError(f"{flag} {path}: cannot read it as UTF-8 text ({exc})") from None
    if p.suffix.lower() == ".json":
        try:
            table = json.loads(text)
        except json.JSONDecodeError as exc:
            raise UserError(f"{flag} {path} is not valid JSON: {exc}") from None
        if not isinstance(table, dict) or not all(isinstance(v, str) for v in table.values()):
            raise UserError(f"{flag} {path} must be a JSON object "
                            '{"file name or stem": "instruction", ...}')
        table = {Path(str(k)).name: v.strip() for k, v in table.items() if v.strip()}
        if not table:
            raise UserError(f"{flag} {path} holds no instruction")
        return table
    lines = [ln.strip() for ln in text.splitlines()]
    lines = [ln for ln in lines if ln and not ln.startswith("#")]
    if not lines:
        raise UserError(f"{flag} {path} holds no prompt (one per line; # starts a comment)")
    return lines


def lookup(table: Mapping[str, str], name: str) -> str | None:
    """Instruction of image ``name`` in a JSON table: by file name, then by stem."""
    base = Path(name).name
    return table.get(base, table.get(Path(base).stem))


def draw(lines: Sequence[str], seed: int, sample_number: int) -> str:
    """Line for the ``sample_number``-th sample: random, reproducible from ``seed``."""
    if len(lines) == 1:
        return lines[0]
    return random.Random(seed * 1_000_003 + sample_number).choice(list(lines))


def prompt_for(prompts: Prompts | None, default: str | None, name: str, seed: int,
               sample_number: int) -> str | None:
    """The instruction for one sample (None when neither the file nor --prompt has one)."""
    if prompts is None:
        return default
    if isinstance(prompts, list):
        return draw(prompts, seed, sample_number)
    found = lookup(prompts, name)
    return found if found is not None else default


__all__ = ["read_prompt_file", "prompt_for", "lookup", "draw", "Prompts"]
