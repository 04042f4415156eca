"""Hand-crop models (``DataConfig.hands``) in the service, a real ``bentoml serve`` and the webcam demo,
with the real MediaPipe models through LiteRT (from a real ``training.prepare hand-models`` run) and
real ASL photos pasted into a real empty scene (tests/hand_scenes.py).

Every served answer is compared with ``Classifier.predict_hands`` on the same image: the model is an
ImageNet backbone with an untrained head (tests/hand_scenes.py), so what is checked is the wiring (the
hands found, their boxes, each crop's scores and the frame's rule), not accuracy.
"""

from __future__ import annotations

import asyncio
import base64
import json
import subprocess
import sys
import threading
from pathlib import Path

import cv2
import httpx
import numpy as np
import pytest

from benchmarks.server_process import REPO, serve_process
from gesture_core import load_classifier
from gesture_core.classifier import Classifier
from gesture_core.hands import HandLocaliser, box_iou
from service import import_model
from service.hand_crops import check_localiser
from service.webcam.demo import Options, Stream, run
from service.webcam.overlay import HAND_ACCEPTED, HAND_REJECTED, OverlayInfo, render
from service.webcam.scoring import HandResult, HandsAnswer, HandScores, LocalScorer, RemoteScorer, Smoother, decide_hands
from tests.hand_scenes import (
    NEEDS_LITERT,
    empty_scene,
    jpeg_bytes,
    moving_hand_frames,
    one_hand_scene,
    save_hands_checkpoint,
    two_hands_scene,
    write_video,
)
from tests.test_service_integration import import_cli

pytestmark = NEEDS_LITERT

CLIP_FRAMES = 30


@pytest.fixture(scope="module")
def hands_checkpoint(tmp_path_factory, hand_models) -> Path:
    return save_hands_checkpoint(tmp_path_factory.mktemp("hands-model") / "best.pt")


@pytest.fixture(scope="module")
def reference(hands_checkpoint) -> Classifier:
    return load_classifier(hands_checkpoint, device="cpu")


@pytest.fixture(scope="module")
def scenes() -> dict[str, bytes]:
    """JPEG uploads: one hand, two hands, and the same room with none."""
    return {"one": jpeg_bytes(one_hand_scene()), "two": jpeg_bytes(two_hands_scene()), "empty": jpeg_bytes(empty_scene())}


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


# --------------------------------------------------------------------------- the service, in-process


@pytest.fixture(scope="module")
def svc(hands_checkpoint):
    """The service class on the hands model. Its model is pinned (not "latest"), so that the other test
    modules' services, which take the latest model of the shared test store, never get this one."""
    from service.import_model import LocalModel
    from service.service import GestureClassifier

    stored = import_model.import_checkpoint(hands_checkpoint)
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(GestureClassifier.inner, "model_ref", LocalModel(str(stored.tag)))
        service = GestureClassifier.inner()
        yield service
        service.stop_batcher()


def served(svc, data: bytes, **fields) -> dict:
    return asyncio.run(svc.predict(image_b64=data, **fields)).model_dump()


def test_predict_answers_per_hand_as_predict_hands_does(svc, reference, scenes):
    for name, data in scenes.items():
        expected = reference.predict_hands(data, k=3).to_dict()
        assert served(svc, data, top_k=3) == {**expected, "model": svc.model_tag}, name  # the same pipeline: identical
    assert [len(served(svc, data)["hands"]) for data in scenes.values()] == [1, 2, 0]


def test_two_hands_are_two_answers_and_one_model_call(svc, reference, scenes, monkeypatch):
    groups, submit_group = [], svc.batcher.submit_group
    monkeypatch.setattr(svc.batcher, "submit_group", lambda items: groups.append(len(items)) or submit_group(items))
    before = svc.info().batching
    answer = served(svc, scenes["two"], top_k=5)
    after = svc.info().batching
    # one group in the micro-batcher (which never splits a group: tests/test_microbatch.py), so one model call
    assert groups == [2] and (after["model_calls"] - before["model_calls"], after["images"] - before["images"]) == (1, 2)
    boxes = [hand["box"] for hand in answer["hands"]]
    assert boxes[0][2] <= boxes[1][0] or boxes[1][2] <= boxes[0][0], boxes  # two hands side by side, not one twice
    assert {hand["handedness"] for hand in answer["hands"]} == {"left", "right"}  # one photo is mirrored
    best = max(answer["hands"], key=lambda hand: hand["score"])
    assert (answer["label"], answer["score"], answer["top_k"]) == (best["label"], best["score"], best["top_k"])


