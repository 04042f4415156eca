"""Scanning, validation and reproducible splits of ImageFolder datasets."""

from __future__ import annotations

import io
import re
import warnings
from collections import Counter

import pytest
from PIL import Image

from tests.helpers import heic_photo_start, make_image_folder, synthetic_image, write_rgb
from training.check import build_report
from training.data import DatasetError, ImageDataset, Splits, load_splits, splits_inside_classes


def add_bad_files(root):
    """One of each kind of broken file a real photo folder ends up with."""
    (root / "fist" / "empty.jpg").write_bytes(b"")
    (root / "fist" / "notes.txt").write_text("not an image")
    (root / "palm" / "fake.png").write_bytes(b"definitely not a png")
    buf = io.BytesIO()
    Image.fromarray(synthetic_image(0, seed=0)).save(buf, format="JPEG")
    (root / "palm" / "truncated.jpg").write_bytes(buf.getvalue()[: len(buf.getvalue()) * 2 // 3])
    (root / "peace" / ".hidden.png").write_bytes(b"ignored")
    return {"empty.jpg", "notes.txt", "fake.png", "truncated.jpg"}


def test_bad_files_are_skipped_and_reported(tmp_path):
    root = make_image_folder(tmp_path / "d", per_class=10)
    bad = add_bad_files(root)
    splits = load_splits(root, val_split=0.2, test_split=0.2)
    assert {s["path"].rsplit("/", 1)[1] for s in splits.skipped} == bad
    assert all(s["reason"] for s in splits.skipped)
    assert sum(splits.counts().values()) == 30
    reasons = " ".join(s["reason"] for s in splits.skipped)
    assert "0 bytes" in reasons and "truncated" in reasons


@pytest.mark.parametrize("layout", ["imagefolder", "presplit"])
def test_what_an_os_or_a_nas_writes_among_photos_is_neither_a_class_nor_a_photo(tmp_path, layout):
    """A zip made on macOS has __MACOSX/ beside the class folders (it trained as a class), Synology puts
    @eaDir/ with a smaller copy of each photo in every folder (they trained as more photos of the class,
    and leaked across splits), Windows drops Thumbs.db and desktop.ini: each is ignored, and said so."""
    root = tmp_path / "d"
    tops = [root / "train", root / "test"] if layout == "presplit" else [root]
    for top in tops:
        make_image_folder(top, per_class=6)
        write_rgb(top / "__MACOSX" / "fist" / "000.jpg", synthetic_image(0, seed=0))
        write_rgb(top / "fist" / "@eaDir" / "000.jpg" / "SYNOPHOTO_THUMB_M.jpg", synthetic_image(0, seed=0))
        write_rgb(top / "palm" / "$RECYCLE.BIN" / "S-1-5-21" / "deleted.jpg", synthetic_image(1, seed=0))
        (top / "peace" / "Thumbs.db").write_bytes(b"Windows thumbnails")
        (top / "desktop.ini").write_text("[.ShellClassInfo]")
    (root / "__MACOSX").mkdir(exist_ok=True)
    splits = load_splits(root, val_split=0.2, test_split=0.2, seed=0)
    assert splits.classes == ["fist", "palm", "peace"]
    assert not splits.skipped
    assert not [s.path for part in ("train", "val", "test") for s in getattr(splits, part) if "@eaDir" in s.path or "RECYCLE" in s.path]
    assert sum(splits.counts().values()) == 18 * len(tops)

    report = build_report(root)
    assert report["counts"] == {"fist": 6 * len(tops), "palm": 6 * len(tops), "peace": 6 * len(tops)}
    ignored = Counter(entry["reason"] for entry in report["ignored"])
    assert ignored == {"macOS archive metadata": len(tops), "NAS thumbnails or recycle bin (Synology, QNAP)": len(tops),
                       "drive's system folder": len(tops), "Windows folder thumbnails or settings": 2 * len(tops)}
    assert not report["skipped"] and not report["nested"]
    assert not [line for line in report["warnings"] if "skipped" in line or "deeper" in line or "__MACOSX" in line]


def test_phone_photos_in_a_format_not_decoded_are_named_in_the_error_with_the_way_to_a_jpeg(tmp_path):
    """A folder of an iPhone's HEIC photos was "no images found (looked for .bmp, .gif, ...)", and each
    file "not an image file extension"."""
    root = tmp_path / "d"
    for name in ("fist", "palm"):
        (root / name).mkdir(parents=True)
        (root / name / "IMG_0001.HEIC").write_bytes(heic_photo_start())
        (root / name / "IMG_0002.dng").write_bytes(b"II*\x00")
    with pytest.raises(DatasetError, match=r"no usable images in its class folders: 4 image file\(s\) skipped, e\.g\. .*IMG_0001\.HEIC: "
                                           r"unsupported image format HEIC \(a phone's High Efficiency photo; an iPhone takes JPEG with "
                                           r"Settings > Camera > Formats > Most Compatible\): save it as JPEG or PNG first"):
        load_splits(root)
    report = build_report(root)
    assert report["skipped_by_reason"] == {"unsupported format": 4}
    assert any("IMG_0002.dng: unsupported image format camera raw: save it as JPEG" in f"{s['path']}: {s['reason']}" for s in report["skipped"])


@pytest.mark.parametrize("layout", ["imagefolder", "presplit"])
def test_class_folders_alike_but_for_case_spaces_or_separators_are_warned_of_at_start_up(tmp_path, layout):
    """"palm " (a trailing space) trained beside "palm" as a second class that prints the same."""
    classes = ("palm", "palm ", "thumbs_up", "thumbs-up", "Fist", "fist", "拳", "掌")
    tops = ["train", "test"] if layout == "presplit" else [""]
    for top in tops:
        make_image_folder(tmp_path / "d" / top, classes=classes, per_class=6)
    with pytest.warns(UserWarning, match=r"class folders 'Fist' and 'fist'; 'palm' and 'palm '; 'thumbs-up' and 'thumbs_up' differ only "
                                         r"in case, spaces, separators, character width or look-alike letters: each is trained as a class "
                                         r"of its own") as said:
        splits = load_splits(tmp_path / "d", val_split=0.2, test_split=0.2)
    assert len(splits.classes) == 8 and sum("differ only" in str(w.message) for w in said) == 1


def test_stratified_split_is_seeded_disjoint_and_balanced(tmp_path):
    root = make_image_folder(tmp_path / "d", per_class=20)
    a = load_splits(root, val_split=0.1, test_split=0.25, seed=3)
    b = load_splits(root, val_split=0.1, test_split=0.25, seed=3)
    c = load_splits(root, val_split=0.1, test_split=0.25, seed=4)
    assert a.to_json() == b.to_json()
    assert a.to_json()["test"] != c.to_json()["test"]
    paths = [set(s.path for s in getattr(a, name)) for name in ("train", "val", "test")]
    assert not (paths[0] & paths[1] or paths[0] & paths[2] or paths[1] & paths[2])
    for label in range(3):
        assert sum(s.label == label for s in a.test) == 5
        assert sum(s.label == label for s in a.val) == 2


def test_test_per_class_holds_out_exactly_n(tmp_path):
    root = make_image_folder(tmp_path / "d", per_class=15)
    splits = load_splits(root, test_per_class=4, val_split=0.0)
    assert [sum(s.label == k for s in splits.test) for k in range(3)] == [4, 4, 4]
    assert len(splits.val) == 0


def test_presplit_layout_is_used_as_is(tmp_path):
    for split, n in (("train", 8), ("val", 2), ("test", 3)):
        make_image_folder(tmp_path / "d" / split, per_class=n)
    splits = load_splits(tmp_path / "d")
    assert splits.layout == "presplit" and splits.counts() == {"train": 24, "val": 6, "test": 9}


def test_split_folders_are_found_whatever_their_case(tmp_path):
    """Kaggle's Train/ and Test/ were trained as two classes, "Train" and "Test", on Linux alone, and check said OK."""
    for split, n in (("Train", 8), ("Validation", 2), ("TEST", 3)):
        make_image_folder(tmp_path / "d" / split, per_class=n)
    splits = load_splits(tmp_path / "d")
    assert splits.layout == "presplit" and splits.classes == ["fist", "palm", "peace"]
    assert splits.counts() == {"train": 24, "val": 6, "test": 9}
    assert all(s.path.split("/")[-3] == "TEST" for s in splits.test)


def test_a_presplit_class_absent_from_val_or_test_is_said(tmp_path):
    """It passed silently: model selection and calibration never saw the class, or the test never measured it."""
    make_image_folder(tmp_path / "d" / "train", per_class=6)
    make_image_folder(tmp_path / "d" / "val", classes=("fist", "palm"), per_class=2)
    make_image_folder(tmp_path / "d" / "test", classes=("fist",), per_class=2)
    with pytest.warns(UserWarning) as said:
        load_splits(tmp_path / "d")
    assert [str(w.message) for w in said] == [
        f"{tmp_path / 'd'}/val has no images of peace: the model is chosen and calibrated without them",
        f"{tmp_path / 'd'}/test has no images of palm, peace: the test does not measure them"]


def test_a_test_folder_beside_the_class_folders_is_said_to_be_trained_as_a_class(tmp_path):
    """Half a pre-split layout (class folders and a test/ of the same classes) trained "test" as a class, silently."""
    make_image_folder(tmp_path / "d", per_class=6)
    make_image_folder(tmp_path / "d" / "test", classes=("fist",), per_class=6)
    with pytest.warns(UserWarning, match="has class folder\\(s\\) named test, trained as classes: a pre-split layout needs both train/ and test/"):
        assert load_splits(tmp_path / "d").classes == ["fist", "palm", "peace", "test"]


def test_a_class_name_written_decomposed_is_the_same_class(tmp_path):
    """macOS writes "ñandú" decomposed (NFD): its test folder was "a class missing from train"."""
    import unicodedata

    name = "ñandú"
    make_image_folder(tmp_path / "d" / "train", classes=(unicodedata.normalize("NFC", name), "palm"), per_class=4)
    make_image_folder(tmp_path / "d" / "test", classes=(unicodedata.normalize("NFD", name), "palm"), per_class=2)
    splits = load_splits(tmp_path / "d")
    assert splits.classes == ["palm", unicodedata.normalize("NFC", name)]
    assert sorted(s.label for s in splits.test) == [0, 0, 1, 1]


def test_split_round_trips_through_json(tmp_path):
    splits = load_splits(make_image_folder(tmp_path / "d", per_class=10))
    splits.save(tmp_path / "split.json")
    again = Splits.load(tmp_path / "split.json")
    assert again.to_json() == splits.to_json()


@pytest.mark.parametrize(
    "layout, message",
    [
        ("empty_class", "no usable images: peace"),
        ("single_class", r"only one class \(fist\); a classifier needs at least two class folders$"),
        ("a_folder_too_high", r"d: only one class \(my-gestures\); a classifier needs at least two class folders; its sub-folders fist, palm, "
                              r"peace hold its images: if they are the classes, the dataset is .*/d/my-gestures$"),
        ("no_images", "no images found"),
        ("only_broken_images", r"no usable images in its class folders: 4 image file\(s\) skipped, e\.g\. .*fist/0\.png: not a recognised image format"),
        ("no_folders", "no class folders"),
        ("videos", r"no images found .*; it holds 2 video file\(s\): put them in one folder per class \(<class>/take1.mp4\), with no photo "
                   r"beside them, and --data reads every 5th frame of each; or save their frames as images \(python -m service.webcam.capture"),
        ("videos_at_the_top", r"no class folders; .*; it holds 1 video file\(s\): put them in one folder per class"),
        ("a_class_folder", r"d/fist has no class folders; .*; it holds 5 image\(s\) itself, as a class folder does: the dataset is the folder "
                           r"above it, .*/d, whose folders fist, palm, peace are the classes$"),
    ],
)
def test_untrainable_datasets_are_refused_up_front(tmp_path, layout, message):
    root = tmp_path / "d"
    if layout == "empty_class":
        make_image_folder(root, classes=("fist", "palm"), per_class=5)
        (root / "peace").mkdir()
    elif layout == "single_class":
        make_image_folder(root, classes=("fist",), per_class=5)
    elif layout == "no_images":
        (root / "fist").mkdir(parents=True)
        (root / "palm").mkdir()
        (root / "palm" / "readme.txt").write_text("x")
    elif layout == "only_broken_images":  # it said "no images found (looked for .png, ...)" beside them
        for name in ("fist", "palm"):
            (root / name).mkdir(parents=True)
            for i in range(2):
                (root / name / f"{i}.png").write_text("not a picture")
    elif layout == "videos":  # one recording per class, as a phone saves them
        for name in ("fist", "palm"):
            (root / name).mkdir(parents=True)
            (root / name / "take1.mov").write_bytes(b"\0\0\0\x14ftypqt  ")
    elif layout == "videos_at_the_top":
        root.mkdir()
        (root / "fist.mp4").write_bytes(b"\0\0\0\x18ftypmp42")
    elif layout == "a_folder_too_high":  # --data datasets, holding my-gestures/<class>/
        make_image_folder(root / "my-gestures", per_class=5)
    elif layout == "a_class_folder":  # --data my-gestures/fist
        root = make_image_folder(root, per_class=5) / "fist"
    else:
        root.mkdir()
        (root / "loose.jpg").write_bytes(b"x")
    with pytest.raises(DatasetError, match=message):
        load_splits(root)


def test_a_file_that_fails_late_is_ignored_by_the_loss_not_fatal(tmp_path):
    from gesture_core import get_backbone
    from training.augment import build_eval_transform

    splits = load_splits(make_image_folder(tmp_path / "d", per_class=5), val_split=0.0, test_split=0.0)
    open(splits.train[0].path, "wb").close()  # broken after the scan, as by a concurrent writer
    config = get_backbone("lenet5").data_config
    dataset = ImageDataset(splits.train, build_eval_transform(config), placeholder_shape=(3, 32, 32))
    image, label, index = dataset[0]
    assert label == -1 and index == 0 and image.shape == (3, 32, 32)
    assert dataset[1][1] >= 0


@pytest.mark.parametrize("val_folder", ["valid", "validation"])
def test_a_val_folder_named_as_roboflow_or_keras_name_it_is_the_validation_split(tmp_path, val_folder, capsys):
    """Roboflow exports train/valid/test, and Keras examples use validation/: the folder was passed over
    with a warning that took it for a class meant for train/, and validation was carved out of train/."""
    make_image_folder(tmp_path / "d" / "train", per_class=8)
    make_image_folder(tmp_path / "d" / val_folder, classes=("fist", "palm"), per_class=2)
    make_image_folder(tmp_path / "d" / "test", per_class=3)
    with pytest.warns(UserWarning) as said:
        splits = load_splits(tmp_path / "d")
    assert splits.layout == "presplit" and splits.counts() == {"train": 24, "val": 4, "test": 9}
    assert [str(w.message) for w in said] == [f"{tmp_path / 'd' / val_folder} has no images of peace: the model is chosen and calibrated without them"]
    assert all(f"/{val_folder}/" in s.path for s in splits.val)
    report = build_report(tmp_path / "d", decode=False)
    assert report["splits"]["val"] == {"fist": 2, "palm": 2} and not [w for w in report["warnings"] if "not read" in w]
    (tmp_path / "d" / "val").mkdir()  # two folders for one split: neither can be the one meant
    with pytest.raises(DatasetError, match=f"d: val/ and {val_folder}/ are both a val split: merge them into one, or move one away"):
        load_splits(tmp_path / "d")


def test_a_class_folder_this_user_cannot_read_is_named_as_such_not_as_empty(tmp_path, monkeypatch):
    """os.walk passes over a folder it may not list: a class folder without read access was "no usable
    images (remove them or add images)". Root reads every folder, so the denial is simulated."""
    import errno
    import os
    from pathlib import Path

    root = make_image_folder(tmp_path / "data", per_class=6, size=40)
    locked = root / "peace"
    real_walk, real_access = os.walk, os.access

    def walk(top, onerror=None, followlinks=False):
        if Path(top) == locked:
            onerror(PermissionError(errno.EACCES, "Permission denied", str(top)))
            return
        yield from real_walk(top, onerror=onerror, followlinks=followlinks)

    monkeypatch.setattr(os, "walk", walk)
    monkeypatch.setattr(os, "access", lambda path, mode, **kw: Path(path) != locked and real_access(path, mode, **kw))
    with pytest.raises(DatasetError, match=r"class folder\(s\) this user cannot read: peace \(Permission denied\): give read access"):
        load_splits(root)
    report = build_report(root)
    assert report["fatal"] == ["class folder(s) this user cannot read: peace (Permission denied): give read access (chmod -R a+rX) or remove them"]
    assert {"path": str(locked), "reason": "unreadable folder: Permission denied"} in report["skipped"]


def test_a_training_runs_folder_given_as_the_data_is_refused(tmp_path):
    """It trained on the run's report folders (eval-*, visualize-*) as classes, with no validation or test images."""
    run = make_image_folder(tmp_path / "run", classes=("eval-test", "visualize-img0"), per_class=3)
    (run / "best.pt").write_bytes(b"x")
    (run / "config.json").write_text('{"data": "datasets/gestures"}')
    reason = f"{run} is a training run's folder (best.pt, config.json), not a dataset: pass the dataset it was trained on (datasets/gestures)"
    with pytest.raises(DatasetError, match=re.escape(reason)):
        load_splits(run)
    assert build_report(run)["fatal"] == [reason + ", a folder of class folders"]


def test_train_and_test_inside_each_class_folder_are_warned_of_by_training_and_check(tmp_path):
    """fist/train/, fist/test/ (the layout inside out) was split again without a word, the folders' own split lost."""
    for split, count in (("Train", 12), ("Test", 4)):
        make_image_folder(tmp_path / "made" / split, classes=("fist", "palm"), per_class=count, size=32)
        for cls in ("fist", "palm"):
            (tmp_path / "data" / cls).mkdir(parents=True, exist_ok=True)
            (tmp_path / "made" / split / cls).rename(tmp_path / "data" / cls / split)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        load_splits(tmp_path / "data")
    said = "every class folder holds its own Train/ and Test/ (e.g. fist/Train/): they are read as one set of images per class"
    assert [w for w in caught if said in str(w.message)], [str(w.message) for w in caught]
    report = build_report(tmp_path / "data")
    assert [w for w in report["warnings"] if said in w] and not [w for w in report["warnings"] if "people or sessions" in w], report["warnings"]
    (tmp_path / "data" / "palm" / "Train").rename(tmp_path / "data" / "palm" / "anna")  # one class without its own split: not the layout
    assert splits_inside_classes(tmp_path / "data") is None
