"""Saying "no gesture": reject-class names, calibration on real data, the stored threshold, old checkpoints."""

from __future__ import annotations

import csv
import json
import shutil
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch

from benchmarks.hostile_inputs import empty_frames
from gesture_core import build_model, get_backbone, load_checkpoint, load_classifier, read_rgb, save_checkpoint
from gesture_core.rejection import SCORES, Rejection, find_reject_classes
from service.webcam.scoring import UNCALIBRATED_WEBCAM_THRESHOLD, LocalScorer, Smoother, decision_rule
from tests.helpers import REPO, make_image_folder, synthetic_image
from training.calibrate import (
    Outcome,
    SplitOutputs,
    acceptance_scores,
    calibrate,
    choose_threshold,
    expected_calibration_error,
    fit_temperature,
    format_open_set,
    refuse_reject_predictions,
    reject_choice,
    split_outputs,
)
from training.config import TrainConfig
from training.data import Splits


def run_module(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", *args], cwd=REPO, capture_output=True, text=True, timeout=900)


@pytest.mark.parametrize("name", [
    "none", "None", "no_gesture", "No-Gesture", "nothing", "NOTHING", "background", "Other", "no gesture",  # HaGRID, ASL, Jester
    "NoGesture", "NOGESTURE", "nohands", "No hand detected", "not_a_gesture", "non-gesture", "Doing other things",
    "00_none", "3-nothing", "_background_", "class_none", "other_gestures", "hands at rest", "neutral", "Idle",
])  # fmt: skip
def test_no_gesture_names_are_recognised_in_any_spelling(name):
    assert find_reject_classes(["fist", name, "palm"]) == [name]


@pytest.mark.parametrize("name", ["no", "NOT", "rest_pose", "nothing_but_net", "open_hand", "hand", "one", "0", "L", "del", "noted"])
def test_gestures_and_signs_are_not_taken_for_no_gesture(name):
    assert find_reject_classes(["fist", name, "palm"]) == []


def test_start_up_says_which_classes_mean_no_gesture_and_why():
    assert reject_choice(["fist", "00_none"], None) == ("no gesture: 00_none (a no-gesture name; --reject-class NAME "
                                                       "to choose, '' for none)")
    assert reject_choice(["fist", "palm"], None).startswith("no gesture: no class has a no-gesture name (none, nothing, ")
    assert reject_choice(["fist", "none", "palm"], ["palm"]) == "no gesture: palm (--reject-class)"
    assert reject_choice(["fist", "none"], [""]).startswith("no gesture: no reject class (--reject-class '')")
    with pytest.raises(ValueError, match="choose from fist, none"):
        reject_choice(["fist", "none"], ["nothing"])
    with pytest.raises(ValueError, match="names every class \\(fist, none\\): at least one must be a gesture"):
        reject_choice(["fist", "none"], ["none", "FIST"])  # a model that rejects every image, trained and calibrated as one
    with pytest.raises(ValueError, match="every class has a no-gesture name \\(none, Background, NOTHING\\): the model could only"):
        reject_choice(["none", "Background", "NOTHING"], None)  # by their names it trained, and answered "no gesture" to all
    assert reject_choice(["none", "background"], [""]).startswith("no gesture: no reject class")  # the way out it names


def test_reject_class_flag_names_classes_or_turns_the_rule_off():
    classes = ["fist", "nothing", "palm", "rest_pose"]
    assert find_reject_classes(classes) == ["nothing"]
    assert find_reject_classes(classes, ["REST_POSE", "palm"]) == ["palm", "rest_pose"]
    assert find_reject_classes(classes, [""]) == []
    with pytest.raises(ValueError, match="--reject-class '' means no reject class, and --reject-class 'palm' names one: pass one or the other"):
        find_reject_classes(classes, ["", "palm"])  # '' was dropped and palm used
    with pytest.raises(ValueError, match="choose from fist, nothing, palm, rest_pose"):
        find_reject_classes(classes, ["thumbs_up"])
    # classes that differ only in case: the exact name is the one meant (the last of them was taken)
    assert find_reject_classes(["A", "a", "nothing"], ["A"]) == ["A"]
    assert find_reject_classes(["A", "a", "nothing"], ["a"]) == ["a"]


def test_a_threshold_outside_0_1_is_refused_with_the_range(random_head_checkpoint):
    classifier = load_classifier(random_head_checkpoint, device="cpu", engine="torch")
    for bad in (-0.1, 1.5, float("nan")):
        with pytest.raises(ValueError, match="between 0 and 1"):
            classifier.predict(synthetic_image(0, seed=0), threshold=bad)
    with pytest.raises(ValueError, match="between 0 and 1"):
        Rejection(threshold=2.0)
    done = run_module("training.evaluate", "--checkpoint", str(random_head_checkpoint), "--threshold", "1.5")
    assert done.returncode == 2 and "must be in [0.0, 1.0]" in done.stderr and "Traceback" not in done.stderr


def test_a_checkpoint_from_before_calibration_loads_uncalibrated(tmp_path):
    torch.manual_seed(0)
    backbone = get_backbone("mobilenet_v3_large")
    path = save_checkpoint(tmp_path / "old.pt", model=build_model(backbone.name, 3, "none"), backbone=backbone.name,
                           classes=["fist", "Nothing", "palm"], data_config=backbone.data_config.with_input_size(64), train_config={})
    assert "rejection" not in load_checkpoint(path)  # what every checkpoint written before this change looks like
    classifier = load_classifier(path, device="cpu", engine="torch")
    rejection = classifier.rejection
    assert (rejection.threshold, rejection.temperature, rejection.calibrated) == (0.0, 1.0, False)
    assert rejection.info()["calibration"] == "uncalibrated" and rejection.reject_classes == ("Nothing",)
    probs = np.array([0.1, 0.8, 0.1])  # "Nothing" on top: no gesture, even in an old checkpoint
    assert classifier.decide(probs).label is None and [c for c, _ in classifier.decide(probs).top_k] == ["Nothing", "fist", "palm"]
    assert decision_rule(LocalScorer(classifier), None) == (UNCALIBRATED_WEBCAM_THRESHOLD, ("Nothing",))


def test_a_threshold_of_ones_own_on_a_rank_says_what_it_turns_away():
    """--threshold 0.5 on a rank turned away over half of the gestures in silence, and evaluate's report
    called it "(calibrated)"."""
    rank = Rejection(("none",), 1.0, 0.009, True, "rule", "energy", (0.5, 1.0, 2.0, 4.0))
    note = rank.override_note(0.5)
    assert note.startswith("--threshold 0.5 applies to this model's gesture score, a rank among its validation gestures (energy)")
    assert "about 50% or more of gestures like those; the calibrated threshold is 0.0090" in note
    assert "0 turns nothing away by its score (only a reject class's predictions say no gesture)" in rank.override_note(0)  # not "about 0% or more"
    assert rank.override_note(None) is None and rank.override_note(0.009) is None
    assert Rejection(threshold=0.5, calibrated=True).override_note(0.7) is None  # max_softmax: a probability, as one expects

    class Scorer:
        def rejection(self):
            return rank

    said = []
    assert decision_rule(Scorer(), 0.5, said.append) == (0.5, ("none",)) and said == [f"note: {note}"]
    report = {**rank.info(), "threshold": 0.5, "threshold_from": "--threshold", "test": {"n": 4, **dict.fromkeys(
        ("gesture_recall", "gesture_recall_unthresholded", "gesture_precision", "false_accept_rate", "auroc", "ece_before", "ece_after"))}}
    assert "threshold 0.5000 on the energy rank (--threshold)" in format_open_set(report)
    own = {key: value for key, value in report.items() if key != "threshold_from"} | {"threshold": 0.009}
    assert "threshold 0.0090 on the energy rank (calibrated)" in format_open_set(own)


def test_a_test_split_over_the_recall_target_is_said():
    """An ASL run lost 1.49 points of test recall (94.94% to 93.45%), over the 1-point target, in silence."""
    test = {"n": 600, "gesture_recall_unthresholded": 0.9494, "gesture_recall": 0.9345, **dict.fromkeys(
        ("gesture_precision", "false_accept_rate", "auroc", "ece_before", "ece_after"))}
    report = {**Rejection(score="energy", calibrated=True).info(), "test": test, "target_recall": 0.99}
    said = format_open_set(report).splitlines()[-1]
    assert said == ("  the threshold cost 1.49 points of this test split's gesture recall, over the 1% of it that "
                    "--reject-target-recall 0.99 allows: the rule bounds the average over new images, not each split (docs/no-gesture.md)")
    assert len(format_open_set(report | {"test": test | {"gesture_recall": 0.945}}).splitlines()) == 2  # within: nothing more
    assert "false-accept rate n/a (no reject-class images), calibration error (ECE) n/a -> n/a" in format_open_set(report)
    assert ", no threshold (too few validation gestures to choose one)\n" in format_open_set(report | {"threshold": 0.0})
    assert "false-accept rate 0.00% of 24 reject-class images, AUROC 0.9987, " in format_open_set(
        report | {"test": test | {"reject_images": 24, "false_accept_rate": 0.0, "auroc": 0.99871}})


def test_the_energy_score_is_its_rank_among_the_validation_gestures_and_is_stored(tmp_path):
    rejection = Rejection(("none",), 1.0, 0.25, True, "rule", "energy", (0.5, 1.0, 2.0, 4.0))
    logits = np.full((3, 3), -60.0)
    logits[:, 0] = [0.0, 1.5, 5.0]  # energies (logsumexp at T = 1) of about 0, 1.5 and 5
    np.testing.assert_allclose(rejection.gesture_scores(logits), [0.0, 0.5, 1.0])  # below all, above two of four, above all
    stored = Rejection.from_checkpoint({"classes": ["fist", "palm", "none"], "rejection": rejection.to_dict()})
    assert stored == rejection and "reference" not in rejection.info() and rejection.info()["reference_images"] == 4
    with pytest.raises(ValueError, match="choose one of max_softmax, energy"):
        Rejection(score="entropy")
    # a Classifier that thresholds energy refuses to decide from probabilities alone, which cannot give it
    torch.manual_seed(0)
    backbone = get_backbone("mobilenet_v3_large")
    path = save_checkpoint(tmp_path / "energy.pt", model=build_model(backbone.name, 3, "none"), backbone=backbone.name,
                           classes=["fist", "palm", "none"], data_config=backbone.data_config.with_input_size(64), train_config={},
                           rejection=rejection.to_dict())
    classifier = load_classifier(path, device="cpu", engine="torch")
    with pytest.raises(ValueError, match="classify_scores"):
        classifier.decide(np.array([0.8, 0.1, 0.1]))
    image = synthetic_image(0, seed=0)
    scores = classifier.classify_scores([classifier.crop(image)])[0]
    assert scores.gesture is not None and classifier.predict(image).gesture_score == pytest.approx(scores.gesture)
    top = classifier.classes[int(scores.probs.argmax())]
    assert classifier.decide(scores._replace(gesture=0.2)).label is None  # below the 0.25 threshold, whatever the top probability
    assert classifier.decide(scores._replace(gesture=0.3)).label == (None if top == "none" else top)  # above it: the top class


def test_the_feature_score_is_the_cosine_to_the_nearest_gesture_mean_ranked_and_is_stored():
    rejection = Rejection(("none",), 1.0, 0.25, True, "rule", "feature_cosine", (0.2, 0.4, 0.6, 0.8), ((1.0, 0.0), (0.0, 1.0)))
    features = np.array([[3.0, 0.0], [1.0, 1.0], [-1.0, 0.0]], np.float32)  # cosines to the nearest mean: 1, 0.707, 0
    np.testing.assert_allclose(rejection.raw_scores(np.zeros((3, 3)), features), [1.0, 2 ** -0.5, 0.0], atol=1e-6)
    np.testing.assert_allclose(rejection.gesture_scores(np.zeros((3, 3)), features), [1.0, 0.75, 0.0])  # ranks among the four
    stored = Rejection.from_checkpoint({"classes": ["fist", "palm", "none"], "rejection": rejection.to_dict()})
    assert stored == rejection and stored.needs_features and not Rejection().needs_features
    assert "reference" not in rejection.info() and "feature_means" not in rejection.info()  # /info shows counts, not 2 x D numbers
    assert rejection.info()["feature_mean_classes"] == 2 and Rejection.from_checkpoint({"classes": ["fist", "palm", "none"], "rejection": rejection.info()}).score == "feature_cosine"
    with pytest.raises(ValueError, match="needs the penultimate features"):
        rejection.gesture_scores(np.zeros((3, 3)))


@pytest.mark.parametrize("engine", ["torch", "onnx", "openvino"])
def test_a_feature_score_classifier_gets_the_training_features_from_one_engine_call(engine, tmp_path):
    """The engine runs the network with its penultimate features beside the logits: the same logits as the
    plain network, and the features training's cache computes (what the class means come from)."""
    from training.features import feature_extractor

    torch.manual_seed(0)
    backbone = get_backbone("mobilenet_v3_large")  # the head is nested (classifier.3), behind a Dropout
    model = build_model(backbone.name, 3, "none").eval()
    means = np.random.default_rng(0).normal(size=(2, 1280)).astype(np.float32)
    means /= np.linalg.norm(means, axis=1, keepdims=True)
    rejection = Rejection(("none",), 1.3, 0.5, True, "rule", "feature_cosine", tuple(np.linspace(-0.1, 0.1, 9).tolist()),
                          tuple(tuple(m.tolist()) for m in means))
    path = save_checkpoint(tmp_path / "feature.pt", model=model, backbone=backbone.name, classes=["fist", "palm", "none"],
                           data_config=backbone.data_config.with_input_size(64), train_config={}, rejection=rejection.to_dict())
    classifier = load_classifier(path, device="cpu", engine=engine)
    crops = [classifier.crop(synthetic_image(i, seed=1)) for i in range(4)]
    batch = classifier.preprocess.normalize_batch(crops)
    logits, features = classifier.logits_and_features(batch)
    with torch.inference_mode():
        np.testing.assert_allclose(logits, model(batch).numpy(), atol=2e-4)
        np.testing.assert_allclose(features, feature_extractor(model, backbone)(batch).numpy(), atol=2e-4)
    assert classifier.logits(batch).shape == (4, 3)
    scores = classifier.classify_scores(crops)
    np.testing.assert_allclose([s.gesture for s in scores], rejection.gesture_scores(logits, features))
    assert classifier.predict(synthetic_image(0, seed=1)).gesture_score == pytest.approx(scores[0].gesture)
    assert model.classifier[3].out_features == 3  # the network itself still ends in its head


def test_calibrating_on_the_feature_score_ranks_each_validation_gesture_itself_in_any_batch():
    # a validation gesture scored alone (the webcam) or among others must land on its own reference
    # value, not a rounding below it: ranks 1/n ... n/n, whatever the batch (a float32 matmul fails this)
    rng = np.random.default_rng(0)
    centres = rng.normal(size=(3, 256))
    split = lambda n: SplitOutputs((centres[np.arange(n) % 3] + rng.normal(size=(n, 256))).astype(np.float32),  # noqa: E731
                                   np.eye(3, dtype=np.float32)[np.arange(n) % 3] * 5, np.arange(n) % 3, np.arange(n))
    train, val = split(300), split(330)
    rejection = calibrate(val, ["fist", "palm", "none"], ["none"], target_recall=0.99, score="feature_cosine", train=train)
    assert rejection.score == "feature_cosine" and len(rejection.feature_means) == 2 and len(rejection.reference) == 220
    gestures = val.targets != 2
    alone = np.concatenate([rejection.gesture_scores(val.logits[i : i + 1], val.features[i : i + 1]) for i in range(330)])
    together = rejection.gesture_scores(val.logits, val.features)
    np.testing.assert_array_equal(alone, together)
    np.testing.assert_allclose(np.sort(together[gestures]), np.arange(1, 221) / 220)
    with pytest.warns(UserWarning, match="training images.*max_softmax"):  # nothing to take the means from: the top probability
        assert calibrate(val, ["fist", "palm", "none"], ["none"], score="feature_cosine", train=None).score == "max_softmax"


def test_energy_and_feature_is_the_lower_of_the_two_ranks_and_is_stored():
    rejection = Rejection(("none",), 1.0, 0.25, True, "rule", "energy_and_feature", (0.5, 1.0, 2.0, 4.0), ((1.0, 0.0), (0.0, 1.0)),
                          (0.2, 0.4, 0.6, 0.8))
    logits = np.full((3, 3), -60.0)
    logits[:, 0] = [5.0, 1.5, 0.0]  # energy ranks 1, 0.5, 0
    features = np.array([[1.0, 1.0], [3.0, 0.0], [3.0, 0.0]], np.float32)  # cosine ranks 0.75, 1, 1
    np.testing.assert_allclose(rejection.gesture_scores(logits, features), [0.75, 0.5, 0.0])
    stored = Rejection.from_checkpoint({"classes": ["fist", "palm", "none"], "rejection": rejection.to_dict()})
    assert stored == rejection and stored.needs_features and "feature_reference" not in rejection.info()
    with pytest.raises(ValueError, match="reference"):
        Rejection.from_checkpoint({"classes": ["fist", "palm", "none"], "rejection": rejection.info()}).gesture_scores(logits, features)


def test_calibrating_on_energy_and_feature_ranks_each_score_on_its_own_validation_values():
    rng = np.random.default_rng(0)
    centres = rng.normal(size=(3, 64))
    targets = np.arange(330) % 3
    logits = (np.eye(3)[targets] * rng.uniform(2, 9, (330, 1))).astype(np.float32)
    val = SplitOutputs((centres[targets] + rng.normal(size=(330, 64))).astype(np.float32), logits, targets, np.arange(330))
    train = SplitOutputs((centres[targets] + rng.normal(size=(330, 64))).astype(np.float32), logits, targets, np.arange(330))
    both = calibrate(val, ["fist", "palm", "none"], ["none"], target_recall=0.99, score="energy_and_feature", train=train)
    single = {kind: calibrate(val, ["fist", "palm", "none"], ["none"], target_recall=0.99, score=kind, train=train)
              for kind in ("energy", "feature_cosine")}
    assert both.reference == single["energy"].reference and both.feature_reference == single["feature_cosine"].reference
    expected = np.minimum(*(single[kind].gesture_scores(val.logits, val.features) for kind in ("energy", "feature_cosine")))
    np.testing.assert_array_equal(both.gesture_scores(val.logits, val.features), expected)
    assert 0.0 < both.threshold <= 1.0 and both.rule.startswith("energy_and_feature score: ")


def test_calibrating_on_energy_keeps_the_recall_rule_on_its_rank():
    # 300 validation gestures, all right, with energies between 1 and 30, and 20 reject-class images taken for gesture 0
    logits = np.full((320, 3), -60.0)
    targets = np.array([i % 2 for i in range(300)] + [2] * 20)
    logits[np.arange(300), targets[:300]] = np.random.default_rng(0).uniform(1, 30, 300)
    logits[300:, 0] = 0.5  # the reject images: lower energy than every gesture
    val = SplitOutputs(np.zeros((320, 1), np.float32), logits.astype(np.float32), targets, np.arange(320))
    rejection = calibrate(val, ["fist", "palm", "none"], ["none"], target_recall=0.99, score="energy")
    assert rejection.score == "energy" and len(rejection.reference) == 300 and rejection.rule.startswith("energy score: ")
    assert 0.0 <= rejection.threshold <= 1.0
    # each validation gesture's rank counts itself: 1/300 ... 300/300, none tied with the one below
    np.testing.assert_allclose(np.sort(rejection.gesture_scores(val.logits)[:300]), np.arange(1, 301) / 300)
    kept = rejection.gesture_scores(val.logits)[:300] >= rejection.threshold
    assert 297 <= kept.sum() < 300  # spends the allowance on new images ((k+1)/(n+1) <= 1%: k = 2) on the lowest energies
    assert (rejection.gesture_scores(val.logits)[300:] < rejection.threshold).all()


def test_reject_classes_are_stored_in_the_checkpoint(tmp_path):
    """A real (tiny) training run stores what --reject-class says; recalibrating finds names or turns them off."""
    data = make_image_folder(tmp_path / "data", classes=("Background", "fist", "palm"), per_class=10)
    run = tmp_path / "run"
    done = run_module("training.finetune", "--data", str(data), "--out", str(run), "--epochs", "2", "--image-size", "64",
                      "--freeze", "backbone", "--augment", "none", "--val-split", "0.3", "--workers", "0", "--reject-class", "palm",
                      "--reject-score", "feature_cosine")
    assert done.returncode == 0, done.stderr[-3000:]
    assert "no gesture: palm (--reject-class)" in done.stdout
    stored = load_checkpoint(run / "best.pt")["rejection"]
    assert stored["reject_classes"] == ["palm"] and stored["calibrated"] and 0.0 <= stored["threshold"] <= 1.0
    # training's own calibration stores the feature score: a mean per gesture class (Background, fist), from the training split
    assert stored["score"] == "feature_cosine" and len(stored["feature_means"]) == 2 and len(stored["reference"]) > 0
    assert load_classifier(run / "best.pt", device="cpu", engine="torch").predict(synthetic_image(0, seed=0)).gesture_score is not None
    report = json.loads((run / "metrics.json").read_text())["open_set"]
    assert report["reject_classes"] == ["palm"] and {"gesture_recall", "false_accept_rate", "auroc", "ece_after"} <= set(report["test"])
    assert (run / "open_set.png").stat().st_size > 0
    for flag, expected in ((["--reject-class", ""], []), ([], ["Background"])):
        done = run_module("training.calibrate", "--checkpoint", str(run / "best.pt"), "--workers", "0", *flag)
        assert done.returncode == 0, done.stderr[-3000:]
        assert load_checkpoint(run / "best.pt")["rejection"]["reject_classes"] == expected
        recalibrated = load_checkpoint(run / "best.pt")["rejection"]  # on the default score: a mean per gesture class
        assert recalibrated["score"] == "energy_and_feature" and len(recalibrated["feature_means"]) == 3 - len(expected)
        assert load_classifier(run / "best.pt", device="cpu", engine="torch").rejection.reject_classes == tuple(expected)


def test_a_misspelt_reject_class_fails_before_training(image_folder, tmp_path):
    done = run_module("training.finetune", "--data", str(image_folder), "--out", str(tmp_path / "run"), "--reject-class", "nothing")
    assert done.returncode == 2 and "Traceback" not in done.stderr
    assert "--reject-class 'nothing': not a class of this data; choose from fist, palm, peace" in done.stderr
    assert not (tmp_path / "run" / "best.pt").exists()


@pytest.mark.slow
def test_the_fitted_temperature_lowers_ece_on_held_out_real_data(sign_digits_run):
    """Fitted on sign-digits' validation split, judged on its test split (which it never saw)."""
    ckpt = load_checkpoint(sign_digits_run / "best.pt")
    model = load_classifier(sign_digits_run / "best.pt", device="cpu", engine="torch").model
    splits = Splits.load(sign_digits_run / "split.json")
    val, test = (split_outputs(model, ckpt["backbone"], getattr(splits, s), load_classifier(sign_digits_run / "best.pt", device="cpu", engine="torch").data_config,
                               device=torch.device("cpu"), workers=0) for s in ("val", "test"))
    temperature = fit_temperature(val.logits, val.targets)
    softmax = lambda z: np.exp(z - z.max(1, keepdims=True)) / np.exp(z - z.max(1, keepdims=True)).sum(1, keepdims=True)  # noqa: E731
    before = expected_calibration_error(softmax(test.logits), test.targets)
    after = expected_calibration_error(softmax(test.logits / temperature), test.targets)
    assert temperature != pytest.approx(1.0, abs=0.02)
    assert after < 0.7 * before, (temperature, before, after)


@pytest.fixture(scope="module")
def calibrated_run(scored_copies) -> Path:
    """Thresholded on the calibrated top probability."""
    return scored_copies("max_softmax")


@pytest.fixture(scope="module")
def energy_run(scored_copies) -> Path:
    """Thresholded on the energy's rank."""
    return scored_copies("energy")


@pytest.fixture(params=SCORES)
def scored_run(request, scored_copies) -> tuple[str, Path]:
    """(score, run) for each way of scoring "no gesture" in turn."""
    return request.param, scored_copies(request.param)


def evaluate_decisions(run: Path) -> list[dict[str, str]]:
    with (run / "eval" / "predictions.csv").open() as f:
        return list(csv.DictReader(f))


@pytest.mark.slow
def test_frames_with_nothing_in_them_are_no_gesture_with_the_default_score(sign_digits_run):
    # sign-digits has no "no gesture" class, so only the threshold can turn these away; with the
    # calibrated top probability (max_softmax) a lite1 sign-digits model took a black frame for a "2"
    classifier = load_classifier(sign_digits_run / "best.pt", "cpu", engine="torch")
    assert classifier.rejection.score == TrainConfig().reject_score and not classifier.rejection.reject_classes
    answers = {name: classifier.predict(frame) for name, frame in empty_frames().items()}
    accepted = {name: (p.label, round(p.score, 3), p.gesture_score) for name, p in answers.items() if p.label is not None}
    assert not accepted, accepted


@pytest.mark.slow
def test_load_classifier_applies_the_stored_threshold_and_classes(scored_run):
    score, calibrated_run = scored_run
    classifier = load_classifier(calibrated_run / "best.pt", device="cpu", engine="torch")
    stored = load_checkpoint(calibrated_run / "best.pt")["rejection"]
    assert classifier.rejection.threshold == stored["threshold"] > 0 and classifier.rejection.reject_classes == ("0",)
    assert classifier.rejection.score == stored["score"] == score
    rows = evaluate_decisions(calibrated_run)
    by_threshold = [r for r in rows if r["label"] == "" and r["top_class"] != "0"]
    assert by_threshold, "the test split has no image rejected by the threshold alone: this test could not fail for it"
    webcam, smoother = LocalScorer(classifier), Smoother(threshold=classifier.rejection.threshold, reject_classes=("0",), k=5)
    for row in by_threshold + [r for r in rows if r["top_class"] == "0"][:3] + [r for r in rows if r["label"]][:5]:
        prediction = classifier.predict(Path(row["path"]).read_bytes())
        assert (prediction.label or "") == row["label"] and prediction.score == pytest.approx(float(row["score"]), abs=1e-4)
        assert len(prediction.top_k) == 5  # a rejected prediction keeps its top-k
        assert (prediction.gesture_score is None) == (classifier.rejection.score == "max_softmax") == (row["gesture_score"] == "")
        if prediction.gesture_score is not None:
            assert prediction.gesture_score == pytest.approx(float(row["gesture_score"]), abs=1e-3)
        rgb = read_rgb(row["path"])  # the webcam decides a frame as the Classifier does, whatever the score
        assert smoother.decide(webcam(np.ascontiguousarray(rgb[..., ::-1]))).label == classifier.predict(rgb).label
    report = json.loads((calibrated_run / "eval" / "metrics.json").read_text())["open_set"]
    assert report["threshold"] == stored["threshold"] and report["calibration"] == "calibrated"


@pytest.mark.slow
def test_evaluate_unknown_rejects_what_the_classifier_rejects_in_any_layout_and_reports_what_it_skipped(calibrated_run, flowers, tmp_path):
    # never-learned images as people collect them: some loose in the folder, some in a subfolder,
    # beside a corrupt JPEG and a text file, which are reported, not fatal
    unknown = tmp_path / "unknown"
    (unknown / "roses").mkdir(parents=True)
    loose = sorted((flowers / "daisy").iterdir())[:4]
    nested = sorted((flowers / "roses").iterdir())[:4]
    for path in loose:
        shutil.copy(path, unknown / path.name)
    for path in nested:
        shutil.copy(path, unknown / "roses" / path.name)
    (unknown / "broken.jpg").write_bytes(loose[0].read_bytes()[:200])
    (unknown / "notes.txt").write_text("not an image")
    done = run_module("training.evaluate", "--checkpoint", str(calibrated_run / "best.pt"), "--unknown", str(unknown),
                      "--out", str(tmp_path / "eval"))
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    classifier = load_classifier(calibrated_run / "best.pt", device="cpu", engine="torch")
    rejected = [classifier.predict(path.read_bytes()).label is None for path in loose + nested]
    assert report["open_set"]["unknown"]["images"] == 8
    assert report["open_set"]["unknown"]["rejected"] == sum(rejected)
    assert f"images of no learned class in {unknown}: {sum(rejected)} of 8 answered 'no gesture' (" in done.stdout
    assert (tmp_path / "eval" / "unknown_worst.png").exists() == (not all(rejected))  # the accepted ones, if any
    assert {Path(s["path"]).name for s in report["skipped"]} >= {"broken.jpg", "notes.txt"}


@pytest.mark.slow
def test_evaluate_refuses_an_unknown_folder_without_images_before_evaluating(calibrated_run, tmp_path):
    (tmp_path / "empty" / "sub").mkdir(parents=True)
    for folder in (tmp_path / "empty", tmp_path / "missing"):
        done = run_module("training.evaluate", "--checkpoint", str(calibrated_run / "best.pt"), "--unknown", str(folder),
                          "--out", str(tmp_path / "eval"))
        assert done.returncode == 2 and done.stderr.startswith("error: --unknown: ") and "Traceback" not in done.stderr
        assert not (tmp_path / "eval").exists()  # refused before the evaluation, which writes its report there


def test_a_reject_class_without_validation_images_warns_and_falls_back_to_the_known_classes_rule():
    rng = np.random.default_rng(0)
    targets = np.repeat([0, 1], 20)  # classes fist, palm; the reject class "none" (index 2) has no validation image
    logits = rng.normal(0, 1, (40, 3)).astype(np.float32)
    logits[np.arange(40), targets] += 3.0
    val = SplitOutputs(np.zeros((40, 1), np.float32), logits, targets, np.arange(40))
    with pytest.warns(UserWarning, match="none have no validation images"):
        rejection = calibrate(val, ["fist", "palm", "none"], ["none"], target_recall=0.9, score="max_softmax")
    assert rejection.calibrated and rejection.reject_classes == ("none",) and rejection.rule.startswith("known classes only")
    assert 0.0 < rejection.threshold <= 1.0


def outputs_with_scores(correct_scores: list[float], reject_scores: list[float]) -> SplitOutputs:
    """Validation outputs of a 2-gesture + 'none' model whose calibrated top probabilities (T = 1) are
    the given ones: every gesture image is classified right, every reject image is taken for gesture 0."""
    rows = []
    for score, target in [(p, i % 2) for i, p in enumerate(correct_scores)] + [(p, 2) for p in reject_scores]:
        top = target if target < 2 else 0
        rest = (1 - score) / 2  # the other two classes share what is left
        logits = np.log(np.full(3, rest))
        logits[top] = np.log(score)
        rows.append((logits, target))
    logits, targets = np.array([r[0] for r in rows], np.float32), np.array([r[1] for r in rows])
    return SplitOutputs(np.zeros((len(rows), 1), np.float32), logits, targets, np.arange(len(rows)))


@pytest.mark.parametrize("gestures, lost", [(336, 2), (250, 1), (120, 0)])
def test_the_threshold_keeps_the_target_recall_on_new_images_not_just_on_validation(gestures, lost):
    # Gesture scores 0.50, 0.51, ... (all right), reject-class images below them: any threshold up to the
    # lowest gesture score rejects them all; above it, each step loses one more gesture. At a 0.99
    # target, k lost of n is allowed while (k + 1) / (n + 1) <= 1%: validation's own k / n <= 1% would
    # allow one more (3 of 336, 2 of 250, 1 of 120) and lose more than 1% of new images.
    correct = [0.5 + 0.49 * i / gestures for i in range(gestures)]
    val = outputs_with_scores(correct, [0.3] * 20)
    outcome = Outcome.of(acceptance_scores(val, Rejection(), [2]), val, [2])
    threshold, rule = choose_threshold(outcome, 0.99, floor=0.0)
    assert sum(c < threshold - 1e-6 for c in correct) == lost, (threshold, rule)
    assert "new images" in rule


def test_too_few_validation_gestures_for_the_target_keep_the_floor_and_say_so():
    correct = [0.5 + 0.4 * i / 60 for i in range(60)]  # 60 gestures: even losing none, (0 + 1) / 61 > 1%
    with pytest.warns(UserWarning, match=r"60 validation gesture images are too few .* \(about 99 needed where it gets 100% of them right\): "
                      r"no threshold, only predictions of none say no gesture; add"):
        rejection = calibrate(outputs_with_scores(correct, [0.3] * 10), ["fist", "palm", "none"], ["none"], target_recall=0.99, score="max_softmax")
    assert rejection.threshold == 0.0  # only predictions of 'none' are rejected
    with pytest.warns(UserWarning, match="no threshold, with no reject class either, this model never says no gesture; add"):
        calibrate(outputs_with_scores(correct, [0.3] * 10), ["fist", "palm", "none"], [], target_recall=0.99, score="max_softmax")
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # at 0.95, 60 are enough
        assert calibrate(outputs_with_scores(correct, [0.3] * 10), ["fist", "palm", "none"], ["none"], target_recall=0.95, score="max_softmax").threshold > 0.3


def test_a_validation_split_no_better_than_chance_does_not_flatten_every_probability():
    """Three validation images, all wrong: the fitted temperature was 5,281,606 and every answer then
    read 1/3 for each class, in the checkpoint, the service and /info."""
    logits = np.array([[4.0, 0.0, -1.0], [0.0, 3.0, -2.0], [-1.0, 0.0, 5.0]])
    with pytest.warns(UserWarning, match=r"kept at 10.0, the end of its range 0.05-10.0 \(validation top-1 0%\)"):
        assert fit_temperature(logits, np.array([1, 2, 0])) == 10.0
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a model that is right on most of them: fitted as before, no warning
        assert 0.05 < fit_temperature(logits, np.array([0, 1, 1])) < 10.0


def test_a_prediction_of_a_reject_class_is_refused_by_what_the_model_predicts_not_by_the_true_label():
    """Calibration sets the score of every image the model puts in a reject class to -inf (always rejected): a rule
    that looked at the true label instead, of no use in service, passed the suite (a mutation)."""
    outputs = SplitOutputs(np.zeros((3, 1)), np.array([[0.0, 5.0], [5.0, 0.0], [0.0, 5.0]]), np.array([0, 1, 1]), np.arange(3))
    assert refuse_reject_predictions(outputs, [1], np.array([0.9, 0.8, 0.7])).tolist() == [-np.inf, 0.8, -np.inf]
