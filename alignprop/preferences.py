"""People's choices between the two edits of each pair: ``preferences.jsonl``.

Written by the annotation page (``python -m alignprop.annotate``), read by training
(``--method d3po --preferences``). One JSON object per line, appended, never rewritten:

* ``{"type": "header", "format": "alignprop-preferences/1", "pairs_sha256": ..., "time": ...,
  "event": ...}`` -- first line; ties the file to one ``pairs.json`` (its content
  fingerprint, :func:`alignprop.pairs_format.manifest_sha256`). Files of several people
  may be concatenated: every header must name the same pairs.
* ``{"type": "choice", "event": ID, "pair": "0003", "shown": [1, 0], "choice": "left",
  "preferred": 1, "annotator": "Ana", "time": "2026-12-05T10:11:12.345Z"}`` -- ``shown`` is
  the order on the page (``shown[0]`` = index into the pair's ``images`` shown on the
  left, randomised per pair); ``choice`` is ``left``, ``right`` or ``skip``;
  ``preferred`` is the index into ``images`` of the chosen edit (``null`` for a skip).
* ``{"type": "undo", "event": ID, "undoes": ID, "annotator": ..., "time": ...}`` -- withdraws
  an earlier choice; the pair counts as not judged by that person again.
* ``{"type": "repair", "event": ID, "torn_bytes": N, "time": ...}`` -- written by the
  server when it found an unfinished last line (a crash mid-write); that line is ignored.

Crash safety: each record is one ``write`` of one whole line to a file opened with
``O_APPEND``, followed by ``fsync`` before the page is told "saved". A crash can only
leave an unfinished last line, never damage an earlier one; readers report and ignore
it, and the next server start closes it with a ``repair`` record. Event ids make a
retried request harmless: the same id twice is one choice.

Aggregation (:func:`load_preferences`): per pair, each person's latest choice that was
not undone counts; a skip is an abstention. ``majority`` gives one example per pair
(the edit most people preferred); ``every`` gives one example per choice. Pairs whose
votes tie, pairs only skipped and pairs nobody judged are left out, and counted.
"""
from __future__ import annotations

import errno
import fcntl
import json
import os
import re
import uuid
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from common.cli import UserError

from .pairs_format import PREFERENCES, PairsManifest, fsync_dir, load_pairs, utc_now

FORMAT = "alignprop-preferences/1"
MODES = ("majority", "every")
CHOICES = ("left", "right", "skip")
RECORD_TYPES = ("header", "choice", "undo", "repair")
_EVENT_RE = re.compile(r"^[A-Za-z0-9_-]{8,64}$")
_SHA_RE = re.compile(r"^[0-9a-f]{64}$")
MAX_NAME = 64


class PreferencesError(UserError):
    """A preferences file that cannot be used (bad line, other pairs, unknown pair id)."""


def new_event_id() -> str:
    return uuid.uuid4().hex


def check_annotator(name) -> str:
    """A person's name as recorded: 1-64 printable characters, surrounding spaces dropped."""
    if not isinstance(name, str):
        raise PreferencesError("annotator must be a string")
    name = name.strip()
    if not name or len(name) > MAX_NAME or any(not ch.isprintable() for ch in name):
        raise PreferencesError(f"annotator name must be 1-{MAX_NAME} printable characters, got "
                               f"{name!r}")
    return name


# --------------------------------------------------------------------------- records

def _need(record: dict, key: str, types, where: str):
    value = record.get(key)
    if not isinstance(value, types) or isinstance(value, bool):
        raise PreferencesError(f"{where}: {record.get('type')} record needs {key!r}")
    return value


