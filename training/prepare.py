"""Download, verify and unpack a public dataset into the ImageFolder layout, with one command.

    python -m training.prepare flowers                 # -> datasets/flowers/<class>/<image>
    python -m training.prepare flowers102              # -> datasets/flowers102/{train,val,test}/<class>/<image>
    python -m training.prepare sign-digits --archive ~/Downloads/master.zip   # offline: a file fetched by hand
    python -m training.prepare --list
    python -m training.prepare hand-models             # -> the hand detector's models, in the cache (docs/hands.md)

Downloads go to ``ROOT/.downloads/NAME/FILE.part`` and resume with an HTTP Range request after an
interruption. Every file is checked against the sha256 its publisher (or TensorFlow Datasets) records;
where nobody publishes one, the hash of the first download is printed and recorded in the marker
file instead (trust on first use), and the catalogue says so. The unpacked copy is built next to
its final place and renamed into it only when complete, so an interrupted run never leaves a
half-prepared folder that looks finished. ``ROOT/NAME/.prepared.json`` marks a finished copy:
running the command again does nothing.
"""

from __future__ import annotations

import errno
import hashlib
import http.client
import json
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request
import zipfile
import zlib
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path, PurePosixPath
from typing import BinaryIO, NamedTuple

from tqdm import tqdm

from gesture_core.cli import CommandParser, check_writable, command, output_arg
from gesture_core.hands import HAND_MODEL_FILES, MODELS_WHEEL, HandModelFile, hand_models_dir
from gesture_core.images import FRAME_JPEG_QUALITY, IMAGE_SUFFIXES, MAX_IMAGE_FILE_BYTES, VIDEO_FILE_SUFFIXES, VIDEO_FRAME_EVERY
from gesture_core.interrupts import interrupted_exit_code
from gesture_core.preprocess import longer_side_at_most
from gesture_core.videos import ended_early, frame_step, why_no_frames
from training.cli import existing_path
from training.data import ARCHIVE_SUFFIXES, SPLIT_FOLDERS, SPLITS, DatasetError, check_image_file, passed_over

DEFAULT_ROOT = Path("datasets")
MARKER = ".prepared.json"
TIMEOUT_S = 15  # per connection attempt and per read: offline fails in seconds, a stalled server never hangs us
CHUNK = 1 << 20
# Unpacking a user's archive stops before its images would take more of the disk's free space than this.
UNPACK_SHARE_OF_FREE = 0.9


class PrepareError(DatasetError):
    """A dataset that could not be prepared; ``str(err)`` is one line saying what to do."""


@dataclass(frozen=True)
class Remote:
    """One file to fetch. ``sha256=None`` means no publisher checksum exists (recorded on first download)."""

    url: str
    filename: str
    sha256: str | None
    size: int | None = None  # bytes, when known: used for the free-space check


@dataclass(frozen=True)
class Entry:
    name: str
    title: str
    files: tuple[Remote, ...]
    licence: str
    citation: str
    homepage: str
    layout: str  # "imagefolder" or "presplit"
    classes: int
    images: int
    checksum_source: str
    build: Callable[[dict[str, Path], Path], None] = field(repr=False, compare=False)

    def describe(self) -> dict:
        d = {k: v for k, v in asdict(self).items() if k != "build"}
        d["files"] = [asdict(f) for f in self.files]
        return d


# --------------------------------------------------------------------------- unpacking


class Member(NamedTuple):
    name: str  # its posix path in the archive
    size: int  # bytes, as its header declares them (a zip or tar member cannot unpack to more)
    open: Callable[[], BinaryIO]


def _members(archive: Path) -> Iterator[Member]:
    """Every regular file of a tar or zip archive, detected by content."""
    if zipfile.is_zipfile(archive):
        with zipfile.ZipFile(archive) as zf:
            for info in zf.infolist():
                if not info.is_dir():
                    yield Member(info.filename, info.file_size, lambda info=info: zf.open(info))
    elif tarfile.is_tarfile(archive):
        # Streaming mode ("r|*"): one pass, constant memory, even for a multi-GB tarball.
        with tarfile.open(archive, "r|*") as tf:
            for member in tf:
                if member.isfile():  # links and devices are never extracted
                    yield Member(member.name, member.size, lambda member=member: tf.extractfile(member))
    else:
        raise PrepareError(f"{archive} is neither a zip nor a tar archive (corrupt or wrong file?)")


def _safe_parts(name: str) -> list[str] | None:
    parts = [p for p in PurePosixPath(name.replace("\\", "/")).parts if p not in ("", ".")]
    if not parts or parts[0] == "/" or ".." in parts or any(passed_over(p, folder=True) for p in parts[:-1]) or passed_over(parts[-1], folder=False):
        return None
    return parts


def _is_image_name(name: str) -> bool:
    return PurePosixPath(name).suffix.lower() in IMAGE_SUFFIXES


def _copy_member(opener: Callable[[], BinaryIO], dest: Path) -> None:
    dest.parent.mkdir(parents=True, exist_ok=True)
    with opener() as src, open(dest, "xb") as dst:
        shutil.copyfileobj(src, dst, CHUNK)


def class_folders(*prefix: str | None) -> Callable[[dict[str, Path], Path], None]:
    """Builder for archives holding ``PREFIX/<class>/<image>``; ``None`` in the prefix matches any one folder."""

    def build(files: dict[str, Path], out: Path) -> None:
        (archive,) = files.values()
        for name, _, opener in _members(archive):
            parts = _safe_parts(name)
            if parts is None or len(parts) != len(prefix) + 2 or not _is_image_name(name):
                continue
            if all(want is None or want == got for want, got in zip(prefix, parts[: len(prefix)], strict=True)):
                _copy_member(opener, out / parts[-2] / parts[-1])

    return build


