"""Hand-crop mode (``DataConfig.hands``, ``--hands``): the Classifier's per-hand API, training's crop
cache, and evaluation, with the real MediaPipe models through LiteRT (from a real
``training.prepare hand-models`` run, as tests/test_hands.py gets them) and real ASL photos.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from gesture_core import build_model, get_backbone, save_checkpoint
from gesture_core.classifier import NO_HAND, FramePrediction, HandPrediction, Prediction, frame_source, load_classifier
from gesture_core.hands import (
    HandLocaliser,
    HandTracker,
    box_iou,
    crop_hand,
    hand_crop,
    hand_from_dict,
    hand_to_dict,
)
from gesture_core.preprocess import DataConfig, Preprocess
from tests.hand_scenes import asl_folder, paste, read_rgb
from tests.helpers import SHARED_DATA

pytestmark = pytest.mark.skipif(
    importlib.util.find_spec("ai_edge_litert") is None,
    reason='ai-edge-litert is not installed (pip install -e ".[hands]"); it runs the hand models',
)

ASL = SHARED_DATA / "asl-alphabet"
FRAME_W, FRAME_H = 640, 480




@pytest.fixture(scope="session")
def asl() -> Path:
    return asl_folder()


@pytest.fixture(scope="session")
def scene(asl) -> np.ndarray:
    """A 640x480 empty scene: an ASL 'nothing' frame (no hand) scaled up."""
    empty = read_rgb(sorted((asl / "nothing").iterdir())[0])
    return cv2.resize(empty, (FRAME_W, FRAME_H), interpolation=cv2.INTER_LINEAR)


@pytest.fixture(scope="session")
def two_hand_frame(asl, scene) -> np.ndarray:
    """Two ASL hands (letters A and L) pasted side by side at 240 px."""
    frame = paste(scene, read_rgb(sorted((asl / "A").iterdir())[0]), 240, 40, 120)
    return paste(frame, read_rgb(sorted((asl / "L").iterdir())[0]), 240, 360, 120)


def hands_checkpoint(path: Path, *, hands: bool, classes=("A", "L", "nothing")) -> Path:
    """efficientnet_lite0 with ImageNet weights and an untrained head, at 96 px, hands mode or not."""
    torch.manual_seed(0)
    backbone = get_backbone("efficientnet_lite0")
    model = build_model("efficientnet_lite0", len(classes), "imagenet")
    save_checkpoint(path, model=model, backbone=backbone.name, classes=list(classes),
                    data_config=backbone.data_config.with_input_size(96).with_hands(hands), train_config={"seed": 0},
                    metrics={})  # fmt: skip
    return path


@pytest.fixture(scope="session")
def hands_classifier(tmp_path_factory, hand_models):
    return load_classifier(hands_checkpoint(tmp_path_factory.mktemp("hands") / "best.pt", hands=True), "cpu", engine="torch")


# --------------------------------------------------------------------------- the stored mode


def test_hands_is_stored_and_old_configs_load_without_it():
    config = DataConfig().with_hands(True)
    assert config.to_dict()["hands"] is True and DataConfig.from_dict(config.to_dict()) == config
    old = DataConfig().to_dict()
    del old["hands"]  # a checkpoint written before hand crops
    assert DataConfig.from_dict(old).hands is False
    with pytest.raises(ValueError, match="hands must be True or False"):
        DataConfig(hands="yes")


def test_hand_crop_is_the_resize_size_crop_then_preprocess_applies(two_hand_frame, hand_models):
    config = DataConfig(input_size=96, resize_size=110, hands=True)
    hand = HandLocaliser(hand_models).find(two_hand_frame)[0]
    crop = hand_crop(two_hand_frame, hand, config)
    assert crop.shape == (110, 110, 3) and np.array_equal(crop, crop_hand(two_hand_frame, hand, 110))
    assert Preprocess(config).crop(crop).shape == (96, 96, 3)


def test_hand_round_trips_through_its_dict(two_hand_frame, hand_models):
    hand = HandLocaliser(hand_models).find(two_hand_frame)[0]
    back = hand_from_dict(hand_to_dict(hand))
    assert back.box == hand.box and back.square == hand.square and back.score == hand.score
    assert back.handedness == hand.handedness and back.landmarks == hand.landmarks


# --------------------------------------------------------------------------- the Classifier


def test_classifier_finds_both_hands_and_answers_each(hands_classifier, two_hand_frame):
    assert hands_classifier.hands_mode
    rgb, hands = hands_classifier.find_hands(two_hand_frame)
    assert np.array_equal(rgb, two_hand_frame) and len(hands) == 2
    placed = [(40, 120, 280, 360), (360, 120, 600, 360)]
    assert sorted(max(range(2), key=lambda i: box_iou(hand.box, placed[i])) for hand in hands) == [0, 1]
    crops = hands_classifier.hand_crops(rgb, hands)
    assert [c.shape for c in crops] == [(96, 96, 3)] * 2
    expected = [Preprocess(hands_classifier.data_config).crop(crop_hand(rgb, h, hands_classifier.data_config.resize_size)) for h in hands]
    assert all(np.array_equal(a, b) for a, b in zip(crops, expected, strict=True))
    probs = hands_classifier.classify(crops)
    frame = hands_classifier.decide_hands(hands, probs, k=2)
    assert [h.prediction for h in frame.hands] == [hands_classifier.decide(row, k=2) for row in probs]
    assert frame == hands_classifier.predict_hands(two_hand_frame, k=2)


def test_predict_of_a_hands_model_is_the_frame_answer(hands_classifier, two_hand_frame, tmp_path):
    path = tmp_path / "frame.png"
    cv2.imwrite(str(path), cv2.cvtColor(two_hand_frame, cv2.COLOR_RGB2BGR))
    frame = hands_classifier.predict_hands(path)
    assert hands_classifier.predict(path) == frame.frame
    bgr = cv2.cvtColor(two_hand_frame, cv2.COLOR_RGB2BGR)
    assert hands_classifier.predict(bgr, bgr=True) == frame.frame


def test_crop_refuses_a_hands_model(hands_classifier, two_hand_frame):
    with pytest.raises(ValueError, match="find_hands.*hand_crops"):
        hands_classifier.crop(two_hand_frame)


def test_visualize_explains_the_crop_of_a_hands_models_first_hand(hands_classifier, two_hand_frame, scene, tmp_path, capsys):
    """visualize sent the whole photo through the geometry of a model that only sees hand crops: its maps and its
    "predicted" label were of an input the model is never given."""
    import re

    from training.visualize import main as visualize_main
    from training.visualize import model_view

    checkpoint = hands_checkpoint(tmp_path / "best.pt", hands=True)
    photo, empty = tmp_path / "a" / "two-hands.png", tmp_path / "b" / "scene.png"  # lone photos, no class folder
    for path, rgb in ((photo, two_hand_frame), (empty, scene)):
        path.parent.mkdir()
        cv2.imwrite(str(path), cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))
    rgb, hands = hands_classifier.find_hands(photo)
    first = hands_classifier.hand_crops(rgb, hands[:1])[0]
    assert np.array_equal(model_view(hands_classifier, photo), first)
    assert visualize_main(["--checkpoint", str(checkpoint), "--image", str(photo), "--out", str(tmp_path / "vis")]) == 0
    out = capsys.readouterr().out
    probs = hands_classifier.classify([first])[0]
    said = re.search(r"predicted '(.+)' \(p=([0-9.]+)\)", out)
    assert "2 hands found: explaining the first" in out and said, out
    assert said[1] == hands_classifier.classes[int(probs.argmax())] and float(said[2]) == pytest.approx(float(probs.max()), abs=2e-3)
    assert visualize_main(["--checkpoint", str(checkpoint), "--image", str(empty), "--out", str(tmp_path / "vis2")]) == 2
    assert "no hand found, and this model classifies hand crops" in capsys.readouterr().err


def test_no_hand_is_no_gesture(hands_classifier, scene):
    frame = hands_classifier.predict_hands(scene)
    assert frame.hands == [] and frame.frame == NO_HAND and frame.source is None
    assert frame.frame.label is None
    assert frame.to_dict() == {"label": None, "score": 0.0, "top_k": [], "gesture_score": None, "hands": []}
    with pytest.raises(ValueError, match="between 0 and 1"):
        hands_classifier.predict_hands(scene, threshold=2.0)


def test_tracked_hands_are_classified_as_given(hands_classifier, two_hand_frame):
    tracker = HandTracker(hands_classifier.localiser)
    hands = tracker.update(two_hand_frame)
    given = hands_classifier.predict_hands(two_hand_frame, hands=hands)
    assert [h.hand for h in given.hands] == hands
    assert hands_classifier.predict_hands(two_hand_frame, hands=[]).frame == NO_HAND


def test_frame_answer_rule(hands_classifier, two_hand_frame):
    """Accepted hand with the highest score; all rejected: the best rejected one; the rule is the docstring's."""
    _, hands = hands_classifier.find_hands(two_hand_frame)
    a, l_, nothing = np.eye(3, dtype=np.float32)
    low_a = np.array([0.6, 0.2, 0.2], np.float32)
    frame = hands_classifier.decide_hands(hands, np.stack([low_a, l_]))  # both accepted: the higher score
    assert frame.source == 1 and frame.frame.label == "L"
    frame = hands_classifier.decide_hands(hands, np.stack([low_a, nothing]))  # 'nothing' is rejected: the other
    assert frame.source == 0 and frame.frame.label == "A"
    frame = hands_classifier.decide_hands(hands, np.stack([low_a, nothing]), threshold=0.7)  # both rejected
    assert frame.source == 1 and frame.frame.label is None and frame.frame.score == 1.0
    with pytest.raises(ValueError, match="one row of probabilities per hand"):
        hands_classifier.decide_hands(hands, np.stack([a]))