def test_no_hand_is_no_gesture_and_a_threshold_applies_per_hand(svc, scenes):
    empty = served(svc, scenes["empty"])
    assert (empty["hands"], empty["label"], empty["score"], empty["top_k"]) == ([], None, 0.0, [])
    strict = served(svc, scenes["two"], threshold=1.0)
    assert strict["label"] is None and [hand["label"] for hand in strict["hands"]] == [None, None]
    assert strict["score"] == max(hand["score"] for hand in strict["hands"])  # the best rejected hand's score is kept


def test_predict_batch_answers_per_image(svc, reference, scenes):
    names = ["two", "empty", "one"]
    answers = asyncio.run(svc.predict_batch(images_b64=[scenes[n] for n in names], top_k=2))
    for name, answer in zip(names, answers, strict=True):
        assert answer.model_dump() == {**reference.predict_hands(scenes[name], k=2).to_dict(), "model": svc.model_tag}, name


def test_hands_are_found_off_the_event_loop(svc, scenes, monkeypatch):
    threads = []
    find = HandLocaliser.find
    monkeypatch.setattr(HandLocaliser, "find", lambda self, rgb: threads.append(threading.current_thread()) or find(self, rgb))
    served(svc, scenes["one"])  # asyncio.run: the event loop runs in this thread
    assert threads and threading.current_thread() not in threads


def test_info_says_the_model_classifies_hand_crops(svc):
    info = svc.info()
    assert info.hands is True and info.classes == ["A", "B", "C", "D", "E"]


def test_missing_hand_models_stop_start_up_with_the_command_to_run(hands_checkpoint, tmp_path, monkeypatch):
    monkeypatch.setenv("GESTURE_CACHE_DIR", str(tmp_path))  # no models there
    problem = check_localiser(load_classifier(hands_checkpoint, device="cpu"))
    assert problem and problem.startswith("it classifies hand crops, and hand model ") and "python -m training.prepare hand-models" in problem


WHOLE_IMAGE_PROBE = """
import asyncio, base64, json, sys
from service.service import GestureClassifier
svc = GestureClassifier.inner()
answer = asyncio.run(svc.predict(image_b64=open(sys.argv[1], "rb").read())).model_dump()
print(json.dumps({"hands": answer["hands"], "info_hands": svc.info().hands, "litert": "ai_edge_litert" in sys.modules}))
"""


@pytest.mark.parametrize("model", ["whole image", "hand crops"])
def test_litert_is_loaded_for_hand_crop_models_only(model, random_head_checkpoint, hands_checkpoint, scenes, tmp_path):
    """A fresh process serving a whole-image model answers hands: null and never imports ai_edge_litert;
    the same process on a hand-crop model does (so the check can fail). The hand-crop model serves with
    an empty cache: the detector's files travel inside the stored model (service.import_model)."""
    home, image = tmp_path / "bentoml", tmp_path / "scene.jpg"
    image.write_bytes(scenes["one"])
    import_cli(random_head_checkpoint if model == "whole image" else hands_checkpoint, home)
    stored_hand_models = sorted(p.name for p in home.glob(f"models/*/*/{import_model.HAND_MODELS_FOLDER}/*"))
    assert stored_hand_models == ([] if model == "whole image" else ["LICENSE", "hand_landmark_full.tflite", "palm_detection_full.tflite"])
    done = subprocess.run([sys.executable, "-c", WHOLE_IMAGE_PROBE, str(image)], cwd=REPO, capture_output=True, text=True, timeout=300,
                          env={**__import__("os").environ, "BENTOML_HOME": str(home), "BENTOML_DO_NOT_TRACK": "1",
                               "GESTURE_CACHE_DIR": str(tmp_path / "empty-cache")})
    assert done.returncode == 0, done.stderr[-3000:]
    answer = json.loads(done.stdout.strip().splitlines()[-1])
    if model == "whole image":
        assert answer == {"hands": None, "info_hands": False, "litert": False}
    else:
        assert answer["info_hands"] is True and answer["litert"] is True and len(answer["hands"]) == 1