def build_flowers102(files: dict[str, Path], out: Path) -> None:
    """Official split from setid.mat (trnid/valid/tstid), labels 1..102 from imagelabels.mat -> folders 001..102."""
    from scipy.io import loadmat  # scipy comes with albumentations; only this entry needs it

    labels = loadmat(files["imagelabels.mat"])["labels"].ravel()
    setid = loadmat(files["setid.mat"])
    split_of = {
        int(i): split for key, split in (("trnid", "train"), ("valid", "val"), ("tstid", "test")) for i in setid[key].ravel()
    }
    for name, _, opener in _members(files["102flowers.tgz"]):
        stem = PurePosixPath(name).stem  # image_00001
        if not (stem.startswith("image_") and stem[6:].isdigit() and _is_image_name(name)):
            continue
        index = int(stem[6:])
        if index in split_of:
            _copy_member(opener, out / split_of[index] / f"{int(labels[index - 1]):03d}" / PurePosixPath(name).name)


# --------------------------------------------------------------------------- catalogue

_TFDS = "TensorFlow Datasets url_checksums (tensorflow/datasets, tensorflow_datasets/url_checksums/{}.txt)"
_TOFU = "none published: the sha256 of the first download is printed and recorded in the marker file"

CATALOGUE: dict[str, Entry] = {
    "flowers": Entry(
        name="flowers",
        title="TF flower_photos: 5 flower classes (daisy, dandelion, roses, sunflowers, tulips)",
        files=(
            Remote(
                "https://storage.googleapis.com/download.tensorflow.org/example_images/flower_photos.tgz",
                "flower_photos.tgz",
                "4c54ace7911aaffe13a365c34f650e71dd5bf1be0a58b464e5a7183e3e595d9c",
                228_813_984,
            ),
        ),
        licence="Creative Commons BY (Flickr photos; per-photo attributions in the archive's LICENSE.txt)",
        citation='The TensorFlow Team, "Flowers", 2019, http://download.tensorflow.org/example_images/flower_photos.tgz',
        homepage="https://www.tensorflow.org/datasets/catalog/tf_flowers",
        layout="imagefolder",
        classes=5,
        images=3670,
        checksum_source=_TFDS.format("tf_flowers"),
        build=class_folders("flower_photos"),
    ),
    "flowers102": Entry(
        name="flowers102",
        title="Oxford Flowers-102 with its official train/val/test split (10/10/rest per class)",
        files=(
            Remote(
                "https://www.robots.ox.ac.uk/~vgg/data/flowers/102/102flowers.tgz",
                "102flowers.tgz",
                "2d01ecc807db462958cfe3d92f57a8c252b4abd240eb955770201e45f783b246",
                344_862_509,
            ),
            Remote(
                "https://www.robots.ox.ac.uk/~vgg/data/flowers/102/imagelabels.mat",
                "imagelabels.mat",
                "4903e94206bac23bf772aadf06451916df56b58fc483a62db32a97b82656651d",
                502,
            ),
            Remote(
                "https://www.robots.ox.ac.uk/~vgg/data/flowers/102/setid.mat",
                "setid.mat",
                "46b8678f91fd95d3c8f4feab80d271a6c834a1dd896fe29fd3e6ad9ce5c8dccd",
                14_989,
            ),
        ),
        licence="research use; no explicit licence from the publisher (Visual Geometry Group, Oxford)",
        citation="Nilsback, M-E. and Zisserman, A., Automated Flower Classification over a Large Number of Classes, ICVGIP 2008",
        homepage="https://www.robots.ox.ac.uk/~vgg/data/flowers/102/",
        layout="presplit",
        classes=102,
        images=8189,
        checksum_source=_TFDS.format("oxford_flowers102"),
        build=build_flowers102,
    ),
    "sign-digits": Entry(
        name="sign-digits",
        title="Sign Language Digits: one hand showing 0-9, 218 students, mostly 100x100",
        files=(
            Remote(
                "https://github.com/ardamavi/Sign-Language-Digits-Dataset/archive/refs/heads/master.zip",
                "Sign-Language-Digits-Dataset-master.zip",
                None,
            ),
        ),
        licence="Apache-2.0",
        citation='Mavi, A. (2020), "A New Dataset and Proposed Convolutional Neural Network Architecture for '
        'Classification of American Sign Language Digits", arXiv:2011.08927',
        homepage="https://github.com/ardamavi/Sign-Language-Digits-Dataset",
        layout="imagefolder",
        classes=10,
        images=2062,
        checksum_source=_TOFU + " (GitHub branch archives are generated on demand and have no stable hash)",
        build=class_folders(None, "Dataset"),
    ),
    "hagrid-sample": Entry(
        name="hagrid-sample",
        title="HaGRID classification crops: 18 gestures + no_gesture, hands cropped, 512p (~3.8 GB, 153,735 images)",
        files=(
            Remote(
                "https://huggingface.co/datasets/cj-mills/hagrid-classification-512p-no-gesture-150k-zip/resolve/main/"
                "hagrid-classification-512p-no-gesture-150k.zip",
                "hagrid-classification-512p-no-gesture-150k.zip",
                None,
            ),
        ),
        licence="CC BY-SA 4.0 variant (HaGRID licence: https://github.com/hukenovs/hagrid/blob/master/license/en_us.pdf)",
        citation="Kapitanov, A., Makhlyarchuk, A., Kvanchiani, K. (2022), "
        "HaGRID - HAnd Gesture Recognition Image Dataset, arXiv:2206.08219; "
        "classification crops by C. Mills (Hugging Face cj-mills/hagrid-classification-512p-no-gesture-150k-zip)",
        homepage="https://github.com/hukenovs/hagrid",
        layout="imagefolder",
        classes=19,
        images=153_735,
        checksum_source=_TOFU + " (the Hugging Face page lists the file's LFS sha256; compare it by hand)",
        build=class_folders(None),
    ),
}