def test_the_frame_answer_follows_the_gesture_score_where_the_model_thresholds_one():
    """An energy or feature-score model thresholds its gesture score, so the frame's hand is the one
    that looks most like a learned gesture by that score, not the one with the highest top probability."""
    sure_but_odd = Prediction("A", 0.95, [("A", 0.95)], gesture_score=0.2)
    typical = Prediction("L", 0.70, [("L", 0.70)], gesture_score=0.9)
    assert frame_source([sure_but_odd, typical]) == 1
    assert frame_source([Prediction("A", 0.95), Prediction("L", 0.70)]) == 0  # max-softmax: the top probability
    assert frame_source([Prediction(None, 0.95, gesture_score=0.01), Prediction(None, 0.6, gesture_score=0.02)]) == 1


def test_frame_to_dict(hands_classifier, two_hand_frame):
    frame = hands_classifier.predict_hands(two_hand_frame, k=2)
    d = frame.to_dict()
    assert {k: d[k] for k in ("label", "score", "top_k", "gesture_score")} == frame.frame.to_dict()
    assert len(d["hands"]) == 2
    for hand, out in zip(frame.hands, d["hands"], strict=True):
        assert isinstance(hand, HandPrediction)
        assert out["box"] == list(hand.hand.box) and out["handedness"] in ("left", "right")
        assert out["hand_score"] == pytest.approx(hand.hand.score) and out["label"] == hand.prediction.label
        assert len(out["top_k"]) == 2
    assert isinstance(frame, FramePrediction)


