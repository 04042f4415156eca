"""evaluate and calibrate on inputs a user gets wrong or cannot see: report folders of two data folders
named alike, a pre-split dataset, the run's own images passed as new or unknown ones, and validation
images that are missing, corrupt or absent."""

from __future__ import annotations

import json
import shutil

import pytest

import training.finetune as finetune
from tests.helpers import make_image_folder
from tests.test_finetune import tiny_config
from training.calibrate import main as calibrate_main
from training.evaluate import main as evaluate_main


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    return make_image_folder(tmp_path_factory.mktemp("data") / "gestures", per_class=6, size=40)


@pytest.fixture(scope="module")
def run(dataset, tmp_path_factory):
    """A finished one-epoch run with a validation and a test split: best.pt, last.pt, split.json."""
    return finetune.train(tiny_config(dataset, tmp_path_factory.mktemp("runs") / "run", epochs=1))


def one_error_line(capsys) -> str:
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith("error: "), err
    return err


def evaluated(report_folder) -> int:
    return json.loads((report_folder / "metrics.json").read_text())["test"]["n"]


def test_reports_of_two_folders_named_alike_are_both_kept(run, tmp_path, capsys):
    """--data x1/test, then --data x2/test: both wrote RUN/eval-test, and the second replaced the first."""
    folder = shutil.copytree(run, tmp_path / "run")
    x1, x2 = (make_image_folder(tmp_path / name / "test", per_class=n, size=40) for name, n in (("x1", 2), ("x2", 3)))
    assert evaluate_main(["--checkpoint", str(folder), "--data", str(x1), "--workers", "0"]) == 0
    assert evaluated(folder / "eval-test") == 6
    assert evaluate_main(["--checkpoint", str(folder), "--data", str(x2), "--workers", "0"]) == 0
    assert evaluated(folder / "eval-test") == 6 and evaluated(folder / "eval-test-2") == 9
    assert f"{folder / 'eval-test'} holds the report of {x1.resolve()}: this one goes to {folder / 'eval-test-2'}/" in capsys.readouterr().out

    assert evaluate_main(["--checkpoint", str(folder), "--data", str(x1), "--workers", "0"]) == 0  # the same data: its own report
    assert evaluate_main(["--checkpoint", str(folder), "--workers", "0"]) == 0  # the run's test split is other data too
    assert sorted(p.name for p in folder.glob("eval-*")) == ["eval-test", "eval-test-2", "eval-test-3"]
    assert (evaluated(folder / "eval-test"), evaluated(folder / "eval-test-2")) == (6, 9)


def test_calibrate_says_which_validation_images_it_skipped_and_counts_those_it_used(run, dataset, tmp_path, capsys):
    """One validation image deleted, one replaced by garbage: it printed "val features: 3 photos", named
    neither, and calibrated on the one left."""
    folder, data = shutil.copytree(run, tmp_path / "run"), shutil.copytree(dataset, tmp_path / "data")
    split = json.loads((folder / "split.json").read_text())
    (folder / "split.json").write_text(json.dumps({**split, "root": str(data)}))
    val = [data / path for path, _ in split["val"]]
    assert len(val) >= 3
    val[0].unlink()
    val[1].write_bytes(b"not a photo")
    with pytest.warns(UserWarning, match=rf"2 of the {len(val)} validation images skipped, e\.g\. {val[0]}: unreadable"):
        assert calibrate_main(["--checkpoint", str(folder), "--workers", "0"]) == 0
    assert f"val features: {len(val) - 2} photos" in capsys.readouterr().out


def test_calibrate_refuses_a_run_without_validation_images(dataset, tmp_path, capsys):
    """--val-split 0: it printed "uncalibrated: no validation images", then "calibrated RUN/best.pt", exit 0."""
    run = finetune.train(tiny_config(dataset, tmp_path / "run", epochs=1, val_split=0.0, test_split=0.0))
    best = (run / "best.pt").read_bytes()
    assert calibrate_main(["--checkpoint", str(run), "--workers", "0"]) == 2
    err = one_error_line(capsys)
    assert f"{run / 'split.json'} lists no validation images: nothing to calibrate on" in err and "--val-split" in err
    assert (run / "best.pt").read_bytes() == best


def test_evaluate_refuses_learned_gestures_as_unknown_ones(run, dataset, tmp_path, capsys):
    """The training folder as --unknown was reported as never-learned gestures "answered 'no gesture'"."""
    argv = ["--checkpoint", str(run), "--workers", "0", "--out", str(tmp_path / "eval")]
    assert evaluate_main([*argv, "--unknown", str(dataset)]) == 2
    assert f"--unknown: {dataset} has folder(s) named after gestures the model learned: fist, palm, peace" in one_error_line(capsys)
    assert evaluate_main([*argv, "--unknown", str(dataset / "fist")]) == 2  # the images directly: named by split.json
    assert f"6 of the 6 images in {dataset / 'fist'} are the run's own images" in one_error_line(capsys)
    assert not (tmp_path / "eval").exists()
    unknown = make_image_folder(tmp_path / "unknown", classes=("wave", "ok"), per_class=2, size=40)
    assert evaluate_main([*argv, "--unknown", str(unknown)]) == 0


def test_evaluate_a_presplit_dataset_scores_its_test_folder(run, tmp_path, capsys):
    """DATA/{train,test}: "has classes the model does not know: test, train"."""
    data = tmp_path / "presplit"
    make_image_folder(data / "train", per_class=2, size=40)
    make_image_folder(data / "test", per_class=3, size=40)
    assert evaluate_main(["--checkpoint", str(run), "--data", str(data), "--workers", "0", "--out", str(tmp_path / "eval")]) == 0
    assert f"--data {data} is a pre-split dataset (train/, test/): evaluating its test split, {data / 'test'}" in capsys.readouterr().out
    assert evaluated(tmp_path / "eval") == 9


def test_evaluate_on_the_training_folder_warns_that_the_score_is_inflated(run, dataset, tmp_path):
    trained = len(json.loads((run / "split.json").read_text())["train"])
    with pytest.warns(UserWarning, match=rf"{trained} of the 18 images evaluated are the run's training images"):
        assert evaluate_main(["--checkpoint", str(run), "--data", str(dataset), "--workers", "0", "--out", str(tmp_path / "eval")]) == 0