# --------------------------------------------------------------------------- downloading


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(CHUNK):
            digest.update(block)
    return digest.hexdigest()


def _offline_hint(entry: Entry, remote: Remote, dest: Path) -> str:
    others = [f.filename for f in entry.files if f is not remote]
    if others:
        return (
            f"download it and {', '.join(others)} (same folder on the server) by hand, then run: "
            f"python -m training.prepare {entry.name} --archive FOLDER_WITH_THEM (or put them in {dest.parent}/)"
        )
    return (
        f"download it by hand, then run: python -m training.prepare {entry.name} --archive PATH/{remote.filename} "
        f"(or save it as {dest})"
    )


def download(remote: Remote, dest: Path, *, offline_hint: str) -> Path:
    """Fetch ``remote`` to ``dest``, resuming ``dest.part`` with an HTTP Range request when one exists;
    a failure says ``offline_hint``, how to do without the download."""
    part = dest.with_name(dest.name + ".part")
    have = part.stat().st_size if part.exists() else 0
    request = urllib.request.Request(remote.url, headers={"User-Agent": "gesture-service-prepare/1"})
    if have:
        request.add_header("Range", f"bytes={have}-")
    try:
        response = urllib.request.urlopen(request, timeout=TIMEOUT_S)
    except urllib.error.HTTPError as err:
        if err.code == 416 and have:  # the .part is already complete
            part.replace(dest)
            return dest
        raise PrepareError(
            f"{remote.url}: server answered HTTP {err.code} {err.reason}; {offline_hint}"
        ) from None
    # http.client.HTTPException: an answer that is no HTTP (a captive portal or a proxy's own protocol on the way)
    except (urllib.error.URLError, http.client.HTTPException, OSError) as err:
        # The bytes of an answer that is no HTTP are not quoted: they may hold line breaks and control codes.
        # (RemoteDisconnected is a BadStatusLine and a ConnectionError: a closed connection, said in its own words)
        not_http = isinstance(err, http.client.HTTPException) and not isinstance(err, ConnectionError)
        reason = "its answer is not HTTP" if not_http else getattr(err, "reason", err)
        raise PrepareError(f"cannot download {remote.url} ({reason}; offline?); {offline_hint}") from None
    with response:
        resumed = have and getattr(response, "status", None) == 206
        if have and not resumed:
            have = 0  # server ignored Range: start over
        length = response.headers.get("Content-Length")
        total = have + int(length) if length and length.isdigit() else remote.size
        dest.parent.mkdir(parents=True, exist_ok=True)  # now that there is something to keep: offline leaves no folder
        try:
            with (
                open(part, "ab" if resumed else "wb") as out,
                tqdm(
                    total=total,
                    initial=have,
                    unit="B",
                    unit_scale=True,
                    unit_divisor=1024,
                    desc=remote.filename,
                    disable=None,
                    dynamic_ncols=True,
                    mininterval=0.5,
                ) as bar,
            ):
                while block := response.read(CHUNK):
                    out.write(block)
                    bar.update(len(block))
        except (TimeoutError, ConnectionError, urllib.error.URLError, http.client.IncompleteRead) as err:
            raise PrepareError(
                f"download of {remote.url} interrupted ({err}); run the same command again to resume "
                f"from {part.stat().st_size:,} bytes"
            ) from None
        except OSError as err:
            if err.errno == errno.ENOSPC:
                raise PrepareError(f"disk full while downloading to {part}; free space and run again to resume") from None
            raise
    part.replace(dest)
    return dest


def verify(path: Path, remote: Remote, *, user_file: bool) -> str:
    digest = sha256_of(path)
    if remote.sha256 is None or digest == remote.sha256:
        return digest
    if user_file:
        raise PrepareError(
            f"{path}: sha256 {digest} does not match the expected {remote.sha256} for {remote.url} "
            "(incomplete or different file; your file was left untouched)"
        )
    bad = path.with_name(path.name + ".bad")
    path.replace(bad)
    raise PrepareError(
        f"{remote.url}: downloaded file has sha256 {digest}, expected {remote.sha256}; "
        f"moved it to {bad} - run again to download afresh"
    )


def _user_file(remote: Remote, entry: Entry, archive: Path) -> Path:
    if archive.is_dir():
        path = archive / remote.filename
    elif len(entry.files) == 1 or archive.name == remote.filename:
        path = archive
    else:
        path = archive.parent / remote.filename
    if not path.is_file():
        raise PrepareError(
            f"--archive {archive}: {path} not found; {entry.name} needs "
            f"{', '.join(f.filename for f in entry.files)} (download from {remote.url})"
        )
    return path


def fetch(entry: Entry, root: Path, archive: Path | None) -> tuple[dict[str, Path], dict[str, str], list[Path]]:
    """Local, verified copies of every file: ({filename: path}, {filename: sha256}, downloads made by us)."""
    downloads = root / ".downloads" / entry.name
    paths, digests, ours = {}, {}, []
    for remote in entry.files:
        dest = downloads / remote.filename
        if archive is not None:
            path, user_file = _user_file(remote, entry, archive), True
        elif dest.is_file():
            path, user_file = dest, False
            print(f"{entry.name}: using {dest} (downloaded earlier)", file=sys.stderr)
        else:
            _require_space(downloads, remote.size)
            path, user_file = download(remote, dest, offline_hint=_offline_hint(entry, remote, dest)), False
        digests[remote.filename] = verify(path, remote, user_file=user_file)
        if remote.sha256 is None:
            print(
                f"{entry.name}: {remote.filename} sha256 {digests[remote.filename]} "
                f"(no published checksum to compare with; recorded in {MARKER})",
                file=sys.stderr,
            )
        paths[remote.filename] = path
        if not user_file:
            ours.append(path)
    return paths, digests, ours


