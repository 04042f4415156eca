"""The Classifier as a library user calls it: what it takes, and a clear error, naming what it takes,
for what it does not (a wrong input answered, or a traceback from deep inside NumPy or torch, before)."""

from __future__ import annotations

import re
import shutil

import cv2
import numpy as np
import pytest
import torch

from gesture_core import ClassScores, load_checkpoint, load_classifier, resolve_device
from gesture_core.checkpoint import CheckpointError
from gesture_core.classifier import decode_probs
from gesture_core.images import ImageDecodeError, read_rgb
from tests.helpers import REPO, synthetic_image, write_rgb


@pytest.fixture(scope="module")
def classifier(random_head_checkpoint):
    return load_classifier(random_head_checkpoint, "cpu", engine="torch")


@pytest.fixture(scope="module")
def image() -> np.ndarray:
    return synthetic_image(2, seed=7, size=160)


def test_predict_proba_takes_several_images_and_refuses_one_taken_as_a_batch(classifier, image, tmp_path):
    """One 48x48 array gave 48 answers (a row each), a path was read letter by letter."""
    path = write_rgb(tmp_path / "one.png", image)
    expected = classifier.predict_proba([image])
    assert expected.shape == (1, 10)
    np.testing.assert_allclose(classifier.predict_proba(image[None]), expected, atol=1e-6)  # an N x H x W x C array
    np.testing.assert_allclose(classifier.predict_proba(p for p in [path]), expected, atol=1e-6)
    for one in (image, image[:, :, 0], str(path), path, path.read_bytes()):
        with pytest.raises(ValueError, match=r"predict_proba takes several images .*: pass \[image\], or use predict\(image\)"):
            classifier.predict_proba(one)


@pytest.mark.parametrize("crop, what", [
    (np.zeros((128, 128, 3), np.float32), "float32 (128, 128, 3)"),  # a 0-1 crop was normalised as 0-255
    (np.zeros((128, 128, 3), np.uint16), "uint16 (128, 128, 3)"),
    (np.zeros((128, 128, 4), np.uint8), "uint8 (128, 128, 4)"),
    (np.zeros((100, 100, 3), np.uint8), "uint8 (100, 100, 3)"),
    ("photo.jpg", "str"),
], ids=["float", "16-bit", "RGBA", "size", "path"])
def test_classify_takes_the_crops_crop_makes_and_names_the_one_that_is_not(classifier, image, crop, what):
    good = classifier.crop(image)
    for call in (classifier.classify, classifier.classify_scores, classifier.classify_logits):
        with pytest.raises(ValueError, match=r"uint8 RGB arrays of shape \(128, 128, 3\); crop 1 is " + re.escape(what)):
            call([good, crop])
    with pytest.raises(ValueError, match=r"a list of crops, e.g. \[classifier.crop\(image\)\], not one array of shape \(128, 128, 3\)"):
        classifier.classify(good)


def test_decide_refuses_scores_of_another_model_or_not_numbers(classifier, image):
    scores = classifier.classify_scores([classifier.crop(image)])[0]
    assert classifier.decide(scores).top_k  # the model's own row
    for row, reason in ((scores.probs[:3], r"10 probabilities, one per class, got shape \(3,\)"),
                        (np.full(10, np.nan), "NaN or infinity"), (scores.probs[None], r"got shape \(1, 10\)")):
        with pytest.raises(ValueError, match=reason):
            classifier.decide(ClassScores(row, scores.gesture))
    with pytest.raises(ValueError, match="NaN or infinity"):
        decode_probs(scores.probs, classifier.classes, gesture=float("nan"))  # NaN was below no threshold: accepted


@pytest.mark.parametrize("k", [0, -1, 2.5, True, None, "3"])
def test_k_is_a_whole_number_of_at_least_one(classifier, image, k):
    with pytest.raises(ValueError, match=rf"k \(how many classes to list\) must be an int of at least 1, got {k!r}"):
        classifier.predict(image, k=k)


def test_k_above_the_class_count_lists_every_class_as_the_service_does(classifier, image):
    assert len(classifier.predict(image, k=100).top_k) == len(classifier.classes) == len(classifier.predict(image, k=np.int64(10)).top_k)