def test_localiser_is_built_once_across_threads(tmp_path, hand_models):
    from concurrent.futures import ThreadPoolExecutor

    classifier = load_classifier(hands_checkpoint(tmp_path / "best.pt", hands=True), "cpu", engine="torch")
    with ThreadPoolExecutor(4) as pool:
        built = list(pool.map(lambda _: classifier.localiser, range(8)))
    assert all(localiser is built[0] for localiser in built)


def test_missing_models_are_one_clear_line(tmp_path, monkeypatch):
    monkeypatch.setenv("GESTURE_CACHE_DIR", str(tmp_path / "empty-cache"))
    classifier = load_classifier(hands_checkpoint(tmp_path / "best.pt", hands=True), "cpu", engine="torch")
    from gesture_core.hands import HandModelsUnavailableError

    with pytest.raises(HandModelsUnavailableError, match="training.prepare hand-models"):
        classifier.predict_hands(np.zeros((48, 64, 3), np.uint8))


def changed_in_the_middle(data: bytes) -> bytes:
    middle = len(data) // 2
    return data[:middle] + bytes(b ^ 0x5A for b in data[middle : middle + 200]) + data[middle + 200 :]


@pytest.mark.parametrize("damage", ["cut short", "changed in the middle", "the other model"])
def test_a_damaged_hand_model_is_named_with_the_command_that_fetches_it_again(tmp_path, hand_models, damage):
    """A cut .tflite file gave LiteRT's 'The model is not a valid Flatbuffer buffer', with no file or remedy. One
    changed within still loaded: NaN palm scores, "no hand" in every image, and a crop cache of them that
    outlived the fix; the landmark model in the palm's place failed at the first image, in LiteRT's words."""
    from gesture_core.hands import LANDMARK_MODEL, PALM_MODEL, HandLocaliser, HandModelsUnavailableError

    palm = (hand_models / PALM_MODEL).read_bytes()
    damaged = {"cut short": palm[:5000], "changed in the middle": changed_in_the_middle(palm),
               "the other model": (hand_models / LANDMARK_MODEL).read_bytes()}[damage]  # fmt: skip
    (tmp_path / PALM_MODEL).write_bytes(damaged)
    (tmp_path / LANDMARK_MODEL).symlink_to(hand_models / LANDMARK_MODEL)
    with pytest.raises(HandModelsUnavailableError, match=rf"^hand model {tmp_path / PALM_MODEL} has sha256 \w+\.\.\., not \w+\.\.\.: "
                       r"cut short or changed since it was prepared\? run: .*training\.prepare hand-models$"):
        HandLocaliser(models_dir=tmp_path)