def _free_space(folder: Path) -> int:
    """Free bytes on the disk ``folder`` will be on (it, or its nearest existing parent: it is created later)."""
    return shutil.disk_usage(next(p for p in (folder, *folder.parents) if p.exists())).free


def _require_space(folder: Path, size: int | None, factor: float = 2.2) -> None:
    """Room for ``size`` bytes ``factor`` times: a download's archive and its unpacked copy by default."""
    free = _free_space(folder)
    if size and free < factor * size:
        raise PrepareError(f"not enough disk space in {folder}: {free / 1e9:.1f} GB free, about {factor * size / 1e9:.1f} GB needed")


# --------------------------------------------------------------------------- preparing


@contextmanager
def _staging(root: Path, name: str, what: str, *, corrupt: str = "", disk_full: str = "", doing: str = "unpacking") -> Iterator[Path]:
    """A fresh ``root/.NAME.partial-PID`` to build a copy in, renamed into place by the caller once
    complete, and removed whatever happens, so an interrupted run never leaves a half copy that looks
    finished. An archive that does not unpack, or a full disk, is a one-line PrepareError about
    ``what``, with the advice given for each; ``doing`` names the work (unpacking an archive)."""
    staging = root / f".{name}.partial-{os.getpid()}"
    shutil.rmtree(staging, ignore_errors=True)
    try:
        yield staging
    except (zipfile.BadZipFile, tarfile.TarError, EOFError, zlib.error) as err:
        raise PrepareError(f"{what} is corrupt or truncated ({err})" + (f"; {corrupt}" if corrupt else "")) from None
    except OSError as err:
        if err.errno == errno.ENOSPC:
            raise PrepareError(f"disk full while {doing} {what} into {root}; free space and run again"
                               + (f" ({disk_full})" if disk_full else "")) from None
        raise PrepareError(f"{doing} {what} failed: {err}") from None
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def read_marker(out: Path) -> dict | None:
    try:
        return json.loads((out / MARKER).read_text())
    except (OSError, ValueError):
        return None


def count_images(out: Path) -> dict[str, int]:
    """{relative class folder: number of image files} of a freshly built copy."""
    counts: dict[str, int] = {}
    for dirpath, _, filenames in os.walk(out):
        n = sum(1 for f in filenames if not passed_over(f, folder=False) and _is_image_name(f))
        if n:
            counts[Path(dirpath).relative_to(out).as_posix()] = n
    return dict(sorted(counts.items()))


def prepare_dataset(name: str, root: Path = DEFAULT_ROOT, archive: Path | None = None, *, keep_archive: bool = False) -> Path:
    """Return ``root/name`` ready in the ImageFolder layout, downloading and unpacking it only the first time."""
    if name not in CATALOGUE:
        raise PrepareError(f"unknown dataset {name!r}; choose one of: {', '.join(CATALOGUE)}")
    entry, root = CATALOGUE[name], Path(root)
    out = root / name
    if read_marker(out) is not None:
        return out
    if out.exists():
        raise PrepareError(f"{out} exists but is not a prepared copy (no {MARKER}); move it away or delete it, then run again")
    if archive is not None and not archive.exists():
        raise PrepareError(f"--archive {archive}: no such file or folder")
    files, digests, ours = fetch(entry, root, archive)
    print(f"{name}: unpacking into {out} ...", file=sys.stderr)
    with _staging(root, name, f"{name}'s archive", corrupt="delete it and run again",
                  disk_full=f"the verified download in {root / '.downloads' / name} is kept") as staging:
        entry.build(files, staging)
        counts = count_images(staging)
        _require_layout(entry, counts, files)
        marker = {
            "name": name,
            "prepared_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "sha256": digests,
            "sha256_verified": {f.filename: f.sha256 is not None for f in entry.files},
            "source": "--archive" if archive is not None else "download",
            "images": sum(counts.values()),
            "folders": counts,
            "layout": entry.layout,
            "catalogue": entry.describe(),
        }
        (staging / MARKER).write_text(json.dumps(marker, indent=1))
        staging.rename(out)
    if not keep_archive:
        for path in ours:
            path.unlink(missing_ok=True)
    return out


# --------------------------------------------------------------------------- what --data names

def resolve_data_dir(data: str, flag: str = "--data") -> Path:
    """The dataset folder that ``data`` names, as finetune, check and evaluate all take it: a folder;
    a zip or tar of one, unpacked into datasets/ on first use; its http(s) URL, downloaded then
    unpacked; or a catalogue name, prepared on first use (``python -m training.prepare``)."""
    path = Path(data).expanduser()
    if path.is_dir():
        return as_image_folder(path)
    if dataset_archive_name(path):
        return prepare_archive(path)
    if archive_url_name(data):
        return prepare_archive_url(data)
    if data in CATALOGUE:
        return prepare_dataset(data)
    raise DatasetError(no_dataset_named(data, flag))


def no_dataset_named(data: str, flag: str = "--data") -> str:
    return (f"{flag} {data}: not a folder, an archive ({', '.join(ARCHIVE_SUFFIXES)}) or its http(s) URL, nor a "
            f"catalogue dataset ({', '.join(CATALOGUE)})")


def names_a_dataset(data: str) -> bool:
    """Whether ``data`` may name a dataset, told without preparing one: a file or folder that is there,
    an archive's URL, or a catalogue name."""
    return Path(data).expanduser().exists() or bool(archive_url_name(data)) or data in CATALOGUE


# --------------------------------------------------------------------------- a dataset of recordings