# --------------------------------------------------------------------------- a real bentoml serve


@pytest.fixture(scope="module")
def hands_server(hands_checkpoint, tmp_path_factory):
    home = tmp_path_factory.mktemp("bentoml-home")
    import_cli(hands_checkpoint, home)
    with serve_process(bentoml_home=home, ready_timeout=300, log_path=home / "serve.log") as server:
        yield server


def assert_same_hands(answer: dict, expected: dict, atol: float = 1e-5) -> None:
    """Served and local answers: same hands, boxes and labels; scores equal up to the engines' rounding."""
    assert [(h["box"], h["handedness"], h["label"]) for h in answer["hands"]] == [(h["box"], h["handedness"], h["label"]) for h in expected["hands"]]
    for got, want in zip(answer["hands"], expected["hands"], strict=True):
        assert got["hand_score"] == pytest.approx(want["hand_score"], abs=atol)
        assert [t["label"] for t in got["top_k"]] == [t["label"] for t in want["top_k"]]
        assert [t["score"] for t in got["top_k"]] == pytest.approx([t["score"] for t in want["top_k"]], abs=atol)
    assert answer["label"] == expected["label"] and answer["score"] == pytest.approx(expected["score"], abs=atol)


@pytest.mark.integration
def test_served_hands_agree_with_predict_hands(hands_server, reference, scenes):
    with httpx.Client(base_url=hands_server.url, timeout=60) as http:
        assert http.post("/info").json()["hands"] is True
        for name, data in scenes.items():
            resp = http.post("/predict", files={"image": (f"{name}.jpg", data, "image/jpeg")}, data={"top_k": "5"})
            assert resp.status_code == 200, resp.text
            assert_same_hands(resp.json(), reference.predict_hands(data, k=5).to_dict())
        assert [len(http.post("/predict", json={"image_b64": b64(scenes[n])}).json()["hands"]) for n in ("two", "empty")] == [2, 0]
        batch = http.post("/predict_batch", files=[("images", (f"{n}.jpg", scenes[n])) for n in ("two", "empty", "one")])
        assert batch.status_code == 200, batch.text
        for name, answer in zip(("two", "empty", "one"), batch.json(), strict=True):
            assert_same_hands(answer, reference.predict_hands(scenes[name]).to_dict())
        assert http.post("/predict", files={"image": ("x.jpg", b"not an image")}).json()["error"].startswith("image: ")


# --------------------------------------------------------------------------- the webcam demo


@pytest.fixture(scope="module")
def hand_clip(tmp_path_factory) -> Path:
    """A hand sliding across the empty room for 30 frames, as a real .avi file."""
    return write_video(tmp_path_factory.mktemp("clip") / "sliding-hand.avi", moving_hand_frames(CLIP_FRAMES))


def test_the_webcam_warms_up_a_grayscale_hands_model(tmp_path, hand_models):
    """Its warm-up sent a one-channel crop to a pipeline of RGB crops: OpenCV's channel error, exit 2."""
    import torch

    from gesture_core import DataConfig, build_model, save_checkpoint

    torch.manual_seed(0)
    save_checkpoint(tmp_path / "gray.pt", model=build_model("lenet5", 3, "none", in_chans=1), backbone="lenet5", classes=["A", "L", "nothing"],
                    data_config=DataConfig(input_size=32, resize_size=36).with_channels(1).with_hands(True), train_config={}, metrics={})
    scorer = LocalScorer(load_classifier(tmp_path / "gray.pt", device="cpu", engine="torch"))
    scorer.warm_up()
    assert scorer.tracker is not None


