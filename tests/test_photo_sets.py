"""The held-out photo sets stay out of every pretraining and training list, and the bundled
second set is what its SOURCES.json says (small, permissively licensed, attributed)."""
from PIL import Image

from alignprop import demo, pretrain_tiny
from alignprop.photo_sets import (SECOND_SET_DIR, SKIMAGE_HELD_OUT, load_second_set,
                                  second_set_paths, second_set_sources)


def _stem(name: str) -> str:
    return name.rsplit(".", 1)[0]


def test_second_set_is_bundled_small_attributed_and_permissive():
    sources = second_set_sources()
    paths = second_set_paths()
    assert len(paths) == len(sources) >= 8
    # every PNG in the folder is listed, and every listed one is there
    assert {p.name for p in SECOND_SET_DIR.glob("*.png")} == {p.name for p in paths}
    for p in paths:
        entry = sources[p.stem]
        assert entry["license"] in ("CC-BY-4.0", "CC0-1.0") and entry["author"]
        with Image.open(p) as im:
            assert im.size == tuple(entry["size"]) and im.mode == "RGB"
    assert sum(p.stat().st_size for p in paths) < 1_000_000
    x = load_second_set(64)
    assert x.shape == (len(paths), 3, 64, 64) and 0 <= float(x.min()) and float(x.max()) <= 1


def test_held_out_photos_are_in_no_pretraining_or_training_list():
    trained = {_stem(n) for n in pretrain_tiny.SKIMAGE_TRAIN + pretrain_tiny.MATPLOTLIB_TRAIN}
    trained |= set(demo.PHOTOS)
    held = {_stem(n) for n in pretrain_tiny.HELD_OUT} | set(SKIMAGE_HELD_OUT)
    assert held == set(SKIMAGE_HELD_OUT)
    assert not held & trained
    second = {p.stem for p in second_set_paths()}
    assert not second & trained and not second & held
    # the second set comes from another source than the pretraining photos
    sources = {e["source_file"] for e in second_set_sources().values()}
    assert not {_stem(s) for s in sources} & trained
