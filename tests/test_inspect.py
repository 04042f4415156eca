"""training.inspect: the seed papers' layer tables, checked against their published numbers."""

from __future__ import annotations

import json

import pytest
import torchvision

from training.inspect import inspect_backbone, main


def param_column(summary) -> list[int]:
    return [r.params for r in summary.layers if r.params]


def test_lenet5_matches_the_seed_table():
    s = inspect_backbone("lenet5", input_size=32, in_chans=1, num_classes=10)
    assert param_column(s) == [156, 2416, 48120, 10164, 850]
    assert s.total_params == 61_706
    shapes = {r.name: r.output_shape for r in s.layers}
    assert shapes["features.0"] == [6, 28, 28] and shapes["features.3"] == [16, 10, 10] and shapes["fc"] == [10]
    # C1: 28*28*6 outputs x 25 taps; C3: 10*10*16 x 150; then the three dense layers.
    assert s.total_macs == 28 * 28 * 6 * 25 + 10 * 10 * 16 * 150 + 400 * 120 + 120 * 84 + 84 * 10


def test_vgg16_total_and_macs():
    s = inspect_backbone("vgg16", num_classes=1000)
    assert s.total_params == 138_357_544
    assert sum(r.params for r in s.layers) == s.total_params
    assert s.total_flops == 2 * s.total_macs
    assert 15.4e9 < s.total_macs < 15.6e9  # the well-known 15.5 G multiply-adds at 224x224


@pytest.mark.parametrize("name", ["googlenet", "resnet34"])
def test_totals_equal_torchvisions_own_counts(name):
    s = inspect_backbone(name, num_classes=1000)
    published = torchvision.models.get_model_weights(name).DEFAULT.meta["num_params"]
    # GoogLeNet's published count is without the auxiliary classifiers, which inference never runs.
    extra = {"aux_logits": False, "init_weights": False} if name == "googlenet" else {}
    built = sum(p.numel() for p in torchvision.models.get_model(name, weights=None, **extra).parameters())
    assert s.total_params == published == built == sum(r.params for r in s.layers)


def test_depth_groups_blocks_and_keeps_totals():
    leaves = inspect_backbone("resnet34", input_size=64, num_classes=10)
    blocks = inspect_backbone("resnet34", input_size=64, num_classes=10, depth=2)
    names = [r.name for r in blocks.layers]
    assert "layer1.0" in names and "layer1.0.conv1" not in names
    assert blocks.total_params == leaves.total_params == sum(r.params for r in blocks.layers)
    assert blocks.total_macs == leaves.total_macs
    assert blocks.activation_elements == leaves.activation_elements


def test_cli_json_and_errors(capsys):
    assert main(["--backbone", "lenet5", "--input-size", "32", "--in-channels", "1", "--num-classes", "10", "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["totals"]["params"] == 61_706
    assert data["totals"]["flops"] == 2 * data["totals"]["macs"]
    assert main(["--backbone", "resnet18", "--in-channels", "1"]) == 2
    assert "lenet5 only" in capsys.readouterr().err


def test_an_input_too_large_for_memory_is_not_called_too_small(monkeypatch, capsys):
    """torch's allocation failure read "cannot run on a 50000-pixel input (try a larger --input-size)"."""
    import training.inspect as inspect_module

    def out_of_memory(*args, **kwargs):
        raise RuntimeError("[enforce fail at alloc_cpu.cpp:127] data. DefaultCPUAllocator: can't allocate memory: you tried to allocate 30000000000 bytes")

    monkeypatch.setattr(inspect_module, "inspect_backbone", out_of_memory)
    assert main(["--backbone", "lenet5", "--input-size", "1024"]) == 2
    assert capsys.readouterr().err == ("error: lenet5 on a 1024-pixel input with 1,000 classes needs more memory than this machine has "
                                       "(try a smaller --input-size)\n")
    # 100,000,000 classes at the smallest input: the advice was a smaller --input-size alone
    assert main(["--backbone", "lenet5", "--input-size", "32", "--num-classes", "100000000"]) == 2
    assert capsys.readouterr().err.endswith("with 100,000,000 classes needs more memory than this machine has (try a smaller --input-size or --num-classes)\n")


def test_an_input_size_beyond_what_training_takes_is_refused_at_the_command_line(capsys):
    """--input-size 99999999999 reached torch, whose overflow was reported as "cannot run on a
    99999999999-pixel input (try a larger --input-size)"; the bound is finetune's --image-size's."""
    for size, bound in (("99999999999", "must be in [32, 1024], got 99999999999"), ("8", "must be in [32, 1024], got 8")):
        with pytest.raises(SystemExit) as exit_:
            main(["--backbone", "resnet18", "--input-size", size])
        assert exit_.value.code == 2
        assert f"argument --input-size: {bound}" in capsys.readouterr().err