def check_record(record, where: str) -> dict:
    """Validate one record's fields (not its meaning against the pairs); one-line error."""
    if not isinstance(record, dict):
        raise PreferencesError(f"{where}: expected a JSON object")
    kind = record.get("type")
    if kind not in RECORD_TYPES:
        raise PreferencesError(f"{where}: unknown record type {kind!r} (expected one of "
                               f"{', '.join(RECORD_TYPES)})")
    event = _need(record, "event", str, where)
    if not _EVENT_RE.match(event):
        raise PreferencesError(f"{where}: event id {event!r} must be 8-64 letters, digits, "
                               f"'_' or '-'")
    _need(record, "time", str, where)
    if kind == "header":
        if record.get("format") != FORMAT:
            raise PreferencesError(f"{where}: format {record.get('format')!r} is not {FORMAT!r}")
        if not _SHA_RE.match(str(record.get("pairs_sha256", ""))):
            raise PreferencesError(f"{where}: header needs pairs_sha256 (64 hex digits)")
    elif kind == "choice":
        _need(record, "pair", str, where)
        check_annotator(_need(record, "annotator", str, where))
        shown = record.get("shown")
        if shown not in ([0, 1], [1, 0]):
            raise PreferencesError(f"{where}: shown must be [0, 1] or [1, 0], got {shown!r}")
        choice = record.get("choice")
        if choice not in CHOICES:
            raise PreferencesError(f"{where}: choice must be one of {', '.join(CHOICES)}, got "
                                   f"{choice!r}")
        expected = None if choice == "skip" else shown[0 if choice == "left" else 1]
        if record.get("preferred", "missing") != expected:
            raise PreferencesError(f"{where}: preferred {record.get('preferred')!r} does not "
                                   f"match choice {choice!r} with shown {shown}")
    elif kind == "undo":
        _need(record, "undoes", str, where)
        check_annotator(_need(record, "annotator", str, where))
    elif kind == "repair":
        _need(record, "torn_bytes", int, where)
    return record


def choice_record(pair_id: str, shown, choice: str, annotator: str,
                  event: str | None = None) -> dict:
    """A ``choice`` record: ``shown`` = [index shown left, index shown right], ``choice`` =
    left / right / skip; ``preferred`` follows from them."""
    shown = [int(k) for k in shown]
    if shown not in ([0, 1], [1, 0]):
        raise PreferencesError(f"shown must be [0, 1] or [1, 0], got {shown}")
    if choice not in CHOICES:
        raise PreferencesError(f"choice must be one of {', '.join(CHOICES)}, got {choice!r}")
    return {"type": "choice", "event": event or new_event_id(), "pair": pair_id, "shown": shown,
            "choice": choice,
            "preferred": None if choice == "skip" else shown[0 if choice == "left" else 1],
            "annotator": check_annotator(annotator), "time": utc_now()}


def undo_record(undoes: str, annotator: str, event: str | None = None) -> dict:
    """An ``undo`` record withdrawing the choice whose event id is ``undoes``."""
    return {"type": "undo", "event": event or new_event_id(), "undoes": undoes,
            "annotator": check_annotator(annotator), "time": utc_now()}


def encode_record(record: dict) -> bytes:
    """One record as one line of UTF-8 JSON (no newline inside: json escapes them)."""
    return (json.dumps(record, ensure_ascii=False, separators=(",", ":")) + "\n").encode("utf-8")


@dataclass
class ReadResult:
    records: list[tuple[int, dict]]          # (line number, record)
    torn_lines: list[int] = field(default_factory=list)
    ends_with_newline: bool = True
    tail_bytes: int = 0                      # bytes after the last newline


def _parse(line: bytes):
    try:
        return json.loads(line.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError):
        return None


def read_records(path: str | os.PathLike) -> ReadResult:
    """Parse a preferences file; an unfinished line is reported in ``torn_lines``, not raised.

    An unfinished line is the last line without its newline that does not parse, or a
    line that does not parse followed by the server's ``repair`` record. Any other line
    that does not parse is an error naming the file and line.
    """
    path = Path(path)
    data = path.read_bytes()
    lines = data.split(b"\n")
    tail = lines.pop()                      # b"" when the file ends with a newline
    result = ReadResult(records=[], ends_with_newline=not tail, tail_bytes=len(tail))
    parsed: list[tuple[int, object]] = [(i + 1, _parse(raw) if raw.strip() else "blank")
                                        for i, raw in enumerate(lines)]
    if tail:
        obj = _parse(tail)
        if obj is None:
            result.torn_lines.append(len(lines) + 1)
        else:
            parsed.append((len(lines) + 1, obj))
    for k, (lineno, obj) in enumerate(parsed):
        if obj == "blank":
            continue
        if obj is None:
            nxt = parsed[k + 1][1] if k + 1 < len(parsed) else None
            if isinstance(nxt, dict) and nxt.get("type") == "repair":
                result.torn_lines.append(lineno)
                continue
            raise PreferencesError(f"{path}:{lineno}: not a JSON line (the file was changed by "
                                   f"hand, or is not a preferences file)")
        result.records.append((lineno, check_record(obj, f"{path}:{lineno}")))
    return result


