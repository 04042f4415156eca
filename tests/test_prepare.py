"""training.prepare end to end against archives the tests build: file:// and http:// URLs, --archive,
resumed downloads, checksum failures, offline failures, and the real flowers102 split builder."""

from __future__ import annotations

import dataclasses
import hashlib
import http.server
import io
import re
import socket
import socketserver
import tarfile
import threading
import zipfile
from pathlib import Path

import numpy as np
import pytest

from tests.helpers import synthetic_image, write_rgb
from training import prepare
from training.data import DatasetError, load_splits
from training.prepare import CATALOGUE, MARKER, PrepareError, Remote, class_folders, main, prepare_dataset


def _jpeg(label: int, seed: int) -> bytes:
    import cv2

    ok, buf = cv2.imencode(".jpg", synthetic_image(label, seed)[:, :, ::-1])
    assert ok
    return buf.tobytes()


def make_tgz(path: Path, members: dict[str, bytes]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with tarfile.open(path, "w:gz") as tf:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))
    return path


def make_zip(path: Path, members: dict[str, bytes]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(path, "w") as zf:
        for name, data in members.items():
            zf.writestr(name, data)
    return path


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


FLOWER_MEMBERS = {
    **{f"flower_photos/daisy/d{i}.jpg": _jpeg(0, i) for i in range(4)},
    **{f"flower_photos/roses/r{i}.jpg": _jpeg(1, 100 + i) for i in range(3)},
    "flower_photos/LICENSE.txt": b"CC-BY attributions",
    "flower_photos/../../escape.jpg": _jpeg(2, 7),  # path traversal: must never be written
    "flower_photos/daisy/._d0.jpg": b"macOS resource fork",
}


def register(monkeypatch, name: str, remote: Remote, build=None, layout="imagefolder") -> prepare.Entry:
    entry = dataclasses.replace(
        CATALOGUE["flowers"], name=name, files=(remote,), build=build or class_folders("flower_photos"), layout=layout
    )
    monkeypatch.setitem(CATALOGUE, name, entry)
    return entry


@pytest.fixture
def tgz(tmp_path: Path) -> Path:
    return make_tgz(tmp_path / "src" / "flower_photos.tgz", FLOWER_MEMBERS)


def test_file_url_download_unpacks_verifies_and_is_not_repeated(tmp_path, tgz, monkeypatch):
    register(monkeypatch, "tiny-flowers", Remote(tgz.as_uri(), "flower_photos.tgz", sha256(tgz), tgz.stat().st_size))
    root = tmp_path / "datasets"
    out = prepare_dataset("tiny-flowers", root)
    assert out == root / "tiny-flowers"
    assert sorted(p.relative_to(out).as_posix() for p in out.rglob("*.jpg")) == [
        "daisy/d0.jpg", "daisy/d1.jpg", "daisy/d2.jpg", "daisy/d3.jpg", "roses/r0.jpg", "roses/r1.jpg", "roses/r2.jpg",
    ]  # fmt: skip
    assert (out / "daisy" / "d2.jpg").read_bytes() == FLOWER_MEMBERS["flower_photos/daisy/d2.jpg"]
    assert not list(tmp_path.rglob("escape.jpg"))
    marker = (out / MARKER).read_text()
    assert '"images": 7' in marker and sha256(tgz) in marker
    assert not (root / ".downloads" / "tiny-flowers" / "flower_photos.tgz").exists()  # archive removed after unpacking
    assert not list(root.glob(".tiny-flowers.partial-*"))

    tgz.unlink()  # the source is gone: a second run must not try to download
    assert prepare_dataset("tiny-flowers", root) == out


def test_cli_with_archive_zip_records_checksum_when_none_is_published(tmp_path, monkeypatch, capsys):
    members = {f"repo-master/Dataset/{d}/IMG_{d}{i}.JPG": _jpeg(d, 10 * d + i) for d in range(3) for i in range(2)}
    members["repo-master/Examples/example_0.JPG"] = _jpeg(0, 99)  # outside Dataset/: not part of the classes
    archive = make_zip(tmp_path / "Downloads" / "master.zip", members)
    before = archive.read_bytes()
    register(
        monkeypatch,
        "tiny-digits",
        Remote("https://unreachable.invalid/master.zip", "x.zip", None),
        build=class_folders(None, "Dataset"),
    )
    root = tmp_path / "datasets"
    assert main(["tiny-digits", "--root", str(root), "--archive", str(archive)]) == 0
    out = capsys.readouterr()
    assert "tiny-digits: prepared at" in out.out and "6 images" in out.out
    assert f"sha256 {sha256(archive)}" in out.err and "no published checksum" in out.err
    assert sorted(p.name for p in (root / "tiny-digits").iterdir() if not p.name.startswith(".")) == ["0", "1", "2"]
    assert archive.read_bytes() == before  # the user's file is never moved or deleted

    assert main(["tiny-digits", "--root", str(root)]) == 0  # no --archive, no network: already prepared
    assert "already prepared" in capsys.readouterr().out


def test_checksum_mismatch_of_a_download_fails_cleanly(tmp_path, tgz, monkeypatch, capsys):
    register(monkeypatch, "bad-sum", Remote(tgz.as_uri(), "flower_photos.tgz", "0" * 64))
    root = tmp_path / "datasets"
    assert main(["bad-sum", "--root", str(root)]) == 1
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith("error: ") and "Traceback" not in err
    assert f"sha256 {sha256(tgz)}, expected {'0' * 64}" in err
    assert not (root / "bad-sum").exists()
    assert (root / ".downloads" / "bad-sum" / "flower_photos.tgz.bad").exists()  # kept for inspection, not reused

    with pytest.raises(PrepareError, match="your file was left untouched"):
        prepare_dataset("bad-sum", root, archive=tgz)
    assert tgz.exists()


def test_offline_fails_fast_with_one_line_naming_url_and_archive(tmp_path, monkeypatch, capsys):
    with socket.socket() as s:  # a port nobody listens on: connection refused, like a machine without network
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    url = f"http://127.0.0.1:{port}/flower_photos.tgz"
    register(monkeypatch, "offline", Remote(url, "flower_photos.tgz", "0" * 64))
    assert main(["offline", "--root", str(tmp_path / "datasets")]) == 1
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "Traceback" not in err
    assert url in err and "--archive PATH" in err and "offline?" in err
    assert not (tmp_path / "datasets").exists()  # an empty datasets/.downloads/offline/ was left in the working folder


class RangeHandler(http.server.BaseHTTPRequestHandler):
    payload = b""
    honour_range = True
    seen_ranges: list = []

    def do_GET(self):  # noqa: N802
        rng = self.headers.get("Range")
        type(self).seen_ranges.append(rng)
        body, status = self.payload, 200
        if rng and self.honour_range:
            start = int(re.fullmatch(r"bytes=(\d+)-", rng).group(1))
            body, status = self.payload[start:], 206
        self.send_response(status)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


@pytest.fixture
def server(tgz):
    RangeHandler.payload, RangeHandler.seen_ranges, RangeHandler.honour_range = tgz.read_bytes(), [], True
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), RangeHandler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}/flower_photos.tgz"
    httpd.shutdown()
    httpd.server_close()


