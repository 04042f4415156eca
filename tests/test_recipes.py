"""benchmarks.recipes: the sweep's quick mode end to end on tiny data, its table, and resuming."""

from __future__ import annotations

import json

import pytest

from benchmarks import recipes
from tests.helpers import make_image_folder


@pytest.fixture
def data_root(tmp_path):
    make_image_folder(tmp_path / "data" / "gestures", classes=("fist", "palm"), per_class=8, size=48)
    return tmp_path / "data"


def test_quick_sweep_writes_json_and_markdown_and_resumes(data_root, tmp_path, capsys):
    argv = ["--quick", "--data-root", str(data_root), "--datasets", "gestures", "--out", str(tmp_path / "sweep"), "--workers", "0", "--quiet"]
    assert recipes.main(argv) == 0
    result = json.loads((tmp_path / "sweep" / "recipes.json").read_text())
    rows = result["rows"]
    assert result["quick"] and [(r["recipe"], r["budget"], r["backbone"]) for r in rows] == [
        ("defaults", 1, "efficientnet_lite0"), ("old-defaults", 1, "efficientnet_lite0")]
    assert all(0.0 <= r["test_top1"] <= 1.0 and r["wall_s"] > 0 for r in rows)
    assert max(r["gap_to_best_pt"] for r in rows) == 0.0 and all(r["gap_to_best_pt"] <= 0 for r in rows)
    table = (tmp_path / "sweep" / "recipes.md").read_text()
    assert "| gestures | 1 | efficientnet_lite0 |" in table and "defaults - best" in table
    # --quick trains lite0, the default backbone, so its `defaults` run is the no-flags cell, set against the best
    no_flags = next(r for r in rows if r["recipe"] == "defaults")
    best = max(r["test_top1"] for r in rows)
    assert f"| gestures | 1 | {no_flags['test_top1']:.2%} | {best:.2%} |" in table
    # each quick dataset is a folder of links to the originals: nothing copied
    assert all(p.is_symlink() for p in (tmp_path / "sweep" / "quick-data" / "gestures" / "fist").iterdir())

    capsys.readouterr()
    assert recipes.main(argv) == 0  # resumed: every run is read back, none repeated
    assert capsys.readouterr().err.count("reusing") == 2
    assert json.loads((tmp_path / "sweep" / "recipes.json").read_text())["rows"] == rows

    run = tmp_path / "sweep" / "runs" / recipes.run_key("gestures", 1, "efficientnet_lite0", "defaults")
    report = (run / "metrics.json").stat().st_mtime
    (run / "metrics.json").unlink()  # interrupted after its last epoch, before its report
    assert recipes.main(argv) == 0
    said = capsys.readouterr().err
    assert said.count("reusing") == 1 and f"--resume {run}" in said  # resumed, not read back as finished
    assert (run / "metrics.json").stat().st_mtime > report


def test_defaults_table_sets_no_flags_against_the_best_of_any_backbone():
    rows = [{"dataset": "flowers", "budget": 3, "backbone": "efficientnet_lite0", "recipe": "defaults", "test_top1": 0.946},
            {"dataset": "flowers", "budget": 3, "backbone": "efficientnet_lite1", "recipe": "defaults", "test_top1": 0.938},
            {"dataset": "flowers", "budget": 3, "backbone": "efficientnet_lite1", "recipe": "ema", "test_top1": 0.940},
            {"dataset": "sign-digits", "budget": 3, "backbone": "efficientnet_lite0", "recipe": "defaults", "test_top1": 0.99}]
    lines = recipes.defaults_table(rows, "efficientnet_lite1").splitlines()
    assert "| flowers | 3 | 93.80% | 94.60% | efficientnet_lite0 defaults | -0.80 pt |" in lines
    assert "| sign-digits | 3 | not run | 99.00% | efficientnet_lite0 defaults |  |" in lines


def test_unknown_recipe_or_dataset_is_refused_with_the_choices(data_root, capsys):
    with pytest.raises(SystemExit) as stop:
        recipes.main(["--recipes", "defaults,magic"])
    assert stop.value.code == 2 and "magic" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        recipes.main(["--data-root", str(data_root), "--datasets", "nope"])
    assert "sign-digits" in capsys.readouterr().err
