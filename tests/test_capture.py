"""service.webcam.capture and service.webcam.sources on real video files written by the test with cv2.VideoWriter."""

from __future__ import annotations

import errno
import os
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest

from service.webcam import capture
from service.webcam.capture import ImageFolderWriter, LiveState, draw_overlay, due_saves, handle_key, main, with_reject_class
from service.webcam.sources import SourceError, describe_source, is_live, open_source, parse_source, read_frames
from tests.helpers import REPO, synthetic_image

FRAMES = 30
SIZE = (96, 64)  # width, height


def write_video(path: Path, fourcc: str, frames: int = FRAMES) -> Path:
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*fourcc), 15.0, SIZE)
    assert writer.isOpened(), f"cannot write {fourcc} video here"
    for i in range(frames):
        frame = cv2.resize(synthetic_image(i % 3, seed=i, size=64), SIZE)
        writer.write(np.ascontiguousarray(frame[:, :, ::-1]))
    writer.release()
    return path


@pytest.fixture(params=[("MJPG", ".avi"), ("mp4v", ".mp4")], ids=["mjpg-avi", "mp4v-mp4"])
def video(tmp_path: Path, request) -> Path:
    fourcc, ext = request.param
    return write_video(tmp_path / f"clip{ext}", fourcc)


def jpgs(folder: Path) -> list[Path]:
    return sorted(folder.glob("*.jpg"))


def test_headless_saves_every_nth_frame_and_never_overwrites(video: Path, tmp_path: Path, capsys):
    out = tmp_path / "my-gestures"
    args = [
        "--out",
        str(out),
        "--classes",
        "fist,palm,none",
        "--source",
        str(video),
        "--headless",
        "--every",
        "4",
        "--label",
        "palm",
    ]
    assert main(args) == 0
    first = jpgs(out / "palm")
    assert len(first) == len(range(0, FRAMES, 4)) == 8
    assert not (out / "fist").exists()  # no empty class folders: training would refuse them
    before = {p: p.read_bytes() for p in first}
    img = cv2.imread(str(first[0]))
    assert img.shape == (SIZE[1], SIZE[0], 3)
    assert "saved 8 image(s) of 'palm'" in capsys.readouterr().out

    assert main(args) == 0  # same second, same session name: must still not overwrite
    second = jpgs(out / "palm")
    assert len(second) == 16
    assert all(p.read_bytes() == data for p, data in before.items())
    assert "totals: palm 16" in capsys.readouterr().out


def test_a_folder_of_photos_is_saved_photo_by_photo_and_a_video_one_frame_in_five(video: Path, tmp_path: Path):
    """--every's default, one frame in 5, suits a video's near-identical neighbours; from a folder or a
    glob of photos it kept one photo in 5."""
    photos = tmp_path / "photos"
    photos.mkdir()
    for i in range(7):
        cv2.imwrite(str(photos / f"IMG_{i}.jpg"), synthetic_image(0, i)[:, :, ::-1])
    for source, label, saved in ((photos, "palm", 7), (photos / "IMG_*.jpg", "fist", 7), (video, "none", len(range(0, FRAMES, 5)))):
        assert main(["--out", str(tmp_path / "ds"), "--source", str(source), "--headless", "--label", label]) == 0
        assert len(jpgs(tmp_path / "ds" / label)) == saved, source


def test_frames_of_a_large_video_are_saved_at_most_1024_px_a_side(tmp_path: Path):
    """An 8000x6000 video was saved at full size, where a folder of recordings keeps 1024 px (no model takes more)."""
    source = tmp_path / "big.avi"
    writer = cv2.VideoWriter(str(source), cv2.VideoWriter_fourcc(*"MJPG"), 15.0, (2400, 1800))
    for i in range(2):
        writer.write(np.full((1800, 2400, 3), 60 * (i + 1), np.uint8))
    writer.release()
    assert main(["--out", str(tmp_path / "ds"), "--source", str(source), "--headless", "--every", "1", "--label", "fist"]) == 0
    saved = jpgs(tmp_path / "ds" / "fist")
    assert len(saved) == 2 and all(cv2.imread(str(path)).shape[:2] == (768, 1024) for path in saved)