def test_webcam_tracks_the_hand_draws_its_box_and_detects_palms_rarely(hands_checkpoint, hand_clip, tmp_path):
    scorer = LocalScorer(load_classifier(hands_checkpoint, device="cpu"))
    scorer.warm_up()
    jsonl, shots = tmp_path / "frames.jsonl", tmp_path / "shots"
    summary = run(Stream.open(str(hand_clip)), scorer, Options(threshold=0.0, jsonl=jsonl, snapshot_at=(20,), snapshot_dir=shots),
                  log=lambda m: None)
    lines = [json.loads(line) for line in jsonl.read_text().splitlines()]
    assert summary.frames == CLIP_FRAMES and len(lines) == CLIP_FRAMES
    # The tracker runs palm detection on the first frame, then every 10th: 3 of 30 frames, not 30.
    assert summary.palm_detections is not None and summary.palm_detections <= CLIP_FRAMES // 5, summary.palm_detections
    assert f"palm detection on {summary.palm_detections} of {CLIP_FRAMES} frames" in summary.line()
    frames, localiser = moving_hand_frames(CLIP_FRAMES), HandLocaliser()
    for line, frame in zip(lines, frames, strict=True):
        assert len(line["hands"]) == 1, line
        found = localiser.find(cv2.cvtColor(frame, cv2.COLOR_BGR2RGB)) if line["index"] % 10 == 5 else None
        if found:  # the tracked box is where palm detection + landmarks put the hand on that frame
            assert box_iou(line["hands"][0]["box"], found[0].box) > 0.7, (line, found[0].box)
        hand = line["hands"][0]
        assert hand["label"] in {"A", "B", "C", "D", "E"} and line["label"] is not None  # threshold 0: every hand is named
    # the box is drawn: the snapshot's pixels along its bottom edge (below the label panel) are the box colour
    snapshot = cv2.imread(str(shots / "snapshot-000020.png"))
    assert snapshot.shape[:2] == frames[20].shape[:2]
    x0, _, x1, y1 = lines[20]["hands"][0]["box"]
    edge = snapshot[y1 - 1, x0 + 5 : x1 - 5]
    assert (edge == HAND_ACCEPTED).all(axis=1).mean() > 0.95
    assert not (empty_scene()[y1 - 1, x0 + 5 : x1 - 5] == HAND_ACCEPTED).all(axis=1).any()  # not the room's own colour


def test_webcam_on_a_folder_of_photos_finds_each_photos_hands_as_the_service_does(hands_checkpoint, reference, tmp_path):
    """A hand followed from one photo into the next: one hand found on a photo of two, boxes where the photo had no
    hand, and answers that changed with the files' order."""
    from service.webcam.demo import main

    photos = {"1-left.png": one_hand_scene(x=40), "2-two.png": two_hands_scene(), "3-right.png": one_hand_scene(x=360),
              "4-empty.png": empty_scene()}  # fmt: skip
    for name, bgr in photos.items():
        cv2.imwrite(str(tmp_path / name), bgr)
    jsonl = tmp_path / "frames.jsonl"
    assert main(["--checkpoint", str(hands_checkpoint), "--source", str(tmp_path / "*.png"), "--headless", "--threshold", "0",
                 "--jsonl", str(jsonl)], log=lambda m: None) == 0  # fmt: skip
    lines = [json.loads(line) for line in jsonl.read_text().splitlines()]
    assert len(lines) == len(photos)
    for line, bgr in zip(lines, photos.values(), strict=True):
        expected = reference.predict_hands(bgr, bgr=True, threshold=0.0)
        assert [hand["box"] for hand in line["hands"]] == [list(h.hand.box) for h in expected.hands]
    assert [len(line["hands"]) for line in lines] == [1, 2, 1, 0]