def dataset_videos(folder: Path, *, loose: bool = False) -> list[Path]:
    """The video files of a dataset folder that holds videos and not one image (``<class>/take1.mp4``,
    or under train/ and test/), in name order; [] for any other folder, and for videos beside the class
    folders, which belong to no class, unless ``loose`` (a folder of unknown gestures needs no class).
    The walk stops at the first image, so an image dataset costs one file. A file named as an image that
    is none (a video renamed IMG_0042.jpg) does not make the folder a photo dataset, where every video was
    skipped for it: among videos, it is read as one, and named with its reason if it is none either."""
    found: list[tuple[Path, bool]] = []  # (path, named as a video)
    for dirpath, dirnames, filenames in os.walk(folder):
        dirnames[:] = sorted(d for d in dirnames if not passed_over(d, folder=True))
        for name in sorted(filenames):
            if passed_over(name, folder=False):
                continue
            video = PurePosixPath(name).suffix.lower() in VIDEO_FILE_SUFFIXES
            if not video and _is_image_name(name) and check_image_file(os.path.join(dirpath, name)) is None:
                return []
            if video or _is_image_name(name):
                if Path(dirpath) == folder and not loose:
                    return []  # data.videos_hint says what to do with them
                found.append((Path(dirpath) / name, video))
    # without one video, the files named as images that are none are a photo dataset's broken files
    return [path for path, _ in found] if any(video for _, video in found) else []


def as_image_folder(folder: Path, *, loose: bool = False) -> Path:
    """The folder of images that ``folder`` stands for: itself, or the frames of the recordings it
    holds where it holds videos and not one image (``dataset_videos``, ``prepare_videos``)."""
    videos = dataset_videos(folder, loose=loose)
    return prepare_videos(folder, videos) if videos else folder


def prepare_videos(folder: Path, videos: list[Path], root: Path = DEFAULT_ROOT, *, every: int = VIDEO_FRAME_EVERY) -> Path:
    """A dataset of recordings (``folder/<class>/take1.mp4``, its ``dataset_videos``) as the images
    training reads: every ``every``-th frame of each video, into ``root/<folder>-frames/<class>/<video>/000000.jpg`` (the
    frame's number), one folder per recording, so that a recording stays whole in one split
    (``--group-by auto`` takes the folders; numbered frames alone would be cut into blocks). Reused
    while the videos are the same (their sizes and times); extracted again when one is added, removed
    or changed."""
    out = Path(root) / f"{folder.resolve().name}-frames"
    fingerprint = {v.relative_to(folder).as_posix(): [v.stat().st_size, v.stat().st_mtime_ns] for v in videos}
    marker = read_marker(out)
    if marker is not None and marker.get("videos") == fingerprint and marker.get("every") == every:
        # said at extraction only, a later run lost the class, or part of a recording, without a word
        if notes := videos_notes(marker.get("unreadable", []), marker.get("cut_short", [])):
            print(f"{folder}: {notes}", file=sys.stderr)
        return out
    if out.exists() and (marker is None or "videos" not in marker or marker.get("source") != str(folder.resolve())):
        # the frames of another folder of the same name: a run that trained on them still reads them
        raise PrepareError(f"{out} exists but was not extracted from the videos of {folder}: move it away to extract them there")
    print(f"{folder}: saving every {every}th frame of {len(videos)} video(s) into {out} ...", file=sys.stderr)
    with _staging(Path(root), out.name, f"the frames of {folder}", doing="saving") as staging:
        frames, unread, cut_short = _extract_videos(folder, videos, staging, every)
        if not frames:
            raise PrepareError(f"{folder}: not one frame of its {len(videos)} video(s) decodes, e.g. {unread[0][0]}: {unread[0][1]}")
        counts = count_images(staging)
        (staging / MARKER).write_text(json.dumps({"name": out.name, "prepared_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                                                 "source": str(folder.resolve()), "every": every, "videos": fingerprint,
                                                 "unreadable": unread, "cut_short": cut_short, "images": frames, "folders": counts}, indent=1))
        if out.exists():  # an older extraction of these videos: replaced whole
            shutil.rmtree(out)
        staging.rename(out)
    notes = videos_notes(unread, cut_short)
    print(f"{folder}: {frames:,} frames of {len(videos) - len(unread)} video(s) saved into {out}" + (f"; {notes}" if notes else ""), file=sys.stderr)
    return out


def videos_notes(unread: list, cut_short: list) -> str:
    """What the extraction left out, each video with its reason: those that gave no frame, and those that
    ended early ([video, reason] pairs; a plain path in the marker of an older extraction)."""
    def listed(entries: list, joiner: str) -> str:
        said = [entry if isinstance(entry, str) else f"{entry[0]}{joiner}{entry[1]}" for entry in entries]
        return "; ".join(said[:3]) + (f"; and {len(said) - 3} more" if len(said) > 3 else "")

    notes = [f"{len(unread)} video(s) gave no frames: {listed(unread, ': ')}"] if unread else []
    if cut_short:
        notes.append(f"{len(cut_short)} video(s) gave part of their frames: {listed(cut_short, ' ')}")
    return "; ".join(notes)