def test_a_hand_model_as_prepared_that_litert_cannot_load_names_the_install_not_the_file(hand_models, monkeypatch):
    """The file's sha256 matched, so it is as prepared: fetching it again, as the message said, changed nothing."""
    from gesture_core import hands

    class RefusingInterpreter:
        def __init__(self, **kwargs):
            raise ValueError("Didn't find op for builtin opcode 'CONV_2D' version '9'")

    monkeypatch.setattr(hands, "_interpreter_class", lambda: RefusingInterpreter)
    with pytest.raises(hands.HandModelsUnavailableError, match=r"^LiteRT cannot load the hand model .*palm_detection_full\.tflite \(Didn't find "
                       r"op .*\), whose sha256 is the one prepared: install the versions the \[hands\] extra pins: pip install"):
        hands.HandLocaliser(models_dir=hand_models)


@pytest.mark.parametrize("hands", [False, True], ids=["whole image", "hand crops"])
def test_the_inference_benchmarks_accuracy_scores_what_the_model_sees(tmp_path, asl, hand_models, hands):
    """``benchmarks.inference --accuracy RUN`` scored a hand-crop model on whole frames: 25% where its test said 42%."""
    import argparse

    from benchmarks.inference import accuracy_rows
    from training.data import Sample, Splits

    classes = ["A", "L", "nothing"]
    hands_checkpoint(tmp_path / "best.pt", hands=hands, classes=classes)
    test = [Sample(str(path), label) for label, name in enumerate(classes) for path in sorted((asl / name).iterdir())[:5]]
    Splits(str(asl), classes, [], [], test).save(tmp_path / "split.json")
    (row,) = accuracy_rows(tmp_path, argparse.Namespace(engines=["torch"], precisions=["fp32"]), torch.device("cpu"))

    reference = load_classifier(tmp_path / "best.pt", "cpu", engine="torch")
    if hands:  # the best hand of each image with one, as predict_hands (and the service) finds and scores it
        answers = [(reference.predict_hands(s.path).hands, s.label) for s in test]
        named = [(found[0].prediction.top_k[0][0], classes[label]) for found, label in answers if found]
    else:
        named = [(reference.predict(s.path).top_k[0][0], classes[s.label]) for s in test]
    assert 0 < len(named) and row["images"] == len(named)
    assert row["top1"] == pytest.approx(np.mean([said == truth for said, truth in named]))


