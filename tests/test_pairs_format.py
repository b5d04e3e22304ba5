"""The pairs folder format: what load_pairs accepts, and the one-line errors it gives."""
from __future__ import annotations

import json

import pytest

from alignprop.pairs_format import (FORMAT, PairsFormatError, load_pairs, pair_files,
                                    write_pairs)

from _pairs_fixture import make_pairs_folder


@pytest.fixture
def folder(tmp_path):
    make_pairs_folder(tmp_path / "pairs", n=3, size=16)
    return tmp_path / "pairs"


def _edit(folder, change):
    doc = json.loads((folder / "pairs.json").read_text())
    change(doc)
    (folder / "pairs.json").write_text(json.dumps(doc))


def _error(folder) -> str:
    with pytest.raises(PairsFormatError) as info:
        load_pairs(folder)
    msg = str(info.value)
    assert "\n" not in msg and str(folder / "pairs.json") in msg
    return msg


def test_fixture_folder_loads_with_every_field(folder):
    m = load_pairs(folder)
    assert [p.id for p in m.pairs] == ["0000", "0001", "0002"]
    assert m.pairs[1].images == tuple(pair_files("0001")["images"])
    assert (m.base_model, m.lora, m.num_steps, m.height, m.width) == ("tiny-photo", None, 4, 16, 16)
    assert all(m.path(rel).is_file() for rel in m.files())
    assert json.loads((folder / "pairs.json").read_text())["format"] == FORMAT


def test_fingerprint_follows_content_not_layout(folder):
    before = load_pairs(folder).sha256
    doc = json.loads((folder / "pairs.json").read_text())
    (folder / "pairs.json").write_text(json.dumps(doc, indent=4, sort_keys=True))
    assert load_pairs(folder).sha256 == before
    _edit(folder, lambda d: d.update(created="2030-01-01T00:00:00Z"))
    assert load_pairs(folder).sha256 != before


@pytest.mark.parametrize("change, expect", [
    (lambda d: d.pop("seed"), "missing key(s) seed"),
    (lambda d: d.update(format="alignprop-pairs/9"), "is not 'alignprop-pairs/1'"),
    (lambda d: d.update(num_steps="4"), "num_steps must be an integer"),
    (lambda d: d.update(sde_noise=True), "sde_noise must be"),
    (lambda d: d.update(pairs=[]), "pairs is empty"),
    (lambda d: d["pairs"][1].pop("trajectory"), "pairs[1] is missing trajectory"),
    (lambda d: d["pairs"][2].update(id="0000"), "pair id '0000' appears twice"),
    (lambda d: d["pairs"][0].update(id="../x"), "id '../x' must be"),
    (lambda d: d["pairs"][0].update(input="/etc/passwd"), "is absolute"),
    (lambda d: d["pairs"][0].update(input="../outside.png"), "not a plain relative path"),
    (lambda d: d["pairs"][0].update(input="inputs/../inputs/0000.png"), "not a plain relative"),
    (lambda d: d["pairs"][0].update(input="inputs\\0000.png"), "backslash"),
    (lambda d: d["pairs"][0].update(images=["images/0000_a.png"]), "list of two paths"),
    (lambda d: d["pairs"][0].update(images=["images/0000_a.png"] * 2), "same image twice"),
    (lambda d: d["pairs"][0].update(trajectory="trajectories/none.safetensors"), "is missing"),
])
def test_bad_manifest_is_one_line_naming_the_file(folder, change, expect):
    _edit(folder, change)
    assert expect in _error(folder)


def test_symlink_out_of_the_folder_is_refused(folder, tmp_path):
    outside = tmp_path / "outside.png"
    outside.write_bytes((folder / "images" / "0000_a.png").read_bytes())
    link = folder / "images" / "0000_a.png"
    link.unlink()
    link.symlink_to(outside)
    assert "leads outside the folder" in _error(folder)


def test_not_json_and_no_manifest(folder, tmp_path):
    (folder / "pairs.json").write_text("{not json")
    assert "not valid JSON" in _error(folder)
    with pytest.raises(PairsFormatError, match="pairs.json: missing"):
        load_pairs(tmp_path)
    with pytest.raises(PairsFormatError, match="not a folder"):
        load_pairs(tmp_path / "nowhere")


def test_write_pairs_checks_before_writing_and_never_overwrites(folder, tmp_path):
    m = load_pairs(folder)
    meta = dict(base_model="b", lora=None, sde_noise=0.5, num_steps=2, height=16, width=16, seed=1)
    with pytest.raises(PairsFormatError, match="already exists"):
        write_pairs(folder, m.pairs, **meta)
    # A manifest naming a file that is not there yet is never written.
    new = tmp_path / "new"
    new.mkdir()
    with pytest.raises(PairsFormatError, match="is missing"):
        write_pairs(new, [{"id": "0000", "prompt": "p", **pair_files("0000")}], **meta)
    assert not (new / "pairs.json").exists()
    assert not list(new.iterdir())
