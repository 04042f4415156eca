"""Webcam demo speed: FPS and per-frame latency from a video file, local and remote, per backbone.

    .venv/bin/python -m benchmarks.webcam                       # efficientnet_lite0 + resnet18, local + remote
    .venv/bin/python -m benchmarks.webcam --backbones efficientnet_lite0 --modes local --frames 300
    .venv/bin/python -m benchmarks.webcam --backbones efficientnet_lite0 --modes hands --engines openvino

Each measurement is the real command line (``python -m service.webcam ... --headless``) on a
640x480 clip made from sign-digits photos; the figures are its summary line. Weights are random
("none"): speed does not depend on them. Remote mode imports the checkpoint into a private
BentoML store and starts ``bentoml serve`` on a free 127.0.0.1 port. Hands mode runs a checkpoint
trained (so it says) on hand crops, locally, on a clip of an ASL hand sliding across an empty room
(benchmarks.hands' video): the HandTracker, a crop per hand and the model, with how often palm
detection ran. It needs the hand models (python -m training.prepare hand-models) and ../shared/data/asl-alphabet.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import platform
import re
import shlex
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import cv2
import numpy as np
import torch

from benchmarks.common import check_input_size
from benchmarks.server_process import serve_process
from gesture_core import build_model, get_backbone, save_checkpoint
from gesture_core.cli import CommandParser, command
from gesture_core.engines import ENGINE_CHOICES
from training.cli import backbone_name, image_size, int_at_least

REPO = Path(__file__).resolve().parents[1]
DATA = REPO.parent / "shared" / "data" / "sign-digits"
SUMMARY = re.compile(r"summary: (\d+) frames \((\d+) stale dropped\) in ([\d.]+) s, ([\d.]+) FPS, latency p50 ([\d.]+) ms, p95 ([\d.]+) ms")
PALM_DETECTIONS = re.compile(r"palm detection on (\d+) of \d+ frames")
ASL = DATA.parent / "asl-alphabet"


def make_clip(path: Path, frames: int, size: tuple[int, int] = (640, 480), fps: float = 30.0) -> Path:
    """A webcam-sized clip cycling through real photos (synthetic noise if the data is absent)."""
    folders = sorted(d for d in DATA.iterdir() if d.is_dir()) if DATA.is_dir() else []
    photos = [p for d in folders for p in sorted(d.iterdir())[:3]]
    rng = np.random.default_rng(0)
    images = [cv2.resize(cv2.imread(str(p)), size) for p in photos] or [
        rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8) for _ in range(10)]
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), fps, size)
    for i in range(frames):
        writer.write(images[i % len(images)])
    writer.release()
    return path


def make_hands_clip(path: Path, frames: int, fps: float = 30.0) -> Path:
    """A 640x480 clip of one ASL hand sliding across an empty room of the same set (benchmarks.hands' video)."""
    from benchmarks.hands import read_rgb, video

    if not ASL.is_dir():
        raise SystemExit(f"error: hands mode needs the ASL photos in {ASL}")
    room = cv2.resize(read_rgb(sorted((ASL / "nothing").iterdir())[0]), (640, 480))
    hand = read_rgb(sorted((ASL / "A").iterdir())[0])
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), fps, (640, 480))
    for frame in video(room, hand, frames, sliding=True):
        writer.write(cv2.cvtColor(frame, cv2.COLOR_RGB2BGR))
    writer.release()
    return path


def make_checkpoint(folder: Path, backbone: str, image_size: int | None, *, hands: bool = False) -> Path:
    spec = get_backbone(backbone)
    config = spec.data_config if image_size is None else spec.data_config.with_input_size(image_size)
    config = config.with_hands(hands)
    path = folder / f"{backbone}-{config.input_size}{'-hands' if hands else ''}" / "best.pt"
    save_checkpoint(path, model=build_model(backbone, 10, "none"), backbone=spec.name, classes=[str(i) for i in range(10)],
                    data_config=config, train_config={"weights": "none", "purpose": "speed benchmark"})
    return path


@contextlib.contextmanager
def bentoml_server(checkpoint: Path, home: Path) -> Iterator[str]:
    """Import ``checkpoint`` into a BentoML store at ``home`` and serve it; yields the base URL."""
    env = {**os.environ, "BENTOML_HOME": str(home), "BENTOML_DO_NOT_TRACK": "1", "NO_ALBUMENTATIONS_UPDATE": "1"}
    subprocess.run([sys.executable, "-m", "service.import_model", str(checkpoint)], cwd=REPO, env=env, check=True,
                   capture_output=True)
    with serve_process(bentoml_home=home, ready_timeout=300, log_path=home / "serve.log") as server:
        yield server.url


def measure(args: list[str]) -> dict:
    command = [sys.executable, "-m", "service.webcam", *args, "--headless"]
    proc = subprocess.run(command, cwd=REPO, capture_output=True, text=True)
    match = SUMMARY.search(proc.stdout)
    if proc.returncode != 0 or not match:
        raise RuntimeError(f"{shlex.join(command)} failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}")
    frames, dropped, seconds, fps, p50, p95 = match.groups()
    palm = PALM_DETECTIONS.search(proc.stdout)
    return {"frames": int(frames), "dropped": int(dropped), "seconds": float(seconds), "fps": float(fps),
            "p50_ms": float(p50), "p95_ms": float(p95), "palm_detections": int(palm.group(1)) if palm else None,
            "command": "python -m service.webcam " + shlex.join([*args, "--headless"])}