def _extract_videos(folder: Path, videos: list[Path], dest: Path, every: int) -> tuple[int, list[list[str]], list[list[str]]]:
    """Every ``every``-th frame of each video as JPEGs in a folder of its own under ``dest``; (frames
    saved, [video, why] of those of which not one frame decodes, [video, how] of those that ended early)."""
    import cv2

    frames, unread, cut_short, taken = 0, [], [], set()
    for video in tqdm(videos, desc="videos", unit="video", disable=None, leave=False):  # a bar on a terminal only
        relative = video.relative_to(folder)
        recording = relative.parent / (relative.stem if relative.parent / relative.stem not in taken else relative.name.replace(".", "_"))
        taken.add(recording)
        capture, saved, index = cv2.VideoCapture(str(video)), 0, 0
        step = frame_step(capture.get(cv2.CAP_PROP_FPS), every)  # a slow-motion clip: as many frames a second as others
        while capture.grab():  # the frames passed over are decoded, not converted to BGR
            if index % step == 0 and (frame := capture.retrieve()[1]) is not None:
                _, data = cv2.imencode(".jpg", longer_side_at_most(frame), [cv2.IMWRITE_JPEG_QUALITY, FRAME_JPEG_QUALITY])
                (dest / recording).mkdir(parents=True, exist_ok=True)
                (dest / recording / f"{index:06d}.jpg").write_bytes(data.tobytes())
                saved += 1
            index += 1
        declared = int(capture.get(cv2.CAP_PROP_FRAME_COUNT))
        capture.release()
        frames += saved
        if not saved:
            unread.append([relative.as_posix(), why_no_frames(video)])
        elif short := ended_early(declared, index):
            cut_short.append([relative.as_posix(), short])
    return frames, unread, cut_short


# --------------------------------------------------------------------------- a dataset archive of one's own

def dataset_archive_name(path: Path) -> str | None:
    """The dataset name of a zip or tar file given as --data (its file name without the archive suffix);
    None for any other path."""
    return archive_stem(path.name) if path.is_file() else None


def archive_stem(filename: str) -> str | None:
    """``filename`` without its archive suffix (``ARCHIVE_SUFFIXES``); None for another name."""
    suffix = next((s for s in ARCHIVE_SUFFIXES if filename.lower().endswith(s)), None)
    return filename[:-len(suffix)] if suffix and len(filename) > len(suffix) else None


def data_archive_name(data: str) -> str | None:
    """The dataset name of --data given as an archive file or an archive's http(s) URL
    (``my-data`` for my-data.zip or https://host/my-data.zip); None for anything else."""
    url_name = archive_url_name(data)
    return archive_stem(url_name) if url_name else dataset_archive_name(Path(data).expanduser())


def archive_url_name(url: str) -> str | None:
    """The file name of an http(s) URL of a dataset archive (https://host/path/my-data.zip), else None."""
    parsed = urllib.parse.urlparse(url)
    filename = PurePosixPath(urllib.parse.unquote(parsed.path)).name
    return filename if parsed.scheme in ("http", "https") and archive_stem(filename) else None


def prepare_archive_url(url: str, root: Path = DEFAULT_ROOT) -> Path:
    """A dataset archive at an http(s) URL, as Ultralytics takes one: downloaded (resumable) into
    ``root/.downloads/``, unpacked as ``prepare_archive`` unpacks a local one, and the download
    deleted. Later runs reuse the unpacked copy of the same URL without downloading again."""
    filename = archive_url_name(url)
    if filename is None:
        raise PrepareError(f"{url}: not the URL of a dataset archive (an http(s) address of a file ending in {', '.join(ARCHIVE_SUFFIXES)})")
    out = Path(root) / archive_stem(filename)
    if (read_marker(out) or {}).get("source") == url:
        return out
    if out.exists():
        raise PrepareError(f"{out} exists but was not unpacked from {url}: use the folder {out} as it is, or move it away to download it again")
    dest = Path(root) / ".downloads" / filename
    if not dest.is_file():
        hint = f"download it by hand, then pass the file: --data PATH/{filename}"
        download(Remote(url, filename, None), dest, offline_hint=hint)
    out = prepare_archive(dest, root, source=url)
    dest.unlink()
    return out


def prepare_archive(archive: Path, root: Path = DEFAULT_ROOT, *, source: str | None = None) -> Path:
    """A zip or tar of one's own dataset, as Roboflow exports one or as a folder is zipped, unpacked
    into ``root/<its name>/`` the first time it is given to --data (as Ultralytics does), and that copy
    reused while the archive is the same file (its sha256). Only image files are unpacked, through the
    catalogue's own checks (no absolute paths, no ``..``, no links, no hidden or system folders), and a
    folder that holds everything (a zipped folder rather than its contents) is left out. ``source``:
    where the archive came from, for the marker (its own path by default)."""
    if (name := dataset_archive_name(archive)) is None:
        raise PrepareError(f"{archive}: not a dataset archive (a file ending in {', '.join(ARCHIVE_SUFFIXES)})")
    out, digest = Path(root) / name, sha256_of(archive)
    if (read_marker(out) or {}).get("sha256", {}).get(archive.name) == digest:
        return out
    if out.exists():
        raise PrepareError(f"{out} exists but was not unpacked from this {archive.name}: use the folder {out} as it is, or move it away to unpack "
                           f"{archive} there")
    _require_space(Path(root), _unpacked_size(archive), factor=1.1)  # the unpacked copy; the archive stays where it is
    print(f"{archive}: unpacking into {out} ...", file=sys.stderr)
    with _staging(Path(root), name, str(archive)) as staging:
        skipped = _unpack_images(archive, staging)
        top = _dataset_top(staging) if staging.is_dir() else staging
        counts = count_images(top) if top.is_dir() else {}
        if not counts:
            raise PrepareError(f"{archive} holds no image files ({skipped:,} other files): not a dataset archive?")
        marker = {"name": name, "prepared_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "sha256": {archive.name: digest},
                  "source": source or str(archive.resolve()), "images": sum(counts.values()), "other_files_left_out": skipped, "folders": counts}
        (top / MARKER).write_text(json.dumps(marker, indent=1))
        top.rename(out)
    print(f"{archive}: {sum(counts.values()):,} images unpacked into {out}" + (f" ({skipped:,} other files left out)" if skipped else ""),
          file=sys.stderr)
    return out


def _unpacked_size(archive: Path) -> int:
    """About what unpacking takes on disk: a zip's image files declare their sizes (and cannot unpack to
    more), a tarball's are its own size (photos do not compress)."""
    if not zipfile.is_zipfile(archive):
        return archive.stat().st_size
    with zipfile.ZipFile(archive) as zf:
        return sum(info.file_size for info in zf.infolist() if _is_image_name(info.filename))


