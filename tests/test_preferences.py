"""preferences.jsonl: appends that survive crashes, undo, aggregation, refusing other pairs."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time

import pytest

from alignprop.pairs_format import load_pairs
from alignprop.preferences import (AnotherWriterError, PreferencesError, PreferenceWriter,
                                   choice_record, load_preferences, read_records, undo_record)

from _annotate_helpers import REPO
from _pairs_fixture import make_pairs_folder


@pytest.fixture
def pairs(tmp_path):
    make_pairs_folder(tmp_path / "pairs", n=6, size=16)
    return load_pairs(tmp_path / "pairs")


def choice(pair, who, choice, shown=(0, 1)):
    return choice_record(pair, shown, choice, who)


def undo(event, who):
    return undo_record(event, who)


def write(pairs, records, path=None):
    path = path or pairs.root / "preferences.jsonl"
    w = PreferenceWriter(path, pairs)
    for r in records:
        w.append(r)
    w.close()
    return path


def three_people(pairs):
    """Votes per pair: 0000 a,a,b -> a; 0001 b,b -> b; 0002 a,b -> tie; 0003 skip, skip;
    0004 undone -> nobody; 0005 nobody. Ana's first 0001 vote (a) was undone and re-made as b."""
    records = [choice("0000", "Ana", "left"), choice("0000", "Bob", "right", (1, 0)),
               choice("0000", "Cy", "right")]
    ana_0001 = choice("0001", "Ana", "left")
    records += [ana_0001, undo(ana_0001["event"], "Ana"), choice("0001", "Ana", "right"),
                choice("0001", "Bob", "left", (1, 0))]
    records += [choice("0002", "Ana", "left"), choice("0002", "Bob", "right")]
    records += [choice("0003", "Ana", "skip"), choice("0003", "Bob", "skip", (1, 0))]
    ana_0004 = choice("0004", "Cy", "right")
    records += [ana_0004, undo(ana_0004["event"], "Cy")]
    return records


def test_majority_and_every_leave_out_ties_skips_and_count_them(pairs):
    path = write(pairs, three_people(pairs))
    maj = load_preferences(path, pairs, mode="majority")
    assert maj.examples == (("0000", 0), ("0001", 1))
    c = maj.counts
    assert (c.pairs_total, c.pairs_used, c.ties) == (6, 2, 1)
    assert (c.skipped_pairs, c.unjudged_pairs) == (1, 2)
    assert (c.choices, c.skips, c.undone, c.annotators) == (7, 2, 2, ("Ana", "Bob", "Cy"))
    every = load_preferences(path, mode="every")  # pairs found beside the file
    assert sorted(every.examples) == [("0000", 0), ("0000", 0), ("0000", 1), ("0001", 1),
                                      ("0001", 1)]
    assert every.counts.ties == 1 and every.counts.examples == 5
    assert "2 examples from 2 of 6 pairs (majority)" in maj.summary()
    with pytest.raises(PreferencesError, match="mode must be one of majority, every"):
        load_preferences(path, pairs, mode="all")


def test_file_of_other_pairs_is_refused_in_one_line(pairs, tmp_path):
    path = write(pairs, [choice("0000", "Ana", "left")])
    make_pairs_folder(tmp_path / "other", n=6, size=16, seed=1)
    with pytest.raises(PreferencesError) as info:
        load_preferences(path, tmp_path / "other")
    msg = str(info.value)
    assert "made for other pairs" in msg and "\n" not in msg and str(path) in msg


def test_unknown_pair_and_damaged_lines_are_refused(pairs):
    path = write(pairs, [choice("0000", "Ana", "left")])
    good = path.read_bytes()
    bad = json.dumps(choice("0000", "Ana", "left") | {"pair": "9999"}) + "\n"
    path.write_bytes(good + bad.encode())
    with pytest.raises(PreferencesError, match=r"preferences.jsonl:3: pair '9999' is not in"):
        load_preferences(path)
    path.write_bytes(good + b"garbage\n" + good.splitlines(True)[1])
    with pytest.raises(PreferencesError, match=r":3: not a JSON line"):
        load_preferences(path)
    wrong = choice("0000", "Ana", "left") | {"preferred": 1}
    path.write_bytes(good + (json.dumps(wrong) + "\n").encode())
    with pytest.raises(PreferencesError, match="does not match choice 'left'"):
        load_preferences(path)
    path.write_bytes(good.splitlines(True)[1])  # a choice with no header line
    with pytest.raises(PreferencesError, match="before the header"):
        load_preferences(path)