@pytest.mark.parametrize("honour_range", [True, False])
def test_interrupted_download_resumes_from_the_part_file(tmp_path, tgz, server, monkeypatch, honour_range):
    RangeHandler.honour_range = honour_range
    register(monkeypatch, "resume", Remote(server, "flower_photos.tgz", sha256(tgz)))
    root = tmp_path / "datasets"
    part = root / ".downloads" / "resume" / "flower_photos.tgz.part"
    part.parent.mkdir(parents=True)
    half = len(RangeHandler.payload) // 2
    part.write_bytes(RangeHandler.payload[:half])  # what an interrupted run leaves behind

    out = prepare_dataset("resume", root, keep_archive=True)
    assert RangeHandler.seen_ranges == [f"bytes={half}-"]
    assert (root / ".downloads" / "resume" / "flower_photos.tgz").read_bytes() == RangeHandler.payload
    assert len(list(out.rglob("*.jpg"))) == 7


class BrokenAnswer(socketserver.StreamRequestHandler):
    """A server whose answer is no HTTP, or is cut off inside a chunked body (a captive portal, a proxy, a dropped
    connection): http.client raised BadStatusLine and IncompleteRead past the download's error handling."""

    answer = b""

    def handle(self):
        self.rfile.readline()
        self.wfile.write(self.answer)