# --------------------------------------------------------------------------- replay

class PreferenceLog:
    """The meaning of a sequence of records against one pairs folder.

    ``active[(annotator, pair_id)]`` is the event id of that person's standing judgment
    (choice or skip) of that pair; an undo removes it; a later choice replaces an
    earlier one (``superseded``). Used by the server for its state and by
    :func:`load_preferences` for training, so both read a file the same way.
    """

    def __init__(self, pairs: PairsManifest, source: str | os.PathLike):
        self.pairs = pairs
        self.source = str(source)
        self.pair_ids = {p.id for p in pairs.pairs}
        self.events: dict[str, dict] = {}
        self.active: dict[tuple[str, str], str] = {}
        self.order: list[str] = []            # active-or-not choice events in file order
        self.undone: set[str] = set()
        self.headers = 0
        self.duplicates = 0
        self.superseded = 0
        self.repairs = 0

    def check(self, record: dict, where: str) -> bool:
        """Refuse a record that does not fit this log; False when it repeats an applied event."""
        event = record["event"]
        seen = self.events.get(event)
        if seen is not None:
            if seen != record:
                raise PreferencesError(f"{where}: event id {event} was used before for a "
                                       f"different record")
            return False
        kind = record["type"]
        if kind == "header":
            if record["pairs_sha256"] != self.pairs.sha256:
                raise PreferencesError(
                    f"{where}: made for other pairs (pairs.json fingerprint "
                    f"{record['pairs_sha256'][:12]}..., but {self.pairs.manifest_path} is "
                    f"{self.pairs.sha256[:12]}...); use it with the pairs folder it was made on")
        elif kind == "repair":
            pass  # may come before the header: a crash can cut the header line itself
        elif self.headers == 0:
            raise PreferencesError(f"{where}: {kind} record before the header line (not a "
                                   f"preferences file written by alignprop.annotate)")
        elif kind == "choice":
            if record["pair"] not in self.pair_ids:
                raise PreferencesError(f"{where}: pair {record['pair']!r} is not in "
                                       f"{self.pairs.manifest_path}")
        elif kind == "undo":
            target = self.events.get(record["undoes"])
            if target is None or target["type"] != "choice":
                raise PreferencesError(f"{where}: undoes {record['undoes']!r}, which is not an "
                                       f"earlier choice in the file")
        return True

    def apply(self, record: dict, where: str) -> bool:
        """Apply one validated record; False when it repeats an event already applied."""
        if not self.check(record, where):
            self.duplicates += 1
            return False
        event, kind = record["event"], record["type"]
        if kind == "header":
            self.headers += 1
        elif kind == "choice":
            key = (record["annotator"].strip(), record["pair"])
            if key in self.active:
                self.superseded += 1
            self.active[key] = event
            self.order.append(event)
        elif kind == "undo":
            undoes = record["undoes"]
            if undoes not in self.undone:
                self.undone.add(undoes)
                target = self.events[undoes]
                key = (target["annotator"].strip(), target["pair"])
                if self.active.get(key) == undoes:
                    del self.active[key]
        elif kind == "repair":
            self.repairs += 1
        self.events[event] = record
        return True

    def active_choices(self) -> list[dict]:
        """Standing judgments (choices and skips), in file order."""
        standing = set(self.active.values())
        return [self.events[e] for e in self.order if e in standing]

    def judged_by(self, annotator: str) -> set[str]:
        return {pid for (who, pid) in self.active if who == annotator}

    def last_active(self, annotator: str) -> dict | None:
        """That person's most recent standing judgment (what "undo" withdraws)."""
        standing = set(self.active.values())
        for e in reversed(self.order):
            r = self.events[e]
            if e in standing and r["annotator"] == annotator:
                return r
        return None