def test_headless_roi_crop_and_max(tmp_path: Path):
    video = write_video(tmp_path / "clip.avi", "MJPG")
    out = tmp_path / "ds"
    argv = [
        "--out",
        str(out),
        "--source",
        str(video),
        "--headless",
        "--every",
        "1",
        "--label",
        "fist",
        "--roi",
        "0.5",
        "--max",
        "3",
    ]
    assert main(argv) == 0
    saved = jpgs(out / "fist")
    assert len(saved) == 3
    assert cv2.imread(str(saved[0])).shape == (32, 32, 3)  # half of the shorter side (64), centred


def test_disk_full_keeps_what_was_written_and_removes_the_partial_file(tmp_path: Path, monkeypatch, capsys):
    video = write_video(tmp_path / "clip.avi", "MJPG")
    out = tmp_path / "ds"
    real_write = capture._write_exclusive
    calls = {"n": 0}

    def fill_up_on_third(path: Path, data: bytes) -> None:
        calls["n"] += 1
        if calls["n"] < 3:
            return real_write(path, data)
        with open(path, "xb") as f:  # half a file reaches the disk, then the disk is full
            f.write(data[: len(data) // 2])
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(capture, "_write_exclusive", fill_up_on_third)
    argv = ["--out", str(out), "--source", str(video), "--headless", "--every", "2", "--label", "none"]
    assert main(argv) == 1
    err = capsys.readouterr().err
    assert "disk full while writing" in err and "The 2 image(s) saved this session" in err and "Traceback" not in err
    kept = jpgs(out / "none")
    assert len(kept) == 2 and all(cv2.imread(str(p)) is not None for p in kept)


def test_existing_files_are_counted_and_kept(tmp_path: Path):
    out = tmp_path / "ds"
    (out / "fist").mkdir(parents=True)
    cv2.imwrite(str(out / "fist" / "mine.jpg"), synthetic_image(0, 1))
    (out / "fist" / "notes.txt").write_text("not an image")
    writer = ImageFolderWriter(out, ["fist", "palm"])
    assert writer.counts == {"fist": 1, "palm": 0}
    path = writer.save("fist", synthetic_image(0, 2))
    assert writer.counts["fist"] == 2 and path.exists()
    assert writer.undo() == path and not path.exists() and writer.counts["fist"] == 1
    assert writer.undo() is None  # only this session's files are ever removed
    assert (out / "fist" / "mine.jpg").exists()


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--headless", "--label", "palm", "--classes", "fist,none"], "--label 'palm' is not one of --classes: fist, none"),
        (["--headless"], "--headless needs --label"),
        (["--classes", "a/b,c"], "invalid class name(s) 'a/b'"),
        (["--classes", "fist,fist"], "duplicate class names"),
        (["--headless", "--label", "/etc"], "argument --label: invalid class name(s) '/etc'"),  # alone, without --classes
        (["--headless", "--label", "fist,palm"], "argument --label: one class name, got 'fist,palm'"),
        (["--headless", "--label", "x", "--every", "0"], "expected a whole number >= 1"),
        (["--classes", ",".join(f"c{i}" for i in range(10))], "at most 9 classes"),
        (["--headless", "--label", "x", "--every", "²"], "argument --every: expected a whole number >= 1, got '²'"),  # isdigit() took it
        (["--headless", "--label", "x", "--roi", "nan"], "argument --roi: must be in (0, 1], got nan"),
        (["--headless", "--label", "x", "--out", ""], "argument --out: empty path: pass a folder name"),  # was the current folder
        (["--classes", "a,,b"], "argument --classes: an empty class name in 'a,,b'"),  # dropped without a word
        (["--classes", "fist,Fist"], "class names 'Fist', 'fist' differ only in case: they would be one folder on macOS"),
        (["--classes", "\u624b,palm"], "invalid class name(s) '\u624b': use ASCII letters (a-z, A-Z)"),  # 手 was told to use letters
    ],
)
def test_bad_arguments_are_usage_errors(tmp_path: Path, capsys, argv, message):
    with pytest.raises(SystemExit) as exc:
        main(["--out", str(tmp_path / "ds"), *argv])
    assert exc.value.code == 2
    assert message in capsys.readouterr().err