@pytest.mark.parametrize("answer, says", [
    (b"\xff\x00not http\r\n\r\n", "offline?"),
    (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n10\r\n0123456789abcdef\r\n20\r\ncut", "run the same command again"),
    (b"", "Remote end closed connection without response"),  # a BadStatusLine too, but a closed connection, said as one
], ids=["not-http", "cut-chunked-body", "no-answer"])
def test_a_broken_answer_is_one_line_not_a_traceback(tmp_path, monkeypatch, capsys, answer, says):
    handler = type("Answer", (BrokenAnswer,), {"answer": answer})
    with socketserver.ThreadingTCPServer(("127.0.0.1", 0), handler) as httpd:
        threading.Thread(target=httpd.serve_forever, daemon=True).start()
        url = f"http://127.0.0.1:{httpd.server_address[1]}/flower_photos.tgz"
        register(monkeypatch, "broken", Remote(url, "flower_photos.tgz", "0" * 64))
        assert main(["broken", "--root", str(tmp_path / "datasets")]) == 1
        httpd.shutdown()
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith("error: ") and url in err and says in err


def test_flowers102_builder_uses_the_official_split(tmp_path, monkeypatch):
    from scipy.io import savemat

    src = tmp_path / "by-hand"
    labels = [1, 1, 2, 2, 1, 2, 1, 2]  # image_00001..8
    make_tgz(src / "102flowers.tgz", {f"jpg/image_{i:05d}.jpg": _jpeg(labels[i - 1], i) for i in range(1, 9)})
    savemat(src / "imagelabels.mat", {"labels": [labels]})
    savemat(src / "setid.mat", {"trnid": [[1, 2, 3, 4]], "valid": [[5, 6]], "tstid": [[7, 8]]})
    real = CATALOGUE["flowers102"]
    files = tuple(dataclasses.replace(f, sha256=sha256(src / f.filename)) for f in real.files)
    monkeypatch.setitem(CATALOGUE, "flowers102", dataclasses.replace(real, files=files))

    out = prepare_dataset("flowers102", tmp_path / "datasets", archive=src)  # a folder holding the three files
    found = sorted(p.relative_to(out).as_posix() for p in out.rglob("*.jpg"))
    assert found == [
        "test/001/image_00007.jpg", "test/002/image_00008.jpg",
        "train/001/image_00001.jpg", "train/001/image_00002.jpg", "train/002/image_00003.jpg", "train/002/image_00004.jpg",
        "val/001/image_00005.jpg", "val/002/image_00006.jpg",
    ]  # fmt: skip

    from training.data import load_splits

    splits = load_splits(out)
    assert splits.layout == "presplit" and splits.counts() == {"train": 4, "val": 2, "test": 2}


def test_corrupt_archive_and_wrong_archive_leave_nothing_behind(tmp_path, tgz, monkeypatch):
    truncated = tmp_path / "truncated.tgz"
    truncated.write_bytes(tgz.read_bytes()[: tgz.stat().st_size // 2])
    register(monkeypatch, "broken", Remote("https://unreachable.invalid/x.tgz", "x.tgz", None))
    root = tmp_path / "datasets"
    with pytest.raises(PrepareError, match="corrupt or truncated"):
        prepare_dataset("broken", root, archive=truncated)
    other = make_zip(tmp_path / "other.zip", {"something/else.txt": b"no images here"})
    with pytest.raises(PrepareError, match="no images found"):
        prepare_dataset("broken", root, archive=other)
    not_archive = tmp_path / "photo.jpg"
    write_rgb(not_archive, synthetic_image(0, 1))
    with pytest.raises(PrepareError, match="neither a zip nor a tar"):
        prepare_dataset("broken", root, archive=not_archive)
    assert not (root / "broken").exists() and not list(root.glob(".broken.partial-*"))


def test_refuses_to_overwrite_a_folder_it_did_not_prepare(tmp_path, tgz, monkeypatch):
    register(monkeypatch, "mine", Remote(tgz.as_uri(), "flower_photos.tgz", sha256(tgz)))
    (tmp_path / "datasets" / "mine" / "my-class").mkdir(parents=True)
    with pytest.raises(PrepareError, match="not a prepared copy"):
        prepare_dataset("mine", tmp_path / "datasets")
    assert (tmp_path / "datasets" / "mine" / "my-class").is_dir()


def test_unknown_name_lists_choices(capsys, tmp_path):
    with pytest.raises(SystemExit) as exc:
        main(["no-such-set"])
    assert exc.value.code == 2
    assert "choose one of: flowers, flowers102, sign-digits, hagrid-sample" in (err := capsys.readouterr().err)
    assert "needs no preparing" not in err
    with pytest.raises(SystemExit):  # a folder of one's own, read as a misspelt catalogue name
        main([str(tmp_path)])
    assert "; a folder, archive or URL of your own needs no preparing: pass it to finetune --data (or check)" in capsys.readouterr().err
    with pytest.raises(PrepareError, match="choose one of"):
        prepare_dataset("no-such-set")


def test_catalogue_entries_are_complete_and_checksums_are_real_or_declared_absent():
    assert {"flowers", "flowers102", "sign-digits", "hagrid-sample"} <= set(CATALOGUE)
    for entry in CATALOGUE.values():
        assert entry.licence and entry.citation and entry.homepage.startswith("https://")
        for remote in entry.files:
            assert remote.url.startswith("https://")
            if remote.sha256 is None:
                assert entry.checksum_source.startswith("none published")
            else:
                assert re.fullmatch(r"[0-9a-f]{64}", remote.sha256)
                assert "TensorFlow Datasets" in entry.checksum_source
    assert CATALOGUE["flowers102"].layout == "presplit"


def test_a_mistyped_archive_or_wheel_is_a_usage_error(tmp_path, capsys):
    """It exited 1, the code of a failed download, after naming the dataset's source."""
    for flag in ("--archive", "--wheel"):
        with pytest.raises(SystemExit) as stop:
            main(["tiny-digits", "--root", str(tmp_path), flag, str(tmp_path / "master.zip")])
        assert stop.value.code == 2
        assert f"argument {flag}: {tmp_path / 'master.zip'}: no such file or folder" in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []


def test_list_with_a_name_is_refused_not_ignored(capsys):
    with pytest.raises(SystemExit) as stop:
        main(["--list", "flowers"])
    assert stop.value.code == 2 and "--list shows the whole catalogue; to prepare flowers, drop --list" in capsys.readouterr().err


def test_a_root_that_cannot_be_written_is_refused_before_the_download(capsys, monkeypatch):
    """The download started, and its first byte could not be saved."""
    monkeypatch.setattr(prepare, "download", lambda *a, **k: pytest.fail("downloaded"))
    with pytest.raises(SystemExit) as stop:
        main(["sign-digits", "--root", "/proc/datasets"])
    assert stop.value.code == 2 and "--root /proc/datasets: cannot write there" in capsys.readouterr().err


def test_a_root_that_cannot_be_written_serves_the_datasets_prepared_there(capsys, monkeypatch):
    """A read-only share of prepared datasets: nothing is written, so nothing needs to be writable (/proc stands
    for it here, which takes no file even from root; its marker is faked)."""
    monkeypatch.setattr(prepare, "read_marker", lambda folder: {"name": folder.name})
    assert main(["sign-digits", "--root", "/proc/datasets"]) == 0
    assert "/proc/datasets/sign-digits" in capsys.readouterr().out


def _dataset_members(prefix: str, splits: tuple[str, ...] = ("",)) -> dict[str, bytes]:
    return {f"{prefix}{split}{name}/{i}.jpg": _jpeg(label, i) for split in splits for label, name in enumerate(("fist", "palm")) for i in range(4)}


@pytest.mark.parametrize("layout, members, kind", [
    ("class folders zipped", _dataset_members(""), "zip"),
    ("the folder zipped", {**_dataset_members("my-data/"), "my-data/README.txt": b"notes", "__MACOSX/my-data/._fist": b"x"}, "zip"),
    ("Roboflow's export", {**_dataset_members("export/", ("train/", "valid/", "test/")), "export/README.roboflow.txt": b"x"}, "zip"),
    ("a tarball of the folder", _dataset_members("my-data/"), "tar.gz"),
])
def test_a_dataset_archive_given_as_data_is_unpacked_once_and_trained_from_its_folder(tmp_path, monkeypatch, capsys, layout, members, kind):
    """`--data my-data.zip` was "not a folder, nor a catalogue dataset": Ultralytics takes an archive."""
    from training.config import TrainConfig
    from training.data import load_splits
    from training.finetune import default_run_dir
    from training.prepare import resolve_data_dir

    monkeypatch.chdir(tmp_path)
    archive = tmp_path / f"my-data.{kind}"
    make_zip(archive, members) if kind == "zip" else make_tgz(archive, members)
    out = resolve_data_dir(str(archive))
    assert out == Path("datasets/my-data") and (out / MARKER).exists()
    images, others = sum(n.endswith(".jpg") for n in members), sum(not n.endswith(".jpg") for n in members)
    said = capsys.readouterr().err
    assert f"{archive}: {images} images unpacked into datasets/my-data" + (f" ({others} other files left out)" if others else "\n") in said
    splits = load_splits(out)
    assert sorted(splits.classes) == ["fist", "palm"] and splits.layout == ("presplit" if "Roboflow" in layout else "imagefolder")
    assert not list(out.rglob("*.txt")) and not (out / "__MACOSX").exists()  # images only
    assert resolve_data_dir(str(archive)) == out and "unpacking" not in capsys.readouterr().err  # the same file: reused
    assert default_run_dir(TrainConfig(data=str(archive))) == Path("runs/my-data-efficientnet_lite0")
    from training import check

    assert check.main([str(archive), "--fast"]) == 0  # checks the folder training reads
    assert f"dataset {out.resolve()}\n" in capsys.readouterr().out
    from training.evaluate import split_folder

    assert split_folder(str(archive)) == str(out / "test" if splits.layout == "presplit" else out)  # evaluate --data ARCHIVE


def test_a_changed_archive_does_not_replace_the_folder_and_a_bad_one_leaves_nothing(tmp_path, monkeypatch):
    from training.prepare import prepare_archive

    monkeypatch.chdir(tmp_path)
    archive = make_zip(tmp_path / "gestures.zip", _dataset_members(""))
    prepare_archive(archive)
    make_zip(archive, _dataset_members("", ("a/",)))
    with pytest.raises(PrepareError, match="datasets/gestures exists but was not unpacked from this gestures.zip: use the folder datasets/gestures as it is, "
                                           "or move it away"):
        prepare_archive(archive)
    notes = make_zip(tmp_path / "notes.zip", {"a.txt": b"x", "../../evil.jpg": _jpeg(0, 0)})
    with pytest.raises(PrepareError, match="notes.zip holds no image files \\(2 other files\\): not a dataset archive"):
        prepare_archive(notes)
    (tmp_path / "cut.zip").write_bytes(archive.read_bytes()[:300])
    with pytest.raises(PrepareError):
        prepare_archive(tmp_path / "cut.zip")
    assert sorted(p.name for p in (tmp_path / "datasets").iterdir()) == ["gestures"] and not (tmp_path / "evil.jpg").exists()


def test_a_zip_whose_images_would_not_fit_on_the_disk_is_refused_before_unpacking(tmp_path, monkeypatch):
    """A zip's entries declare their unpacked sizes (and cannot unpack to more): a 256 KB zip of zeros named
    .jpg declares 256 MB, which would have filled a nearly full disk image by image."""
    from training.prepare import prepare_archive

    monkeypatch.chdir(tmp_path)
    with zipfile.ZipFile(tmp_path / "big.zip", "w", zipfile.ZIP_DEFLATED) as zf:
        with zf.open("fist/0.jpg", "w", force_zip64=True) as member:
            for _ in range(256):
                member.write(bytes(1 << 20))
    monkeypatch.setattr(prepare.shutil, "disk_usage", lambda path: dataclasses.make_dataclass("Usage", ["free"])(128 << 20))
    with pytest.raises(PrepareError, match=r"not enough disk space in datasets: 0\.1 GB free, about 0\.3 GB needed"):
        prepare_archive(tmp_path / "big.zip")
    assert not (tmp_path / "datasets").exists()


def test_a_tarball_stops_unpacking_before_its_images_fill_the_disk(tmp_path, monkeypatch):
    """A tarball's size says nothing of what it unpacks to: 255 KB of gzip here declare 256 MB of
    "photos", which was unpacked until the disk was full. Unpacking now adds up the sizes the members
    declare and stops short of the free space, leaving nothing behind."""
    from training.prepare import prepare_archive

    monkeypatch.chdir(tmp_path)
    with tarfile.open(tmp_path / "zeros.tar.gz", "w:gz") as tf:
        for name in ("fist/0.jpg", "palm/0.jpg"):
            info = tarfile.TarInfo(name)
            info.size = 128 << 20
            tf.addfile(info, io.BytesIO(bytes(info.size)))
    assert (tmp_path / "zeros.tar.gz").stat().st_size < 1 << 20
    monkeypatch.setattr(prepare.shutil, "disk_usage", lambda path: dataclasses.make_dataclass("Usage", ["free"])(200 << 20))
    with pytest.raises(PrepareError, match=r"not enough disk space to unpack \S*zeros.tar.gz: its images come to 0\.3 GB or more, "
                                           r"and 0\.2 GB are free in datasets; free space and run again"):
        prepare_archive(tmp_path / "zeros.tar.gz")
    assert not (tmp_path / "datasets").exists() or not any((tmp_path / "datasets").iterdir())


def test_a_file_larger_than_any_image_is_left_out_of_an_archive(tmp_path, monkeypatch, capsys):
    """A video or a disk image named .jpg: unpacked, it was read whole by every scan of the folder."""
    from training.prepare import prepare_archive

    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(prepare, "MAX_IMAGE_FILE_BYTES", 100_000)  # the real limit is 1 GB
    members = {**_dataset_members(""), "fist/clip.jpg": bytes(100_001)}
    out = prepare_archive(make_tgz(tmp_path / "gestures.tar.gz", members))
    assert not (out / "fist" / "clip.jpg").exists() and (out / "fist").is_dir()
    assert "(1 other files left out)" in capsys.readouterr().err


def test_a_folder_that_holds_only_the_archive_names_it(tmp_path, capsys):
    """A downloaded export left zipped in its folder was "no class folders", with nothing about the zip."""
    from training import check

    make_zip(tmp_path / "download" / "gestures.zip", _dataset_members(""))
    assert check.main([str(tmp_path / "download")]) == 1
    assert (f"{tmp_path / 'download'} has no class folders; expected {tmp_path / 'download'}/<class>/<image> (ImageFolder layout); it holds "
            f"the archive gestures.zip: pass it instead ({tmp_path / 'download' / 'gestures.zip'}), to be unpacked into datasets/") in capsys.readouterr().out


def test_a_dataset_archive_url_given_as_data_is_downloaded_unpacked_and_reused(tmp_path, server, monkeypatch, capsys):
    """`--data https://host/flower_photos.tgz` was "not a folder, nor a catalogue dataset"; Ultralytics takes one."""
    from training.config import TrainConfig
    from training.finetune import default_run_dir
    from training.prepare import resolve_data_dir

    monkeypatch.chdir(tmp_path)
    out = resolve_data_dir(server)
    assert out == Path("datasets/flower_photos") and (out / MARKER).exists()
    assert sorted(p.name for p in out.iterdir() if p.is_dir()) == ["daisy", "roses"]  # flower_photos/ inside the tarball: left out
    assert not list(Path("datasets/.downloads").iterdir())  # the download is deleted once unpacked
    RangeHandler.seen_ranges.clear()
    RangeHandler.payload = b""  # a second download would get nothing
    assert resolve_data_dir(server) == out and default_run_dir(TrainConfig(data=server)) == Path("runs/flower_photos-efficientnet_lite0")
    from training import check
    from training.evaluate import split_folder

    assert check.main([server, "--fast"]) == 0  # check and evaluate read the folder training reads: "DIR ...: not a folder"
    assert f"dataset {out.resolve()}\n" in capsys.readouterr().out
    assert split_folder(server) == str(out)
    with pytest.raises(DatasetError, match="exists but was not unpacked from http://127.0.0.1:[0-9]+/other/flower_photos.tgz: use the folder "):
        resolve_data_dir(server.replace("/flower_photos", "/other/flower_photos"))
    with pytest.raises(DatasetError, match="cannot download http://127.0.0.1:1/gestures.zip .*download it by hand, then pass the file: "
                                           "--data PATH/gestures.zip"):
        resolve_data_dir("http://127.0.0.1:1/gestures.zip")


def _recording(path: Path, label: int, seed: int, frames: int = 12) -> Path:
    """A short video of one class's synthetic images (each frame a new one, as a hand moves)."""
    import cv2

    path.parent.mkdir(parents=True, exist_ok=True)
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), 15.0, (64, 64))
    for i in range(frames):
        writer.write(cv2.cvtColor(synthetic_image(label, seed * 100 + i), cv2.COLOR_RGB2BGR))
    writer.release()
    return path


def test_a_dataset_of_recordings_trains_on_their_frames_each_recording_in_one_split(tmp_path, monkeypatch, capsys):
    """<class>/take1.avi was "no images found ... save their frames as images first", one capture
    command per video. Now every 5th frame of each is saved once, one folder per recording, so that no
    recording has frames on both sides of a split; check, finetune and evaluate read the same folder."""
    from training import check
    from training.data import load_splits
    from training.prepare import resolve_data_dir

    monkeypatch.chdir(tmp_path)
    videos = tmp_path / "takes"
    for label, cls in enumerate(("point_left", "point_right")):
        for take in range(1, 6):
            _recording(videos / cls / f"take{take}.avi", label, 10 * label + take)
    (videos / "point_left" / "broken.mp4").write_bytes(b"not a video")
    (videos / "point_left" / "empty.mp4").write_bytes(b"")  # an upload that never started: no re-encoding helps
    cut = _recording(videos / "point_right" / "cut.avi", 1, 50, frames=60)  # an upload cut in half: it was said nowhere
    cut.write_bytes(cut.read_bytes()[:cut.stat().st_size // 2])
    out = resolve_data_dir(str(videos))
    assert out == Path("datasets/takes-frames")
    said = capsys.readouterr().err
    broken = ("2 video(s) gave no frames: point_left/broken.mp4: the file is not a video OpenCV/FFmpeg can decode (try re-encoding it as "
              "H.264 .mp4 or MJPG .avi); point_left/empty.mp4: an empty file (0 bytes); "
              "1 video(s) gave part of their frames: point_right/cut.avi ended after 29 of the 60 frames it declares: 31 do not decode (the file cut short, or corrupt frames skipped)")
    assert f"takes: 36 frames of 11 video(s) saved into datasets/takes-frames; {broken}" in said
    assert sorted(p.relative_to(out).as_posix() for p in out.rglob("*.jpg"))[:3] == [
        "point_left/take1/000000.jpg", "point_left/take1/000005.jpg", "point_left/take1/000010.jpg"]  # frames 0, 5, 10 of 12
    splits = load_splits(out, val_split=0.2, test_split=0.2)
    assert splits.grouping["rule"] == "folders"
    side = {}
    for split in ("train", "val", "test"):
        for sample in getattr(splits, split):
            recording = Path(sample.path).parent
            assert side.setdefault(recording, split) == split, f"{recording} is in {side[recording]} and {split}"
    # the same videos: reused, and the one that does not decode said again (it was said at extraction only)
    assert resolve_data_dir(str(videos)) == out and capsys.readouterr().err.startswith(f"{videos}: {broken}")
    assert any(warning.startswith(f"{videos.resolve()}: {broken}") for warning in check.build_report(out)["warnings"])
    _recording(videos / "point_right" / "take6.avi", 1, 99)
    assert resolve_data_dir(str(videos)) == out and (out / "point_right" / "take6" / "000010.jpg").is_file()  # one more: again
    other = tmp_path / "elsewhere" / "takes"  # another folder of that name: its frames would replace these
    _recording(other / "point_left" / "take1.avi", 0, 7)
    with pytest.raises(PrepareError, match=r"datasets/takes-frames exists but was not extracted from the videos of .*elsewhere/takes"):
        resolve_data_dir(str(other))
    assert check.main([str(videos), "--fast"]) == 0
    report = capsys.readouterr().out
    assert "note: frames of 14 video(s) of" in report and "sub-folders" not in report.replace("one sub-folder per recording", "")


def test_a_folder_of_images_is_read_as_it_is_and_videos_that_never_decode_are_refused(tmp_path, monkeypatch):
    from training.prepare import dataset_videos, resolve_data_dir

    monkeypatch.chdir(tmp_path)
    photos = tmp_path / "photos"
    for cls in ("fist", "palm"):
        write_rgb(photos / cls / "0.jpg", synthetic_image(0, 0))
    (photos / "fist" / "clip.mp4").write_bytes(b"a stray video among photos: training's own warning names it")
    assert dataset_videos(photos) == [] and resolve_data_dir(str(photos)) == photos and not (tmp_path / "datasets").exists()
    loose = tmp_path / "loose"  # videos with no class folder: no class to give their frames
    _recording(loose / "take1.avi", 0, 1)
    assert dataset_videos(loose) == [] and resolve_data_dir(str(loose)) == loose
    broken = tmp_path / "broken"
    for cls in ("fist", "palm"):
        (broken / cls).mkdir(parents=True)
        (broken / cls / "take.mp4").write_bytes(b"not a video")
    with pytest.raises(PrepareError, match=r"broken: not one frame of its 2 video\(s\) decodes, e.g. fist/take.mp4: the file is not a video"):
        resolve_data_dir(str(broken))
    assert not (tmp_path / "datasets" / "broken-frames").exists()
    covered = tmp_path / "covered"  # recordings, and a cover photo in each class: the videos were skipped for the photos
    for cls in ("fist", "palm"):
        write_rgb(covered / cls / "cover.jpg", synthetic_image(0, 0))
        for take in range(3):
            (covered / cls / f"take{take}.mp4").write_bytes(b"named, never read")
    with pytest.raises(DatasetError, match=r"covered holds 6 video\(s\) and 2 image\(s\) \(fist/cover.jpg, palm/cover.jpg\): the videos' "
                                           r"frames are read only where no image is beside them; move the images out"):
        load_splits(resolve_data_dir(str(covered)))


def test_frames_larger_than_any_model_input_are_scaled_down(tmp_path, monkeypatch):
    import cv2

    from training.prepare import resolve_data_dir

    monkeypatch.chdir(tmp_path)
    for cls in ("fist", "palm"):
        (tmp_path / "wide" / cls).mkdir(parents=True)
        writer = cv2.VideoWriter(str(tmp_path / "wide" / cls / "take.avi"), cv2.VideoWriter_fourcc(*"MJPG"), 15.0, (1600, 400))
        for _ in range(3):
            writer.write(np.full((400, 1600, 3), 128, np.uint8))
        writer.release()
    frame = cv2.imread(str(resolve_data_dir(str(tmp_path / "wide")) / "fist" / "take" / "000000.jpg"))
    assert frame.shape == (256, 1024, 3)  # the longer side at 1024 (MAX_INPUT_SIZE), the aspect kept


def test_a_video_named_as_a_photo_among_videos_does_not_make_them_a_photo_dataset(tmp_path, monkeypatch, capsys):
    """takes/three/IMG_0042.jpg, a video renamed: the folder was taken for photos, every video was skipped,
    and training stopped at "no usable images", the reason nowhere."""
    from training.data import load_splits
    from training.prepare import dataset_videos, resolve_data_dir

    monkeypatch.chdir(tmp_path)
    videos = tmp_path / "takes"
    for label, cls in enumerate(("one", "three")):
        for take in range(1, 4):
            _recording(videos / cls / f"take{take}.avi", label, 10 * label + take)
    renamed = videos / "three" / "IMG_0042.jpg"
    renamed.write_bytes((videos / "three" / "take1.avi").read_bytes())
    (videos / "three" / "notes.jpg").write_text("neither a photo nor a video")
    assert renamed in dataset_videos(videos)
    out = resolve_data_dir(str(videos))
    assert (out / "three" / "IMG_0042" / "000005.jpg").is_file()  # read as the video it is
    assert "three/notes.jpg: the file is not a video OpenCV/FFmpeg can decode" in capsys.readouterr().err
    assert len(load_splits(out).classes) == 2

    photos = tmp_path / "photos"  # broken photos and no video: still a photo dataset, whose broken files training names
    for cls in ("a", "b"):
        (photos / cls).mkdir(parents=True)
        (photos / cls / "0.jpg").write_bytes(b"\xff\xd8\xff\xe0 cut short")
    assert dataset_videos(photos) == [] and resolve_data_dir(str(photos)) == photos


def test_check_asks_for_more_takes_where_too_few_videos_split_a_class_in_blocks(tmp_path, monkeypatch):
    """The frames of a folder of videos are the tool's own names: check's advice for neighbouring frames
    on both sides of a split, "name files <recording>-<n> or pass --group-by REGEX", could not be followed."""
    import cv2

    from training import check
    from training.prepare import resolve_data_dir

    monkeypatch.chdir(tmp_path)
    for cls, takes in (("one", 3), ("two", 1)):
        for take in range(takes):
            path = tmp_path / "takes" / cls / f"take{take}.avi"
            path.parent.mkdir(parents=True, exist_ok=True)
            writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), 15.0, (64, 48))
            for n in range(150):  # a still scene, a disc creeping: neighbouring frames kept (every 5th) are near-identical
                frame = np.full((48, 64, 3), 40, np.uint8)
                cv2.circle(frame, (10 + n // 5, 24), 8, (200, 80 * take, 60 if cls == "one" else 220), -1)
                writer.write(frame)
            writer.release()
    warnings = check.build_report(resolve_data_dir(str(tmp_path / "takes")), workers=1)["warnings"]
    straddle = [w for w in warnings if "would straddle" in w]
    assert straddle and "record more takes of two: a class with fewer than 3 videos is split in blocks" in straddle[0], warnings