def _unpack_images(archive: Path, dest: Path) -> int:
    """Every image file of ``archive`` whose path passes ``_safe_parts``, at that path under ``dest``;
    returns how many other files were left out. A file larger than any image (a video named .jpg) is
    one of them. A tarball's size says little of what it unpacks to (a gzipped one of zeros is a
    thousandth of it), so the images' declared sizes are added up as they come, and unpacking stops
    before they would take more than ``UNPACK_SHARE_OF_FREE`` of the disk's free space."""
    skipped, unpacked = 0, 0
    room = UNPACK_SHARE_OF_FREE * _free_space(dest)
    for name, size, opener in _members(archive):
        parts = _safe_parts(name)
        if parts is None or not _is_image_name(name) or size > MAX_IMAGE_FILE_BYTES:
            skipped += 1
            continue
        if (unpacked := unpacked + size) > room:
            raise PrepareError(f"not enough disk space to unpack {archive}: its images come to {unpacked / 1e9:.1f} GB or more, "
                               f"and {room / UNPACK_SHARE_OF_FREE / 1e9:.1f} GB are free in {dest.parent}; free space and run again")
        _copy_member(opener, dest.joinpath(*parts))
    return skipped


def _dataset_top(folder: Path) -> Path:
    """``folder``, or the one folder inside it that holds everything, as often as there is one (a zip of
    ``my-data/`` rather than of its class folders), but never a split (train/) or a class of images."""
    while len(entries := [e for e in folder.iterdir() if not passed_over(e.name, folder=e.is_dir())]) == 1 and entries[0].is_dir():
        inner = entries[0]
        if inner.name in {name for names in SPLIT_FOLDERS.values() for name in names} or any(e.is_file() for e in inner.iterdir()):
            break
        folder = inner
    return folder


def _require_layout(entry: Entry, counts: dict[str, int], files: dict[str, Path]) -> None:
    if not counts:
        raise PrepareError(
            f"{entry.name}: no images found in {', '.join(map(str, files.values()))} - not the archive this dataset expects"
        )
    if entry.layout == "presplit":
        missing = [s for s in SPLITS if not any(k.split("/")[0] == s for k in counts)]
        if missing:
            raise PrepareError(f"{entry.name}: archive gave no images for split(s) {', '.join(missing)}")


# --------------------------------------------------------------------------- hand models

HAND_MODELS = "hand-models"
# One fixed platform wheel, whatever the host: the same file, so the same models, everywhere (the
# .tflite files are plain data; the wheel's own code is never installed or run).
WHEEL_PLATFORM = ("--only-binary=:all:", "--platform", "manylinux_2_28_x86_64", "--python-version", "3.11",
                  "--implementation", "cp", "--abi", "cp311")  # fmt: skip
WHEEL_FILE = "mediapipe-0.10.21-cp311-cp311-manylinux_2_28_x86_64.whl"
WHEEL_PAGE = "https://pypi.org/project/mediapipe/0.10.21/#files"
LICENCE_MEMBER = "mediapipe-0.10.21.dist-info/LICENSE"
PIP_TIMEOUT_S = 60  # the whole pip run, offline included (it retries once, with its own 15 s connection timeout)


def hand_models_ready(folder: Path) -> bool:
    """True when every model file is in ``folder`` with its expected sha256 (hashing 8 MB takes milliseconds)."""
    return all((folder / f.name).is_file() and sha256_of(folder / f.name) == f.sha256 for f in HAND_MODEL_FILES)