def test_overlay_draws_one_box_and_label_per_hand_mirrored_like_the_picture():
    frame = np.full((240, 320, 3), 90, np.uint8)
    hands = (HandResult((20, 40, 120, 160), "left", 0.99, Smoother().decide({"A": 0.9, "B": 0.1})),
             HandResult((200, 60, 300, 200), "right", 0.97, Smoother(threshold=0.95).decide({"A": 0.9, "B": 0.1})))
    info = OverlayInfo(None, 0.0, None, "test", hands=hands)
    plain, mirrored, bare = render(frame, info), render(frame, info, mirror=True), render(frame, OverlayInfo(None, 0.0, None, "test"))
    scale = plain.shape[1] / frame.shape[1]  # enlarged to the 480-px minimum

    def colour_at(canvas, x, y):  # on a box's bottom edge, drawn at the last row inside the box
        return tuple(int(v) for v in canvas[round(y * scale) - 1, round(x * scale)])

    assert colour_at(plain, 70, 160) == HAND_ACCEPTED and colour_at(plain, 250, 200) == HAND_REJECTED  # bottom edges
    assert colour_at(mirrored, 320 - 70, 160) == HAND_ACCEPTED and colour_at(mirrored, 320 - 250, 200) == HAND_REJECTED
    assert colour_at(bare, 70, 160) != HAND_ACCEPTED
    # the labels: text pixels in the tab above each box
    assert (plain[round(10 * scale) : round(40 * scale), round(25 * scale) : round(110 * scale)] == HAND_ACCEPTED).all(axis=2).any()


def test_frame_label_follows_the_best_accepted_hand_and_smooths():
    smoother = Smoother(3, threshold=0.5)
    answer = HandsAnswer((HandScores((0, 0, 10, 10), "left", 0.9, {"A": 0.45, "B": 0.55}),
                          HandScores((20, 0, 30, 10), "right", 0.9, {"A": 0.8, "B": 0.2})))
    hands, scores = decide_hands(answer, smoother, offset=(5, 7))
    assert [h.prediction.label for h in hands] == ["B", "A"] and scores == {"A": 0.8, "B": 0.2}  # A: the higher score
    assert hands[0].box == (5, 7, 15, 17)  # boxes come back in frame pixels when an ROI was scored
    strict = Smoother(threshold=0.9)
    assert decide_hands(answer, strict)[1] == {"A": 0.8, "B": 0.2}  # none accepted: the best rejected hand, as the service
    assert decide_hands(HandsAnswer(()), smoother) == ((), {})
    assert smoother.update(scores).label == "A" and smoother.update(scores).label == "A"
    assert smoother.update({}).label == "A"  # a frame without a hand counts 0: (0.8 + 0.8 + 0) / 3 = 0.53
    assert smoother.update({}).label is None  # (0.8 + 0 + 0) / 3 = 0.27
    assert Smoother(2, threshold=0.0).update({}).label is None  # no evidence is no gesture, even at threshold 0


@pytest.mark.integration
def test_remote_webcam_reads_each_hand_from_the_service(hands_server, reference, tmp_path):
    frame = two_hands_scene()
    remote = RemoteScorer(hands_server.url, timeout=30)
    answer = remote(frame)
    remote.close()
    assert isinstance(answer, HandsAnswer) and len(answer.hands) == 2
    local = reference.predict_hands(frame, bgr=True, k=len(reference.classes))
    for got, want in zip(answer.hands, local.hands, strict=True):  # JPEG transport: close, not equal
        assert box_iou(got.box, want.hand.box) > 0.9 and got.handedness == want.hand.handedness
        assert set(got.scores) == set(reference.classes)
        assert max(abs(got.scores[label] - score) for label, score in want.prediction.top_k) < 0.1
    jsonl = tmp_path / "remote.jsonl"
    clip = write_video(tmp_path / "two.avi", [frame] * 5)
    done = subprocess.run([sys.executable, "-m", "service.webcam", "--url", hands_server.url, "--source", str(clip), "--headless",
                           "--jsonl", str(jsonl), "--threshold", "0"], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    lines = [json.loads(line) for line in jsonl.read_text().splitlines()]
    assert [len(line["hands"]) for line in lines] == [2] * 5 and all(line["label"] for line in lines)
