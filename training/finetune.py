"""Fine-tune an ImageNet backbone on a folder of images.

    python -m training.finetune --data ../shared/data/sign-digits --epochs 3 --image-size 160
    python -m training.finetune --data datasets/my-gestures --flip off --group-by "^(clip[0-9]+)_"
    python -m training.finetune --resume runs/sign-digits-efficientnet_lite0/last.pt
    torchrun --standalone --nproc_per_node 2 -m training.finetune --data ... (several processes: training.distributed)

The run folder holds best.pt, last.pt, config.json, split.json, history.csv, metrics.json,
curves.png and confusion_matrix.png.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import random
import shlex
import sys
import time
import warnings
from collections.abc import Collection, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from gesture_core.backbones import Backbone, build_model, freeze_backbone, get_backbone, load_matching
from gesture_core.checkpoint import (
    CheckpointError,
    CheckpointSaveError,
    clear_partial_saves,
    load_checkpoint,
    save_checkpoint,
)
from gesture_core.class_names import some_of
from gesture_core.classifier import Classifier, load_classifier
from gesture_core.cli import (
    EXIT_USAGE,
    USER_ERRORS,
    CommandParser,
    OutOfMemory,
    a_local_peer,
    check_default_writable,
    checkpoint_arg,
    command,
    first_free,
    let_local_rank_0_say_it,
    output_arg,
    python_command,
)
from gesture_core.interrupts import interrupted_exit_code
from gesture_core.preprocess import WHOLE_FRAME_MODES, DataConfig
from gesture_core.rejection import find_reject_classes
from training import cli, distributed, memory
from training.augment import (
    CROP_CHOICES,
    PRESETS,
    build_eval_transform,
    build_train_transform,
    frame_aspect,
    resolve_crop,
    resolve_flip,
    sampled_sizes,
)
from training.calibrate import (
    SplitOutputs,
    add_rejection_args,
    fit_rejection,
    format_open_set,
    open_set_results,
    reject_choice,
    split_outputs,
)
from training.config import TrainConfig
from training.data import (
    DatasetError,
    ImageDataset,
    Splits,
    check_split_readable,
    decode_failure,
    decodes,
    failure_reports,
    index_seed,
    is_presplit,
    load_splits,
    make_loader,
    unreadable,
    warn_of_classes_added,
    warn_of_images_gone,
)
from training.distributed import ShardedSeededSampler, is_main_process
from training.ema import ModelEma
from training.features import CACHE_CHOICES, FrozenFeatures, use_feature_cache
from training.hand_crops import (
    HandCropCache,
    HandCropReport,
    format_no_hand,
    frame_metrics,
    frame_mistakes,
    frame_outputs,
    hand_crop_splits,
)
from training.loop import AMP_CHOICES, EpochResult, build_optimizer, predict_logits, resolve_amp, train_one_epoch, warmup_cosine
from training.prepare import data_archive_name, resolve_data_dir
from training.report import (
    classification_metrics,
    format_summary,
    plot_curves,
    plot_mistakes,
    read_history,
    top_mistakes,
    write_history,
    write_json,
    write_report,
)
from training.run_lock import ADVICE, check_not_in_use, hold_run_folder, release_run_folders
from training.served import served_outputs

RESUMABLE_OVERRIDES = ("epochs", "workers", "device", "patience")
TRAINING_STATE = ("optimizer", "scheduler", "epoch", "history", "best", "rng")  # what last.pt adds to a checkpoint


def build_parser(*, suppress_defaults: bool = False) -> argparse.ArgumentParser:
    d = TrainConfig()
    default = (lambda value: argparse.SUPPRESS) if suppress_defaults else (lambda value: value)
    p = CommandParser(
        prog="python -m training.finetune",
        description="Fine-tune an ImageNet-pretrained CNN on an ImageFolder dataset.",
        argument_default=argparse.SUPPRESS if suppress_defaults else None,
    )
    g = p.add_argument_group("model and data")
    cli.add_backbone_arg(g, default=default(d.backbone))
    g.add_argument("--data", type=cli.input_path("a dataset folder, archive or catalogue name"), default=default(None), help="ImageFolder (or pre-split train/val/test) folder, a zip or tar of one or its URL, a folder of videos per class, or a catalogue name such as flowers")
    g.add_argument("--weights", type=cli.weights_arg, default=default(d.weights), help="imagenet | none | PATH to a state dict")
    g.add_argument("--image-size", type=cli.image_size, default=default(None), help="input size (default: the backbone's)")
    g.add_argument("--train-size", type=cli.image_size, default=default(None),
                   help="train on random crops of this size while validation, the test, the checkpoint and serving keep "
                        "--image-size (FixRes: training's random crops show objects larger than the evaluation's centre crop; "
                        "docs/understanding.md) (default: the input size)")  # fmt: skip
    g.add_argument("--in-channels", dest="in_chans", type=int, choices=(1, 3), default=default(3), help="1 for grayscale (lenet5 only)")
    g.add_argument("--val-split", type=cli.float_in(0.0, 0.9), default=default(d.val_split), help="fraction per class held out for model selection")
    g.add_argument("--test-split", type=cli.float_in(0.0, 0.9), default=default(d.test_split), help="fraction per class held out for the final test")
    g.add_argument("--test-per-class", type=cli.int_at_least(1), default=default(None), help="hold out exactly N test images per class instead (default: off)")
    g.add_argument("--group-by", type=cli.group_by_arg, default=default(d.group_by), metavar="RULE|REGEX",
                   help="keep images taken together in one split: auto (capture sessions, subfolders of the class folders, or "
                        "numbered frame sequences), session, folders, frames, none (one by one), or a regex whose first group names the recording")  # fmt: skip
    g.add_argument("--crop", choices=CROP_CHOICES, default=default(d.crop), help="input geometry: center crop, or the whole frame "
                   "(letterbox: padded square; resize: squeezed); auto: resize for recordings (sessions, subfolders, frame sequences) of mostly 1.2:1 or "
                   "wider frames, else center (docs/training.md)")
    g.add_argument("--hands", action="store_true", default=default(False), help="find the hands first (gesture_core.hands, the [hands] "
                   "extra) and learn from each image's hand crop, cached; the model then answers per hand (docs/hands.md)")
    g = p.add_argument_group("optimisation")
    g.add_argument("--epochs", type=cli.int_at_least(1), default=default(d.epochs), help="passes over the training images")
    g.add_argument("--batch-size", type=cli.int_at_least(1), default=default(d.batch_size), help="images per step")
    g.add_argument("--opt", choices=("adamw", "sgd"), default=default(d.opt), help="optimizer")
    g.add_argument("--lr", type=cli.positive_float, default=default(d.lr), help="head learning rate (peak)")
    g.add_argument("--backbone-lr-mult", type=cli.float_in(0.0, 1.0, high_inclusive=True), default=default(d.backbone_lr_mult), help="backbone LR = lr x this")
    g.add_argument("--weight-decay", type=cli.float_in(0.0, 1.0), default=default(d.weight_decay), help="decoupled weight decay (AdamW) or L2 (SGD)")
    g.add_argument("--momentum", type=cli.float_in(0.0, 1.0), default=default(d.momentum), help="SGD momentum")
    g.add_argument("--warmup-epochs", type=cli.float_in(0.0, 1000.0), default=default(d.warmup_epochs), help="linear LR warmup, then cosine decay")
    g.add_argument("--label-smoothing", type=cli.float_in(0.0, 1.0), default=default(d.label_smoothing), help="cross-entropy label smoothing")
    g.add_argument("--ema-decay", type=cli.float_in(0.0, 1.0), default=default(d.ema_decay), help="validate, keep and test an exponential moving average of the weights with this decay per step, e.g. 0.998 (0: off)")
    g.add_argument("--class-weights", action="store_true", default=default(False), help="weight the loss by inverse class frequency")
    g.add_argument("--freeze", choices=("none", "backbone"), default=default(d.freeze), help="backbone = linear probe")
    g.add_argument("--head-epochs", type=cli.int_at_least(0), default=default(d.head_epochs), help="staged: train only the head for N epochs, then unfreeze")
    g.add_argument("--cache-features", choices=CACHE_CHOICES, default=default(d.cache_features), help="frozen epochs train the head on backbone features computed once (auto: when --augment none; on: also with augmentation, which those epochs then skip)")
    g.add_argument("--patience", type=cli.int_at_least(0), default=default(d.patience), help="early stopping after N epochs without val improvement (0: off)")
    add_rejection_args(p.add_argument_group("no gesture (docs/no-gesture.md)"), default)
    g = p.add_argument_group("augmentation")
    g.add_argument("--augment", choices=PRESETS, default=default(d.augment), help="training augmentation preset")
    cli.add_flip_arguments(g, default(d.flip))
    g.add_argument("--pca-lighting", action="store_true", default=default(False), help="AlexNet-style PCA colour noise")
    g.add_argument("--scale-jitter", action="store_true", default=default(False), help="VGG-style scale jitter instead of random resized crops")
    g = p.add_argument_group("runtime")
    g.add_argument("--device", choices=("auto", "cpu", "cuda"), default=default(d.device), help="auto: CUDA when available")
    g.add_argument("--amp", choices=AMP_CHOICES, default=default(d.amp), help="mixed precision (auto: on for CUDA, and bf16 on CPUs with native bf16, but fp32 for depthwise backbones on CPUs with AMX)")
    g.add_argument("--workers", type=cli.workers, default=default(d.workers), help="data-loading processes")
    g.add_argument("--seed", type=cli.seed, default=default(d.seed), help="fixes the split, the initial head and the augmentation")
    g.add_argument("--out", type=lambda text: str(output_arg("folder")(text)), default=default(None), help="run folder (default: runs/<data>-<backbone>, numbered if taken)")
    g.add_argument("--resume", type=checkpoint_arg("last.pt"), default=default(None), help="continue an interrupted run from RUN/last.pt (or the run folder RUN)")
    g.add_argument("--sync-bn", action="store_true", default=default(False), help="under torchrun on GPUs: BatchNorm statistics over the global batch")
    return p


def parse_config(argv: list[str] | None = None) -> tuple[TrainConfig, Path | None]:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.resume is not None:
        explicit = vars(build_parser(suppress_defaults=True).parse_args(argv))
        if ignored := sorted(set(explicit) - {"resume", *RESUMABLE_OVERRIDES}):  # they were dropped without a word
            parser.error(f"--resume continues the run as it was configured; it takes only "
                         f"{', '.join('--' + k for k in RESUMABLE_OVERRIDES)}, not {', '.join('--' + k.replace('_', '-') for k in ignored)}")
        state = load_training_state(args.resume)
        if (split_file := args.resume.parent / "split.json").is_file():  # before anything is written: config.json was, then refused
            check_classes_match(Splits.load(split_file).classes, state["classes"], split_file, args.resume)
        cfg = TrainConfig.from_dict(state["train_config"])
        for key in RESUMABLE_OVERRIDES:
            if key in explicit:
                setattr(cfg, key, explicit[key])
        if problem := nothing_to_resume(args.resume, state["epoch"], cfg.epochs, epochs_given="epochs" in explicit):
            parser.error(problem)
        return cfg, args.resume
    if args.data is None:
        parser.error("--data is required (a folder, or a catalogue name such as flowers)")
    values = {k: v for k, v in vars(args).items() if k != "resume"}
    if Path(args.data).name in ("", ".."):  # "--data ." named the run runs/data-..., and config.json's "." meant any later folder
        values["data"] = os.path.abspath(args.data)
    cfg = TrainConfig.from_dict({k: ("" if v is None and k == "out" else v) for k, v in values.items()})
    if cfg.in_chans == 1 and cfg.backbone != "lenet5":
        parser.error("--in-channels 1 is only supported by lenet5")
    if cfg.val_split + cfg.test_split >= 1 and not cfg.test_per_class:
        parser.error(f"--val-split {cfg.val_split} and --test-split {cfg.test_split} leave no training images: they must add up to less than 1")
    if cfg.head_epochs >= cfg.epochs and cfg.freeze == "none" and cfg.head_epochs:
        parser.error(f"--head-epochs {cfg.head_epochs} must be smaller than --epochs {cfg.epochs}")
    if cfg.head_epochs and cfg.freeze == "backbone":  # it was stored in config.json as if it meant something
        parser.error(f"--head-epochs {cfg.head_epochs} trains the head alone before the whole model, and --freeze backbone "
                     "trains the head alone throughout: drop one of them")
    if (unused := test_flags_a_test_folder_overrides(argv, cfg.data)):  # they were ignored without a word
        parser.error(f"{unused} does not apply to {cfg.data}: its test/ folder is the test set (a pre-split layout); drop it")
    return cfg, None


def test_flags_a_test_folder_overrides(argv: list[str] | None, data: str) -> str:
    """"--test-split" or "--test-per-class" when given for a pre-split folder, whose test/ is the test set; else ""."""
    if not (Path(data).is_dir() and is_presplit(Path(data))):
        return ""
    explicit = vars(build_parser(suppress_defaults=True).parse_args(argv))
    return next((f"--{key.replace('_', '-')}" for key in ("test_split", "test_per_class") if key in explicit), "")


def nothing_to_resume(last: Path, trained: int, epochs: int, *, epochs_given: bool) -> str | None:
    """Why resuming would only redo a run's end: calibrating best.pt again with the run's settings
    and rewriting its report, over a later ``training.calibrate``."""
    finished = run_finished(last.parent, trained)
    if epochs < trained or (epochs == trained and finished and epochs_given):
        return f"--epochs {epochs}: {last} has trained {trained} epoch(s) already; pass more to train it further"
    if finished and not epochs_given:
        return (f"{last.parent} finished after epoch {trained} (its report, metrics.json, is there): nothing to resume; "
                f"to train it further, pass --epochs above {trained}")
    return None


def run_finished(out: Path, trained: int | None = None) -> bool:
    """Whether the run in ``out`` ended: its report (metrics.json, written last) covers every epoch its
    last.pt has trained (``trained``, else the last row of history.csv, written with last.pt). A run
    trained further and interrupted again has a report of fewer epochs: it is interrupted. Counted, not
    told from file times: a run copied with plain ``cp`` has them in the order the files were copied,
    and resuming such a copy trained nothing and calibrated best.pt again, over a later calibration."""
    try:
        reported = json.loads((out / "metrics.json").read_text())["epochs_run"]
    except (OSError, ValueError, KeyError, TypeError):
        return False
    if trained is None:
        trained = last_epoch_in_history(out / "history.csv")
    return trained is None or (isinstance(reported, int) and reported >= trained)


def last_epoch_in_history(history: Path) -> int | None:
    try:
        return max((int(row["epoch"]) for row in read_history(history)), default=None)
    except (ValueError, KeyError, TypeError):
        return None


def run_already_in(out: Path, instead: Path | None = None) -> str | None:
    """Why ``--out`` cannot take a new run: it holds one, whose checkpoints a new run would overwrite,
    or files that are not a run's, which the run's files would be scattered among. ``instead``: a
    folder to suggest (default: OUT/run)."""
    if others := other_files_in(out):
        return (f"--out {out} holds files that are not a training run's ({others}): pass a new or empty folder, "
                f"such as {instead or out / 'run'}")
    if (out / "last.pt").is_file() and not run_finished(out):  # best.pt is written from the first epoch on
        return f"--out {out} holds an interrupted run: continue it with --resume {out}, or pass another --out"
    if not (out / "last.pt").is_file() and not (out / "metrics.json").is_file():
        return None  # stopped between the first epoch's best.pt and last.pt: nothing to resume, so it starts again there
    if trained := [name for name in ("best.pt", "metrics.json") if (out / name).is_file()]:
        return f"--out {out} holds a trained model ({trained[0]}): pass another --out, or delete that folder to train there again"
    return None


def new_folder_beside(cfg: TrainConfig) -> Path:
    """The run folder to suggest for an ``--out`` that holds other files: OUT/run, unless that is inside
    the dataset (``--out DATA`` was told to pass DATA/run, which is then refused as inside --data)."""
    suggested, data = Path(cfg.out) / "run", Path(cfg.data)
    inside = data.is_dir() and suggested.resolve().is_relative_to(data.resolve())
    return default_run_dir(cfg) if inside else suggested


def other_files_in(out: Path, shown: int = 3) -> str:
    """The first entries of ``out`` when it is a folder with entries but not a run's (split.json is the
    first file a run writes); "" for a new, empty or run folder. --out . or --out ~/Desktop wrote
    best.pt, config.json and the plots among the files there."""
    if not out.is_dir() or (out / "split.json").is_file():
        return ""
    entries = sorted(entry.name + ("/" if entry.is_dir() else "") for entry in out.iterdir() if not entry.name.startswith("."))  # .DS_Store
    return some_of(entries, shown)


def default_run_dir(cfg: TrainConfig) -> Path:
    name = data_archive_name(cfg.data) or Path(cfg.data).name  # flowers.zip or https://host/flowers.zip: runs/flowers-...
    return first_free(Path("runs") / f"{name or 'data'}-{cfg.backbone}", startable_in)


def startable_in(folder: Path) -> bool:
    """Whether a new run may take ``folder`` as its default: not there yet, or one that an --out of it would start again
    in (a run stopped before its first epoch's last.pt) and no process holds. Each Ctrl-C in start-up left a folder
    of a config and a split, and the same command then went to runs/NAME-2, -3, ..."""
    if not folder.exists():
        return True
    if not folder.is_dir() or (folder / "last.pt").exists() or run_already_in(folder) is not None:
        return False
    try:
        check_not_in_use(folder)
    except ValueError:
        return False
    return True


@dataclass
class Run:
    """Everything one fine-tuning run holds between epochs."""

    cfg: TrainConfig
    out: Path
    splits: Splits
    backbone: Backbone
    data_config: DataConfig
    model: torch.nn.Module
    device: torch.device
    amp: bool
    # --hands: the split as scanned (whole images; ``splits`` then holds their hand crops), the crop cache and its report
    source_splits: Splits | None = None
    hand_crops: HandCropCache | None = None
    hand_report: HandCropReport | None = None
    gone: frozenset[str] = frozenset()  # a resumed split's images deleted or moved since: skipped as failed decodes
    frame_aspect: float | None = None  # a whole-frame model's training frames: their typical width/height


def run_folder_and_splits(cfg: TrainConfig, resume: Path | None) -> tuple[Path, Splits, frozenset[str]]:
    """The run folder (not created yet), the dataset split (scanned, or reloaded on resume), and the images of a
    resumed split that cannot be opened any more (skipped with a warning; a new scan lists only readable ones)."""
    out = resume.parent if resume else Path(cfg.out) if cfg.out else default_run_dir(cfg)
    # a resume cannot take another --out: it continues this folder's run, or nothing
    check_not_in_use(out, "wait for it to end: it is this run, still training" if resume else ADVICE)
    # rank 0's alone, whose machine writes the run: another machine's --out is not used (a folder there stopped the job)
    if not resume and cfg.out and (taken := run_already_in(out, new_folder_beside(cfg))):
        raise FileExistsError(taken)
    if not (resume or cfg.out):  # else said after the scan, with no word of --out
        check_default_writable("the run folder", out)
    if resume and (out / "split.json").exists():
        splits = Splits.load(out / "split.json")
        # Each image would be skipped as a failed decode: the run went on with nothing and replaced best.pt.
        check_split_readable(splits.train, "training", out / "split.json", f"put them back under {splits.root} to continue this run")
        gone = warn_of_images_gone(splits, out / "split.json")
        warn_of_classes_added(splits, out / "split.json")
        return out, splits, gone
    root = resolve_data_dir(cfg.data)  # a folder, an archive or its URL, or a catalogue name
    if out.resolve().is_relative_to(root.resolve()):  # its plots would be a class of the next run on that folder
        raise DatasetError(f"the run folder {out} is inside --data {root}, where the next run would read it as a class: "
                           f"pass an --out outside it{'' if cfg.out else ' (the default is runs/ in the current folder)'}")
    splits = load_splits(root, val_split=cfg.val_split, test_split=cfg.test_split, test_per_class=cfg.test_per_class, seed=cfg.seed, group_by=cfg.group_by)
    return out, splits, frozenset()


def write_run_folder(out: Path, splits: Splits, resume: Path | None) -> None:
    """Create the run folder and save the split (a resumed run's is there), once every rank can read
    the images and the model is built: a run that cannot start leaves no folder behind."""
    out.mkdir(parents=True, exist_ok=True)
    hold_run_folder(out)  # before the first file: a second run at this --out, or a --resume of this one while it trains, stops here
    if not (resume and (out / "split.json").exists()):
        splits.save(out / "split.json")
    clear_partial_saves(out)


def images_missing_here(splits: Splits, gone_on_main: frozenset[str]) -> str | None:
    """On a rank other than 0: which of the images rank 0 can read (all but ``gone_on_main``, a resumed run's
    images deleted since, which it skips) this machine cannot. A missing
    image would otherwise be taken for a corrupt one, and skipped: a machine without the dataset
    would train on nothing, and the run would look like one of half its size."""
    paths = [s.path for s in (*splits.train, *splits.val) if s.path not in gone_on_main]
    missing = unreadable(paths)
    if not missing:
        return None
    return (f"cannot read {len(missing):,} of the {len(paths):,} training and validation images rank 0 found, "
            f"e.g. {missing[0]}: on several machines, the images must be at the same path on each (docs/distributed.md)")


PER_MACHINE_SETTINGS = ("out", "workers")  # rank 0's machine writes the run; data-loading processes are each machine's own
FLAGS_OF_SETTINGS = {"in_chans": "--in-channels", "reject_classes": "--reject-class"}


def settings_unlike_main(own: dict[str, Any], main: dict[str, Any]) -> str | None:
    """On a rank other than 0: the settings its command gave otherwise than rank 0's. A different --epochs or
    --batch-size waited at a collective until the timeout (30 minutes), --backbone failed in DDP's words, and
    --seed or --lr trained on without a word: shards from two orders, the copies of the model drifting apart."""
    differ = [key for key in main if key not in PER_MACHINE_SETTINGS and own.get(key) != main[key]]
    if not differ:
        return None
    shown = ", ".join(f"{FLAGS_OF_SETTINGS.get(key, '--' + key.replace('_', '-'))} {own.get(key)} (rank 0: {main[key]})" for key in differ[:5])
    more = f" and {len(differ) - 5} more" if len(differ) > 5 else ""
    return (f"its command differs from rank 0's: {shown}{more}; give every machine the same command "
            f"(only {' and '.join('--' + key for key in PER_MACHINE_SETTINGS)} may differ)")


def prepare_run(cfg: TrainConfig, resume: Path | None) -> Run:
    on_main = distributed.from_main(cfg.to_dict)  # every machine ran the same command, or says where it did not
    distributed.check_every_rank(lambda: None if is_main_process() else settings_unlike_main(cfg.to_dict(), on_main))
    device = distributed.local_device(cfg.device)
    if cfg.sync_bn:
        distributed.check_sync_bn(device)  # before anything is written
    backbone = get_backbone(cfg.backbone)
    check_input_sizes(cfg, backbone)  # also before anything is written
    # rank 0 alone picks the folder and scans the dataset; the other ranks receive both
    out, splits, gone = distributed.from_main(lambda: run_folder_and_splits(cfg, resume))
    distributed.check_every_rank(lambda: None if is_main_process() else images_missing_here(splits, gone))
    cfg.out, cfg.world_size, scanned = str(out), distributed.world_size(), splits
    reject_line = reject_choice(splits.classes, cfg.reject_classes)  # a misspelt --reject-class fails before training
    if is_main_process():
        warn_of_settings_that_do_nothing(cfg, splits)
    data_config = backbone.data_config.with_channels(cfg.in_chans)
    if cfg.image_size:
        data_config = data_config.with_input_size(cfg.image_size)
    data_config, aspect = resolve_data_choices(cfg, splits, data_config)
    data_config = data_config.with_hands(cfg.hands)
    weights = "none" if resume else cfg.weights  # resuming loads the run's own weights below
    # before the hands are found: weights this backbone does not have were refused after minutes of detection
    model = build_model(cfg.backbone, len(splits.classes), weights, aux=trains_aux(cfg, backbone, data_config), in_chans=cfg.in_chans)
    source_splits, cache, report = None, None, None
    if cfg.hands:
        source_splits, cache = splits, HandCropCache(data_config)
        splits, report = crop_hands(splits, cache, find_reject_classes(splits.classes, cfg.reject_classes))
    if cfg.sync_bn:
        model = distributed.convert_sync_batchnorm(model)
    amp, why = resolve_amp(cfg.amp, device, backbone)
    print(why)
    # NHWC weights, and NHWC batches in the loops below (channels_last=True): cuDNN's fast layout, and
    # on CPU twice efficientnet_lite0's training step rate (benchmarks/train.py measures it)
    model.to(device, memory_format=torch.channels_last)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True  # one input size for the whole run: time cuDNN's algorithms once
    if cfg.freeze != "backbone":  # else the head alone trains, on the backbone's features
        check_memory(cfg, model, backbone, training_geometry(cfg, data_config), device, amp, len(splits.train))
    distributed.from_main(lambda: write_run_folder(out, scanned, resume))  # last: a run that cannot start writes nothing
    if is_main_process():
        write_json(out / "config.json", cfg.to_dict())
        print(reject_line)
    return Run(cfg, out, splits, backbone, data_config, model, device, amp, source_splits, cache, report, gone, aspect)


def check_memory(cfg: TrainConfig, model: torch.nn.Module, backbone: Backbone, geometry: DataConfig, device: torch.device, amp: bool,
                 images: int) -> None:
    """Refuse a batch that cannot fit in memory, and warn of one that may not (training.memory): the
    kernel's out-of-memory killer ends a run with no word. ``images``: the training split's, which
    each process shares out. Under torchrun each process measures its own memory, and a batch that
    does not fit one of them stops them all."""
    size = geometry.input_size
    smallest = backbone.aux_min_input_size if backbone.trains_aux(size) else 0
    step = memory.measure_step(model, (geometry.in_chans, size, size), device, amp, smallest_side=smallest)
    problem, warning = memory.batch_fits(step, memory.free_bytes(device), batch=min(cfg.batch_size, -(-images // distributed.world_size())),
                                         size=size, size_flag="--train-size" if cfg.train_size else "--image-size", backbone=cfg.backbone,
                                         where=f"GPU {device}" if device.type == "cuda" else "this machine")
    if distributed.is_distributed():
        distributed.check_every_rank(lambda: problem)
    elif problem:
        raise OutOfMemory(problem)
    if warning and is_main_process():
        warnings.warn(warning, stacklevel=2)


def warn_of_settings_that_do_nothing(cfg: TrainConfig, splits: Splits) -> None:
    """Settings a run takes that cannot do what they say, each said once; the run went on in silence."""
    if cfg.patience and not splits.val:
        warnings.warn(f"--patience {cfg.patience} stops on validation top-1, and this split has no validation images: "
                      "the run trains every epoch", stacklevel=3)
    if cfg.warmup_epochs >= cfg.epochs:
        warnings.warn(f"--warmup-epochs {cfg.warmup_epochs:g} is as long as the run (--epochs {cfg.epochs}) or longer: the learning "
                      "rate never reaches --lr", stacklevel=3)


def check_input_sizes(cfg: TrainConfig, backbone: Backbone) -> None:
    for flag, size in (("--image-size", cfg.image_size), ("--train-size", cfg.train_size)):
        if size:
            backbone.check_input_size(size, what=flag)


def trains_aux(cfg: TrainConfig, backbone: Backbone, dc: DataConfig) -> bool:
    """Whether the backbone's auxiliary classifiers train (GoogLeNet, Inception), saying so when a
    smaller input than theirs turns them off."""
    size = training_geometry(cfg, dc).input_size
    aux = backbone.trains_aux(size)
    if backbone.aux_weight and not aux and is_main_process():
        print(f"auxiliary classifiers off: {backbone.name}'s take inputs of {backbone.aux_min_input_size} px or more, "
              f"this run trains at {size} px")
    return aux


def crop_hands(splits: Splits, cache: HandCropCache, reject_classes: Collection[str]) -> tuple[Splits, HandCropReport]:
    """The split's hand crops (training.hand_crops): rank 0 finds the hands and fills the cache, then
    the other ranks read it. Says how many images have no hand, what that means, and which gestures
    are left with no training crop (one such class trained on nothing without a word)."""
    crops, report = distributed.main_first(lambda: hand_crop_splits(splits, cache))
    if is_main_process():
        print(report.summary())
    if not crops.train:
        raise DatasetError(f"--hands: no hand found in any of the {len(splits.train)} training images; "
                           "train without --hands, or on photos where the hand is at least ~10% of the frame's width (docs/hands.md)")
    trained = {splits.classes[s.label] for s in crops.train}
    if (unlearnt := [c for c in splits.classes if c not in trained and c not in reject_classes]) and is_main_process():
        warnings.warn(f"--hands: no hand found in any training image of {some_of(unlearnt)}: the model cannot learn "
                      f"{'it' if len(unlearnt) == 1 else 'them'}, and answers such images 'no gesture'; train without --hands, or "
                      "on photos where the hand is at least ~10% of the frame's width (docs/hands.md)", stacklevel=2)
    return crops, report


def resolve_data_choices(cfg: TrainConfig, splits: Splits, data_config: DataConfig) -> tuple[DataConfig, float | None]:
    """Settle --flip auto and --crop auto from the data, saying why in one line each, and report the split's grouping.
    Returns the data config and, for a whole-frame model, its training frames' typical width/height.

    The settled values replace "auto" in ``cfg`` (config.json, the checkpoint), so a resumed run keeps them.
    """
    # rank 0 decides (--crop auto reads the training images' headers) and alone says why; the others follow
    cfg.flip, cfg.crop, aspect, lines = distributed.from_main(lambda: data_choices(cfg, splits))
    if is_main_process():
        for to_stderr, line in lines:
            print(line, file=sys.stderr if to_stderr else sys.stdout)
    return data_config.with_crop(cfg.crop), aspect


def data_choices(cfg: TrainConfig, splits: Splits) -> tuple[str, str, float | None, list[tuple[bool, str]]]:
    """(flip on|off, crop mode, a whole-frame model's frame shape (``frame_aspect``), the lines that say why:
    (to stderr?, text))."""
    grouping = splits.grouping or {}
    lines = [(False, f"split: {grouping['description']}")] if grouping else []
    lines += [(True, f"warning: {warning}") for warning in grouping.get("warnings", [])]
    flip, why = resolve_flip(cfg.flip, splits.classes)
    aspect = None
    if cfg.hands and cfg.crop == "auto":  # the frames' shape says nothing about hand crops, which are square
        crop, why_crop = "center", "input geometry: center crop of each hand's square crop (--crop auto with --hands)"
    else:
        recordings = grouping.get("rule", "none") != "none"  # capture sessions, frame sequences or a --group-by pattern
        # read once: the sizes decide --crop auto, and give the shape a whole-frame model learns hands in
        sizes = sampled_sizes([s.path for s in splits.train]) if cfg.crop != "center" else []
        crop, why_crop = resolve_crop(cfg.crop, sizes, recordings)
        aspect = frame_aspect(sizes) if crop in WHOLE_FRAME_MODES and not cfg.hands else None
    return ("on" if flip else "off"), crop, aspect, [*lines, (False, why), (False, why_crop)]


def make_loaders(run: Run) -> tuple[Any, ShardedSeededSampler, Any]:
    """(training loader, its sampler, validation loader); the test goes through the Classifier (test_served)."""
    cfg, dc = run.cfg, run.data_config
    shape, trained = (dc.in_chans, dc.input_size, dc.input_size), training_geometry(cfg, dc)
    train_tf = build_train_transform(trained, preset=cfg.augment, flip=cfg.flip == "on", pca_lighting=cfg.pca_lighting, scale_jitter=cfg.scale_jitter)
    eval_tf = build_eval_transform(dc)
    pin = run.device.type == "cuda"
    sampler = ShardedSeededSampler(len(run.splits.train), cfg.seed, rank=distributed.rank(), world_size=distributed.world_size())
    train = make_loader(ImageDataset(run.splits.train, train_tf, min_side=dc.resize_size, placeholder_shape=(dc.in_chans, trained.input_size, trained.input_size)), batch_size=cfg.batch_size, workers=cfg.workers, sampler=sampler, pin_memory=pin, drop_last=sampler.drops_last(cfg.batch_size))
    # validation is sharded too: each rank predicts its share, evaluate_split gathers them
    val = make_loader(ImageDataset(distributed.shard(run.splits.val), eval_tf, min_side=dc.resize_size, placeholder_shape=shape), batch_size=cfg.batch_size * 2, workers=cfg.workers, pin_memory=pin)
    return train, sampler, val


def class_weight_tensor(run: Run) -> torch.Tensor | None:
    if not run.cfg.class_weights:
        return None
    counts = np.bincount([s.label for s in run.splits.train], minlength=len(run.splits.classes)).astype(np.float64)
    weights = counts.sum() / (len(counts) * np.maximum(counts, 1))
    return torch.tensor(weights, dtype=torch.float32, device=run.device)


def evaluate_split(run: Run, loader, samples, name: str, model: torch.nn.Module | None = None) -> tuple[dict[str, Any], float, list[str]]:
    """(metrics, loss, paths that failed to decode) on one split, with ``model`` (default: the run's);
    ``loader`` holds this rank's shard of ``samples``."""
    logits, targets, failed = predict_logits(model or run.model, loader, run.device, amp=run.amp, channels_last=True, desc=name)
    logits, targets, failed = distributed.gather_predictions(logits, targets, failed, len(loader.dataset))
    metrics = classification_metrics(logits, targets, run.splits.classes)
    loss = float(torch.nn.functional.cross_entropy(torch.from_numpy(logits), torch.from_numpy(targets))) if len(targets) else float("nan")
    return metrics, loss, [samples[i].path for i in failed]


def check_split_decoded(run: Run, split: str, decoded: int, failed: list[str], epoch: int) -> None:
    """Stop before the epoch is saved when none of a split's images decoded in it (``decoded``) and some failed:
    the dataset, or the hand-crop cache, was moved or deleted during the run, which trained on nothing
    (loss nan), kept that epoch as best.pt and said "finished"."""
    if decoded or not failed:
        return
    last = run.out / "last.pt"
    then = (f"put them back and continue with: {python_command()} -m training.finetune --resume {last}" if last.exists()
            else "put them back and start the run again")
    raise DatasetError(f"none of the {len(failed):,} {split} images decoded in epoch {epoch + 1} (e.g. {failed[0]}: "
                       f"{decode_failure(failed[0], run.data_config.resize_size)}; moved, deleted or changed during the run?): "
                       f"{'last.pt keeps the epochs before; ' if last.exists() else ''}{then}")


def undrawn_failures(run: Run, sampler: ShardedSeededSampler, epochs_run: int) -> list[str]:
    """Training images that no epoch drew (each leaves out its last partial batch) and that do not decode:
    the loader never tried them, so a short run's corrupt file went unreported."""
    drawn = sampler.drawn(range(epochs_run), run.cfg.batch_size)
    return [s.path for i, s in enumerate(run.splits.train) if i not in drawn and not decodes(s.path, run.data_config.resize_size)]


def checkpoint_extra(run: Run, model: torch.nn.Module | None = None) -> dict[str, Any]:
    extra = dict(model=model or run.model, backbone=run.cfg.backbone, classes=run.splits.classes, data_config=run.data_config, train_config=run.cfg.to_dict())
    return extra if run.frame_aspect is None else {**extra, "frame_aspect": run.frame_aspect}


def capture_rng() -> dict[str, Any]:
    np_state = np.random.get_state()
    return {
        "torch": torch.get_rng_state(),
        "numpy": [np_state[0], torch.from_numpy(np_state[1].astype(np.int64)), *[float(x) if isinstance(x, float) else int(x) for x in np_state[2:]]],
        "python": list(random.getstate()[1]),
    }


def restore_rng(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    kind, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((kind, keys.numpy().astype(np.uint32), pos, has_gauss, cached))
    random.setstate((3, tuple(state["python"]), None))


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def train(cfg: TrainConfig, resume: Path | None = None, *, go_on: str | None = None) -> Path:
    """Run (or continue) fine-tuning; returns the run folder, which it holds while it trains (training.run_lock).
    ``go_on``: the command a stopped run names to continue it, where that is not finetune's own --resume."""
    try:
        return train_in_run_folder(cfg, resume, go_on)
    finally:
        release_run_folders()


def train_in_run_folder(cfg: TrainConfig, resume: Path | None = None, go_on: str | None = None) -> Path:
    seed_everything(cfg.seed)
    run = prepare_run(cfg, resume)
    train_loader, sampler, val_loader = make_loaders(run)
    lr = distributed.scaled_lr(cfg.lr, cfg.world_size)
    optimizer = build_optimizer(run.model, run.backbone, opt=cfg.opt, lr=lr, backbone_lr_mult=cfg.backbone_lr_mult, weight_decay=cfg.weight_decay, momentum=cfg.momentum)
    steps = len(train_loader)
    scheduler = warmup_cosine(optimizer, total_steps=cfg.epochs * steps, warmup_steps=round(cfg.warmup_epochs * steps))
    scaler = torch.amp.GradScaler("cuda") if run.amp and run.device.type == "cuda" and not torch.cuda.is_bf16_supported() else None
    ema = ModelEma(run.model, cfg.ema_decay) if cfg.ema_decay else None
    state = {"epoch": 0, "history": [], "best": None, "failed": []}
    if resume:
        state = restore_training_state(run, resume, optimizer, scheduler, scaler, ema, steps_per_epoch=steps)
        if is_main_process() and state["epoch"] < cfg.epochs:  # trained further; a report stopped midway is of this model
            remove_earlier_report(run.out)
    kept = ema.module if ema else run.model  # what is validated, saved as best.pt and tested
    failed: set[str] = set(state["failed"])
    print(f"{cfg.backbone} on {run.splits.root}: {len(run.splits.classes)} classes, split {run.splits.counts()}, "
          f"{len(run.splits.skipped)} file(s) skipped{f', {len(run.gone)} gone since' if run.gone else ''}; {size_note(cfg, run.data_config)}; device {run.device}{' (AMP)' if run.amp else ''}"
          f"{f'; weight EMA, decay {cfg.ema_decay}' if ema else ''}; {distributed_note(cfg, lr)}run folder {run.out}")
    bad_epochs = 0
    features = frozen_features(run)
    if features is not None and (cfg.freeze == "backbone" or state["epoch"] < cfg.head_epochs):
        distributed.main_first(lambda: features.split("train"))  # rank 0 extracts and caches every split; the others load them
    trainer, trainer_frozen = run.model, None  # what train_one_epoch runs: the model, in DDP under torchrun
    with stops_said_in_one_line(run, go_on):
        for epoch in range(state["epoch"], cfg.epochs):
            frozen = cfg.freeze == "backbone" or epoch < cfg.head_epochs
            freeze_backbone(run.model, run.backbone, frozen)
            if frozen != trainer_frozen and not (frozen and features is not None):
                trainer, trainer_frozen = distributed.for_training(run.model, run.device), frozen
            sampler.set_epoch(epoch)
            torch.manual_seed(index_seed(cfg.seed, epoch, 1))  # dropout & co. depend only on (seed, epoch)
            if frozen and features is not None:
                result, validation = cached_frozen_epoch(run, features, optimizer, scheduler, sampler)
                if ema:  # the head trained outside train_one_epoch: the average starts again from here
                    ema.reset()
            else:
                result = distributed.combine_epoch(train_one_epoch(trainer, train_loader, optimizer, scheduler, run.device, aux_weight=run.backbone.aux_weight, label_smoothing=cfg.label_smoothing, class_weights=class_weight_tensor(run), amp=run.amp, scaler=scaler, channels_last=True, ema=ema, desc=f"epoch {epoch + 1}/{cfg.epochs}"))  # every rank's shard as one
                validation = evaluate_split(run, val_loader, run.splits.val, "val", kept)
            check_not_diverged(run, epoch, result, validation)
            row, improved = record_epoch(run, state, failed, epoch, result, validation, optimizer, frozen)
            if is_main_process():
                save_epoch(run, optimizer, scheduler, scaler, state, ema, best_metrics={"val": validation[0], "best_epoch": epoch + 1} if improved else None)
            print(format_epoch(row, cfg.epochs, improved))
            bad_epochs = 0 if improved else bad_epochs + 1
            if cfg.patience and bad_epochs >= cfg.patience:
                print(f"early stopping: val top-1 has not improved for {cfg.patience} epochs")
                break
        if is_main_process():
            failed.update(undrawn_failures(run, sampler, state["epoch"]))
        finish(run, state, failed)  # stopped here, a resume calibrates, tests and reports again
    return run.out


def check_not_diverged(run: Run, epoch: int, result: EpochResult, validation: tuple[dict[str, Any], float, list[str]]) -> None:
    """A ValueError when the epoch left weights that are NaN or infinite, or so large that the validation loss is
    (a learning rate far too high): the run went on to save that model as best.pt, calibrate and test it, and said
    "finished". Raised before the epoch is saved, so last.pt and best.pt keep the epochs before it."""
    metrics, val_loss, _ = validation
    finite_weights = bool(torch.stack([torch.isfinite(p).all() for p in run.model.parameters()]).all())  # one device sync an epoch
    if finite_weights and (math.isfinite(val_loss) or not metrics.get("n")):  # no validation image decoded: check_split_decoded's
        return
    kept = "last.pt and best.pt keep the epochs before it" if epoch else "nothing was saved"
    raise ValueError(f"training diverged in epoch {epoch + 1}: {'the validation loss' if finite_weights else 'the weights'} became NaN or "
                     f"infinite (train loss {result.loss:g}, val loss {val_loss:g}) at --lr {run.cfg.lr:g}; {kept}: start again with "
                     f"a lower --lr (the default is {TrainConfig().lr:g})")


def record_epoch(run: Run, state: dict[str, Any], failed: set[str], epoch: int, result: EpochResult,
                 validation: tuple[dict[str, Any], float, list[str]], optimizer, frozen: bool) -> tuple[dict[str, Any], bool]:
    """(the epoch's history row, whether it is the best so far) into ``state``, its failed decodes into ``failed``;
    an epoch where a whole split failed stops the run (check_split_decoded)."""
    val_metrics, val_loss, val_failed = validation
    train_failed = [run.splits.train[i].path for i in result.failed]
    failed.update(train_failed, val_failed)
    check_split_decoded(run, "training", result.images, train_failed, epoch)
    check_split_decoded(run, "validation", len(run.splits.val) - len(val_failed), val_failed, epoch)
    row = history_row(epoch, optimizer, result, val_metrics, val_loss, frozen)
    improved = is_improvement(row, state["best"])
    row, improved = distributed.from_main(lambda: (row, improved))  # rank 0's, so every rank decides alike
    state["history"].append(row)
    if improved:
        state["best"] = {"epoch": epoch + 1, "val_top1": row["val_top1"], "val_loss": val_loss}
    state["epoch"], state["failed"] = epoch + 1, sorted(failed)
    return row, improved


@contextmanager
def stops_said_in_one_line(run: Run, go_on: str | None = None) -> Iterator[None]:
    """Ctrl-C (exit 130), SIGTERM (143), a full disk and running out of memory, during the epochs or the report,
    as one line that says how to go on: with ``go_on``, or finetune's --resume."""
    last = run.out / "last.pt"
    go_on = go_on or f"{'torchrun ...' if distributed.is_distributed() else python_command()} -m training.finetune --resume {last}"
    try:
        yield
    except KeyboardInterrupt:
        if is_main_process() and last.is_file():
            print(f"\ninterrupted; continue with: {go_on}", file=sys.stderr)
        elif is_main_process():  # nothing to resume from before the first epoch's checkpoint
            print("\ninterrupted before the first epoch ended: there is no last.pt to resume from; start again", file=sys.stderr)
        raise SystemExit(interrupted_exit_code()) from None
    except CheckpointSaveError as err:
        resume = f"; once there is room, continue with: {go_on}" if last.exists() else ""
        raise CheckpointSaveError(f"{err}{resume}") from None
    except (torch.OutOfMemoryError, MemoryError, RuntimeError) as err:
        if (problem := out_of_memory(err, run.cfg, run)) is None:
            raise
        raise OutOfMemory(problem) from None


def out_of_memory(err: BaseException, cfg: TrainConfig, run: Run) -> str | None:
    """What ran out and which flag to lower, for an error that says the machine ran out of memory (else
    None): the GPU's, the RAM (PyTorch's or NumPy's allocation), or a data-loading worker killed, which on
    Linux is the kernel's out-of-memory killer. These were tracebacks."""
    text, last = str(err), run.out / "last.pt"
    if isinstance(err, torch.OutOfMemoryError):
        what = f"out of GPU memory ({run.device}) for {cfg.backbone} at --batch-size {cfg.batch_size}"
    elif isinstance(err, MemoryError) or "DefaultCPUAllocator" in text or "can't allocate memory" in text:
        what = f"out of memory (RAM) for {cfg.backbone} at --batch-size {cfg.batch_size} with --workers {cfg.workers}"
    elif "DataLoader worker" in text and ("killed" in text or "exited unexpectedly" in text):
        what = f"{text.splitlines()[0].rstrip('. ')}: most likely out of memory (RAM), with --workers {cfg.workers}"
        if last.exists():  # --resume takes --workers
            return f"{what}; continue with fewer: {python_command()} -m training.finetune --resume {last} --workers {max(0, cfg.workers // 2)}"
        return f"{what}: pass fewer --workers or a smaller --batch-size"
    else:
        return None
    # --resume keeps the batch size: a smaller one is a new run
    return f"{what}: start again with a smaller --batch-size (e.g. {max(1, cfg.batch_size // 2)})"


def training_geometry(cfg: TrainConfig, dc: DataConfig) -> DataConfig:
    """The served data config ``dc`` scaled to --train-size for the training images (``dc`` itself without it)."""
    return dc.with_input_size(cfg.train_size) if cfg.train_size else dc


def size_note(cfg: TrainConfig, dc: DataConfig) -> str:
    """The start-up line's part on input sizes: one, or --train-size's training size and the served one."""
    trained = training_geometry(cfg, dc).input_size
    if trained == dc.input_size:
        return f"{dc.input_size} px"
    return f"trains at {trained} px, validates, tests and serves at {dc.input_size} px"


def distributed_note(cfg: TrainConfig, lr: float) -> str:
    """The start-up line's part on processes: world size and, for several, the global batch and LR rule."""
    if cfg.world_size == 1:
        return "world size 1; "
    return (f"{distributed.describe()}: global batch {cfg.world_size} x {cfg.batch_size} = {cfg.world_size * cfg.batch_size}, "
            f"peak lr {lr:g} = {cfg.world_size} x --lr {cfg.lr:g} (linear scaling); ")


def save_epoch(run: Run, optimizer, scheduler, scaler, state: dict[str, Any], ema: ModelEma | None, best_metrics: dict[str, Any] | None) -> None:
    """best.pt when the epoch improved (``best_metrics``), then last.pt and history.csv."""
    if best_metrics is not None:
        save_checkpoint(run.out / "best.pt", **checkpoint_extra(run, ema.module if ema else run.model), metrics=best_metrics)
    save_training_state(run, optimizer, scheduler, scaler, state, ema)
    write_history(run.out / "history.csv", state["history"])


def frozen_features(run: Run) -> FrozenFeatures | None:
    """Cached backbone features for the frozen epochs (training.features), or None where the cache does not apply."""
    cfg = run.cfg
    if not (cfg.freeze == "backbone" or cfg.head_epochs) or not use_feature_cache(cfg.cache_features, cfg.augment):
        return None
    note = "" if cfg.augment == "none" else f" (--cache-features on: these epochs skip --augment {cfg.augment})"
    print(f"frozen-backbone epochs train the head on cached features{note}")
    splits = {"train": run.splits.train, "val": run.splits.val}
    return FrozenFeatures(run.model, run.backbone, run.data_config, splits, device=run.device, workers=cfg.workers)


def cached_frozen_epoch(run: Run, features: FrozenFeatures, optimizer, scheduler, sampler: ShardedSeededSampler) -> tuple[EpochResult, tuple[dict[str, Any], float, list[str]]]:
    """train_one_epoch + evaluate_split("val") for a frozen epoch, on cached features: same batches, steps and metrics.
    Under torchrun every rank trains the head alike on the global batches (the union of the ranks'
    batches), which is what DDP would compute, without communication."""
    cfg = run.cfg
    order = [index for index, _ in sampler.global_order()]
    result = features.train_epoch(optimizer, scheduler, order, batch_size=cfg.batch_size * sampler.world_size, drop_last=sampler.drops_last(cfg.batch_size), label_smoothing=cfg.label_smoothing, class_weights=class_weight_tensor(run))
    return result, cached_evaluation(run, features, "val")


def cached_evaluation(run: Run, features: FrozenFeatures, split: str) -> tuple[dict[str, Any], float, list[str]]:
    """evaluate_split on cached features: (metrics, loss, paths that failed to decode)."""
    logits, targets, failed = features.logits(split)
    metrics = classification_metrics(logits, targets, run.splits.classes)
    loss = float(torch.nn.functional.cross_entropy(torch.from_numpy(logits), torch.from_numpy(targets))) if len(targets) else float("nan")
    return metrics, loss, [getattr(run.splits, split)[i].path for i in failed]


def history_row(epoch: int, optimizer, result: EpochResult, val_metrics: dict, val_loss: float, frozen: bool) -> dict[str, Any]:
    return {
        "epoch": epoch + 1,
        "lr": optimizer.param_groups[0]["lr"],
        "frozen_backbone": frozen,
        "train_loss": round(result.loss, 5),
        "train_top1": round(result.top1, 5),
        "val_loss": round(val_loss, 5),
        "val_top1": val_metrics["top1"],
        "train_img_per_s": round(result.img_per_s, 2),
        "epoch_seconds": round(result.seconds, 2),
    }


def is_improvement(row: dict[str, Any], best: dict[str, Any] | None) -> bool:
    if best is None:
        return True
    if row["val_top1"] is None:  # no validation split: the latest epoch is the best we know
        return True
    return (row["val_top1"], -row["val_loss"]) > (best["val_top1"], -best["val_loss"])


def format_epoch(row: dict[str, Any], epochs: int, improved: bool) -> str:
    val = "no validation images (the last epoch is kept)" if row["val_top1"] is None else f"val loss {row['val_loss']:.4f} acc {row['val_top1']:.2%}"
    return (f"epoch {row['epoch']:>3}/{epochs}  train loss {row['train_loss']:.4f} acc {row['train_top1']:.2%}  "
            f"{val}  {row['train_img_per_s']:.1f} img/s{'  *best' if improved and row['val_top1'] is not None else ''}")


def save_training_state(run: Run, optimizer, scheduler, scaler, state: dict[str, Any], ema: ModelEma | None = None) -> None:
    save_checkpoint(
        run.out / "last.pt",
        **checkpoint_extra(run),
        optimizer=optimizer.state_dict(),
        scheduler=scheduler.state_dict(),
        scaler=scaler.state_dict() if scaler else {},
        epoch=state["epoch"],
        history=state["history"],
        best=state["best"] or {},
        failed=state["failed"],
        rng=capture_rng(),
        ema=ema.state_dict() if ema else {},
    )


def load_training_state(path: Path) -> dict[str, Any]:
    """A checkpoint to resume from: a last.pt, with the optimizer, scheduler and progress that best.pt lacks."""
    ckpt = load_checkpoint(path)
    if missing := [key for key in TRAINING_STATE if key not in ckpt]:
        raise CheckpointError(f"{path} has no training state to resume from (it lacks {', '.join(missing)}): "
                              f"resume from the run's last.pt, e.g. --resume {path.parent / 'last.pt'}")
    return ckpt


def check_classes_match(split_classes: list[str], trained: list[str], split_file: Path, resume: Path) -> None:
    """Else the head's shape mismatch blamed last.pt for an edited split.json."""
    if list(trained) != list(split_classes):
        raise DatasetError(f"{split_file} lists the classes {', '.join(split_classes)}, but {resume} was trained on "
                           f"{', '.join(trained)}: restore the run's split.json, or train a new run")


def restore_training_state(run: Run, resume: Path, optimizer, scheduler, scaler, ema: ModelEma | None = None, *, steps_per_epoch: int) -> dict[str, Any]:
    ckpt = load_training_state(resume)
    check_classes_match(run.splits.classes, ckpt["classes"], run.out / "split.json", resume)  # a split scanned again, with no split.json
    load_matching(run.model, ckpt["model"], what=f"{resume}")
    if ema is not None:
        ema.load_state_dict(ckpt["ema"])
    peak_lrs = [group["initial_lr"] for group in optimizer.param_groups]
    optimizer.load_state_dict(ckpt["optimizer"])
    scheduler.load_state_dict(ckpt["scheduler"])
    # this run's world size may differ from the checkpoint's: its peak LRs and steps per epoch apply
    distributed.continue_schedule(optimizer, scheduler, peak_lrs=peak_lrs, step=ckpt["epoch"] * steps_per_epoch)
    if scaler is not None and ckpt.get("scaler"):
        scaler.load_state_dict(ckpt["scaler"])
    restore_rng(ckpt["rng"])
    print(f"resuming {resume} after epoch {ckpt['epoch']}")
    return {"epoch": ckpt["epoch"], "history": ckpt["history"], "best": ckpt["best"] or None, "failed": ckpt.get("failed", [])}


# The test report of a run's model, which finish writes; curves.png, of the epochs, is written again with them.
RUN_REPORT_FILES = ("metrics.json", "confusion_matrix.png", "test_mistakes.png", "open_set.png")


def remove_earlier_report(out: Path) -> None:
    """A run trained further (--resume --epochs N) has no report until it finishes again: the earlier one, of
    another best.pt, stayed beside the new best.pt where the new report was stopped, and told of the
    earlier model. metrics.json goes first, as it marks the run finished."""
    removed = [name for name in RUN_REPORT_FILES if (out / name).is_file()]
    for name in removed:
        (out / name).unlink()
    if removed:
        print(f"the earlier report ({', '.join(removed)}) is removed: it was of the model before these epochs; "
              "the run writes its own when it finishes")


def finish(run: Run, state: dict[str, Any], failed: set[str]) -> None:
    """Calibrate the best checkpoint, test it as the service loads it, and write the report (rank 0)."""
    best_path = run.out / "best.pt"
    best = load_checkpoint(best_path) if is_main_process() else None
    if best is not None:
        load_matching(run.model, best["model"], what=str(best_path))
    distributed.broadcast_weights(run.model)  # rank 0's file may be on rank 0's machine only
    if not is_main_process():
        return
    metrics = {
        "backbone": run.cfg.backbone,
        "classes": run.splits.classes,
        "best_epoch": (state["best"] or {}).get("epoch"),
        "epochs_run": state["epoch"],
        "split": run.splits.counts(),
        "val": best["metrics"].get("val"),
        "test": None,
        "skipped": run.splits.skipped + failure_reports(sorted(failed), run.data_config.resize_size),
    }
    rejection, val_outputs = fit_rejection(run.model, run.cfg.backbone, run.splits, run.data_config, device=run.device, requested=run.cfg.reject_classes,
                                           target_recall=run.cfg.reject_target_recall, workers=run.cfg.workers, score=run.cfg.reject_score)
    save_checkpoint(best_path, **checkpoint_extra(run), metrics=metrics, rejection=rejection.to_dict())  # what load_classifier reads
    test_metrics, test_outputs, mistakes = test_served(run, best_path, metrics, failed)
    metrics["test"] = test_metrics
    metrics["open_set"] = open_set_results(val_outputs, test_outputs, rejection, run.splits.classes, run.out, run.cfg.reject_target_recall)
    save_checkpoint(best_path, **checkpoint_extra(run), metrics=metrics, rejection=rejection.to_dict())
    metrics["test_mistakes"] = mistakes  # metrics.json only: file paths stay out of the checkpoint
    plot_mistakes(run.out / "test_mistakes.png", mistakes)
    plot_curves(run.out / "curves.png", state["history"])
    write_report(run.out, metrics, run.splits.classes)  # metrics.json last: the run is finished
    print(format_summary(test_metrics, f"\ntest set, best epoch {metrics['best_epoch']}:"))
    if run.hand_crops is not None:
        print(format_no_hand(test_metrics))
    print(format_open_set(metrics["open_set"]))
    skipped = metrics["skipped"]
    if skipped:
        listed = "\n".join(f"  {s['path']}: {s['reason']}" for s in skipped[:10])
        more = f"\n  … and {len(skipped) - 10} more (metrics.json lists all)" if len(skipped) > 10 else ""
        print(f"{len(skipped)} file(s) skipped:\n{listed}{more}")
    mistakes = ", test_mistakes.png: the most confident mistakes, where wrong labels show up" if metrics.get("test_mistakes") else ""
    plots = ", ".join(name for name in ("curves.png", "confusion_matrix.png", "open_set.png") if (run.out / name).is_file())
    print(f"results in {run.out}/ (best.pt, metrics.json{', ' + plots if plots else ''}{mistakes})")  # with no test split, fewer plots
    print(next_commands(run.out, tested=bool(run.splits.test)))


def next_commands(out: Path, tested: bool = True) -> str:
    """What to run with the model, as the user would paste it: the README's next steps, for this run. With no test split,
    evaluate takes --data (without it, it stops: "the run's test split is empty")."""
    py, run = python_command(), shlex.quote(str(out))
    evaluate = "   # test it again, or with --data FOLDER on other photos" if tested else " --data FOLDER   # test it on photos it has not seen"
    return "\n".join(["next:", f"  {py} -m training.evaluate --checkpoint {run}{evaluate}",
                      f"  {py} -m service.webcam --checkpoint {run}   # live, from a webcam (--source for a video file)",
                      f"  {py} -m service.import_model {run}   # then serve it with bentoml serve (docs/serving.md)"])


def test_served(run: Run, best_path: Path, metrics: dict[str, Any], failed: set[str]) -> tuple[dict[str, Any], SplitOutputs, list[dict[str, Any]]]:
    """(test metrics, the test split's outputs for the "no gesture" report, its most confident
    mistakes) from the saved best.pt's Classifier, loaded as ``training.evaluate`` loads it (eager
    PyTorch, fp32): the figures reported are the ones the service gives, whatever precision training
    ran in, and the test split is read once. Test files that fail to decode join ``metrics["skipped"]``."""
    classifier = load_classifier(best_path, run.device, engine="torch")
    if run.hand_crops is not None:  # the "no gesture" report on the hand crops, as calibration sees them
        crops = split_outputs(run.model, run.cfg.backbone, run.splits.test, run.data_config, device=run.device, workers=run.cfg.workers, desc="test features")
        test_metrics, mistakes = test_frames(run, classifier, metrics)
        return test_metrics, crops, mistakes
    outputs, test_failed = served_outputs(classifier, run.splits.test, batch_size=run.cfg.batch_size * 2, workers=run.cfg.workers)
    metrics["skipped"] = metrics["skipped"] + failure_reports(sorted(set(test_failed) - failed), run.data_config.resize_size)
    return classification_metrics(outputs.logits, outputs.targets, classifier.classes), outputs, top_mistakes(run.splits.test, outputs, classifier.classes, classifier.rejection)


def test_frames(run: Run, classifier: Classifier, metrics: dict[str, Any]) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """--hands: (test metrics, most confident mistakes) of the saved best.pt, loaded as the service
    loads it, on every test image (whole frames, no-hand ones included: training.hand_crops's
    policy); the crop report goes into ``metrics``."""
    frames = frame_outputs(classifier, run.source_splits.test, run.hand_crops, batch_size=run.cfg.batch_size * 2, desc="test frames")
    metrics["hands"] = run.hand_report.to_json()
    metrics["skipped"] = metrics["skipped"] + run.hand_report.failed
    return frame_metrics(classifier, frames), frame_mistakes(classifier, run.source_splits.test, frames)


@command
def main(argv: list[str] | None = None) -> int:
    try:
        cfg, resume = parse_config(argv)
    except USER_ERRORS:
        if a_local_peer():  # a --resume file that does not load: the same on every process of this machine
            let_local_rank_0_say_it()
        raise
    try:
        distributed.init_distributed(cfg.device)  # under torchrun: join the other processes
        train(cfg, resume)
    except distributed.RankZeroFailed as failed:
        if distributed.rank_zero_is_elsewhere():  # this machine's torchrun would otherwise end as if all went well
            print(f"error: rank 0, on another machine, stopped: {failed}", file=sys.stderr)
            return EXIT_USAGE
        return 0  # rank 0 reports the error and fails the job
    except USER_ERRORS as err:
        if not is_main_process() and not isinstance(err, distributed.NoGpuForThisRank):  # every rank raises rank 0's error;
            return EXIT_USAGE  # rank 0 alone says it, but not this one: rank 0 has its GPU and is waiting to join
        raise  # @command prints it as one error: line
    finally:
        distributed.close_distributed()
    return 0


if __name__ == "__main__":
    from torch.distributed.elastic.multiprocessing.errors import record

    started = time.perf_counter()
    code = record(main)()  # under torchrun, an unexpected error's traceback reaches its failure summary
    if code == 0 and is_main_process():  # after an error, its one line is all there is to say
        print(f"finished in {time.perf_counter() - started:.0f} s", file=sys.stderr)
    sys.exit(code)
