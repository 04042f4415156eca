"""training.check on folders with every kind of bad file a real dataset has, and on the real data."""

from __future__ import annotations

import json
import os
import re
import shutil
import unicodedata
from pathlib import Path

import numpy as np
import pytest

from benchmarks.hostile_inputs import ico_holding_png
from tests.helpers import make_image_folder, synthetic_image, write_rgb
from training.check import build_report, main
from training.data import DatasetError, load_splits


@pytest.fixture
def messy(tmp_path: Path) -> Path:
    """fist/palm with 25 good images each, peace with 5, plus one of every problem."""
    root = make_image_folder(tmp_path / "messy", classes=("fist", "palm"), per_class=25, ext=".jpg")
    make_image_folder(tmp_path / "peace-src", classes=("peace",), per_class=5, ext=".png")
    shutil.move(tmp_path / "peace-src" / "peace", root / "peace")
    (root / "fist" / "corrupt.jpg").write_bytes(b"\xff\xd8\xff\xe0 definitely not a jpeg" * 10)
    (root / "fist" / "empty.jpg").write_bytes(b"")
    (root / "palm" / "notes.txt").write_text("a non-image")
    (root / "fist" / "clip.MP4").write_bytes(b"\0\0\0\x18ftypmp42")  # a recording dropped in among the photos
    (root / "peace" / "icon.png").write_bytes(ico_holding_png(64, 64))  # named .png, but an ICO
    good = (root / "palm" / "000.jpg").read_bytes()
    (root / "palm" / "truncated.jpg").write_bytes(good[: len(good) // 2])
    shutil.copy(root / "fist" / "000.jpg", root / "peace" / "copied-from-fist.jpg")  # conflicting labels
    shutil.copy(root / "fist" / "001.jpg", root / "fist" / "001-again.jpg")  # harmless duplicate
    os.symlink("loop.jpg", root / "fist" / "loop.jpg")  # a symlink pointing at itself
    os.symlink(".", root / "palm" / "dirloop")  # a folder symlink that would recurse forever
    os.mkfifo(root / "palm" / "pipe.jpg")  # opening it would block forever
    (root / "fist" / ".DS_Store").write_bytes(b"\0" * 10)
    write_rgb(root / "palm" / "deeper" / "nested.png", synthetic_image(1, seed=99))
    (root / "README.txt").write_text("stray file beside the class folders")
    weird = os.fsencode(root / "palm") + b"/caf\xe9-latin1.png"  # not valid UTF-8
    with open(weird, "wb") as f:
        f.write(_png_bytes())
    return root


def _png_bytes() -> bytes:
    import cv2

    ok, buf = cv2.imencode(".png", synthetic_image(1, seed=12345))
    assert ok
    return buf.tobytes()


def test_report_finds_every_problem(messy: Path):
    r = build_report(messy, workers=2)
    assert r["fatal"] == []
    assert r["layout"] == "imagefolder"
    assert r["classes"] == ["fist", "palm", "peace"]
    # fist: 25 + duplicate copy; palm: 25 + nested + non-UTF-8 name; peace: 5 + copied file
    assert r["counts"] == {"fist": 26, "palm": 27, "peace": 6}
    assert r["imbalance_ratio"] == round(27 / 6, 2)

    reasons = {Path(s["path"]).name: s["reason"] for s in r["skipped"]}
    # A JPEG start-of-image marker, then bytes that end inside the first segment: cut before its header.
    assert reasons["corrupt.jpg"] == "truncated JPEG (no end-of-image marker)"
    assert reasons["empty.jpg"].startswith("empty file")
    assert reasons["notes.txt"] == "not an image file extension"
    assert reasons["clip.MP4"].startswith("a video: save its frames as images first (python -m service.webcam.capture --source VIDEO")
    assert reasons["icon.png"].startswith("unsupported image format ICO")
    assert "truncated" in reasons["truncated.jpg"]
    assert "Too many levels of symbolic links" in reasons["loop.jpg"]
    assert reasons["pipe.jpg"].startswith("not a regular file")
    expected = {"non-image": 1, "empty (0 bytes)": 1, "truncated": 2, "unreadable": 1, "not a regular file": 1,
                "video (save its frames as images first)": 1, "unsupported format": 1}
    assert r["skipped_by_reason"] == expected

    dup = r["duplicates"]
    assert dup["across_classes"] == 1 and dup["within_class"] == 1 and dup["across_splits"] == 0
    across = next(g for g in dup["groups"] if "across_classes" in g["kinds"])
    assert sorted(across["files"]) == ["fist/000.jpg", "peace/copied-from-fist.jpg"]

    assert [Path(p).name for p in r["nested"]] == ["nested.png"]
    assert len(r["non_utf8_names"]) == 1 and "\ufffd" in r["non_utf8_names"][0]
    ignored = {Path(i["path"]).name: i["reason"] for i in r["ignored"]}
    assert ignored[".DS_Store"] == "hidden file"
    assert ignored["dirloop"].startswith("symlinked folder")
    assert ignored["README.txt"].startswith("file outside")

    warnings = "\n".join(r["warnings"])
    assert "fewer than 20 images: peace (6)" in warnings
    assert "more than one class" in warnings
    assert "8 file(s) skipped" in warnings
    assert "deeper than the layout" in warnings
    assert "not valid UTF-8" in warnings
    assert r["image_stats"]["modes"] == {"RGB": 59}
    assert r["image_stats"]["formats"] == {"JPEG": 52, "PNG": 7}


def test_cli_writes_json_and_exits_zero_with_warnings(messy: Path, tmp_path: Path, capsys):
    out = tmp_path / "reports" / "report.json"
    assert main([str(messy), "--json", str(out)]) == 0
    text = capsys.readouterr().out
    assert "WARNING: 1 set(s) of identical images appear under more than one class" in text
    assert "OK to train" in text
    report = json.loads(out.read_text(encoding="utf-8"))  # valid JSON despite the non-UTF-8 name
    assert report["counts"]["peace"] == 6


def test_an_unwritable_json_path_is_refused_before_the_check_runs(messy: Path, capsys):
    """It ran the whole check and then failed writing the report, exit 1."""
    with pytest.raises(SystemExit) as stop:
        main([str(messy), "--json", "/proc/report.json"])
    assert stop.value.code == 2
    err = capsys.readouterr()
    assert "--json: /proc/report.json: cannot write there" in err.err and err.out == ""


def test_file_names_that_would_drive_the_terminal_are_shown_escaped(tmp_path: Path, capsys):
    """A file name may hold a newline (which printed a report line of its own), an escape sequence (which
    cleared the screen), or a right-to-left override (which shows "x\u202egpj.exe" as "xexe.jpg")."""
    root = tmp_path / "named"
    make_image_folder(root, classes=("fist", "palm"), per_class=20)
    names = ["new\nOK to train.jpg", "clear\x1b[2J.jpg", "x\u202egnp.exe.jpg"]
    for name in names:
        shutil.copy(root / "fist" / "000.png", root / "fist" / name)
    (root / "palm" / "bad\x1b[31m.jpg").write_bytes(b"not an image")
    assert main([str(root), "--json", str(tmp_path / "report.json")]) == 0
    text = capsys.readouterr().out
    assert "\x1b" not in text and "\u202e" not in text and "\nOK to train.jpg" not in text
    for shown in ("new\\nOK to train.jpg", "clear\\x1b[2J.jpg", "x\\u202egnp.exe.jpg", "bad\\x1b[31m.jpg"):
        assert shown in text, shown
    skipped = [Path(item["path"]).name for item in json.loads((tmp_path / "report.json").read_text(encoding="utf-8"))["skipped"]]
    assert skipped == ["bad\\x1b[31m.jpg"]


def test_presplit_leakage_and_missing_classes(tmp_path: Path):
    root = tmp_path / "split"
    make_image_folder(root / "train", classes=("a", "b"), per_class=22)
    for i in range(3):  # new seeds: make_image_folder would repeat train's images (a real leak)
        write_rgb(root / "test" / "a" / f"t{i}.png", synthetic_image(0, seed=5000 + i))
    shutil.copy(root / "train" / "b" / "004.png", root / "test" / "a" / "leaked.png")
    r = build_report(root)
    assert r["layout"] == "presplit" and r["fatal"] == []
    assert r["splits"] == {"train": {"a": 22, "b": 22}, "test": {"a": 4}}
    assert r["duplicates"]["across_splits"] == 1 and r["duplicates"]["across_classes"] == 1
    warnings = "\n".join(r["warnings"])
    assert "train/test leakage: 1 image(s)" in warnings
    assert "test/ lacks class(es) present in train/: b" in warnings
    assert "no val/ folder" in warnings


def test_a_presplit_class_that_training_refuses_is_fatal(tmp_path: Path):
    """check called it a warning "(training will refuse)" and then said OK to train, exit 0."""
    root = tmp_path / "split"
    make_image_folder(root / "train", classes=("a", "b"), per_class=6)
    make_image_folder(root / "test", classes=("a", "b", "c"), per_class=2)
    assert build_report(root)["fatal"] == [f"{root}/test has classes missing from {root}/train: c"]
    with pytest.raises(DatasetError, match=f"{root}/test has classes missing from {root}/train: c"):
        load_splits(root)  # the same words as training's


def test_captures_that_training_cannot_split_by_session_are_fatal_as_training_says(tmp_path: Path, capsys):
    """Class b holds two capture sessions, too few for a train, a val and a test one: check said "OK to train" and
    advised keeping "the default --group-by auto (none)", whose split failed; training then stopped on it."""
    root = tmp_path / "captures"
    for label, (cls, sessions) in enumerate({"a": 3, "b": 2}.items()):
        for session in range(sessions):
            for n in range(4):  # the capture tool's names: <class>-<session>-<n>.jpg
                write_rgb(root / cls / f"{cls}-20261207-10000{session}p42-{n}.jpg", synthetic_image(label, 10 * session + n))
    with pytest.raises(DatasetError) as refused:
        load_splits(root)
    report = build_report(root)
    assert report["fatal"] == [f"training with the default split stops: {refused.value}"]
    assert "too few groups (session)" in str(refused.value)
    assert main([str(root)]) == 1 and "OK to train" not in capsys.readouterr().out


def test_one_capture_session_a_class_and_too_few_photos_for_a_threshold_are_warned_of_as_training_does(tmp_path: Path, capsys):
    """A newcomer's captures, one session a class and a "none" class: check said "OK to train" and nothing more, and
    training warned that no honest split was possible and that no "no gesture" threshold could be chosen."""
    def captures(root: Path, classes: tuple[str, ...], sessions: int) -> Path:
        for label, cls in enumerate(classes):
            for session in range(sessions):
                for n in range(12):  # the capture tool's names: <class>-<session>-<n>.jpg
                    write_rgb(root / cls / f"{cls}-20261207-10000{session}p42-{n}.jpg", synthetic_image(label, 20 * session + n))
        return root

    root = captures(tmp_path / "one-session", ("fist", "palm", "none"), sessions=1)
    training_says = load_splits(root).grouping["warnings"]
    assert len(training_says) == 1 and "no honest split is possible" in training_says[0]
    report = build_report(root)
    assert not report["fatal"] and training_says[0] in report["warnings"]
    assert "validation would hold 2 photos of gestures, too few for a \"no gesture\" threshold (at least 99 needed, more the more of them the model gets wrong): " \
           "only predictions of none say no gesture; add photos" in report["warnings"][1]
    assert main([str(root)]) == 0 and "OK to train (read the warnings above)" in capsys.readouterr().out

    # no "none" class: a threshold alone would say "no gesture", and training warns that there is none, as check now does
    report = build_report(captures(tmp_path / "three-sessions", ("fist", "palm"), sessions=3))
    assert not report["fatal"] and not [w for w in report["warnings"] if "honest split" in w], report["warnings"]
    assert ("class(es) fist (12 of 36), palm (12 of 36) train on under half of their images: validation and test take whole recordings; "
            "record more sessions for more training images") in report["warnings"]  # three sessions: one each for train, val and test
    assert [w for w in report["warnings"] if "threshold" in w] == [
        "validation would hold 24 photos of gestures, too few for a \"no gesture\" threshold (at least 99 needed, more the more of "
        "them the model gets wrong): with no reject class either, this model never says no gesture; add photos, or a class named none"]


@pytest.mark.parametrize(
    "build, message",
    [
        (lambda root: root.mkdir(), "no class folders"),
        (lambda root: (root / "a").mkdir(parents=True), "no usable images"),
        (lambda root: make_image_folder(root, classes=("only",), per_class=3), "only one class"),
        (lambda root: make_image_folder(root / "my-gestures", per_class=3),  # a level too high: training names the same folder
         "only one class with images (my-gestures); a classifier needs at least two; its sub-folders fist, palm, peace hold its images: "
         "if they are the classes, the dataset is "),
        (lambda root: (make_image_folder(root, classes=("a", "b"), per_class=3), (root / "c").mkdir()), "no usable images: c"),
    ],
)
def test_fatal_problems_exit_nonzero(tmp_path: Path, capsys, build, message):
    root = tmp_path / "data"
    build(root)
    assert main([str(root)]) == 1
    assert message in capsys.readouterr().out


def test_missing_folder_is_a_usage_error_not_a_traceback(tmp_path: Path, capsys):
    (tmp_path / "photo.jpg").write_bytes(b"")
    for path in (tmp_path / "nope", tmp_path / "photo.jpg"):
        with pytest.raises(SystemExit) as exit_:
            main([str(path)])
        assert exit_.value.code == 2  # as finetune's --data: the path is the user's mistake
        assert f"DIR {path}: not a folder" in capsys.readouterr().err


def test_more_decoding_threads_than_help_are_a_usage_error(tmp_path: Path, capsys):
    """--workers 99999 was taken: a thread per image, up to 99,999 of them, each holding a decoded photo."""
    with pytest.raises(SystemExit) as exit_:
        main([str(tmp_path), "--workers", "99999"])
    assert exit_.value.code == 2 and "argument --workers: must be in [1, " in capsys.readouterr().err


def test_real_sign_digits_finds_the_three_huge_images(sign_digits: Path):
    r = build_report(sign_digits, decode=False)
    assert r["images"] == 2062 and len(r["classes"]) == 10
    large = sorted(Path(x["path"]).name for x in r["image_stats"]["large"])
    assert large == ["IMG_5874.JPG", "IMG_5935.JPG", "IMG_5978.JPG"]
    assert all(x["size"] == "3024x3024" for x in r["image_stats"]["large"])
    assert r["fatal"] == [] and r["skipped"] == []


def test_real_flowers_counts_and_duplicates(flowers: Path):
    r = build_report(flowers, decode=False)
    assert r["counts"] == {"daisy": 633, "dandelion": 898, "roses": 641, "sunflowers": 699, "tulips": 799}
    assert r["imbalance_ratio"] == round(898 / 633, 2)
    assert r["duplicates"]["across_classes"] >= 1  # the same photo filed under roses and tulips


def test_tiffs_with_vendor_tags_read_without_decoder_warnings(tmp_path: Path):
    """A folder of TIFFs whose directories hold a camera's private tags: OpenCV wrote a warning line
    per tag for each photo, on every read (each epoch of training too), through ``read_rgb``."""
    import subprocess
    import sys

    from benchmarks.hostile_inputs import many_header_units

    for name in ("fist", "palm"):
        (tmp_path / "tiffs" / name).mkdir(parents=True)
        for i in range(3):
            (tmp_path / "tiffs" / name / f"{i}.tif").write_bytes(many_header_units("TIFF", 20))
    done = subprocess.run([sys.executable, "-m", "training.check", str(tmp_path / "tiffs"), "--json", str(tmp_path / "r.json")],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert json.loads((tmp_path / "r.json").read_text())["counts"] == {"fist": 3, "palm": 3}
    assert "TIFF_Warning" not in done.stdout + done.stderr and "WARN" not in done.stderr, done.stderr[:2000]


def test_class_names_that_differ_only_in_case_are_warned_of(tmp_path):
    """Two classes here, one folder on a case-insensitive file system (macOS, Windows)."""
    root = make_image_folder(tmp_path / "d", classes=("A", "a", "b"), per_class=3)
    if len([p for p in root.iterdir() if p.is_dir()]) < 3:
        pytest.skip("this file system does not tell A from a")
    report = build_report(root, workers=1)
    assert any("class names that differ only in case: A and a" in w for w in report["warnings"]), report["warnings"]


def test_class_names_that_differ_only_in_spaces_or_separators_are_warned_of(tmp_path):
    """"palm " (a trailing space) and "palm" print alike in every table; thumbs_up and thumbs-up look
    like one gesture in two folders. Names in another script, or alike only in case, are not this."""
    classes = ("palm", "palm ", "thumbs_up", "thumbs-up", "ThumbsUp", "拳", "掌", "fist", "ｆｉｓｔ", "ok", "ОК", "νεο")  # fullwidth, as an IME types it;
    report = build_report(make_image_folder(tmp_path / "d", classes=classes, per_class=2), workers=1)  # Cyrillic ОК; Greek alone
    alike = [w for w in report["warnings"] if w.startswith("class names that differ only in spaces, separators, character width or look-alike")]
    assert alike == ["class names that differ only in spaces, separators, character width or look-alike letters: 'ThumbsUp' and 'thumbs-up' and "
                     "'thumbs_up'; 'fist' and 'ｆｉｓｔ'; 'ok' and 'ОК'; 'palm' and 'palm ': each is trained as a class of its own (one gesture in two "
                     "folders?); rename one to the other"]
    assert not [w for w in report["warnings"] if "mix alphabets" in w], "one alphabet per name, whichever it is"


def test_a_class_name_that_mixes_alphabets_is_warned_of_by_check_and_training(tmp_path):
    """"fіst" with a Ukrainian і prints as fist, and no typed --reject-class or API client ever matches it."""
    root = make_image_folder(tmp_path / "d", classes=("fіst", "palm", "рoint"), per_class=6)  # Cyrillic і, Cyrillic р
    said = ("class name(s) 'fіst' (Latin and Cyrillic letters (Cyrillic і)), 'рoint' (Cyrillic and Latin letters (Cyrillic р)) mix "
            "alphabets: a letter from another keyboard layout that looks Latin")
    assert [w for w in build_report(root, workers=1)["warnings"] if w.startswith(said)]
    with pytest.warns(UserWarning, match=re.escape(said)):
        load_splits(root, val_split=0.2, test_split=0.2)


def test_a_broken_symlink_class_folder_is_reported_not_dropped(tmp_path):
    """A class folder linked from an unmounted drive: the run would train a model without that class."""
    root = make_image_folder(tmp_path / "data", ("fist", "palm"), per_class=10)
    os.symlink(tmp_path / "unmounted" / "thumbs_up", root / "thumbs_up")
    with pytest.warns(UserWarning, match="1 broken symlink.*thumbs_up"):
        r = build_report(root)
    assert r["classes"] == ["fist", "palm"]
    reasons = {Path(s["path"]).name: s["reason"] for s in r["skipped"]}
    assert reasons["thumbs_up"] == f"broken symlink: its target {tmp_path / 'unmounted' / 'thumbs_up'} does not exist"
    assert r["skipped_by_reason"] == {"broken symlink": 1}
    assert any("1 file(s) skipped: 1 broken symlink" in w for w in r["warnings"])
    with pytest.warns(UserWarning, match="broken symlink"):
        splits = load_splits(root, seed=0)
    assert any(s["reason"].startswith("broken symlink") for s in splits.skipped)


def test_class_folders_linked_into_each_other_or_to_the_dataset_are_refused_before_training(tmp_path, capsys):
    """A class folder linked to the dataset folder held every class's images (each with a second label,
    train and test overlapping), and one linked to another class folder gave its images two labels:
    finetune trained on either without a word. A link to a folder elsewhere is a class as any other."""
    import training.finetune as finetune

    root = make_image_folder(tmp_path / "data", ("fist", "palm"), per_class=3, size=32)
    elsewhere = make_image_folder(tmp_path / "drive", ("peace",), per_class=3, size=32) / "peace"
    os.symlink(elsewhere, root / "peace")
    assert build_report(root, workers=1)["classes"] == ["fist", "palm", "peace"]
    for link, target, reason in (("all", root, "the dataset folder or one above it: it would hold every class's images"),
                                 ("palm2", root / "palm", "which is class folder 'palm' or holds or lies in it")):
        os.symlink(target, root / link)
        assert any(f"class folder {link!r} is a link to {target}, {reason}" in line for line in build_report(root, workers=1)["fatal"])
        assert finetune.main(["--data", str(root), "--out", str(tmp_path / "run")]) == 2
        assert "is a link to" in capsys.readouterr().err and not (tmp_path / "run").exists()
        (root / link).unlink()


def test_a_link_to_itself_beside_the_class_folders_is_a_broken_link_to_check_as_to_training(tmp_path):
    """check stopped with "error: ...: Too many levels of symbolic links" where training warned and went on."""
    root = make_image_folder(tmp_path / "data", ("fist", "palm"), per_class=10)
    os.symlink("loop", root / "loop")
    with pytest.warns(UserWarning, match="1 broken symlink.*loop"):
        r = build_report(root, workers=1)
    assert r["classes"] == ["fist", "palm"] and not r["fatal"] and r["skipped_by_reason"] == {"broken symlink": 1}


def test_class_folders_one_level_too_deep_are_pointed_out(tmp_path):
    """anna/fist, bob/fist: the run would learn to tell anna from bob. The same sub-folders in every
    class folder are also what a per-person layout looks like, so the warning names both readings."""
    root = tmp_path / "data"
    for person in ("anna", "bob"):
        make_image_folder(root / person, ("fist", "palm"), per_class=4)
    r = build_report(root)
    assert r["classes"] == ["anna", "bob"] and r["same_subfolders"] == ["fist", "palm"]
    assert any("every class folder holds the same sub-folders (fist, palm)" in w and "<gesture>/<person>/<image>" in w
               for w in r["warnings"])
    make_image_folder(root / "carol", ("fist",), per_class=4)  # not the same sub-folders: no such warning
    assert build_report(root)["same_subfolders"] == []


def test_a_class_folder_named_in_decomposed_unicode_is_checked_and_two_spellings_are_warned_of(tmp_path, capsys):
    """macOS writes "café" decomposed (NFD): check failed on it with a path error, where training reads it
    as the composed class; a folder in each spelling was merged into one class without a word."""
    import unicodedata
    import warnings

    root = make_image_folder(tmp_path / "data", classes=("palm",), per_class=3, size=32)
    decomposed, composed = (unicodedata.normalize(form, "café") for form in ("NFD", "NFC"))
    for name, seed in ((decomposed, 1), (composed, 2)):
        write_rgb(root / name / "nested" / "000.png", synthetic_image(seed, seed=seed))
    (root / decomposed / "001.png").write_bytes((root / "palm" / "000.png").read_bytes())
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        r = build_report(root, workers=1)
    assert r["classes"] == [composed, "palm"] and r["counts"][composed] == 3
    assert sorted(r["nested"]) == sorted(str(root / name / "nested" / "000.png") for name in (decomposed, composed))
    assert any(f"class folder(s) {composed} exist in two Unicode spellings" in str(w.message) for w in caught)


def test_a_class_folder_named_with_a_control_character_is_refused_by_check_and_training(tmp_path, capsys):
    """A newline split check's table row in two, and an escape character in a class name reached the
    terminal as it was (it could recolour or rewrite the screen); the class name is printed everywhere."""
    import training.finetune as finetune

    root = make_image_folder(tmp_path / "data", classes=("fi\nst", "pa\x1blm", "peace"), per_class=3, size=32)
    r = build_report(root, workers=1)
    assert r["fatal"] == [f"{root}: class folder name(s) 'fi\\nst', 'pa\\x1blm' hold a control character (a newline, tab or escape), "
                          "which would break every table, log and overlay that names the class: rename them"]
    assert finetune.main(["--data", str(root), "--out", str(tmp_path / "run")]) == 2
    assert "error: " in capsys.readouterr().err and not (tmp_path / "run").exists()


def test_a_class_folder_named_in_bytes_that_are_not_utf8_is_refused_before_training(tmp_path, capsys):
    """A Latin-1 folder name, as an old zip or tar archive writes it: check said "OK to train", finetune
    trained and then failed with a traceback drawing the test report (matplotlib cannot draw the name),
    leaving a run without metrics, and the webcam demo crashed (a segmentation fault in OpenCV's text)."""
    import os

    import training.finetune as finetune

    root = make_image_folder(tmp_path / "data", classes=("fist", "peace"), per_class=3, size=32)
    os.rename(root / "peace", os.fsdecode(bytes(root / "lat") + b"\xe9in"))
    r = build_report(root, workers=1)
    assert r["fatal"] == [f"{root}: class folder name(s) 'lat\\udce9in' hold bytes that are not UTF-8 (as in an old archive's Latin-1 "
                          "names), which no report, JSON answer or overlay can write: rename them"]
    assert finetune.main(["--data", str(root), "--out", str(tmp_path / "run")]) == 2
    assert "not UTF-8" in capsys.readouterr().err and not (tmp_path / "run").exists()


def test_a_class_folder_whose_name_reverses_the_text_after_it_is_refused(tmp_path):
    """"x\u202etsif" shows as "xfist" in every table and overlay: file names are shown escaped, and a
    class name, printed as it is everywhere, may not hold such a mark."""
    root = make_image_folder(tmp_path / "data", classes=("fist", "x\u202etsif"), per_class=3, size=32)
    assert build_report(root, workers=1)["fatal"] == [
        f"{root}: class folder name(s) 'x\\u202etsif' hold a mark that reverses the direction of the text after it (U+202E and the like), "
        "which would show the class as another name: rename them"]


@pytest.mark.parametrize(("name", "shown", "why"), [
    ("fist\u200b", "'fist\\u200b'", "a character that shows as nothing (a zero-width space, soft hyphen or the like), which would show two classes as one name"),
    ("\u3164", "'\u3164'", "a character that shows as nothing"),  # the Hangul filler, a letter drawn blank
    ("fi\u2028st", "'fi\\u2028st'", "a control character"),  # a line separator
    ("  ", "'  '", "nothing but spaces, which shows as no name at all"),
])  # fmt: skip
def test_a_class_folder_whose_name_shows_as_another_or_as_none_is_refused(tmp_path, name, shown, why):
    """"fist" and "fist\u200b" trained as two classes that every table, plot, overlay and /info showed as one."""
    root = make_image_folder(tmp_path / "data", classes=("fist", name), per_class=3, size=32)
    fatal = build_report(root, workers=1)["fatal"]
    assert len(fatal) == 1 and fatal[0].startswith(f"{root}: class folder name(s) {shown} hold {why}") and fatal[0].endswith(": rename them")


def test_names_with_emoji_joiners_and_variation_selectors_are_kept():
    """The joiners and variation selectors that emoji and some scripts need are not "shown as nothing"."""
    from gesture_core.class_names import unwritable_characters

    assert [unwritable_characters(n) for n in ("\u270c\ufe0f", "\U0001f468\u200d\U0001f469", "\u0646\u0627\u200c\u0628", "e\u0301")] == [None] * 4


WIDE_AND_NARROW_NAMES = ("fist", "\u270b", "\U0001f44d\U0001f3fd", "\u270c\ufe0f", "\u624b", "c\u0302a", "\U0001f468\u200d\U0001f469")


def test_table_columns_line_up_with_emoji_cjk_and_combining_class_names(tmp_path, capsys):
    """Class names drawn two columns wide (emoji, CJK) or with marks drawn over a letter pushed the counts
    of check's table and of the training summary out of line: the widths counted characters, not columns."""
    from gesture_core.class_names import terminal_width
    from training.report import classification_metrics, format_summary

    assert [terminal_width(n) for n in WIDE_AND_NARROW_NAMES] == [4, 2, 2, 2, 2, 2, 2]
    root = make_image_folder(tmp_path / "data", classes=WIDE_AND_NARROW_NAMES, per_class=2, ext=".png")
    assert main([str(root), "--fast"]) == 0
    summary = format_summary(classification_metrics(np.eye(7, dtype=np.float32), np.arange(7), list(WIDE_AND_NARROW_NAMES)), "test:")
    for table in (capsys.readouterr().out, summary):
        rows = [line for line in table.splitlines() if any(unicodedata.normalize("NFC", line).startswith(f"  {unicodedata.normalize('NFC', n)} ") for n in WIDE_AND_NARROW_NAMES)]  # check names the class in NFC
        assert len(rows) == 7 and len({terminal_width(row) for row in rows}) == 1, table


def test_a_folder_beside_train_and_test_is_warned_of_in_check_and_training(tmp_path):
    """presplit/extra/ (a class meant for train/) was dropped by training without a word, and check
    only counted it in a note."""
    import warnings

    root = tmp_path / "split"
    make_image_folder(root / "train", classes=("a", "b"), per_class=6, size=32)
    for i in range(2):
        for label, cls in enumerate("ab"):
            write_rgb(root / "test" / cls / f"t{i}.png", synthetic_image(label, seed=7000 + 10 * label + i))
    write_rgb(root / "extra" / "0.png", synthetic_image(2, seed=9))
    assert any("folder(s) extra beside train/ and test/ are not read" in w for w in build_report(root, workers=1)["warnings"])
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        splits = load_splits(root, test_per_class=3)
    said = [str(w.message) for w in caught]
    assert any("folder(s) extra beside train/ and test/ are not read" in m for m in said), said
    assert any("its test/ folder is the test set, and --test-per-class 3 is not used" in m for m in said), said
    assert splits.classes == ["a", "b"] and len(splits.test) == 4


def test_jpegs_named_jfif_or_jpe_are_images(tmp_path):
    """Windows saves JPEGs from a browser as .jfif: they were skipped as "not an image file extension"."""
    root = make_image_folder(tmp_path / "data", classes=("a", "b"), per_class=2, size=32, ext=".jpg")
    for i, suffix in enumerate((".jfif", ".jpe", ".JFIF")):
        (root / "a" / f"saved-{i}{suffix}").write_bytes((root / "a" / "000.jpg").read_bytes())
    r = build_report(root, workers=1)
    assert r["counts"] == {"a": 5, "b": 2} and r["skipped"] == []


def test_images_too_small_to_hold_a_hand_are_warned_of(tmp_path):
    """A 1x1 image trained as a photo of its class, scaled up to the input, without a word."""
    root = make_image_folder(tmp_path / "data", classes=("a", "b"), per_class=2, size=32)
    for name, side in (("dot.png", 1), ("icon.png", 8), ("small.png", 16)):
        write_rgb(root / "a" / name, np.random.default_rng(side).integers(0, 256, (side, side, 3), dtype=np.uint8))
    r = build_report(root, workers=1)
    assert [x["size"] for x in r["image_stats"]["tiny"]] == ["1x1", "8x8"]
    assert any(w.startswith("2 image(s) under 16 px on a side") and "dot.png 1x1" in w for w in r["warnings"]), r["warnings"]


def test_a_warning_about_many_classes_names_some_and_counts_the_rest(tmp_path):
    """Every class of a 2,000-class set was listed in one warning line of 22 KB."""
    root = make_image_folder(tmp_path / "signs", classes=tuple(f"sign{i:02d}" for i in range(25)), per_class=2, size=32)
    small = next(w for w in build_report(root, decode=False)["warnings"] if "fewer than" in w)
    assert small.startswith("25 class(es) with fewer than ") and small.endswith(" and 15 more") and small.count("(2)") == 10


def test_a_photo_whose_header_reads_but_whose_image_data_does_not_is_skipped_by_the_full_check_only(tmp_path: Path):
    """The full check decodes every file (--fast reads headers only): a PNG whose header and chunks are sound but
    whose image data is not was counted as usable when a failed decode was let pass (a mutation the suite passed)."""
    import struct
    import zlib

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    root = make_image_folder(tmp_path / "data", classes=("fist", "palm"), per_class=3)
    (root / "fist" / "bad.png").write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", 64, 64, 8, 2, 0, 0, 0))
                                            + chunk(b"IDAT", b"\x78\x9c" + b"garbage!" * 40) + chunk(b"IEND", b""))  # fmt: skip
    full, fast = build_report(root), build_report(root, decode=False)
    assert full["counts"] == {"fist": 3, "palm": 3} and [Path(s["path"]).name for s in full["skipped"]] == ["bad.png"]
    assert full["skipped"][0]["reason"].startswith("corrupt or truncated image")
    assert fast["counts"] == {"fist": 4, "palm": 3} and fast["skipped"] == []