def test_an_export_of_a_hand_crop_model_checks_parity_on_the_hands_crops(tmp_path, two_hand_frame, scene, hand_models, capsys):
    import json

    from training.export import main

    checkpoint = hands_checkpoint(tmp_path / "best.pt", hands=True)
    cv2.imwrite(str(tmp_path / "two-hands.png"), cv2.cvtColor(two_hand_frame, cv2.COLOR_RGB2BGR))
    cv2.imwrite(str(tmp_path / "empty.png"), cv2.cvtColor(scene, cv2.COLOR_RGB2BGR))
    out = tmp_path / "model.onnx"
    assert main(["--checkpoint", str(checkpoint), "--out", str(out), "--images", str(tmp_path / "two-hands.png"), str(tmp_path / "empty.png")]) == 0
    assert json.loads(out.with_name("model.onnx.parity.json").read_text())["images"] == 2  # the two hands' crops, not the frames

    capsys.readouterr()
    assert main(["--checkpoint", str(checkpoint), "--out", str(tmp_path / "none.onnx"), "--images", str(tmp_path / "empty.png")]) == 2
    assert "error: no hand found in the 1 parity images that decode: pass --images with photos of hands" in capsys.readouterr().err
    assert not (tmp_path / "none.onnx").exists()


def test_the_python_pages_hands_example_runs_as_written(tmp_path, asl, hand_models, monkeypatch, capsys):
    """docs/python-api.md's hands block, on a hands-mode checkpoint in place of the page's run."""
    import re

    from tests.helpers import REPO

    blocks = re.findall(r"```python\n(.*?)```", (REPO / "docs" / "python-api.md").read_text(), re.DOTALL)
    block = next(b for b in blocks if "predict_hands" in b)
    assert block.count("runs/my-hands/best.pt") == 1
    monkeypatch.chdir(REPO)  # its paths are the README's, from the repository
    checkpoint = hands_checkpoint(tmp_path / "best.pt", hands=True)
    exec("from gesture_core import load_classifier\n" + block.replace("runs/my-hands/best.pt", str(checkpoint)), {})  # noqa: S102
    printed = capsys.readouterr().out.splitlines()
    assert len(printed) == 1 and "[((" in printed[0], printed  # the frame's label, and one (box, label) per hand found


def test_a_model_without_hands_is_unchanged(tmp_path, two_hand_frame, monkeypatch):
    def no_localiser(*args, **kwargs):
        raise AssertionError("a model without hands mode built a hand localiser")

    monkeypatch.setattr("gesture_core.classifier.HandLocaliser", no_localiser)
    classifier = load_classifier(hands_checkpoint(tmp_path / "best.pt", hands=False), "cpu", engine="torch")
    assert not classifier.hands_mode and classifier.data_config.hands is False
    probs = classifier.classify([classifier.crop(two_hand_frame)])[0]
    assert classifier.predict(two_hand_frame) == classifier.decide(probs)


# --------------------------------------------------------------------------- training and evaluation

LETTERS = ("C", "V", "Y")  # letters whose photos the localiser finds (18-20 of the first 20); 'nothing' has no hand
PER_CLASS = 20


@pytest.fixture(scope="module")
def asl_subset(asl, tmp_path_factory) -> Path:
    """The first 20 photos of 3 letters and of 'nothing', copied: a real, small hands dataset."""
    root = tmp_path_factory.mktemp("asl-subset")
    for name in (*LETTERS, "nothing"):
        (root / name).mkdir()
        for path in sorted((asl / name).iterdir())[:PER_CLASS]:
            (root / name / path.name).write_bytes(path.read_bytes())
    return root


@pytest.fixture(scope="module")
def crop_cache(hand_models, tmp_path_factory) -> Path:
    """A cache folder of its own (the crop cache starts empty), with the prepared hand models in it."""
    root = tmp_path_factory.mktemp("cache")
    (root / "hand-models").symlink_to(hand_models, target_is_directory=True)
    return root


