"""Put a training run's checkpoint into the BentoML model store, so ``bentoml serve`` and ``bentoml build`` find it.

    python -m service.import_model runs/sign-digits-efficientnet_lite0/best.pt [--name gesture-classifier]

The stored model is the checkpoint file itself plus metadata that answers "what is this model?"
without loading it: backbone, classes, input size, validation/test metrics and a fingerprint of the
data it was trained on. The service loads it with ``gesture_core.load_classifier``. A model trained on
hand crops (``--hands``) also carries the hand detector's two model files (``hand-models/``), so the
model is complete wherever it goes: ``bentoml build`` packs it, and a container needs no prepare step.
The service finds it again with ``find_model`` and ``LocalModel``, which never look beyond the local store.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import shutil
import sys
from pathlib import Path
from typing import Any

import bentoml
from bentoml.exceptions import NotFound

from gesture_core.checkpoint import check_not_training_state
from gesture_core.cli import CommandParser, checkpoint_arg, command, python_command
from gesture_core.hands import HAND_MODEL_FILES
from gesture_core.preprocess import DataConfig
from gesture_core.runtime import Runtime

DEFAULT_MODEL_NAME = "gesture-classifier"
CHECKPOINT_FILE = "checkpoint.pt"  # name of the checkpoint inside the stored model's folder
HAND_MODELS_FOLDER = "hand-models"  # hand-crop models: the detector's files, inside the stored model's folder
SUMMARY_METRICS = ("top1", "top5", "n")


class ModelNotImported(NotFound):
    pass


class LocalModel(bentoml.models.BentoModel):
    """A model from the local store only: a missing model fails start-up saying how to import one,
    instead of BentoML's attempt to pull it from BentoCloud."""

    def resolve(self, base_path: Any = None) -> bentoml.Model:
        find_model(self)
        return super().resolve(base_path)


def stored_versions(name: str) -> list[str]:
    """The local store's tags of the model ``name`` (none: an empty list)."""
    try:
        return [str(model.tag) for model in bentoml.models.list(name)]
    except NotFound:
        return []


def find_model(ref: bentoml.models.BentoModel) -> bentoml.Model:
    """The stored model, or a start-up error that says how to import one (never a BentoCloud lookup)."""
    stored = ref.stored
    if stored is None and (versions := stored_versions(ref.tag.name)):  # "import a training run first" was no help
        shown = ", ".join(versions[:5]) + (f" and {len(versions) - 5} more" if len(versions) > 5 else "")
        raise ModelNotImported(f"no model {ref.tag} in the local BentoML model store, which holds {shown}: set GESTURE_MODEL to one "
                               f"of them, or to {ref.tag.name} for the latest")
    if stored is None:
        raise ModelNotImported(
            f"no model {ref.tag} in the local BentoML model store (`bentoml models list`; BENTOML_HOME moves it). "
            "Import a training run first: python -m service.import_model RUN/best.pt "
            "(or set GESTURE_MODEL=name:version to one listed by `bentoml models list`)."
        )
    if not Path(stored.path_of(CHECKPOINT_FILE)).is_file():
        raise ModelNotImported(f"model {stored.tag} has no {CHECKPOINT_FILE}; re-import it with python -m service.import_model RUN/best.pt")
    return stored


def metric_summary(metrics: dict[str, Any]) -> dict[str, Any]:
    """top-1/top-5/n of each evaluated split; per-class tables and confusion matrices stay in the run folder.
    A split without images (``--test-split 0``) has no top-1 (None), which BentoML's metadata cannot hold:
    it keeps its n alone."""
    summary: dict[str, Any] = {}
    for split in ("val", "test"):
        values = metrics.get(split)
        if isinstance(values, dict):
            summary[split] = {k: values[k] for k in SUMMARY_METRICS if values.get(k) is not None}
    if "best_epoch" in metrics:
        summary["best_epoch"] = metrics["best_epoch"]
    return summary


def data_fingerprint(checkpoint_path: Path, ckpt: dict[str, Any]) -> dict[str, Any]:
    """Identify the training data: a hash of the run's split file lists when the run folder has
    split.json (same files, labels and split => same hash), else of the data path and split counts."""
    split_file = checkpoint_path.parent / "split.json"
    source = ckpt.get("train_config", {}).get("data", "")
    if split_file.is_file():
        split = json.loads(split_file.read_text())
        lists = {name: sorted(map(tuple, split.get(name, []))) for name in ("train", "val", "test")}
        digest = hashlib.sha256(json.dumps([split.get("classes"), lists], sort_keys=True).encode()).hexdigest()
        counts = {name: len(items) for name, items in lists.items()}
        return {"sha256": digest, "source": source, "counts": counts, "basis": "split.json file lists"}
    counts = ckpt.get("metrics", {}).get("split") or {}
    digest = hashlib.sha256(json.dumps([source, ckpt["classes"], counts], sort_keys=True).encode()).hexdigest()
    return {"sha256": digest, "source": source, "counts": counts, "basis": "data path, classes and split counts"}


