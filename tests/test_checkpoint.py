"""The checkpoint format and load_classifier: everything needed to serve comes back from the file alone."""

from __future__ import annotations

import collections
import contextlib
import io
import os
import signal
import subprocess
import sys
from pathlib import PurePosixPath

import numpy as np
import pytest
import torch

from gesture_core import build_model, decode_probs, get_backbone, load_classifier, save_checkpoint
from gesture_core.checkpoint import CheckpointError, load_checkpoint
from gesture_core.classifier import softmax
from gesture_core.weights import WeightsUnavailableError, load_state_dict_file
from tests.helpers import REPO, synthetic_image

REAL_TORCH_SAVE = torch.save


@pytest.fixture
def saved(tmp_path):
    torch.manual_seed(0)
    backbone = get_backbone("mobilenet_v3_large")
    model = build_model(backbone.name, 3, "none").eval()
    config = backbone.data_config.with_input_size(64)
    path = save_checkpoint(tmp_path / "run" / "best.pt", model=model, backbone=backbone.name, classes=["fist", "none", "palm"],
                           data_config=config, train_config={"lr": 0.001, "seed": 0}, metrics={"test": {"top1": 0.9}})
    return path, model, config


def test_round_trip_rebuilds_model_preprocess_and_classes(saved):
    path, model, config = saved
    classifier = load_classifier(path, device="cpu")
    assert classifier.classes == ["fist", "none", "palm"]
    assert classifier.backbone == "mobilenet_v3_large"
    assert classifier.data_config == config
    assert classifier.train_config["lr"] == 0.001 and classifier.metrics["test"]["top1"] == 0.9
    image = synthetic_image(1, seed=1, size=90)
    x = classifier.preprocess(image)[None]
    with torch.no_grad():
        expected = torch.softmax(model(x), 1).numpy()
    np.testing.assert_allclose(classifier.predict_proba([image]), expected, rtol=0, atol=1e-6)


def test_checkpoint_is_plain_data_loadable_with_weights_only(saved):
    ckpt = torch.load(saved[0], weights_only=True)
    assert {"format", "version", "backbone", "classes", "data_config", "train_config", "model"} <= set(ckpt)