def replay(path: str | os.PathLike, pairs: PairsManifest) -> tuple[PreferenceLog, ReadResult]:
    """Read and apply a whole file; an empty or absent file is an empty log."""
    log = PreferenceLog(pairs, path)
    path = Path(path)
    if not path.exists() or path.stat().st_size == 0:
        return log, ReadResult(records=[])
    result = read_records(path)
    for lineno, record in result.records:
        log.apply(record, f"{path}:{lineno}")
    return log, result


# --------------------------------------------------------------------------- training's view

@dataclass(frozen=True)
class PreferenceCounts:
    pairs_total: int        # pairs in pairs.json
    pairs_used: int         # pairs that gave at least one example
    examples: int           # training examples returned
    choices: int            # standing choices of an edit (not skips, not undone)
    skips: int              # standing skips
    undone: int             # choices withdrawn with undo
    superseded: int         # choices replaced by the same person's later choice of that pair
    ties: int               # pairs left out: as many votes for one edit as for the other
    skipped_pairs: int      # pairs left out: only skipped
    unjudged_pairs: int     # pairs left out: nobody judged them
    duplicates: int         # repeated records (same event id) ignored
    torn_lines: int         # unfinished lines ignored (a crash while writing)
    annotators: tuple[str, ...]


@dataclass(frozen=True)
class Preferences:
    """What training uses: ``examples`` = ((pair_id, preferred_index), ...)."""

    examples: tuple[tuple[str, int], ...]
    counts: PreferenceCounts
    mode: str
    pairs: PairsManifest
    path: Path

    def summary(self) -> str:
        c = self.counts
        parts = [f"{c.examples} examples from {c.pairs_used} of {c.pairs_total} pairs "
                 f"({self.mode}); {c.choices} choices by {len(c.annotators)} "
                 f"{'person' if len(c.annotators) == 1 else 'people'}",
                 f"left out: {c.ties} tied, {c.skipped_pairs} skipped, {c.unjudged_pairs} not "
                 f"judged",
                 f"{c.skips} skips, {c.undone} undone, {c.superseded} superseded"]
        if c.duplicates or c.torn_lines:
            parts.append(f"{c.duplicates} repeated and {c.torn_lines} unfinished lines ignored")
        return f"{self.path}: " + "; ".join(parts)


def aggregate(log: PreferenceLog, mode: str = "majority"
              ) -> tuple[list[tuple[str, int]], dict[str, int]]:
    """(examples, left-out counts) from a replayed log; see the module docstring."""
    if mode not in MODES:
        raise PreferencesError(f"preference mode must be one of {', '.join(MODES)}, got {mode!r}")
    votes: dict[str, list[int]] = {p.id: [] for p in log.pairs.pairs}
    skips: Counter = Counter()
    for r in log.active_choices():
        if r["choice"] == "skip":
            skips[r["pair"]] += 1
        else:
            votes[r["pair"]].append(r["preferred"])
    examples: list[tuple[str, int]] = []
    left_out = {"ties": 0, "skipped_pairs": 0, "unjudged_pairs": 0, "pairs_used": 0}
    for p in log.pairs.pairs:
        v = votes[p.id]
        if not v:
            left_out["skipped_pairs" if skips[p.id] else "unjudged_pairs"] += 1
            continue
        for_b = sum(v)
        for_a = len(v) - for_b
        if for_a == for_b:
            left_out["ties"] += 1
            continue
        left_out["pairs_used"] += 1
        if mode == "majority":
            examples.append((p.id, 0 if for_a > for_b else 1))
        else:
            examples.extend((p.id, k) for k in v)
    return examples, left_out


