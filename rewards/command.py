"""A judge given as a command line: any program that looks at images and writes scores.

For judges with no gradient -- a detector behind a CLI, a VLM asked through an API, a
thresholded score -- used with the methods that need none (GRPO, D3PO). The reward declares
``differentiable = False``.

Protocol (version 1), one call per batch:

1. The reward makes a fresh temporary folder and writes into it
   ``images/000.png, 001.png, ...`` (the generated images, 8-bit RGB PNG),
   ``inputs/000.png, ...`` (the input images, when the batch has them) and ``manifest.json``::

       {"version": 1, "scores_json": "scores.json", "scores_csv": "scores.csv",
        "images": [{"name": "000.png", "image": "images/000.png",
                    "input": "inputs/000.png", "prompt": "make it brighter"}, ...]}

   (paths relative to the folder; ``input`` is null without inputs, ``prompt`` null without
   prompts).
2. It runs the command: ``argv = shlex.split(COMMAND) + [absolute path of manifest.json]``,
   in that folder, WITHOUT a shell (no file name or prompt can be read as shell syntax;
   write ``sh -c '...'`` yourself if you want one). stdout and stderr are captured.
3. The program exits with status 0 after writing, in the same folder, either
   ``scores.json`` -- a JSON object with one finite number per image name,
   ``{"000.png": 0.73, "001.png": -2}`` -- or ``scores.csv`` -- one ``name,score`` line per
   image (a header line ``name,score`` is allowed). Higher is better.

Anything else is a :class:`RewardCommandError` on one line: the command not found, a
non-zero exit (with the tail of its stderr), a timeout (the program and its children are
killed), no scores file or both, a missing, unknown, duplicated, non-numeric or non-finite
score. The folder is removed afterwards.
"""
from __future__ import annotations

import csv
import json
import math
import os
import shlex
import shutil
import signal
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Sequence

import torch

from common.cli import UserError
from common.images import save_image

from .base import check_images

PROTOCOL_VERSION = 1
SCORES_JSON = "scores.json"
SCORES_CSV = "scores.csv"
STDERR_TAIL = 300   # characters of the program's stderr shown in an error


class RewardCommandError(UserError):
    """The reward command failed or its scores cannot be read; the message is one line."""


def _one_line(text: str) -> str:
    return " ".join(text.split())


def _argv(command: str | Sequence[str]) -> list[str]:
    if isinstance(command, str):
        try:
            argv = shlex.split(command)
        except ValueError as exc:    # unbalanced quotes
            raise RewardCommandError(f"reward command {command!r} cannot be split into "
                                     f"arguments: {exc}") from None
    else:
        argv = [str(a) for a in command]
    if not argv:
        raise RewardCommandError("reward command is empty")
    return argv


def _check_program(program: str) -> None:
    found = shutil.which(program) if os.sep not in program else (
        program if os.access(program, os.X_OK) and os.path.isfile(program) else None)
    if found is None:
        raise RewardCommandError(f"reward command: program {program!r} not found or not "
                                 f"executable" + ("" if os.sep in program else " (not on PATH)"))


def check_command(command: str | Sequence[str]) -> list[str]:
    """The argument list of ``command``, refusing (one line) one that cannot be split, is
    empty, or whose program is not found or not executable."""
    argv = _argv(command)
    _check_program(argv[0])
    return argv