def test_a_threshold_is_any_real_number_from_0_to_1_but_not_a_bool(classifier, image):
    assert classifier.predict(image, threshold=np.float32(1.0)).label is None  # "must be between 0 and 1, got 1.0" before
    for bad, reason in ((True, "must be a number"), ("0.5", "must be a number"), (1.5, "between 0 and 1")):
        with pytest.raises(ValueError, match=reason):
            classifier.predict(image, threshold=bad)
    with pytest.raises(ValueError, match="between 0 and 1"):
        decode_probs(np.full(10, 0.1), classifier.classes, threshold=5)


def test_a_bgr_frame_keeps_the_decoding_limits(classifier, image):
    with pytest.raises(ImageDecodeError, match="above the limit of 100"):
        classifier.crop(image[:, :, ::-1], bgr=True, max_pixels=100)  # ignored with bgr=True before
    with pytest.raises(TypeError, match=r"a BGR frame \(bgr=True\) is a numpy array"):
        classifier.predict(b"\xff\xd8\xff", bgr=True)


def test_a_run_folder_loads_its_best_checkpoint_as_the_commands_take_it(random_head_checkpoint, tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    with pytest.raises(CheckpointError, match=f"checkpoint {run} is a folder: pass a checkpoint file"):
        load_checkpoint(run)
    with pytest.raises(CheckpointError, match="is a folder"):  # "does not exist", before
        load_classifier(run, "cpu")
    shutil.copy(random_head_checkpoint, run / "best.pt")
    assert load_classifier(run, "cpu", engine="torch").classes == [str(i) for i in range(10)]


@pytest.mark.parametrize("device", ["gpu", "CPU", "mps", "tpu:0"])
def test_a_device_is_one_of_the_choices_named(device):
    with pytest.raises(ValueError, match=rf"device '{device}' is not one of auto, cpu, cuda or cuda:N"):
        resolve_device(device)


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without a CUDA GPU")
def test_a_gpu_on_a_machine_without_cuda_says_which_devices_will_do():
    with pytest.raises(ValueError, match=r"device cuda:1 requested but CUDA is not available here; use auto or cpu"):
        resolve_device("cuda:1")
    assert resolve_device(torch.device("cpu")) == torch.device("cpu") == resolve_device("auto")


def test_the_python_pages_example_runs_as_written(random_head_checkpoint, sign_digits, monkeypatch, capsys):
    """docs/python-api.md's block, on a checkpoint of ten classes in place of the set-up's run."""
    page = (REPO / "docs" / "python-api.md").read_text()
    block = re.search(r"```python\n(.*?)```", page, re.DOTALL).group(1)
    assert block.count("runs/sign-digits-efficientnet_lite0/best.pt") == 1
    monkeypatch.chdir(REPO)  # its paths are the README's, from the repository
    exec(block.replace("runs/sign-digits-efficientnet_lite0/best.pt", str(random_head_checkpoint)), {})  # noqa: S102
    printed = capsys.readouterr().out.splitlines()
    assert printed[2].startswith("(2, 10) [") and len(printed) == 3


def test_a_stored_reject_class_of_any_name_is_no_gesture_and_a_score_at_the_threshold_is_kept(random_head_checkpoint, image, tmp_path):
    """Two rules that passed the suite when broken (mutations), since its tests compared predict with evaluate's
    decisions, which come from the same decide: the reject classes stored at training (--reject-class 3, a name no
    "no gesture" word matches) were ignored for the name rule, and a score equal to the threshold was turned away."""
    top = load_classifier(random_head_checkpoint, "cpu", engine="torch").predict(image).top_k[0][0]
    ckpt = torch.load(random_head_checkpoint, weights_only=True)
    ckpt["rejection"] = {"reject_classes": [top], "temperature": 1.0, "threshold": 0.0, "calibrated": True, "rule": "test", "score": "max_softmax"}
    torch.save(ckpt, tmp_path / "best.pt")
    answer = load_classifier(tmp_path / "best.pt", "cpu", engine="torch").predict(image)
    assert answer.label is None and answer.top_k[0][0] == top
    assert decode_probs(np.array([0.6, 0.4]), ["a", "b"], threshold=0.6).label == "a"
    assert decode_probs(np.array([0.6, 0.4]), ["a", "b"], threshold=0.6000001).label is None
    assert decode_probs(np.array([0.3, 0.7]), ["a", "b"], gesture=0.25, threshold=0.25).label == "b"
    assert decode_probs(np.array([0.2, 0.8]), ["nothing", "b"], reject_classes=()).label == "b"  # only the stored ones


def test_predict_proba_takes_opencv_frames_as_predict_does(classifier, image):
    """bgr=True was documented for predict_proba's items, and a TypeError: dropped, the colours were read swapped."""
    frames = [image[:, :, ::-1].copy(), synthetic_image(5, seed=3, size=160)[:, :, ::-1].copy()]
    np.testing.assert_allclose(classifier.predict_proba(frames, bgr=True), classifier.predict_proba([f[:, :, ::-1] for f in frames]), atol=1e-6)
    assert classifier.predict(frames[0], bgr=True) == classifier.predict(image)


def test_decode_gives_the_pixels_predict_reads_of_a_large_jpeg(classifier, tmp_path):
    """A large JPEG is read reduced by its decoder; the same file read whole and averaged down is other pixels, so a
    caller that decodes files itself (the webcam's photos) got other answers than predict's, until it used decode."""
    path = tmp_path / "large.jpg"
    cv2.imwrite(str(path), cv2.resize(synthetic_image(4, seed=5, size=160), (1280, 960)), [cv2.IMWRITE_JPEG_QUALITY, 95])
    decoded = classifier.decode(path)
    assert decoded.shape[0] < 960 and np.array_equal(classifier.crop(decoded), classifier.crop(path))
    assert classifier.predict(decoded) == classifier.predict(path)
    assert not np.array_equal(classifier.crop(read_rgb(path)), classifier.crop(path))  # why decode is needed


def test_a_float_image_a_jitter_took_past_1_is_still_0_to_1_and_a_normalised_one_is_refused(classifier, image):
    """One pixel at 1.001 made a 0-1 image 0-255, so black: "no gesture" where the same image said a digit."""
    as_floats = image.astype(np.float32) / 255
    as_floats[0, 0, 0] = 1.001
    assert classifier.crop(as_floats).mean() == pytest.approx(classifier.crop(image).mean(), abs=0.01)
    assert np.abs(classifier.crop(image.astype(np.float64)).astype(int) - classifier.crop(image)).max() == 0  # 0-255 floats
    normalised = (as_floats - 0.5) / 0.25
    with pytest.raises(ImageDecodeError, match=r"float image whose pixels run from -2 to 2, as a normalised tensor's do"):
        classifier.crop(normalised)
    overshoot = cv2.resize(as_floats, (320, 320), interpolation=cv2.INTER_LANCZOS4)  # below 0 at the edges, as resampling goes
    assert overshoot.min() < -0.01 and classifier.crop(overshoot).shape == (128, 128, 3)
    assert classifier.crop(overshoot * 255).shape == (128, 128, 3)


def test_crops_stacked_in_one_array_are_classified_and_preprocess_refuses_what_is_no_8_bit_image(classifier, image):
    crops = [classifier.crop(image), classifier.crop(image[::-1])]
    np.testing.assert_array_equal(classifier.classify(np.stack(crops)), classifier.classify(crops))  # numpy's "truth value" error before
    with pytest.raises(ValueError, match="no crops to normalise: pass at least one image"):
        classifier.classify([])
    preprocess = classifier.preprocess
    for bad, what in ((image / 255.0, r"image 0 is float64 of shape \(128, 128, 3\)"), (image[:, :, 0], r"image 0 is uint8 of shape \(128, 128\)")):
        with pytest.raises(ValueError, match=r"Preprocess takes uint8 RGB images \(H x W x 3, 0-255\); " + what):
            preprocess(bad)  # a 0-1 image came out about -1 everywhere, answered without a word


def test_decide_takes_probabilities_not_logits(random_head_checkpoint, image, tmp_path):
    ckpt = torch.load(random_head_checkpoint, weights_only=True)
    ckpt["rejection"] = {"reject_classes": [], "temperature": 1.0, "threshold": 0.5, "calibrated": True, "rule": "test", "score": "max_softmax"}
    torch.save(ckpt, tmp_path / "best.pt")
    classifier = load_classifier(tmp_path / "best.pt", "cpu", engine="torch")
    crop = classifier.crop(image)
    assert classifier.decide(classifier.classify([crop])[0]) == classifier.predict(image)
    logits = classifier.classify_logits([crop])[0][0]
    with pytest.raises(ValueError, match=r"decide takes probabilities, each 0-1 and summing to 1; these run .* \(logits\?\)"):
        classifier.decide(logits)  # a "probability" of -0.08 in the answer, before
    with pytest.raises(ValueError, match="the gesture score is a 0-1 rank, got 5"):
        classifier.decide(ClassScores(np.full(10, 0.1), 5.0))


def test_a_crop_is_the_callers_array_never(classifier):
    """An image already at the model's sizes came back as itself: filling the frame buffer again before classify (a
    camera's) changed the answer."""
    size = classifier.data_config.resize_size
    frame = synthetic_image(4, seed=1, size=size)
    crop = classifier.crop(frame)
    assert not np.shares_memory(crop, frame)
    assert classifier.crop(frame, min_side=size).shape == crop.shape  # a caller's min_side: a duplicate keyword before


def test_hand_and_whole_image_calls_refuse_the_other_kind_of_model(classifier, image, tmp_path):
    from gesture_core import DataConfig, build_model, save_checkpoint

    save_checkpoint(tmp_path / "hands.pt", model=build_model("lenet5", 2, "none"), backbone="lenet5", classes=["a", "b"],
                    data_config=DataConfig(input_size=32, resize_size=36).with_hands(True), train_config={})  # fmt: skip
    hands_model = load_classifier(tmp_path / "hands.pt", "cpu", engine="torch")
    for call, name in ((lambda: hands_model.crop(image), "crop"), (lambda: hands_model.predict_proba([image]), "predict_proba")):
        with pytest.raises(ValueError, match=rf"this model classifies hand crops \(trained with --hands\), not whole images: .* instead of {name}\("):
            call()
    with pytest.raises(ValueError, match=r"k \(how many classes to list\) must be an int of at least 1"):
        hands_model.decide_hands([], [], k=0)  # no hand, so no row to decide: k went unchecked
    for call, name in ((lambda: classifier.predict_hands(image), "predict_hands"), (lambda: classifier.hand_crops(image, []), "hand_crops"),
                       (lambda: classifier.decide_hands([], []), "decide_hands")):
        with pytest.raises(ValueError, match=rf"this model classifies whole images \(trained without --hands\), not hand crops: .* instead of {name}\("):
            call()  # a whole-image model answered, confidently, about crops unlike anything it learnt


def test_a_checkpoint_saved_with_numpy_values_loads(tmp_path, image):
    """NumPy scalars in the data config and a NumPy array of class names were written without a word, and the
    weights-only load every reader uses refused the file ("holds Python objects (numpy...)")."""
    from gesture_core import DataConfig, build_model, save_checkpoint

    config = DataConfig(input_size=np.int64(32), resize_size=np.int32(36), mean=[np.float32(0.5)] * 3, std=np.array([0.25] * 3))
    assert hash(config) and config.input_size == 32 and type(config.input_size) is int and config.mean == (0.5, 0.5, 0.5)
    save_checkpoint(tmp_path / "np.pt", model=build_model("lenet5", 2, "none"), backbone="lenet5", classes=np.array(["a", "b"]),
                    data_config=config, train_config={"lr": np.float64(0.01), "sizes": np.arange(2)}, metrics={"top1": np.float32(0.5)})
    loaded = load_classifier(tmp_path / "np.pt", "cpu", engine="torch")
    assert loaded.classes == ["a", "b"] and loaded.data_config == config and loaded.predict(image).top_k
    assert loaded.checkpoint_meta["train_config"] == {"lr": 0.01, "sizes": [0, 1]}
    with pytest.raises(ValueError, match=r"classes must be names \(str\), got 1, 2"):
        save_checkpoint(tmp_path / "ints.pt", model=build_model("lenet5", 2, "none"), backbone="lenet5", classes=[1, 2], data_config=config,
                        train_config={})
