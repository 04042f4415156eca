"""The CUDA paths: mixed-precision channels-last fine-tuning, resume, and the inference engines on a GPU.

CI has no GPU, so these are skipped there; on a machine with one, `pytest tests/test_cuda.py` runs
them (docs/performance.md, "GPU", records the last such run).
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
import torch

import training.finetune as finetune
from benchmarks.train import subset_folder
from gesture_core import load_classifier
from tests.helpers import count_calls, make_image_folder, train_interrupted_in_epoch_2
from training.config import TrainConfig
from training.data import Splits

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (torch.cuda.is_available() is False here)")


@pytest.fixture(scope="module")
def cuda_run(flowers, tmp_path_factory) -> Path:
    """efficientnet_lite0 fine-tuned on 80 flowers per class on the GPU, with AMP (the CUDA default)."""
    root = tmp_path_factory.mktemp("cuda")
    data = subset_folder(flowers, 80, root / "flowers")
    cfg = TrainConfig(backbone="efficientnet_lite0", data=str(data), out=str(root / "run"), device="cuda", epochs=3,
                      image_size=192, lr=2e-3, backbone_lr_mult=0.3, batch_size=32, workers=4, seed=0)  # fmt: skip
    return finetune.train(cfg)


def test_amp_fine_tune_on_cuda_learns_flowers(cuda_run):
    config = json.loads((cuda_run / "config.json").read_text())
    assert config["device"] == "cuda" and config["amp"] == "auto"
    metrics = json.loads((cuda_run / "metrics.json").read_text())
    print(f"\nGPU fine-tune, 80 flowers per class, 3 epochs: test top-1 {metrics['test']['top1']:.2%}")
    assert metrics["test"]["top1"] >= 0.80  # 86.25% on the H100; chance is 20%


def test_checkpoint_trained_on_cuda_gives_the_same_answers_on_cpu(cuda_run):
    samples = Splits.load(cuda_run / "split.json").test
    on_cpu = load_classifier(cuda_run / "best.pt", "cpu", engine="torch")
    on_gpu = load_classifier(cuda_run / "best.pt", "cuda", engine="torch")
    images = torch.stack([on_cpu.preprocess.load(s.path) for s in samples])
    cpu_logits, gpu_logits = on_cpu.logits(images), on_gpu.logits(images).cpu()
    diff = float((cpu_logits - gpu_logits).abs().max())
    print(f"\neager fp32, {len(images)} test photos: max |Δlogit| GPU vs CPU {diff:.1e}")
    assert diff <= 1e-3
    assert (cpu_logits.argmax(1) == gpu_logits.argmax(1)).float().mean() >= 0.99


@pytest.mark.parametrize("engine, precision", [("torch", "bf16"), ("torch", "fp16"), ("compile", "fp32"), ("compile", "bf16")])
def test_gpu_engines_agree_with_eager_fp32(cuda_run, engine, precision):
    splits = Splits.load(cuda_run / "split.json")
    samples = splits.train + splits.val + splits.test  # 400 photos: one flipped label in the 80 test ones would be 1.25%
    reference = load_classifier(cuda_run / "best.pt", "cuda", engine="torch")
    classifier = load_classifier(cuda_run / "best.pt", "cuda", engine=engine, precision=precision)
    images = torch.stack([reference.preprocess.load(s.path) for s in samples])
    eager = torch.cat([reference.logits(images[i : i + 32]).cpu() for i in range(0, len(images), 32)])
    got = torch.cat([classifier.logits(images[i : i + 32]).cpu() for i in range(0, len(images), 32)])
    agreement = float((eager.argmax(1) == got.argmax(1)).float().mean())
    diff = float((eager - got).abs().max())
    print(f"\n{engine} {precision} on the GPU, {len(images)} photos: agreement {agreement:.2%}, max |Δlogit| {diff:.1e}")
    assert agreement >= 0.99
    if precision == "fp32":
        assert diff <= 1e-3


def test_resume_on_cuda_continues_where_the_run_stopped(tmp_path, monkeypatch, capsys):
    data = make_image_folder(tmp_path / "gestures", per_class=10, size=48)
    config = dict(backbone="mobilenet_v3_large", data=str(data), weights="none", epochs=3, batch_size=8, image_size=32,
                  workers=0, lr=3e-3, warmup_epochs=0.5, val_split=0.2, test_split=0.2, seed=1, device="cuda")  # fmt: skip
    reference = finetune.train(TrainConfig(out=str(tmp_path / "a"), **config))
    assert train_interrupted_in_epoch_2(TrainConfig(out=str(tmp_path / "b"), **config), monkeypatch) == 130
    interrupted = torch.load(tmp_path / "b" / "last.pt", weights_only=True)
    capsys.readouterr()
    cfg, resume = finetune.parse_config(["--resume", str(tmp_path / "b" / "last.pt")])
    epochs_trained = count_calls(monkeypatch, finetune, "train_one_epoch")
    resumed = finetune.train(cfg, resume)
    # seeded, a resume that ignored last.pt would give the same losses: it would train 3 epochs, though
    assert len(epochs_trained) == 2 and "after epoch 1" in capsys.readouterr().out
    rows = [list(csv.DictReader((run / "history.csv").open())) for run in (reference, resumed)]
    assert rows[1][0] == {key: str(value) for key, value in interrupted["history"][0].items()}
    losses = [[float(r["train_loss"]) for r in run_rows] for run_rows in rows]
    print(f"\ntrain loss per epoch, uninterrupted {losses[0]}, resumed {losses[1]}")
    np.testing.assert_allclose(losses[1], losses[0], rtol=1e-3)  # GPU kernels are not bitwise deterministic
