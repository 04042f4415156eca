"""Identical image files: copies of one class never straddle a split, copies under two classes and a
folder's own train/test leakage are warned of at start-up."""

from __future__ import annotations

import hashlib
import shutil
from pathlib import Path

import pytest

from tests.helpers import SHARED_DATA, synthetic_image, write_rgb
from training.data import load_splits
from training.duplicates import identical_sets


def write_class(root: Path, cls: str, label: int, count: int, copies: bool) -> None:
    """``count`` distinct photos, each saved a second time under another name when ``copies``."""
    for n in range(count):
        write_rgb(root / cls / f"{cls}_{n:03d}.png", synthetic_image(label, seed=n, size=24))
        if copies:
            shutil.copyfile(root / cls / f"{cls}_{n:03d}.png", root / cls / f"copy of {cls}_{n:03d}.png")


def splits_of_each_content(splits) -> dict[str, set[str]]:
    sides: dict[str, set[str]] = {}
    for name in ("train", "val", "test"):
        for sample in getattr(splits, name):
            sides.setdefault(hashlib.sha256(Path(sample.path).read_bytes()).hexdigest(), set()).add(name)
    return sides


def test_identical_sets_finds_same_bytes_not_same_size(tmp_path):
    (tmp_path / "a.bin").write_bytes(b"x" * 10)
    (tmp_path / "b.bin").write_bytes(b"x" * 10)
    (tmp_path / "c.bin").write_bytes(b"y" * 10)  # same size, other bytes
    assert identical_sets(str(p) for p in sorted(tmp_path.iterdir())) + identical_sets([str(tmp_path / "gone.png")]) == [
        [str(tmp_path / "a.bin"), str(tmp_path / "b.bin")]]


def test_copies_of_a_photo_stay_in_one_split_and_the_move_is_reported(tmp_path):
    write_class(tmp_path, "fist", 0, 20, copies=True)
    write_class(tmp_path, "palm", 1, 20, copies=False)
    splits = load_splits(tmp_path, seed=0)
    assert all(len(sides) == 1 for sides in splits_of_each_content(splits).values())
    assert sum(splits.counts().values()) == 60, "a copy moves; none is dropped"
    assert any("held-out image(s) had an identical copy" in w for w in splits.grouping["warnings"])


def test_a_class_left_with_nothing_to_measure_by_its_copies_is_named(tmp_path):
    """A still "no gesture" scene saved 20 times is one file 20 times: every held-out copy joined train, the class's
    test support fell to 0 and its false-accept rate to n/a, under a warning that named no class."""
    write_class(tmp_path, "fist", 0, 20, copies=False)
    for n in range(20):
        write_rgb(tmp_path / "no_gesture" / f"still_{n:03d}.png", synthetic_image(1, seed=0, size=24))
    splits = load_splits(tmp_path, seed=0)
    assert not [s for s in splits.test + splits.val if Path(s.path).parent.name == "no_gesture"]
    said = [w for w in splits.grouping["warnings"] if "held-out image(s) had an identical copy" in w]
    assert said and said[0].endswith("; that left no image to measure in no_gesture (test), no_gesture (val): add images that are not copies")


def test_a_photo_under_two_classes_is_named_in_a_warning(tmp_path):
    write_class(tmp_path, "fist", 0, 10, copies=False)
    write_class(tmp_path, "palm", 1, 10, copies=False)
    shutil.copyfile(tmp_path / "fist" / "fist_003.png", tmp_path / "palm" / "odd one.png")
    warnings = load_splits(tmp_path, seed=0).grouping["warnings"]
    assert [w for w in warnings if "under more than one class" in w and "fist/fist_003.png = palm/odd one.png" in w]
    assert not [w for w in warnings if "held-out" in w or "test/" in w]


def test_a_folders_own_test_is_kept_and_its_copies_of_train_are_warned_of(tmp_path):
    for split, first in (("train", 0), ("test", 8)):
        for cls, label in (("fist", 0), ("palm", 1)):
            for n in range(first, first + 8):
                write_rgb(tmp_path / split / cls / f"{n}.png", synthetic_image(label, seed=n, size=24))
    shutil.copyfile(tmp_path / "train" / "fist" / "2.png", tmp_path / "test" / "fist" / "copy.png")
    splits = load_splits(tmp_path, seed=0)
    assert str(tmp_path / "test" / "fist" / "copy.png") in [s.path for s in splits.test], "the user's test set is theirs"
    assert [w for w in splits.grouping["warnings"] if w.startswith("1 image(s) of test/ are also in train/")]


def test_flowers_sunflower_saved_twice_no_longer_sits_in_train_and_test():
    if not (SHARED_DATA / "flowers").is_dir():
        pytest.skip("../shared/data/flowers not present")
    splits = load_splits(SHARED_DATA / "flowers", seed=0, test_per_class=100)
    assert all(len(sides) == 1 for sides in splits_of_each_content(splits).values())
    assert len(splits.test) == 499, "the sunflower copy that was a test image trains beside its twin"