def half_written_save(obj, f, *args, **kwargs):
    """torch.save (to a file object or a path) that writes half the checkpoint and then fails, like a full disk."""
    whole = io.BytesIO()
    REAL_TORCH_SAVE(obj, whole, *args, **kwargs)
    with open(f, "wb") if isinstance(f, str | os.PathLike) else contextlib.nullcontext(f) as out:
        out.write(whole.getvalue()[: len(whole.getvalue()) // 2])
    raise OSError(28, "No space left on device")


def test_interrupted_save_keeps_the_previous_checkpoint(saved, monkeypatch):
    path, model, _ = saved
    previous = path.read_bytes()
    monkeypatch.setattr(torch, "save", half_written_save)
    with pytest.raises((OSError, CheckpointError), match="No space left"):  # the error, or the project's wording of it
        save_checkpoint(path, model=build_model("mobilenet_v3_large", 3, "none"), backbone="mobilenet_v3_large",
                        classes=["a", "b", "c"], data_config=saved[2], train_config={})
    assert path.read_bytes() == previous
    assert load_checkpoint(path)["classes"] == ["fist", "none", "palm"]
    assert [p.name for p in path.parent.iterdir()] == ["best.pt"]  # the half-written temporary file is gone


KILLED_MID_SAVE = """
import contextlib, io, os, signal, sys, torch
from gesture_core.checkpoint import atomic_torch_save
real_save = torch.save
def killed_half_way(obj, f):
    whole = io.BytesIO()
    real_save(obj, whole)
    with open(f, "wb") if isinstance(f, str | os.PathLike) else contextlib.nullcontext(f) as out:
        out.write(whole.getvalue()[: len(whole.getvalue()) // 2])
        out.flush()
        os.kill(os.getpid(), signal.SIGKILL)  # no except or finally clause runs
torch.save = killed_half_way
atomic_torch_save({"format": "new", "weights": torch.zeros(1000)}, sys.argv[1])
"""


def test_a_process_killed_mid_save_leaves_the_previous_checkpoint(saved):
    path = saved[0]
    previous = path.read_bytes()
    done = subprocess.run([sys.executable, "-c", KILLED_MID_SAVE, str(path)], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert done.returncode == -signal.SIGKILL, done.stderr
    assert path.read_bytes() == previous
    assert load_checkpoint(path)["classes"] == ["fist", "none", "palm"]


def test_ctrl_c_during_a_save_lets_it_finish_and_then_interrupts(tmp_path, monkeypatch):
    """torch's zip writer turned the KeyboardInterrupt raised inside its write into a RuntimeError, which finetune
    and calibrate then told as a full disk (exit 2, "once there is room"): the interrupt now waits for the save."""
    from gesture_core.checkpoint import atomic_torch_save

    real_save = torch.save

    class CtrlCAtFirstWrite(io.RawIOBase):
        def __init__(self, f):
            self.f, self.sent = f, False

        def write(self, data):
            if not self.sent:
                self.sent = True
                os.kill(os.getpid(), signal.SIGINT)  # handled by Python at its next instruction: inside torch's writer
            return self.f.write(data)

    monkeypatch.setattr(torch, "save", lambda obj, f: real_save(obj, CtrlCAtFirstWrite(f)))
    # Python's handler, as from a terminal: a test process started in the background (`cmd &` in a script, nohup) ignores SIGINT
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        with pytest.raises(KeyboardInterrupt):
            atomic_torch_save({"weights": torch.arange(1000.0)}, tmp_path / "new.pt")
        assert signal.getsignal(signal.SIGINT) is signal.default_int_handler  # set back
    finally:
        signal.signal(signal.SIGINT, previous)
    assert torch.equal(torch.load(tmp_path / "new.pt", weights_only=True)["weights"], torch.arange(1000.0))


@pytest.mark.parametrize("content, message", [(b"garbage", "not a readable checkpoint"), (None, "does not exist")])
def test_bad_checkpoint_files_give_clear_errors(tmp_path, content, message):
    path = tmp_path / "x.pt"
    if content is not None:
        path.write_bytes(content)
    with pytest.raises(CheckpointError, match=message):
        load_checkpoint(path)


def test_a_file_of_python_objects_is_refused_without_advice_to_run_it(tmp_path):
    path = tmp_path / "pickled.pt"
    torch.save({"model": collections.OrderedDict(), "hook": contextlib.nullcontext(), "where": PurePosixPath("x")}, path)  # arbitrary objects
    with pytest.raises(CheckpointError) as refused:
        load_checkpoint(path)
    reason = str(refused.value)
    assert "pass a checkpoint training.finetune wrote (RUN/best.pt), or the run folder RUN" in reason, reason
    assert "contextlib.nullcontext" in reason and "pathlib.PurePosixPath" in reason, reason  # every one, not only the first refused
    assert "weights_only" not in reason  # torch's own message suggests weights_only=False, which would run the file
    with pytest.raises(WeightsUnavailableError, match=r"contextlib.nullcontext.*torch.save\(model.state_dict\(\), PATH\)"):
        load_state_dict_file(path)  # finetune --weights loads a state dict: that is what to save


def test_a_foreign_state_dict_is_not_mistaken_for_a_checkpoint(tmp_path):
    path = tmp_path / "sd.pt"
    torch.save(build_model("lenet5", 2, "none").state_dict(), path)
    with pytest.raises(CheckpointError, match="not a gesture-checkpoint file written by training.finetune: it holds a plain state dict, "
                                              "a model's weights without the classes .* pass it to training.finetune --weights"):
        load_checkpoint(path)


def write_empty(path):
    path.write_bytes(b"")


def write_pickle(path):
    import pickle

    path.write_bytes(pickle.dumps({"weights": [1.0, 2.0]}, protocol=4))


def write_zip(path):
    import zipfile

    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("photos/a.txt", "not a model")


def write_other_tools_checkpoint(path):
    torch.save({"epoch": 3, "model": build_model("lenet5", 2, "none").state_dict(), "optimizer": {}}, path)


@pytest.mark.parametrize("write, reason", [
    (write_empty, "is not a readable checkpoint: it is an empty file (0 bytes): an interrupted copy or download?"),
    (write_pickle, "is not a readable checkpoint: it is a Python pickle (pickle.dump), not a file torch.save wrote"),
    (write_zip, "is not a readable checkpoint: it is a zip archive, but not one torch.save wrote"),
    (write_other_tools_checkpoint, "written by training.finetune: it holds a dict of epoch, model, optimizer, another tool's checkpoint?"),
])  # fmt: skip
def test_a_file_that_is_no_checkpoint_is_told_for_what_it_is(tmp_path, write, reason):
    """Each was "truncated, corrupt, or not written by torch.save" (the zip with torch's C++ words, the pickle under
    torch's warning), or "not a gesture-checkpoint file" with no word of what it was."""
    import warnings

    path = tmp_path / "model.pt"
    write(path)
    with warnings.catch_warnings(record=True) as caught, pytest.raises(CheckpointError) as refused:
        warnings.simplefilter("always")
        load_checkpoint(path)
    assert reason in str(refused.value) and "inline_container" not in str(refused.value), str(refused.value)
    assert not [w for w in caught if "pickle protocol" in str(w.message)]


def test_a_checkpoint_of_a_newer_format_is_refused_by_its_version(tmp_path):
    """A file written by a later version of this code may mean something else by the same keys: a bound one
    version too loose passed the suite (a mutation)."""
    from gesture_core.checkpoint import CHECKPOINT_VERSION

    path = save_checkpoint(tmp_path / "best.pt", model=build_model("lenet5", 2, "none"), backbone="lenet5", classes=["a", "b"],
                           data_config=get_backbone("lenet5").data_config, train_config={})  # fmt: skip
    ckpt = torch.load(path, weights_only=True)
    assert ckpt["version"] == CHECKPOINT_VERSION and load_checkpoint(path)["version"] == CHECKPOINT_VERSION
    for newer in (CHECKPOINT_VERSION + 1, CHECKPOINT_VERSION + 2):
        torch.save({**ckpt, "version": newer}, tmp_path / "newer.pt")
        with pytest.raises(CheckpointError, match=f"has format version {newer}; this code reads up to {CHECKPOINT_VERSION}$"):
            load_checkpoint(tmp_path / "newer.pt")


def test_decode_probs_top_k_threshold_and_none_class():
    classes = ["fist", "none", "palm"]
    confident = decode_probs(np.array([0.1, 0.1, 0.8]), classes, k=2)
    assert confident.label == "palm" and [c for c, _ in confident.top_k] == ["palm", "fist"]
    assert decode_probs(np.array([0.3, 0.3, 0.4]), classes, threshold=0.5).label is None
    rejected = decode_probs(np.array([0.1, 0.8, 0.1]), classes)
    assert rejected.label is None and rejected.top_k[0][0] == "none"
    assert rejected.to_dict()["top_k"][0] == {"label": "none", "score": pytest.approx(0.8)}


def test_probabilities_are_a_stable_softmax_of_the_logits():
    logits = np.array([[1.0, 2.0, 3.0], [1000.0, 0.0, -1000.0], [-5.0, -5.0, -5.0]], np.float32)
    probs = softmax(logits)
    assert np.allclose(probs, torch.softmax(torch.from_numpy(logits), dim=1).numpy(), atol=1e-7)
    assert np.allclose(probs.sum(axis=1), 1.0) and np.isfinite(probs).all()


def test_a_pickled_model_or_a_file_this_user_cannot_read_is_told_what_to_pass(tmp_path, monkeypatch):
    """A whole pickled model was told to be saved as a plain state dict, which every command that takes a
    checkpoint then refuses; a file without read access was "truncated, corrupt, or not written by torch.save"."""
    import errno

    from gesture_core.checkpoint import CheckpointError, load_checkpoint
    from gesture_core.weights import unreadable_reason

    whole = tmp_path / "whole-model.pt"
    torch.save(torch.nn.Sequential(torch.nn.Linear(2, 2)), whole)
    with pytest.raises(CheckpointError, match=r"that a weights-only load does not run; pass a checkpoint training.finetune wrote \(RUN/best.pt\)"):
        load_checkpoint(whole)
    with pytest.raises(Exception) as refused:  # as finetune --weights loads a state dict: that advice stays
        torch.load(whole, weights_only=True)
    assert unreadable_reason(refused.value, whole).endswith("save the plain state dict instead: torch.save(model.state_dict(), PATH)")

    def denied(*args, **kwargs):
        raise PermissionError(errno.EACCES, "Permission denied", str(whole))

    monkeypatch.setattr(torch, "load", denied)  # root reads every file: the denial is simulated
    with pytest.raises(CheckpointError, match=r"is not a readable checkpoint: this user may not read it \(Permission denied\)"):
        load_checkpoint(whole)


def test_a_grayscale_model_passes_the_load_check_and_predicts_on_colour_photos(tmp_path):
    """--in-channels 1 trained, but the load check sent a one-channel test image to a pipeline of RGB crops:
    OpenCV's channel error stopped import_model (a traceback), the service and the webcam demo."""
    from gesture_core import DataConfig
    from gesture_core.classifier import load_verified_classifier

    torch.manual_seed(0)
    save_checkpoint(tmp_path / "gray.pt", model=build_model("lenet5", 3, "none", in_chans=1), backbone="lenet5",
                    classes=["fist", "palm", "peace"], data_config=DataConfig(input_size=32, resize_size=36).with_channels(1),
                    train_config={})
    checked = load_verified_classifier(tmp_path / "gray.pt", device="cpu", engine="torch")
    photo = synthetic_image(1, seed=3, size=48)
    assert checked.predict(photo, k=3) == load_classifier(tmp_path / "gray.pt", device="cpu", engine="torch").predict(photo, k=3)
