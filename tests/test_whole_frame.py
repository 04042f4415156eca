"""Whole-frame input (--crop letterbox|resize): kept in the checkpoint, and the same pixels in training
evaluation, load_classifier and the served model."""

from __future__ import annotations

import json
import re

import cv2
import httpx
import numpy as np
import pytest
import torch

import training.finetune as finetune
from benchmarks.server_process import serve_process
from gesture_core import DataConfig, Preprocess, get_backbone, load_checkpoint, load_classifier, save_checkpoint
from gesture_core.backbones import build_model
from gesture_core.preprocess import frame_shape_note
from service.webcam.demo import EXIT_OK, main
from service.webcam.scoring import RemoteScorer
from tests.helpers import synthetic_image, write_rgb
from tests.test_service_integration import assert_same_as_local, import_cli
from training.augment import build_eval_transform
from training.config import TrainConfig
from training.data import ImageDataset, Sample


def wide_frame(hand_x: int, seed: int = 0, size=(90, 160)) -> np.ndarray:
    """A 16:9 frame of dark noise with a red 'hand' centred at column ``hand_x``."""
    rng = np.random.default_rng(seed)
    frame = rng.integers(0, 60, (*size, 3), dtype=np.uint8)
    cv2.circle(frame, (hand_x, size[0] // 2), max(12, size[0] // 10), (230, 30, 30), -1)
    return frame


def red_pixels(crop: np.ndarray) -> int:
    return int(((crop[:, :, 0] > 180) & (crop[:, :, 1] < 80)).sum())


@pytest.mark.parametrize("crop", ["letterbox", "resize"])
def test_whole_frame_keeps_a_hand_at_the_edge_that_the_centre_crop_drops(crop):
    frame = wide_frame(hand_x=14)
    centre = DataConfig(input_size=64, resize_size=64)
    assert red_pixels(Preprocess(centre).crop(frame)) == 0
    whole = Preprocess(centre.with_crop(crop)).crop(frame)
    assert whole.shape == (64, 64, 3) and red_pixels(whole) > 50
    if crop == "letterbox":  # padding in the mean colour, above and below the 16:9 frame
        assert (whole[:5] == np.array([round(255 * m) for m in centre.mean], np.uint8)).all()


def test_old_checkpoints_without_a_crop_keep_the_centre_crop():
    stored = DataConfig().to_dict()
    del stored["crop"]
    assert DataConfig.from_dict(stored).crop == "center"
    with pytest.raises(ValueError, match="center, letterbox, resize"):
        DataConfig(crop="zoom")


@pytest.fixture(scope="module")
def letterbox_checkpoint(tmp_path_factory):
    torch.manual_seed(0)
    config = get_backbone("efficientnet_lite0").data_config.with_input_size(96).with_crop("letterbox")
    path = tmp_path_factory.mktemp("letterbox") / "best.pt"
    save_checkpoint(path, model=build_model("efficientnet_lite0", 4, "imagenet"), backbone="efficientnet_lite0",
                    classes=["fist", "left", "palm", "right"], data_config=config, train_config={"crop": "letterbox"},
                    frame_aspect=4 / 3)  # fmt: skip
    return path


@pytest.fixture(scope="module")
def wide_jpegs(tmp_path_factory) -> list:
    folder = tmp_path_factory.mktemp("frames")
    return [write_rgb(folder / f"frame{i}.jpg", wide_frame(hand_x=x, seed=i, size=(480, 640))) for i, x in enumerate((30, 320, 610))]


@pytest.mark.integration
def test_training_eval_load_classifier_and_the_service_see_the_same_whole_frame(letterbox_checkpoint, wide_jpegs, tmp_path):
    classifier = load_classifier(letterbox_checkpoint, device="cpu", engine="torch")
    config = DataConfig.from_dict(load_checkpoint(letterbox_checkpoint)["data_config"])
    assert config.crop == "letterbox" and classifier.data_config == config
    training_eval = ImageDataset([Sample(str(p), 0) for p in wide_jpegs], build_eval_transform(config), min_side=config.resize_size)
    from_training = torch.stack([training_eval[i][0] for i in range(len(wide_jpegs))])
    assert torch.equal(from_training, classifier.preprocess.load_batch(wide_jpegs))
    # The hand at x=30 of 640 is outside the centre square; the served model must still see it.
    assert red_pixels(classifier.preprocess.denormalize(from_training[0])) > 20

    served_probs = serve_and_predict(letterbox_checkpoint, wide_jpegs, tmp_path / "home")
    reference = classifier.predict_proba([p.read_bytes() for p in wide_jpegs])
    centre = load_classifier(letterbox_checkpoint, device="cpu", engine="torch")
    centre.preprocess = Preprocess(config.with_crop("center"))
    centre_probs = centre.predict_proba([p.read_bytes() for p in wide_jpegs])
    for served, probs, other in zip(served_probs, reference, centre_probs, strict=True):
        assert_same_as_local(served, probs, classifier.classes, atol=1e-4)
        assert np.abs(probs - other).max() > 1e-3  # so the comparison above can tell the crops apart


def serve_and_predict(checkpoint, images, home) -> list[dict]:
    """/predict answers of a real `bentoml serve` of ``checkpoint`` (torch engine, as the reference)."""
    import_cli(checkpoint, home)
    env = {"GESTURE_ENGINE": "torch"}
    with serve_process(bentoml_home=home, env=env, ready_timeout=600) as server:  # generous: a loaded 2-core machine starts it slowly
        with httpx.Client(base_url=server.url, timeout=120) as http:
            info = http.post("/info").json()
            assert info["crop"] == "letterbox" and info["frame_aspect"] == pytest.approx(4 / 3)  # how the served model sees a frame
            # so the remote webcam says what a local one says of frames of another shape than the training frames'
            remote = RemoteScorer(server.url)
            assert remote.frame_shape_note(1920, 1080) == load_classifier(checkpoint, device="cpu").frame_shape_note(1920, 1080)
            assert remote.frame_shape_note(1920, 1080).startswith("these frames are 1080x1920 (portrait)") and remote.rejection()
            assert remote.frame_shape_note(480, 640) is None
            answers = [http.post("/predict", files={"image": (p.name, p.read_bytes(), "image/jpeg")}, data={"top_k": "4"}) for p in images]
    assert all(a.status_code == 200 for a in answers), [a.text for a in answers]
    return [a.json() for a in answers]


def wide_run(tmp_path, name) -> TrainConfig:
    """A tiny run on 4:3 images named by ``name(class, i)``, with the default --crop auto."""
    for label, cls in enumerate(("fist", "palm")):
        for i in range(12):
            write_rgb(tmp_path / "d" / cls / name(cls, i), synthetic_image(label, seed=i, size=64)[:48])  # 4:3
    return TrainConfig(backbone="lenet5", data=str(tmp_path / "d"), out=str(tmp_path / "run"), weights="none", epochs=1,
                       image_size=32, workers=0, val_split=0.25, test_split=0.25)  # fmt: skip


def test_the_default_crop_auto_keeps_the_whole_frame_of_wide_recordings_and_stores_it(tmp_path, capsys):
    # the capture tool's names: four sessions per class, so the split finds recordings
    out = finetune.train(wide_run(tmp_path, lambda cls, i: f"{cls}-20260101-12000{i % 4}-{i}.jpg"))
    assert re.search(r"input geometry: resize, the whole frame \(--crop auto: recordings, (\d+) of \1 sampled images are 1.2:1 or wider\)",
                     capsys.readouterr().out)
    assert load_checkpoint(out / "best.pt")["data_config"]["crop"] == "resize"
    assert json.loads((out / "config.json").read_text())["crop"] == "resize"
    assert load_checkpoint(out / "best.pt")["frame_aspect"] == pytest.approx(64 / 48, abs=0.01)  # the frames' shape
    # the webcam says when a whole-frame model sees frames of another shape: a phone held upright
    for size, said in [((96, 48), True), ((48, 64), False), ((27, 48), False)]:  # 1:2 portrait, 4:3 and 16:9 landscape
        logged = []
        assert main(["--checkpoint", str(out), "--source", str(one_colour_clip(tmp_path / f"{size}.avi", size)), "--headless"],
                    log=logged.append) == EXIT_OK
        notes = [line for line in logged if "this model was trained on whole frames" in line]
        assert notes == ([f"note: these frames are {size[1]}x{size[0]} (portrait), and this model was trained on whole frames of about "
                          "1.33:1 (landscape), each squeezed to a square: hands here take another shape than any it learnt, and it "
                          "may read them worse; turn the camera to match, or train on frames like these"] if said else []), logged


def test_the_frames_shape_is_their_median_and_none_for_frames_of_many_shapes(tmp_path):
    from training.augment import frame_aspect, sampled_sizes

    def frames(name, shapes):
        return [str(write_rgb(tmp_path / name / f"{i}.png", np.zeros(shape, np.uint8))) for i, shape in enumerate(shapes)]

    assert frame_aspect(sampled_sizes(frames("landscape", [(48, 64, 3)] * 9 + [(64, 48, 3)] * 3))) == pytest.approx(4 / 3, abs=0.01)
    # a third portrait: the model learnt both shapes, and neither is "the" shape to note others against
    assert frame_aspect(sampled_sizes(frames("mixed", [(48, 64, 3)] * 8 + [(64, 48, 3)] * 4))) is None
    assert sampled_sizes([str(tmp_path / "missing.png")]) == [] and frame_aspect([]) is None


def one_colour_clip(path, size: tuple[int, int], frames: int = 3):
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), 10.0, size[::-1])
    for _ in range(frames):
        writer.write(np.full((*size, 3), 90, np.uint8))
    writer.release()
    return path