def test_repeated_records_count_once_and_files_concatenate(pairs, tmp_path):
    a = write(pairs, [choice("0000", "Ana", "left")], tmp_path / "ana.jsonl")
    b = write(pairs, [choice("0000", "Bob", "left"), choice("0001", "Bob", "right")],
              tmp_path / "bob.jsonl")
    both = tmp_path / "both.jsonl"
    both.write_bytes(a.read_bytes() + b.read_bytes() + a.read_bytes())
    prefs = load_preferences(both, pairs, mode="every")
    assert sorted(prefs.examples) == [("0000", 0), ("0000", 0), ("0001", 1)]
    assert prefs.counts.duplicates == 2  # ana's header and choice, a second time
    twisted = json.loads(a.read_text().splitlines()[1]) | {"choice": "right", "preferred": 1}
    both.write_bytes(a.read_bytes() + (json.dumps(twisted) + "\n").encode())
    with pytest.raises(PreferencesError, match="was used before for a different record"):
        load_preferences(both, pairs)


def test_unfinished_last_line_is_reported_ignored_then_repaired(pairs):
    path = write(pairs, [choice("0000", "Ana", "left")])
    torn = json.dumps(choice("0001", "Ana", "left")).encode()[:40]
    with open(path, "ab") as fh:
        fh.write(torn)
    prefs = load_preferences(path)
    assert prefs.examples == (("0000", 0),) and prefs.counts.torn_lines == 1
    # The next writer closes the line with a repair record and appends after it.
    w = PreferenceWriter(path, pairs)
    assert w.torn_lines == [3]
    w.append(choice("0002", "Ana", "right"))
    w.close()
    kinds = [r["type"] for _, r in read_records(path).records]
    assert kinds == ["header", "choice", "repair", "choice"]
    prefs = load_preferences(path)
    assert prefs.examples == (("0000", 0), ("0002", 1)) and prefs.counts.torn_lines == 1


def test_a_refused_record_never_reaches_the_file(pairs):
    path = write(pairs, [])
    size = path.stat().st_size
    w = PreferenceWriter(path, pairs)
    for bad in (choice("nope", "Ana", "left"), undo("0" * 32, "Ana"),
                choice("0000", "Ana", "left") | {"annotator": ""}):
        with pytest.raises(PreferencesError):
            w.append(bad)
    w.close()
    assert path.stat().st_size == size


def test_one_writer_per_file(pairs):
    path = write(pairs, [])
    w = PreferenceWriter(path, pairs)
    try:
        with pytest.raises(AnotherWriterError, match="another alignprop.annotate"):
            PreferenceWriter(path, pairs)
    finally:
        w.close()
    PreferenceWriter(path, pairs).close()  # released on close (and by the kernel on a crash)


WRITER = textwrap.dedent("""
    import os
    import sys
    from alignprop.pairs_format import load_pairs
    from alignprop.preferences import PreferenceWriter, choice_record
    pairs = load_pairs(sys.argv[1])
    w = PreferenceWriter(sys.argv[2], pairs)
    ids = [p.id for p in pairs.pairs]
    k = 0
    while True:
        r = choice_record(ids[k % len(ids)], [1, 0], "right", f"p{os.getpid()}-{k}")
        w.append(r)
        print(r["event"], flush=True)   # printed only after append returned (after fsync)
        k += 1
""")


def test_killed_writer_leaves_every_confirmed_record_readable(pairs, tmp_path):
    """SIGKILL a process appending as fast as it can, several times: every record it
    confirmed is read back, and nothing but at most one unfinished line is lost."""
    path = tmp_path / "prefs.jsonl"
    confirmed: list[str] = []
    for round_ in range(3):
        proc = subprocess.Popen([sys.executable, "-c", WRITER, str(pairs.root), str(path)],
                                cwd=REPO, stdout=subprocess.PIPE, text=True)
        got = []
        t0 = time.monotonic()
        while len(got) < 20 and time.monotonic() - t0 < 120:
            line = proc.stdout.readline()
            if not line:
                break
            got.append(line.strip())
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        proc.stdout.close()
        assert len(got) == 20, f"writer stopped early in round {round_}"
        confirmed += got
    prefs = load_preferences(path, pairs, mode="every")
    recorded = {r["event"] for _, r in read_records(path).records if r["type"] == "choice"}
    assert set(confirmed) <= recorded
    assert prefs.counts.choices == len(recorded)
    assert prefs.counts.torn_lines <= 3
    assert os.path.getsize(path) > 0