@command
def main(argv: list[str] | None = None) -> int:
    p = CommandParser(prog="python -m benchmarks.webcam", description=__doc__.split("\n\n")[0])
    p.add_argument("--backbones", nargs="+", type=backbone_name, default=["efficientnet_lite0", "resnet18"])
    p.add_argument("--modes", nargs="+", choices=("local", "remote", "hands"), default=["local", "remote"],
                   help="hands: a hand-crop model, locally, on a clip of a moving hand")
    p.add_argument("--engines", nargs="+", choices=ENGINE_CHOICES, default=["torch", "openvino"], help="local inference engines to measure")
    p.add_argument("--frames", type=int_at_least(1), default=300, help="length of the test clip")
    p.add_argument("--image-size", type=image_size, help="model input size (default: the backbone's, 224)")
    p.add_argument("--realtime", action="store_true", help="also play the clip at its 30 fps and count dropped frames")
    p.add_argument("--record", action="store_true", help="with --realtime: also record the annotated video (--output), as a user keeping a session does")
    p.add_argument("--clip-size", type=clip_size, default=(640, 480), help="WIDTHxHEIGHT of the test clip (default: 640x480)")
    args = p.parse_args(argv)
    if args.record and not args.realtime:
        p.error("--record measures recording at the clip's own speed: add --realtime")
    check_input_size(p, args.backbones, args.image_size)

    print(f"machine: {platform.machine()}, {os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f} at start, "
          f"torch {torch.__version__}, CUDA {'yes' if torch.cuda.is_available() else 'no'}")
    rows = []
    with tempfile.TemporaryDirectory(prefix="webcam-bench-") as tmp:
        tmp = Path(tmp)
        clip = make_clip(tmp / "clip.mp4", args.frames, args.clip_size)
        hands_clip = make_hands_clip(tmp / "hands.mp4", args.frames) if "hands" in args.modes else None
        for backbone in args.backbones:
            ckpt = make_checkpoint(tmp, backbone, args.image_size)
            runs = []
            for engine in args.engines if "local" in args.modes else ():
                local = ["--checkpoint", str(ckpt), "--source", str(clip), "--engine", engine]
                runs.append((f"local {engine}", local))
                if args.realtime:
                    runs.append((f"local {engine} --realtime", [*local, "--realtime"]))
                if args.record:
                    runs.append((f"local {engine} --realtime --output", [*local, "--realtime", "--output", str(tmp / "recorded.mp4")]))
            if "hands" in args.modes:
                hands_ckpt = make_checkpoint(tmp, backbone, args.image_size, hands=True)
                for engine in args.engines:
                    hands = ["--checkpoint", str(hands_ckpt), "--source", str(hands_clip), "--engine", engine]
                    runs.append((f"local {engine}, hand crops", hands))
                    if args.realtime:
                        runs.append((f"local {engine}, hand crops, --realtime", [*hands, "--realtime"]))
            for mode, cli in runs:
                rows.append({"backbone": backbone, "mode": mode, **measure(cli)})
                print(_row(rows[-1]), flush=True)
            if "remote" in args.modes:
                home = tmp / f"bentoml-{backbone}"
                home.mkdir()
                with bentoml_server(ckpt, home) as url:
                    rows.append({"backbone": backbone, "mode": "remote", **measure(["--url", url, "--source", str(clip)])})
                    print(_row(rows[-1]), flush=True)
    print(f"load average {os.getloadavg()[0]:.1f} at the end")
    print("\n| backbone | mode | frames | dropped | FPS | latency p50 | latency p95 |\n| --- | --- | --- | --- | --- | --- | --- |")
    for r in rows:
        mode = r["mode"] + (f" (palm detection on {r['palm_detections']} frames)" if r["palm_detections"] is not None else "")
        print(f"| {r['backbone']} | {mode} | {r['frames']} | {r['dropped']} | {r['fps']:.1f} | {r['p50_ms']:.1f} ms | {r['p95_ms']:.1f} ms |")
    return 0


def clip_size(text: str) -> tuple[int, int]:
    """"1920x1080" -> (1920, 1080)."""
    if not (match := re.fullmatch(r"([0-9]{1,5})x([0-9]{1,5})", text.strip())) or not all(16 <= int(n) <= 8192 for n in match.groups()):
        raise argparse.ArgumentTypeError(f"expected WIDTHxHEIGHT, each 16 to 8192 (e.g. 1920x1080), got {text!r}")
    return int(match.group(1)), int(match.group(2))


def _row(r: dict) -> str:
    return (f"{r['backbone']:<18} {r['mode']:<26} {r['frames']:>4} frames, {r['dropped']:>3} dropped: {r['fps']:6.1f} FPS, "
            f"p50 {r['p50_ms']:6.1f} ms, p95 {r['p95_ms']:6.1f} ms   [{r['command']}]")


if __name__ == "__main__":
    sys.exit(main())