def finetune(data: Path, out: Path, *extra: str) -> None:
    from training import finetune as finetune_module

    args = ["--data", str(data), "--out", str(out), "--epochs", "1", "--image-size", "64", "--batch-size", "16", "--workers", "0", *extra]
    assert finetune_module.main(args) == 0


@pytest.fixture(scope="module")
def hands_run(asl_subset, crop_cache, tmp_path_factory):
    """Two --hands runs on the same data: the first fills the crop cache, the second reads it. (run folder, stdout of each)."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("GESTURE_CACHE_DIR", str(crop_cache))
        runs, outputs, files = tmp_path_factory.mktemp("runs"), [], []
        for name in ("first", "second"):
            with _captured() as text:
                finetune(asl_subset, runs / name, "--hands")
            outputs.append(text())
            files.append(sorted(crop_cache.glob("hand-crops/*/*")))
        yield {"run": runs / "first", "again": runs / "second", "stdout": outputs, "crop_files": files[0], "files_after_second": files[1]}


class _captured:
    """stdout of in-process code, as text (pytest's capsys is function-scoped; these runs are shared)."""

    def __enter__(self):
        import contextlib
        import io

        self.buffer = io.StringIO()
        self.redirect = contextlib.redirect_stdout(self.buffer)
        self.redirect.__enter__()
        return self.buffer.getvalue

    def __exit__(self, *exc):
        self.redirect.__exit__(*exc)
        print(self.buffer.getvalue())  # still shown when a test fails


def read_json(path: Path) -> dict:
    import json

    return json.loads(path.read_text())


def test_hands_run_stores_the_mode(hands_run):
    ckpt = torch.load(hands_run["run"] / "best.pt", map_location="cpu", weights_only=False)
    assert ckpt["data_config"]["hands"] is True and ckpt["train_config"]["hands"] is True
    classifier = load_classifier(hands_run["run"] / "best.pt", "cpu", engine="torch")
    assert classifier.hands_mode


def test_crops_are_made_once_and_reused(hands_run, asl_subset):
    images = sum(1 for _ in asl_subset.glob("*/*.jpg"))
    first, second = hands_run["stdout"]
    assert f"hand crops: {images} images, {images} run through the hand localiser now, 0 from the cache" in first
    assert f"hand crops: {images} images, 0 run through the hand localiser now, {images} from the cache" in second
    indexes = [p for p in hands_run["crop_files"] if p.suffix == ".json"]
    pngs = [p for p in hands_run["crop_files"] if p.suffix == ".png"]
    no_hand = sum(read_json(hands_run["run"] / "metrics.json")["hands"]["no_hand"].values())
    assert len(indexes) == images and len({p.name.split("-")[0] for p in pngs}) == images - no_hand  # one entry per image, crops where a hand is
    assert hands_run["files_after_second"] == hands_run["crop_files"]
    assert read_json(hands_run["again"] / "metrics.json")["hands"]["detected"] == 0


def test_no_hand_images_are_reported(hands_run, asl_subset):
    metrics = read_json(hands_run["run"] / "metrics.json")
    hands = metrics["hands"]
    no_hand = [path for paths in hands["no_hand_files"].values() for path in paths]
    nothing = {str(p) for p in (asl_subset / "nothing").iterdir()}
    assert nothing <= set(no_hand)  # every empty frame is reported, in whichever split it fell
    assert sum(hands["no_hand"].values()) == len(no_hand) and "skipped in training" in hands["policy"]
    assert f"no hand found in {len(no_hand)} of {PER_CLASS * 4} images" in hands_run["stdout"][0]
    assert any(Path(p).name in hands_run["stdout"][0] for p in no_hand)
    # training learnt from crops of the images with a hand only
    assert metrics["split"]["train"] == hands["images"]["train"] - hands["no_hand"]["train"]


def test_every_test_image_is_scored_and_no_hand_is_no_gesture(hands_run):
    split = read_json(hands_run["run"] / "split.json")
    metrics = read_json(hands_run["run"] / "metrics.json")
    test = metrics["test"]
    assert test["n"] == len(split["test"])  # none dropped
    nothing_tests = [p for p, label in split["test"] if split["classes"][label] == "nothing"]
    assert nothing_tests and test["no_answer"]["per_class"]["nothing"] == len(nothing_tests)
    assert test["no_answer"]["counted_as"] == "nothing"
    assert test["per_class"]["nothing"]["recall"] == 1.0
    assert test["no_answer"]["n"] == metrics["hands"]["no_hand"]["test"]


def test_evaluate_and_predict_agree(hands_run, crop_cache, monkeypatch):
    from training import evaluate

    monkeypatch.setenv("GESTURE_CACHE_DIR", str(crop_cache))
    run = hands_run["run"]
    out = run / "eval-again"
    assert evaluate.main(["--checkpoint", str(run / "best.pt"), "--workers", "0", "--out", str(out)]) == 0
    evaluated = read_json(out / "metrics.json")["test"]
    assert evaluated == read_json(run / "metrics.json")["test"]
    # the service's path: load_classifier(...).predict on each whole image, hands found afresh
    classifier = load_classifier(run / "best.pt", "cpu", engine="torch")
    split = read_json(run / "split.json")
    classes = split["classes"]
    matrix = np.zeros((len(classes), len(classes)), int)
    wrong = {}
    for rel, label in split["test"]:
        prediction = classifier.predict(Path(split["root"]) / rel, k=1)
        answered = prediction.top_k[0][0] if prediction.top_k else "nothing"  # no hand: 'no gesture', counted as nothing
        matrix[label, classes.index(answered)] += 1
        if answered != classes[label]:
            wrong[str(Path(split["root"]) / rel)] = prediction.top_k[0] if prediction.top_k else ("no hand found", 0.0)
    assert matrix.tolist() == evaluated["confusion_matrix"]
    # test_mistakes lists those whole frames, as predict answers them, the most confident first
    mistakes = read_json(run / "metrics.json")["test_mistakes"]
    assert wrong, "every test frame was right: this check could not fail"
    assert read_json(out / "metrics.json")["test_mistakes"] == mistakes
    assert {m["path"]: m["predicted"] for m in mistakes} == {path: label for path, (label, _) in wrong.items()}
    assert [m["probability"] for m in mistakes] == pytest.approx([wrong[m["path"]][1] for m in mistakes], abs=1e-3)
    assert [m["probability"] for m in mistakes] == sorted((m["probability"] for m in mistakes), reverse=True)
    assert (run / "test_mistakes.png").exists() and (out / "test_mistakes.png").exists()


def test_evaluate_unknown_answers_each_never_learned_frame_as_the_service_does(hands_run, crop_cache, asl, flowers, tmp_path, monkeypatch, capsys):
    from training import evaluate

    monkeypatch.setenv("GESTURE_CACHE_DIR", str(crop_cache))
    unknown = tmp_path / "unknown"
    for name in ("B", "L"):  # letters the model never learned, with a hand in the frame
        (unknown / name).mkdir(parents=True)
        for path in sorted((asl / name).iterdir())[:4]:
            (unknown / name / path.name).write_bytes(path.read_bytes())
    photos = sorted((flowers / "daisy").iterdir())[:3]  # no hand at all
    for path in photos:
        (unknown / path.name).write_bytes(path.read_bytes())
    (unknown / "broken.jpg").write_bytes(photos[0].read_bytes()[:300])
    (unknown / "notes.txt").write_text("not an image")
    run, out = hands_run["run"], tmp_path / "eval"
    assert evaluate.main(["--checkpoint", str(run / "best.pt"), "--workers", "0", "--unknown", str(unknown), "--out", str(out)]) == 0
    report = read_json(out / "metrics.json")
    found = report["open_set"]["unknown"]
    classifier = load_classifier(run / "best.pt", "cpu", engine="torch")
    images = sorted(p for p in unknown.rglob("*.jpg") if p.name != "broken.jpg")
    answers = [classifier.predict_hands(path.read_bytes()) for path in images]
    assert found["images"] == len(images) == 11
    assert found["rejected"] == sum(a.frame.label is None for a in answers)
    assert found["no_hand"] == sum(a.source is None for a in answers) >= len(photos)
    assert (f"images of no learned class in {unknown}: {found['rejected']} of 11 answered 'no gesture' "
            f"({100 * found['rejection_rate']:.2f}%; no hand found in {found['no_hand']})") in capsys.readouterr().out
    assert {Path(s["path"]).name for s in report["skipped"]} >= {"broken.jpg", "notes.txt"}  # found at the scan, reported


def test_a_run_without_hands_is_unchanged(asl_subset, crop_cache, tmp_path, monkeypatch):
    monkeypatch.setenv("GESTURE_CACHE_DIR", str(crop_cache))
    finetune(asl_subset, tmp_path / "plain")
    ckpt = torch.load(tmp_path / "plain" / "best.pt", map_location="cpu", weights_only=False)
    assert ckpt["data_config"]["hands"] is False
    metrics = read_json(tmp_path / "plain" / "metrics.json")
    assert "hands" not in metrics and "no_answer" not in metrics["test"]
    assert metrics["test"]["n"] == len(read_json(tmp_path / "plain" / "split.json")["test"])


def test_a_damaged_or_missing_crop_is_made_again_and_an_unreadable_image_stores_nothing(asl, hand_models, tmp_path, monkeypatch):
    """An emptied or cut crop PNG was used as it was: every later run skipped its image naming the cache file,
    and evaluate stopped with 'empty file (0 bytes)' and no name."""
    from training.data import decode_file
    from training.hand_crops import HandCropCache

    (tmp_path / "hand-models").symlink_to(hand_models, target_is_directory=True)
    monkeypatch.setenv("GESTURE_CACHE_DIR", str(tmp_path))
    photos = [str(p) for p in sorted((asl / "A").iterdir())[:3]]
    config = DataConfig(input_size=64, resize_size=73)
    made = HandCropCache(config).entries([*map(_sample, photos)])
    crops = [entry.crops[0] for entry in made]
    assert len(crops) == 3
    Path(crops[0]).write_bytes(b"")
    Path(crops[1]).write_bytes(Path(crops[1]).read_bytes()[:-40])
    again = HandCropCache(config)
    entries = again.entries([*map(_sample, photos)])
    assert again.detected == 2 and [e.crops[0] for e in entries] == crops
    assert all(decode_file(crop).shape == (73, 73, 3) for crop in crops)
    missing = again.entry(str(tmp_path / "gone.jpg"))
    assert missing.crops == [] and missing.error == "unreadable: No such file or directory" and again.detected == 2
    assert not list((again.folder).glob("unreadable*"))


def _sample(path: str):
    from training.data import Sample

    return Sample(path, 0)


def test_a_gesture_left_with_no_training_crop_is_named_and_wrong_weights_are_refused_before_detection(
        asl_subset, crop_cache, flowers, tmp_path, monkeypatch, capsys):
    """A class whose photos show no hand trained on nothing without a word; a backbone's missing ImageNet
    weights were refused only after every image had been through the hand localiser."""
    import warnings

    from tests.helpers import count_calls
    from training import finetune as finetune_module

    monkeypatch.setenv("GESTURE_CACHE_DIR", str(crop_cache))
    data = tmp_path / "data"
    data.mkdir()
    for name in ("V", "nothing"):
        (data / name).symlink_to(asl_subset / name, target_is_directory=True)
    (data / "daisy").mkdir()
    for photo in sorted((flowers / "daisy").iterdir())[:PER_CLASS]:
        (data / "daisy" / photo.name).symlink_to(photo)
    detections = count_calls(monkeypatch, finetune_module, "hand_crop_splits")
    assert finetune_module.main(["--data", str(data), "--hands", "--backbone", "lenet5", "--out", str(tmp_path / "lenet")]) == 2
    assert "lenet5 has no ImageNet weights" in capsys.readouterr().err and detections == []
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        finetune(data, tmp_path / "run", "--hands")
    said = [str(w.message) for w in caught if "no hand found in any training image" in str(w.message)]
    assert len(said) == 1 and said[0].startswith("--hands: no hand found in any training image of daisy: the model cannot learn it"), said