class CommandReward:
    """Reward = the scores a user's program writes for the batch (see the module doc)."""

    differentiable = False

    def __init__(self, command: str | Sequence[str], timeout: float = 600.0,
                 workdir: str | Path | None = None):
        self.argv = check_command(command)
        if not (isinstance(timeout, (int, float)) and math.isfinite(timeout) and timeout > 0):
            raise RewardCommandError(f"reward command timeout must be a number of seconds > 0, "
                                     f"got {timeout!r}")
        self.timeout = float(timeout)
        self.workdir = None if workdir is None else Path(workdir)
        if self.workdir is not None and not self.workdir.is_dir():
            raise RewardCommandError(f"reward command work folder not found: {self.workdir}")
        self.calls = 0

    @property
    def command(self) -> str:
        return shlex.join(self.argv)

    def describe(self) -> dict:
        return {"command": self.command, "timeout": self.timeout, "protocol": PROTOCOL_VERSION}

    # ------------------------------------------------------------------ one batch
    def __call__(self, images: torch.Tensor, inputs: torch.Tensor | None = None,
                 prompts: Sequence[str] | None = None) -> tuple[torch.Tensor, dict[str, float]]:
        check_images(images)
        b = images.shape[0]
        if inputs is not None and inputs.shape[0] != b:
            raise ValueError(f"images has batch {b}, inputs has {inputs.shape[0]}")
        if prompts is not None and len(prompts) != b:
            raise ValueError(f"images has batch {b}, {len(prompts)} prompts given")
        start = time.perf_counter()
        folder = Path(tempfile.mkdtemp(prefix="reward_command_", dir=self.workdir))
        try:
            names = self._write_batch(folder, images, inputs, prompts)
            self._run(folder)
            scores = read_scores(folder, names)
        finally:
            shutil.rmtree(folder, ignore_errors=True)
        self.calls += 1
        out = torch.tensor([scores[n] for n in names], dtype=torch.float32, device=images.device)
        return out, {"seconds": time.perf_counter() - start}

    def _write_batch(self, folder: Path, images, inputs, prompts) -> list[str]:
        width = max(3, len(str(images.shape[0] - 1)))
        names = [f"{i:0{width}d}.png" for i in range(images.shape[0])]
        entries = []
        for i, name in enumerate(names):
            save_image(images[i], folder / "images" / name)
            entry = {"name": name, "image": f"images/{name}", "input": None,
                     "prompt": None if prompts is None else str(prompts[i])}
            if inputs is not None:
                save_image(inputs[i], folder / "inputs" / name)
                entry["input"] = f"inputs/{name}"
            entries.append(entry)
        manifest = {"version": PROTOCOL_VERSION, "scores_json": SCORES_JSON,
                    "scores_csv": SCORES_CSV, "images": entries}
        (folder / "manifest.json").write_text(json.dumps(manifest, indent=1), encoding="utf-8")
        return names

    def _run(self, folder: Path) -> None:
        argv = self.argv + [str((folder / "manifest.json").resolve())]
        try:
            # own session: on a timeout the whole process group (the program's children
            # too) is killed, not only the first process
            proc = subprocess.Popen(argv, cwd=folder, stdin=subprocess.DEVNULL,
                                    stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                    start_new_session=True)
        except OSError as exc:
            raise RewardCommandError(f"reward command {self.command!r} could not start: "
                                     f"{exc.strerror or exc}") from None
        try:
            _, err = proc.communicate(timeout=self.timeout)
        except subprocess.TimeoutExpired:
            try:
                os.killpg(proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            proc.communicate()
            raise RewardCommandError(f"reward command {self.command!r} timed out after "
                                     f"{self.timeout:g} s (killed)") from None
        if proc.returncode != 0:
            tail = _one_line(err.decode("utf-8", "replace"))[-STDERR_TAIL:]
            raise RewardCommandError(f"reward command {self.command!r} failed with exit status "
                                     f"{proc.returncode}" + (f": {tail}" if tail else
                                                            " (nothing on stderr)"))


def _number(name: str, value, source: str) -> float:
    if isinstance(value, str) and source == SCORES_CSV:
        try:
            value = float(value)
        except ValueError:
            raise RewardCommandError(f"{source}: score of {name} is not a number: {value!r}"
                                     ) from None
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        hint = " (a JSON string: write a number)" if isinstance(value, str) else ""
        raise RewardCommandError(f"{source}: score of {name} is not a number: {value!r}{hint}")
    if not math.isfinite(value):
        raise RewardCommandError(f"{source}: score of {name} is not finite: {value!r}")
    return float(value)


def read_scores(folder: str | Path, names: Sequence[str]) -> dict[str, float]:
    """The scores a reward command wrote in ``folder`` for ``names`` (protocol above)."""
    folder = Path(folder)
    js, cs = folder / SCORES_JSON, folder / SCORES_CSV
    if js.exists() and cs.exists():
        raise RewardCommandError(f"reward command wrote both {SCORES_JSON} and {SCORES_CSV}; "
                                 f"write one")
    if js.exists():
        try:
            data = json.loads(js.read_text(encoding="utf-8"))
        except (ValueError, UnicodeDecodeError) as exc:
            raise RewardCommandError(f"{SCORES_JSON} is not valid JSON: {_one_line(str(exc))}"
                                     ) from None
        if not isinstance(data, dict):
            raise RewardCommandError(f"{SCORES_JSON} must be an object {{image name: score}}, "
                                     f"got a {type(data).__name__}")
        pairs = list(data.items())
        source = SCORES_JSON
    elif cs.exists():
        with open(cs, newline="", encoding="utf-8") as f:
            rows = [r for r in csv.reader(f) if r and any(c.strip() for c in r)]
        if rows and [c.strip().lower() for c in rows[0]] == ["name", "score"]:
            rows = rows[1:]
        for row in rows:
            if len(row) != 2:
                raise RewardCommandError(f"{SCORES_CSV}: each line must be 'name,score', got "
                                         f"{','.join(row)!r}")
        pairs = [(r[0].strip(), r[1].strip()) for r in rows]
        source = SCORES_CSV
    else:
        raise RewardCommandError(f"reward command wrote no scores: expected {SCORES_JSON} or "
                                 f"{SCORES_CSV} beside manifest.json")
    scores: dict[str, float] = {}
    wanted = set(names)
    for name, value in pairs:
        if name not in wanted:
            raise RewardCommandError(f"{source}: {name!r} is not an image of this batch "
                                     f"({names[0]} ... {names[-1]})")
        if name in scores:
            raise RewardCommandError(f"{source}: {name} is scored twice")
        scores[name] = _number(name, value, source)
    missing = [n for n in names if n not in scores]
    if missing:
        more = f" and {len(missing) - 3} more" if len(missing) > 3 else ""
        raise RewardCommandError(f"{source}: no score for {', '.join(missing[:3])}{more}")
    return scores


def make_command_reward(command: str | Sequence[str], timeout: float = 600.0,
                        workdir: str | Path | None = None) -> CommandReward:
    """The reward of ``--reward_command``: ``command`` run on each batch (module doc)."""
    return CommandReward(command, timeout=timeout, workdir=workdir)


__all__ = ["CommandReward", "RewardCommandError", "make_command_reward", "read_scores", "check_command",
           "PROTOCOL_VERSION"]