def test_a_class_folder_given_as_out_is_refused_before_anything_is_saved(tmp_path: Path, capsys):
    """--out is the dataset folder: a class folder there (by its name, or by the images it holds)
    filed every frame one level too deep, and training read them all as that one class."""
    dataset = tmp_path / "gestures"
    (dataset / "palm").mkdir(parents=True)
    cv2.imwrite(str(dataset / "palm" / "mine.jpg"), synthetic_image(0, 1))
    for out, label in ((dataset / "fist", "fist"), (dataset / "palm", "fist")):
        with pytest.raises(SystemExit) as exc:
            main(["--out", str(out), "--source", str(tmp_path / "missing.mp4"), "--headless", "--label", label])
        assert exc.value.code == 2
        assert f"--out is the dataset folder (e.g. --out {dataset})" in capsys.readouterr().err
    assert sorted(p.relative_to(dataset).as_posix() for p in dataset.rglob("*")) == ["palm", "palm/mine.jpg"]


def test_a_class_that_differs_only_in_case_from_a_folder_of_the_dataset_is_refused(tmp_path: Path, capsys):
    """--classes fist,Fist was refused, but --label a into a dataset with A/ made a second class beside it, and
    on macOS or Windows the two would be one folder."""
    dataset = tmp_path / "gestures"
    (dataset / "A").mkdir(parents=True)
    video = write_video(tmp_path / "clip.avi", "MJPG", frames=10)
    with pytest.raises(SystemExit) as exc:
        main(["--out", str(dataset), "--source", str(video), "--headless", "--label", "a"])
    assert exc.value.code == 2
    assert f"class 'a' differs only in case from the class folder {dataset / 'A'}: name it 'A'" in capsys.readouterr().err
    assert main(["--out", str(dataset), "--source", str(video), "--headless", "--label", "A", "--every", "5"]) == 0
    assert len(jpgs(dataset / "A")) == 2 and sorted(p.name for p in dataset.iterdir()) == ["A"]


def test_the_no_gesture_tip_is_left_out_where_the_dataset_has_such_a_class(tmp_path: Path, capsys):
    """It asked for a 'none' class where the dataset had 'nothing' (any common "no gesture" name)."""
    dataset = tmp_path / "gestures"
    (dataset / "nothing").mkdir(parents=True)
    video = write_video(tmp_path / "clip.avi", "MJPG", frames=10)
    assert main(["--out", str(dataset), "--source", str(video), "--headless", "--label", "fist", "--every", "5"]) == 0
    assert "tip:" not in capsys.readouterr().err
    assert main(["--out", str(tmp_path / "new"), "--source", str(video), "--headless", "--label", "fist", "--every", "5"]) == 0
    assert "tip: record a 'none' class" in capsys.readouterr().err


def test_a_source_inside_the_dataset_is_refused_before_anything_is_saved(tmp_path: Path, capsys):
    """--source gestures/palm --out gestures saved a copy of every photo of the class into it, and with
    --label fist put each of them in two classes."""
    dataset = tmp_path / "gestures"
    (dataset / "palm").mkdir(parents=True)
    for i in range(3):
        cv2.imwrite(str(dataset / "palm" / f"{i}.jpg"), synthetic_image(i, 1))
    before = sorted(dataset.rglob("*"))
    for source in (dataset / "palm", dataset / "palm" / "*.jpg", dataset / "palm" / "0.jpg", dataset / "palm" / "%d.jpg"):
        with pytest.raises(SystemExit) as exc:
            main(["--out", str(dataset), "--source", str(source), "--headless", "--label", "fist", "--every", "1"])
        assert exc.value.code == 2
        assert f"--source {source} is inside --out {dataset}: every image it reads would be saved" in capsys.readouterr().err
    assert sorted(dataset.rglob("*")) == before
    assert main(["--out", str(tmp_path / "other"), "--source", str(dataset / "palm"), "--headless", "--label", "fist"]) == 0