def test_a_frame_shape_note_only_for_whole_frame_models_of_known_frames():
    landscape = frame_shape_note("letterbox", 4 / 3, 1080, 1920)
    assert landscape.startswith("these frames are 1080x1920 (portrait), and this model was trained on whole frames of about 1.33:1 "
                                "(landscape), each letterboxed to a square")
    assert frame_shape_note("resize", 9 / 16, 640, 480).startswith("these frames are 640x480 (landscape)")
    square = frame_shape_note("resize", 1.0, 1920, 1080)
    assert square.startswith("these frames are 1920x1080 (landscape), and this model was trained on whole frames of about 1.00:1 (square)")
    assert frame_shape_note("resize", 4 / 3, 1920, 1080) is None  # 16:9 on 4:3 is near enough
    assert frame_shape_note("center", 4 / 3, 1080, 1920) is None  # its centre square is what it trained on
    assert frame_shape_note("resize", None, 1080, 1920) is None  # trained before the shape was stored


def test_the_default_crop_auto_keeps_the_centre_of_wide_photos_taken_one_by_one(tmp_path, capsys):
    out = finetune.train(wide_run(tmp_path, lambda cls, i: f"{'abcdefghijkl'[i]}{cls}.jpg"))
    assert "input geometry: center crop (--crop auto: photos taken one by one, framed around their subject" in capsys.readouterr().out
    assert load_checkpoint(out / "best.pt")["data_config"]["crop"] == "center"
    assert "frame_aspect" not in load_checkpoint(out / "best.pt")  # a centre crop is square whatever the frame