def model_metadata(checkpoint_path: Path, ckpt: dict[str, Any]) -> dict[str, Any]:
    data_config = DataConfig.from_dict(ckpt["data_config"])
    return {
        "backbone": ckpt["backbone"],
        "classes": list(ckpt["classes"]),
        "input_size": data_config.input_size,
        "resize_size": data_config.resize_size,
        "in_chans": data_config.in_chans,
        "crop": data_config.crop,
        "hands": data_config.hands,
        "metrics": metric_summary(ckpt.get("metrics", {})),
        "data_fingerprint": data_fingerprint(checkpoint_path, ckpt),
        "source_checkpoint": str(checkpoint_path.resolve()),
        "checkpoint_file": CHECKPOINT_FILE,
    }


def import_checkpoint(checkpoint: str | Path, name: str = DEFAULT_MODEL_NAME) -> bentoml.Model:
    """Check that ``checkpoint`` (a training run's best.pt) loads and runs exactly as the service will
    load and run it, and store a copy; returns the stored model. A checkpoint that fails is refused
    (CheckpointError, with the reason) before anything is stored."""
    path = Path(checkpoint)
    classifier = Runtime.from_env().load(path)  # as the service will load it (GESTURE_DEVICE, _ENGINE, _PRECISION)
    ckpt = classifier.checkpoint_meta  # everything but the weights
    check_not_training_state(path, ckpt, f"{python_command()} -m service.import_model")  # the service would answer with the latest epoch, uncalibrated
    metadata = model_metadata(path, ckpt)
    test_top1 = metadata["metrics"].get("test", {}).get("top1")
    labels = {
        "task": "image-classification",
        "backbone": ckpt["backbone"],
        "num_classes": str(len(ckpt["classes"])),
        "test_top1": "n/a" if test_top1 is None else f"{test_top1:.4f}",
        "data": metadata["data_fingerprint"]["sha256"][:12],
    }
    hand_files = hand_model_files(classifier.localiser.models_dir) if classifier.hands_mode else []  # builds it: fails before storing
    with bentoml.models.create(name, labels=labels, metadata=metadata) as model:
        shutil.copyfile(path, model.path_of(CHECKPOINT_FILE))
        for file in hand_files:
            target = Path(model.path_of(HAND_MODELS_FOLDER)) / file.name
            target.parent.mkdir(exist_ok=True)
            shutil.copyfile(file, target)
    return model


def hand_model_files(folder: Path) -> list[Path]:
    """The hand detector's files that a hand-crop model is stored with: both models and their licence."""
    return [folder / name for name in (*(f.name for f in HAND_MODEL_FILES), "LICENSE") if (folder / name).is_file()]


def model_name(value: str) -> str:
    try:
        tag = bentoml.Tag.from_taglike(value)
    except ValueError as err:
        raise argparse.ArgumentTypeError(str(err)) from None
    if tag.version is not None:
        raise argparse.ArgumentTypeError(f"{value!r}: give a name only; the store assigns the version")
    return value


def build_parser() -> argparse.ArgumentParser:
    p = CommandParser(
        prog="python -m service.import_model",
        description="Store a training checkpoint in the BentoML model store (the service serves the latest one).",
    )
    p.add_argument("checkpoint", type=checkpoint_arg("best.pt"), help="a checkpoint written by training.finetune, e.g. runs/NAME/best.pt, or its run folder runs/NAME")
    p.add_argument("--name", type=model_name, default=DEFAULT_MODEL_NAME, help="model name in the store; serve it with GESTURE_MODEL=NAME:latest")
    return p


@command
def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    model = import_checkpoint(args.checkpoint, args.name)
    if model.tag.name != args.name:  # BentoML stores names lower-cased; say so rather than rename silently
        print(f"note: stored as {model.tag.name!r}: BentoML model names are lower case", file=sys.stderr)
    meta = model.info.metadata
    print(f"imported {args.checkpoint}: {meta['backbone']}, {len(meta['classes'])} classes, input {meta['input_size']} px", file=sys.stderr)
    print(model.tag)
    return 0


if __name__ == "__main__":
    sys.exit(main())