def download_models_wheel(folder: Path) -> Path:
    """``pip download`` the mediapipe wheel into ``folder``; one PrepareError line when pip cannot."""
    hint = f"download {WHEEL_FILE} by hand from {WHEEL_PAGE}, then run: python -m training.prepare {HAND_MODELS} --wheel PATH"
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", *WHEEL_PLATFORM, "--dest", str(folder),
           "--timeout", "15", "--retries", "1", "--progress-bar", "off", MODELS_WHEEL]  # fmt: skip
    print(f"{HAND_MODELS}: downloading {MODELS_WHEEL} (35 MB) with pip ...", file=sys.stderr)
    try:
        result = subprocess.run(cmd, capture_output=True, text=True, timeout=PIP_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        raise PrepareError(f"pip could not download {MODELS_WHEEL} within {PIP_TIMEOUT_S} s (offline?); {hint}") from None
    wheels = sorted(folder.glob("mediapipe-*.whl"))
    if result.returncode != 0 or not wheels:
        raise PrepareError(f"pip could not download {MODELS_WHEEL} ({pip_failure(result.stdout + result.stderr)}; offline?); {hint}")
    return wheels[0]


def pip_failure(output: str) -> str:
    """The reason in pip's output, in a few words: the unreachable index, else pip's last ERROR line."""
    lines = [line.strip() for line in output.splitlines() if line.strip()]
    indexes = next((line.split(":", 1)[1].strip() for line in lines if line.startswith("Looking in indexes:")), "the package index")
    if any("Failed to establish a new connection" in line or "connection broken" in line for line in lines):
        return f"cannot connect to {indexes}"
    return next((line for line in reversed(lines) if line.startswith("ERROR")), lines[-1] if lines else "pip printed nothing")


def extract_hand_models(wheel: Path, folder: Path) -> None:
    """Copy the model files (and the wheel's Apache-2.0 LICENSE) out of ``wheel``, each checked before it is written."""
    try:
        with zipfile.ZipFile(wheel) as zf:
            payloads = {f.name: _checked_member(zf, f, wheel) for f in HAND_MODEL_FILES}
            licence = zf.read(LICENCE_MEMBER) if LICENCE_MEMBER in zf.namelist() else None
    except (zipfile.BadZipFile, EOFError, zlib.error) as err:
        raise PrepareError(f"{wheel} is not a readable wheel ({err}); download {WHEEL_FILE} again from {WHEEL_PAGE}") from None
    folder.mkdir(parents=True, exist_ok=True)
    for name, data in {**payloads, **({"LICENSE": licence} if licence else {})}.items():
        partial = folder / f".{name}.partial-{os.getpid()}"
        partial.write_bytes(data)
        partial.replace(folder / name)  # a model file is either complete or absent


def _checked_member(zf: zipfile.ZipFile, model: HandModelFile, wheel: Path) -> bytes:
    try:
        data = zf.read(model.wheel_member)
    except KeyError:
        raise PrepareError(f"{wheel} has no {model.wheel_member}: not the {MODELS_WHEEL} wheel (use {WHEEL_FILE})") from None
    digest = hashlib.sha256(data).hexdigest()
    if digest != model.sha256:
        raise PrepareError(
            f"{wheel}: {model.wheel_member} has sha256 {digest}, expected {model.sha256} "
            f"(not the {MODELS_WHEEL} wheel, or a damaged one); nothing was written"
        )
    return data


def prepare_hand_models(wheel: Path | None = None, folder: Path | None = None) -> tuple[Path, bool]:
    """(folder holding the verified hand models, whether this call put them there); downloads only when needed."""
    folder = folder if folder is not None else hand_models_dir()
    if hand_models_ready(folder):
        return folder, False
    if wheel is not None:
        if not wheel.is_file():
            raise PrepareError(f"--wheel {wheel}: no such file (expected {WHEEL_FILE} from {WHEEL_PAGE})")
        extract_hand_models(wheel, folder)
    else:
        with tempfile.TemporaryDirectory(prefix="mediapipe-wheel-") as tmp:
            extract_hand_models(download_models_wheel(Path(tmp)), folder)
    return folder, True


# --------------------------------------------------------------------------- command line


def print_catalogue() -> None:
    for entry in CATALOGUE.values():
        sizes = [f.size for f in entry.files]
        size = f"{sum(sizes) / 1e6:,.0f} MB" if all(sizes) else "size not published"
        print(
            f"{entry.name:14s} {entry.title}\n{'':14s} {entry.images:,} images, {entry.classes} classes, {entry.layout}, "
            f"{size}; licence: {entry.licence}\n{'':14s} {entry.homepage}"
        )
    print(
        f"{HAND_MODELS:14s} MediaPipe's palm detector and hand-landmark model, from the {MODELS_WHEEL} wheel, "
        f"into {hand_models_dir()}\n{'':14s} 8 MB of models (35 MB download); licence: Apache-2.0\n{'':14s} {WHEEL_PAGE}"
    )


@command
def main(argv: list[str] | None = None) -> int:
    parser = CommandParser(prog="python -m training.prepare", description=__doc__.split("\n\n")[0])
    names = (*CATALOGUE, HAND_MODELS)
    parser.add_argument("name", nargs="?", metavar="NAME", help=f"one of: {', '.join(names)}")
    # written only where the dataset is not prepared yet (checked below): a read-only root of prepared sets is used as it is
    parser.add_argument("--root", type=output_arg("folder", check_writing=False), default=DEFAULT_ROOT, help="where datasets live (default: datasets/)")
    parser.add_argument("--archive", type=existing_path, help="an archive downloaded by hand (or a folder holding the files): no download")
    parser.add_argument("--keep-archive", action="store_true", help="keep the downloaded archive after unpacking")
    parser.add_argument("--wheel", type=existing_path, help=f"{HAND_MODELS} only: the {MODELS_WHEEL} wheel downloaded by hand: no download")
    parser.add_argument("--list", action="store_true", help="list the catalogue and exit")
    args = parser.parse_args(argv)
    if args.list:
        if args.name is not None:  # it was ignored
            parser.error(f"--list shows the whole catalogue; to prepare {args.name}, drop --list")
        print_catalogue()
        return 0
    if args.name is None:
        parser.error(f"NAME is required; choose one of: {', '.join(names)}")
    if args.name not in names:
        yours = ("; a folder, archive or URL of your own needs no preparing: pass it to finetune --data (or check)"
                 if names_a_dataset(args.name) else "")  # a path: it read as a misspelt catalogue name
        parser.error(f"unknown dataset {args.name!r}; choose one of: {', '.join(names)}{yours}")
    if args.name != HAND_MODELS and args.wheel is not None:
        parser.error(f"--wheel is for {HAND_MODELS} only; a dataset takes --archive PATH")
    if args.name == HAND_MODELS:
        if args.archive is not None:
            parser.error(f"{HAND_MODELS} takes --wheel PATH (the {MODELS_WHEEL} wheel), not --archive")
        # a PrepareError here reaches @command: one "error:" line and exit code 2
        folder, fetched = prepare_hand_models(args.wheel)
        print(f"{HAND_MODELS}: {'prepared' if fetched else 'already prepared'} at {folder}")
        return 0
    already = read_marker(args.root / args.name) is not None
    if not already:  # said before the download, not when its first byte is saved
        try:
            check_writable("--root", args.root, "folder")
        except ValueError as err:
            parser.error(str(err))
    try:
        out = prepare_dataset(args.name, args.root, args.archive, keep_archive=args.keep_archive)
    except PrepareError as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(
            f"\ninterrupted; run the same command again to resume (partial files are under {args.root / '.downloads'})",
            file=sys.stderr,
        )
        return interrupted_exit_code()
    marker = read_marker(out) or {}
    state = "already prepared" if already else "prepared"
    print(f"{args.name}: {state} at {out} ({marker.get('images', 0):,} images, {marker.get('layout', '?')} layout)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