def load_preferences(path: str | os.PathLike,
                     pairs: PairsManifest | str | os.PathLike | None = None,
                     mode: str = "majority") -> Preferences:
    """Read ``preferences.jsonl`` against its pairs; the examples training uses, and counts.

    ``pairs``: a loaded :class:`PairsManifest`, a pairs folder, or None for the folder the
    file is in. A file made for other pairs, naming an unknown pair, or with a damaged
    line (other than an unfinished last one) is refused in one line.
    """
    path = Path(path).expanduser()
    if mode not in MODES:
        raise PreferencesError(f"preference mode must be one of {', '.join(MODES)}, got {mode!r}")
    if not path.is_file():
        raise PreferencesError(f"{path}: no such preferences file (python -m alignprop.annotate "
                               f"DIR writes DIR/{PREFERENCES})")
    if not isinstance(pairs, PairsManifest):
        pairs = load_pairs(path.parent if pairs is None else pairs)
    log, result = replay(path, pairs)
    if log.headers == 0:
        raise PreferencesError(f"{path}: empty (no choices recorded yet)")
    examples, left_out = aggregate(log, mode)
    standing = log.active_choices()
    counts = PreferenceCounts(
        pairs_total=len(pairs.pairs), pairs_used=left_out["pairs_used"], examples=len(examples),
        choices=sum(r["choice"] != "skip" for r in standing),
        skips=sum(r["choice"] == "skip" for r in standing), undone=len(log.undone),
        superseded=log.superseded, ties=left_out["ties"],
        skipped_pairs=left_out["skipped_pairs"], unjudged_pairs=left_out["unjudged_pairs"],
        duplicates=log.duplicates, torn_lines=len(result.torn_lines),
        annotators=tuple(sorted({r["annotator"] for r in standing})))
    return Preferences(examples=tuple(examples), counts=counts, mode=mode, pairs=pairs, path=path)


# --------------------------------------------------------------------------- writing

class AnotherWriterError(PreferencesError):
    """Another process is appending to the same preferences file."""


class PreferenceWriter:
    """Append-only, fsynced writer; holds an exclusive lock on the file while open.

    Opening replays the existing file (refusing one made for other pairs), closes an
    unfinished last line with a ``repair`` record, and writes the header to a new file.
    The lock (``flock``) is released by the kernel when the process dies, so a killed
    server never leaves a stale lock behind.
    """

    def __init__(self, path: str | os.PathLike, pairs: PairsManifest):
        self.path = Path(path)
        self.pairs = pairs
        created = not self.path.exists()
        self.fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            try:
                fcntl.flock(self.fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError as exc:
                if exc.errno in (errno.EWOULDBLOCK, errno.EACCES):
                    raise AnotherWriterError(
                        f"{self.path}: another alignprop.annotate is writing to this file; use "
                        f"that server's page (two servers on one file could record a pair "
                        f"twice)") from None
                raise
            if created:
                fsync_dir(self.path.parent)
            self.log, result = replay(self.path, pairs)
            self.torn_lines = list(result.torn_lines)
            if not result.ends_with_newline:
                # An unfinished line: end it, and if it was not a whole record, say so
                # in the file so readers know why the line is there.
                self._write(b"\n")
                if result.torn_lines:
                    self.append({"type": "repair", "event": new_event_id(), "time": utc_now(),
                                 "torn_bytes": result.tail_bytes})
            if self.log.headers == 0:
                self.append({"type": "header", "format": FORMAT, "pairs_sha256": pairs.sha256,
                             "event": new_event_id(), "time": utc_now()})
        except BaseException:
            os.close(self.fd)
            raise

    def _write(self, data: bytes) -> None:
        view = memoryview(data)
        while view:
            n = os.write(self.fd, view)
            view = view[n:]
        os.fsync(self.fd)

    def append(self, record: dict) -> None:
        """Validate, durably append (returns after fsync) and apply one record.

        A record the log would refuse never reaches the file.
        """
        where = f"{self.path} (new record)"
        check_record(record, where)
        if not self.log.check(record, where):
            raise PreferencesError(f"{where}: event id {record['event']} already recorded")
        start = os.fstat(self.fd).st_size
        try:
            self._write(encode_record(record))
        except OSError:
            # A partial line may be on disk: end it before anything else is appended.
            self._repair_after_failure(start)
            raise
        self.log.apply(record, where)

    def _repair_after_failure(self, start: int) -> None:
        try:
            size = os.fstat(self.fd).st_size
            if size > start:
                self._write(b"\n" + encode_record(
                    {"type": "repair", "event": new_event_id(), "time": utc_now(),
                     "torn_bytes": size - start}))
        except OSError:
            pass  # the disk refuses even this: the next server start repairs the tail

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1


__all__ = ["FORMAT", "MODES", "CHOICES", "PreferencesError", "AnotherWriterError",
           "Preferences", "PreferenceCounts", "PreferenceLog", "PreferenceWriter",
           "load_preferences", "aggregate", "read_records", "replay", "check_record",
           "check_annotator", "encode_record", "new_event_id", "choice_record", "undo_record"]