@pytest.mark.parametrize("frame", [(640, 480), (480, 640), (1920, 1080), (1080, 1920)])
def test_crop_auto_keeps_the_whole_frame_of_recordings_held_either_way_round(frame):
    """A phone held upright records 1080x1920: as far from square as a landscape frame, and its hand is as likely
    at the top or bottom edge as a webcam's at the sides. A rule that measured width/height alone gave portrait
    recordings the centre crop (a mutation the suite passed)."""
    from training.augment import resolve_crop

    assert resolve_crop("auto", [frame] * 10, recordings=True)[0] == "resize"
    assert resolve_crop("auto", [frame] * 10, recordings=False)[0] == "center"
    assert resolve_crop("auto", [(500, 500)] * 10, recordings=True)[0] == "center"


def test_exported_metadata_describes_the_whole_frame_geometry(tmp_path):
    from training.export import export_metadata

    config = get_backbone("lenet5").data_config.with_crop("letterbox")
    path = save_checkpoint(tmp_path / "best.pt", model=build_model("lenet5", 2, "none"), backbone="lenet5", classes=["a", "b"],
                           data_config=config, train_config={})  # fmt: skip
    recipe = export_metadata(load_classifier(path, device="cpu", engine="torch"))["preprocess"]
    assert "resize longer side to 32" in recipe and "pad to 32x32" in recipe and "centre crop" not in recipe


@pytest.mark.parametrize("crop", ["letterbox", "resize"])
def test_training_geometry_starts_from_the_served_whole_frame(crop):
    """Training's whole-frame step is Preprocess.crop itself (interpolation and pad colour included)."""
    from training.augment import _whole_frame_geometry

    config = get_backbone("efficientnet_lite0").data_config.with_input_size(96).with_crop(crop)
    frame = cv2.resize(synthetic_image(1, seed=5, size=64), (640, 360))  # a 16:9 frame
    trained = _whole_frame_geometry(config, preset="light")[0](image=frame)["image"]
    assert np.array_equal(trained, Preprocess(config).crop(frame))