def test_unopenable_sources_give_one_clear_line(tmp_path: Path, capsys):
    assert main(["--out", str(tmp_path / "ds"), "--source", str(tmp_path / "missing.mp4"), "--headless", "--label", "x"]) == 2  # as the demo
    assert "no such video file" in capsys.readouterr().err
    garbage = tmp_path / "garbage.mp4"
    garbage.write_bytes(b"\0not a video" * 100)
    assert main(["--out", str(tmp_path / "ds"), "--source", str(garbage), "--headless", "--label", "x"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: cannot open video file") and len(err.splitlines()) == 1
    assert not (tmp_path / "ds").exists()


def test_live_mode_without_a_display_says_so(tmp_path: Path, capsys, monkeypatch):
    monkeypatch.setattr(capture, "display_problem", lambda: "no DISPLAY or WAYLAND_DISPLAY is set")
    assert main(["--out", str(tmp_path / "ds"), "--classes", "fist,none"]) == 2
    err = capsys.readouterr().err
    assert "cannot open a preview window: no DISPLAY" in err and "--headless --label" in err


def test_keys_select_save_record_and_burst():
    state = LiveState(["fist", "palm", "none"])
    handle_key(ord("2"), state, 0.0, burst=3)
    assert state.label == "palm" and due_saves(state, 0, 0.0, every=5) == ["palm"]
    handle_key(ord("9"), state, 0.0, burst=3)  # no 9th class: ignored
    assert state.label == "palm" and due_saves(state, 1, 0.0, every=5) == []
    handle_key(ord(" "), state, 0.0, burst=3)
    assert [due_saves(state, i, 0.0, every=5) for i in range(10)].count(["palm"]) == 2
    handle_key(ord(" "), state, 0.0, burst=3)
    handle_key(ord("1"), state, 0.0, burst=3)
    due_saves(state, 0, 0.0, every=1)
    handle_key(ord("b"), state, 10.0, burst=3)
    assert due_saves(state, 1, 11.0, every=1) == []  # still counting down
    assert [due_saves(state, i, 13.5, every=1) for i in range(5)] == [["fist"], ["fist"], ["fist"], [], []]
    handle_key(ord("r"), state, 0.0, burst=3)
    assert state.roi == capture.DEFAULT_ROI
    handle_key(ord("q"), state, 0.0, burst=3)
    assert state.quit


def test_key_n_counts_down_then_records_the_no_gesture_class():
    assert with_reject_class(["fist", "palm"]) == ["fist", "palm", "none"]
    assert with_reject_class(["fist", "Nothing"]) == ["fist", "Nothing"]
    state = LiveState(["fist", "background", "palm"])
    handle_key(ord("n"), state, 10.0, burst=2)
    assert state.label == "background" and state.burst_left == 2
    assert due_saves(state, 0, 12.9, every=1) == []  # still counting down
    assert due_saves(state, 1, 13.0, every=1) == ["background"] and due_saves(state, 2, 13.1, every=1) == ["background"]
    assert due_saves(state, 3, 13.2, every=1) == [] and state.burst_left == 0


def test_overlay_draws_on_a_copy_and_marks_recording():
    frame = cv2.resize(synthetic_image(0, 3), (640, 480))
    state = LiveState(["fist", "palm"], roi=0.6, recording=True)
    canvas = draw_overlay(frame, state, {"fist": 12, "palm": 3}, now=0.0)
    assert canvas.shape == frame.shape and not np.array_equal(canvas, frame)
    assert np.array_equal(frame, cv2.resize(synthetic_image(0, 3), (640, 480)))  # what gets saved stays clean
    assert tuple(canvas[20, 620]) == (60, 60, 230)  # the red REC dot
    small = draw_overlay(synthetic_image(0, 3), state, {}, now=0.0)
    assert small.shape[1] == 480  # tiny frames are enlarged so the text is legible


def test_overlay_tells_apart_class_names_opencv_cannot_write():
    """OpenCV's fonts are ASCII only: every emoji and accented name was drawn as question marks."""
    frame = np.full((480, 640, 3), 90, np.uint8)
    up, down = (draw_overlay(frame, LiveState([name]), {}, now=0.0) for name in ("\N{THUMBS UP SIGN}", "\N{THUMBS DOWN SIGN}"))
    assert not np.array_equal(up[:40], down[:40])  # the class list's first row


def test_sources_open_files_sequences_and_reject_the_rest(tmp_path: Path, video: Path):
    cap = open_source(video)
    assert sum(1 for _ in read_frames(cap)) == FRAMES
    cap.release()
    for i in range(4):
        cv2.imwrite(str(tmp_path / f"f{i:03d}.png"), synthetic_image(0, i))
    cap = open_source(str(tmp_path / "f%03d.png"))
    assert sum(1 for _ in read_frames(cap)) == 4
    cap.release()
    assert parse_source("0") == 0 and parse_source(" 2 ") == 2 and parse_source("clip.mp4") == "clip.mp4"
    assert parse_source("/dev/video2") == 2 and describe_source("/dev/video0") == "camera 0"  # Linux's name for the camera
    assert is_live(0) and is_live("rtsp://cam/stream") and not is_live(str(video)) and not is_live("file:///x.mp4")
    assert describe_source("frames/%04d.jpg") == "image sequence frames/%04d.jpg"
    cap = open_source(tmp_path)  # a folder: its images, as Ultralytics takes one ("is a folder" before)
    assert describe_source(tmp_path) == f"image folder {tmp_path}" and sum(1 for _ in read_frames(cap)) == 4
    cap.release()
    with pytest.raises(SourceError, match="no files match"):
        open_source(str(tmp_path / "none%03d.png"))
    with pytest.raises(SourceError, match="camera index must be >= 0"):
        parse_source(-1)
    with pytest.raises(SourceError, match="camera index must be >= 0, got -1"):  # as typed: "no such video file" before
        parse_source("-1")


def test_cli_runs_as_a_module_and_service_never_imports_training(tmp_path: Path):
    video = write_video(tmp_path / "clip.avi", "MJPG", frames=10)
    code = (
        "import sys, runpy; sys.argv = ['capture', '--out', sys.argv[1], '--source', sys.argv[2], "
        "'--headless', '--every', '5', '--label', 'fist'];\n"
        "try:\n    runpy.run_module('service.webcam.capture', run_name='__main__')\n"
        "except SystemExit as e:\n    assert e.code == 0, e.code\n"
        "bad = [m for m in sys.modules if m == 'training' or m.startswith('training.')]\n"
        "assert not bad, bad\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code, str(tmp_path / "ds"), str(video)], cwd=REPO, capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0, result.stderr
    assert len(jpgs(tmp_path / "ds" / "fist")) == 2
    assert "tip: record a 'none' class" in result.stderr


def test_live_loop_with_scripted_keys(tmp_path: Path, monkeypatch, capsys):
    """The preview loop end to end, with OpenCV's window calls replaced by a scripted keyboard."""
    video = write_video(tmp_path / "clip.avi", "MJPG")
    keys = {0: "2", 3: " ", 13: " ", 15: "u", 20: "q"}  # palm once, record palm, stop, undo the last, quit
    shown: list[np.ndarray] = []
    monkeypatch.setattr(cv2, "namedWindow", lambda *a, **k: None)
    monkeypatch.setattr(cv2, "destroyWindow", lambda *a, **k: None)
    monkeypatch.setattr(cv2, "getWindowProperty", lambda *a, **k: 1.0)
    monkeypatch.setattr(cv2, "imshow", lambda title, canvas: shown.append(canvas))
    monkeypatch.setattr(cv2, "waitKey", lambda ms: ord(keys[len(shown) - 1]) if len(shown) - 1 in keys else -1)
    monkeypatch.setattr(capture, "display_problem", lambda: None)

    out = tmp_path / "ds"
    assert main(["--out", str(out), "--classes", "fist,palm,none", "--source", str(video), "--every", "5"]) == 0
    # frame 1: the key press; frames 5 and 10: recording; frame 16: undo removes frame 10's image
    assert len(jpgs(out / "palm")) == 2 and not (out / "fist").exists()
    assert len(shown) == 21  # stopped at q, before the clip ended
    red = (60, 60, 230)
    assert tuple(shown[5][20, 460]) == red and tuple(shown[2][20, 460]) != red  # REC dot only while recording
    assert "saved 2 image(s) this session" in capsys.readouterr().out


def test_headless_says_what_it_could_not_read_and_fails_when_nothing_was(tmp_path: Path, capsys):
    """One image of three that does not decode was passed over in silence; none readable exited 0, "saved 0"."""
    frames = tmp_path / "frames"
    frames.mkdir()
    for i in range(3):
        good = np.full((40, 60, 3), 40 * i, np.uint8)
        (frames / f"{i:03d}.jpg").write_bytes(cv2.imencode(".jpg", good)[1].tobytes() if i != 1 else b"not a jpeg")
    args = ["--headless", "--label", "palm", "--every", "1", "--out", str(tmp_path / "data"), "--source", str(frames / "%03d.jpg")]
    assert main(args) == 0
    captured = capsys.readouterr()
    assert "saved 2 image(s) of 'palm'" in captured.out
    assert "warning: image sequence" in captured.err and "skipped 1 of its 3 files, which do not decode" in captured.err
    (frames / "000.jpg").write_bytes(b"not a jpeg either")
    (frames / "002.jpg").write_bytes(b"nor this")
    assert main(args) == 2  # a source that gives no frame is no source, as the webcam demo says (it exited 1)
    err = capsys.readouterr().err
    assert err.startswith("error: image sequence") and "none of its 3 files decodes as an image" in err and len(err.splitlines()) == 1


def test_an_existing_file_named_with_percent_d_is_that_file(tmp_path: Path, capsys):
    """"50%done.avi" and "100%dark.png" were read as image-sequence patterns: "no files match"."""
    video = write_video(tmp_path / "50%done.avi", "MJPG")
    cv2.imwrite(str(tmp_path / "100%dark.png"), synthetic_image(0, 1))
    assert describe_source(str(video)) == f"video file {video}"
    for source, frames in ((video, FRAMES), (tmp_path / "100%dark.png", 1)):
        cap = open_source(str(source))
        assert sum(1 for _ in read_frames(cap)) == frames
        cap.release()
    assert main(["--out", str(tmp_path / "ds"), "--source", str(video), "--headless", "--label", "x", "--every", "10"]) == 0
    assert len(jpgs(tmp_path / "ds" / "x")) == 3


def test_a_camera_index_opencv_cannot_take_is_a_usage_error(tmp_path: Path, capsys):
    """Beyond a C int, cv2.VideoCapture raised cv2.error: a traceback and exit code 1."""
    argv = ["--out", str(tmp_path / "ds"), "--headless", "--label", "x", "--source", "99999999999999999999"]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: camera index 99999999999999999999 is too large") and len(err.splitlines()) == 1
    assert parse_source("2147483647") == 2147483647 and parse_source("²") == "²"  # only ASCII digits are an index


def test_an_out_that_cannot_be_written_is_refused_before_the_source_opens(tmp_path: Path, capsys):
    """/proc takes no folder, even from root: it stopped at the first image saved, exit code 1."""
    argv = ["--out", "/proc/ds", "--headless", "--label", "x", "--source", str(tmp_path / "missing.mp4")]
    with pytest.raises(SystemExit) as stop:  # at the command line
        main(argv)
    assert stop.value.code == 2
    assert capsys.readouterr().err.startswith("error: argument --out: /proc/ds: cannot write there: No such file or directory\n")


def test_a_named_pipe_in_an_image_sequence_is_passed_over_not_waited_on(tmp_path: Path):
    """Reading a FIFO waits for a writer: capture hung for ever on a sequence with one in it."""
    frames = tmp_path / "frames"
    frames.mkdir()
    os.mkfifo(frames / "000.jpg")
    cv2.imwrite(str(frames / "001.jpg"), synthetic_image(0, 1))
    argv = ["--out", str(tmp_path / "ds"), "--source", str(frames / "%03d.jpg"), "--headless", "--label", "x", "--every", "1"]
    done = subprocess.run([sys.executable, "-m", "service.webcam.capture", *argv], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert len(jpgs(tmp_path / "ds" / "x")) == 1


def test_videos_beside_photos_are_named_and_a_glob_of_videos_says_to_pass_one(tmp_path: Path, capsys):
    """A folder of photos and videos was read as its photos alone, and the videos left out without a word;
    a glob matching only videos said "no image file matches" and nothing of them."""
    folder = tmp_path / "mixed"
    folder.mkdir()
    for i in range(3):
        cv2.imwrite(str(folder / f"photo{i}.jpg"), cv2.resize(synthetic_image(i, seed=i, size=64), SIZE))
    write_video(folder / "take.avi", "MJPG")
    (folder / "camcorder.mts").write_bytes(b"\x47" * 188)  # a transport stream's name: a video too
    (folder / "._take.avi").write_bytes(b"\0" * 64)  # macOS's AppleDouble file beside it: hidden, as the photos' are
    assert main(["--out", str(tmp_path / "ds"), "--source", str(folder), "--headless", "--label", "palm"]) == 0
    err = capsys.readouterr().err
    assert "left out 2 video file(s) it also holds (camcorder.mts, take.avi): a video is a source of its own" in err
    assert len(jpgs(tmp_path / "ds" / "palm")) == 3

    assert main(["--out", str(tmp_path / "ds"), "--source", str(folder / "*.avi"), "--headless", "--label", "palm"]) == 2
    assert f"no image file matches, but 1 video file(s) do; a source reads one video: pass each in turn, e.g. --source {folder / 'take.avi'}" in capsys.readouterr().err


def test_a_slow_motion_clip_gives_as_many_frames_a_second_of_its_scene_as_any_other(tmp_path: Path):
    """Every 5th frame of a 240 fps clip was 48 near-copies for each second recorded, against 6 from a
    30 fps one: a slow-motion take flooded its class. Above 30 fps the step grows with the rate."""
    from gesture_core.videos import frame_step
    from training.prepare import prepare_videos

    clip = tmp_path / "takes" / "palm" / "slowmo.avi"
    clip.parent.mkdir(parents=True)
    writer = cv2.VideoWriter(str(clip), cv2.VideoWriter_fourcc(*"MJPG"), 120.0, SIZE)
    for i in range(60):  # half a second at 120 fps
        writer.write(np.ascontiguousarray(cv2.resize(synthetic_image(1, seed=i, size=64), SIZE)[:, :, ::-1]))
    writer.release()
    assert [frame_step(fps) for fps in (15, 30, 60, 120, 240, 0, float("nan"))] == [5, 5, 10, 20, 40, 5, 5]
    assert main(["--out", str(tmp_path / "ds"), "--source", str(clip), "--headless", "--label", "palm"]) == 0
    assert len(jpgs(tmp_path / "ds" / "palm")) == 3  # frames 0, 20 and 40: three in half a second, as at 30 fps
    frames = prepare_videos(tmp_path / "takes", [clip], tmp_path / "datasets")  # training's own extraction, alike
    assert sorted(p.name for p in (frames / "palm" / "slowmo").iterdir()) == ["000000.jpg", "000020.jpg", "000040.jpg"]


def test_a_roi_too_small_to_classify_saves_nothing(tmp_path: Path, capsys):
    """--roi 0.001 saved 1x1 JPEGs, which training.check then skipped as no images."""
    video = write_video(tmp_path / "clip.avi", "MJPG", frames=10)
    assert main(["--out", str(tmp_path / "ds"), "--source", str(video), "--headless", "--label", "fist", "--roi", "0.001"]) == 2
    assert "error: --roi 0.001 is a square of 0 px in these " in capsys.readouterr().err
    assert not (tmp_path / "ds" / "fist").exists()
