"""Export a checkpoint to ONNX or TorchScript, with its class names and preprocessing, and prove parity.

    python -m training.export --checkpoint RUN/best.pt                # RUN/model.onnx
    python -m training.export --checkpoint RUN/best.pt --out model.pt --images photos/   # TorchScript, as the name says

The exported file carries everything needed to use it without this repository: ONNX in
``metadata_props``, TorchScript as the extra file ``gesture_metadata.json`` (keys: backbone, classes,
data_config, preprocess, input, output, rejection, decision). The model takes a float32 NCHW batch
named ``image``, already preprocessed as ``preprocess`` describes, and returns ``logits``; a model
whose "no gesture" score uses the penultimate features (``--reject-score feature_cosine`` or
``energy_and_feature``) returns ``features`` too. ``rejection`` is the checkpoint's stored rule
(gesture_core.rejection.Rejection.to_dict: temperature, threshold, reject classes, the validation
references and class means), and ``decision`` says in words how it turns the outputs into a label
or "no gesture".

After writing, the file is run on real images (the run's saved test split, or ``--images``) next
to the PyTorch model; the maximum |Δlogit| (and |Δfeature|), the top-1 label agreement and the
agreement of the decisions (label or "no gesture", made from the file's outputs and metadata alone)
are reported, and the command exits with status 1 when a difference is above ``--tolerance``.
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import sys
import warnings
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from gesture_core.backbones import get_backbone, with_features
from gesture_core.checkpoint import atomic_output, check_not_training_state, clear_partial_saves
from gesture_core.classifier import Classifier, decode_probs, load_verified_classifier
from gesture_core.cli import (
    CommandParser,
    check_output_spares_inputs,
    check_writable,
    checkpoint_arg,
    command,
    output_arg,
    python_command,
)
from gesture_core.images import IMAGE_SUFFIXES, ImageDecodeError
from gesture_core.native_output import in_brief, native_stdout_discarded
from gesture_core.rejection import Rejection
from training import cli
from training.data import DatasetError, Splits

FORMATS = ("onnx", "torchscript")
SUFFIX = {"onnx": ".onnx", "torchscript": ".torchscript.pt"}
# the names an --out file of each format usually has, so --format can be left out (as `torch.save` users name a .pt)
FORMAT_OF_SUFFIX = {".onnx": "onnx", ".pt": "torchscript", ".pth": "torchscript", ".ts": "torchscript", ".torchscript": "torchscript"}
METADATA_FILE = "gesture_metadata.json"  # TorchScript extra file
DEFAULT_OPSET = 17
SKIPS_SHOWN = 5  # parity images that do not decode, named one per line; the rest are counted
INPUT_NAME, OUTPUT_NAME, FEATURES_NAME = "image", "logits", "features"
# A share of each output's largest |value|: fp32 kernels differ in summation order, not in maths, and
# their differences grow with the values. An absolute 1e-4 failed a 2-epoch lite0's export on 432 of its
# test images: |Δfeature| 5.4e-4 on features up to 6.0 (9e-5 of them), every decision the same.
DEFAULT_TOLERANCE = 1e-3


@dataclass
class ParityReport:
    images: int
    max_abs_diff: float  # over the logits
    mean_abs_diff: float
    label_agreement: float  # fraction of images with the same top-1 class
    tolerance: float
    decision_agreement: float  # fraction with the same label or "no gesture" (the file's decision from its metadata)
    max_abs_feature_diff: float | None = None  # when the file outputs features
    no_gesture: int = 0  # images the PyTorch model turns away ("no gesture"), so agreement covers both answers
    logit_scale: float = 1.0  # the PyTorch model's largest |logit|, at least 1: the tolerance is a share of it
    feature_scale: float = 1.0  # the same for its features

    @property
    def ok(self) -> bool:
        return (self.max_abs_diff <= self.tolerance * self.logit_scale
                and (self.max_abs_feature_diff or 0.0) <= self.tolerance * self.feature_scale)

    def describe(self) -> str:
        verdict = "OK" if self.ok else f"FAILED (above tolerance {self.tolerance:g} x the largest |value|)"
        features = ("" if self.max_abs_feature_diff is None
                    else f", max |Δfeature| {self.max_abs_feature_diff:.3g} of {self.feature_scale:.3g}")
        return (f"parity on {self.images} images: max |Δlogit| {self.max_abs_diff:.3g} of {self.logit_scale:.3g}, "
                f"mean {self.mean_abs_diff:.3g}{features}, "
                f"top-1 agreement {self.label_agreement:.2%}, decision agreement {self.decision_agreement:.2%} "
                f"({self.no_gesture} no gesture) -> {verdict}")


def export_metadata(classifier: Classifier) -> dict[str, str]:
    """String key/values (ONNX metadata_props only holds strings)."""
    rejection = classifier.rejection
    c = classifier.data_config
    ops = "grayscale, " if c.in_chans == 1 else ""
    geometry = {  # gesture_core.preprocess.CROP_MODES
        "center": f"resize shorter side to {c.resize_size} ({c.interpolation}; area when shrinking) -> centre crop {c.input_size}x{c.input_size}",
        "letterbox": f"resize longer side to {c.input_size} ({c.interpolation}; area when shrinking) -> pad to {c.input_size}x{c.input_size} "
                     f"with the mean colour, centred",
        "resize": f"resize to {c.input_size}x{c.input_size} ({c.interpolation}; area when shrinking)",
    }[c.crop]  # fmt: skip
    hands = (f"one upright {c.resize_size}x{c.resize_size} crop per hand that MediaPipe's palm detector and hand landmarks "
             "find (gesture_core.hands.hand_crop, docs/hands.md), each -> ") if c.hands else ""
    recipe = f"RGB uint8 -> {hands}{geometry} -> {ops}float32 (x/255 - mean)/std with mean {list(c.mean)}, std {list(c.std)} -> NCHW"
    return {
        "format": "gesture-classifier",
        "backbone": classifier.backbone,
        "classes": json.dumps(classifier.classes),
        "data_config": json.dumps(c.to_dict()),
        "preprocess": recipe,
        "input": f"{INPUT_NAME}: float32[N,{c.in_chans},{c.input_size},{c.input_size}]",
        "output": f"{OUTPUT_NAME}: float32[N,{len(classifier.classes)}] (softmax of logits / rejection.temperature for probabilities)"
                  + (f"; {FEATURES_NAME}: float32[N,{len(rejection.feature_means[0])}] (penultimate features)" if rejection.needs_features else ""),
        "rejection": json.dumps(rejection.to_dict()),
        "decision": decision_recipe(rejection),
    }


# How each score is made from the file's outputs and the stored rejection (gesture_core.rejection.Rejection)
SCORE_RECIPES = {
    "max_softmax": "gesture score = the top probability, softmax(logits / temperature).max()",
    "energy": "gesture score = rank(temperature * logsumexp(logits / temperature), reference)",
    "feature_cosine": "gesture score = rank(max over feature_means of the cosine of features to the mean, reference)",
    "energy_and_feature": "gesture score = min(rank(temperature * logsumexp(logits / temperature), reference), "
                          "rank(max over feature_means of the cosine of features to the mean, feature_reference))",
}
RANK_RECIPE = "; rank(x, r) = the share of the sorted list r at or below x (0-1)"


def decision_recipe(rejection: Rejection) -> str:
    """In words: the outputs and the stored rejection -> a label or "no gesture" (None)."""
    rank = RANK_RECIPE if rejection.score != "max_softmax" else ""
    return (f"label = classes[argmax(logits)], or no gesture (None) when it is one of rejection.reject_classes "
            f"or its gesture score is below rejection.threshold; {SCORE_RECIPES[rejection.score]}{rank}")


def exported_network(classifier: Classifier) -> nn.Module:
    """The network to export: the model, or the model answering (logits, features) for a feature score."""
    model = classifier.model.cpu().eval()
    if not classifier.rejection.needs_features:
        return model
    # .eval(): the exporters put a module back in the mode it had, and a new module is in train mode,
    # which would leave the classifier's shared layers in it (batch statistics in every later call)
    return SplitOutputs(with_features(model, get_backbone(classifier.backbone)), len(classifier.classes)).eval()


class SplitOutputs(nn.Module):
    """LogitsAndFeatures' one output as two, so that the exported file names them (logits, features)."""

    def __init__(self, network: nn.Module, classes: int):
        super().__init__()
        self.network, self.classes = network, classes

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        out = self.network(x)
        return out[:, : self.classes], out[:, self.classes :]


def output_names(classifier: Classifier) -> list[str]:
    return [OUTPUT_NAME, FEATURES_NAME] if classifier.rejection.needs_features else [OUTPUT_NAME]


def _example(classifier: Classifier, batch: int = 2) -> torch.Tensor:
    c = classifier.data_config
    return torch.zeros(batch, c.in_chans, c.input_size, c.input_size)


@contextmanager
def quiet_deprecations():
    # torch 2.14 marks the TorchScript-based ONNX exporter and torch.jit as deprecated; both still
    # work, and the new exporter needs onnxscript, which this project does not install.
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=DeprecationWarning)
        warnings.filterwarnings("ignore", category=FutureWarning)
        warnings.filterwarnings("ignore", message=".*(legacy TorchScript-based ONNX|will be removed|deprecated).*")
        yield


def export_onnx(classifier: Classifier, path: Path, *, opset: int = DEFAULT_OPSET) -> Path:
    import onnx

    outputs = output_names(classifier)
    # torch 2.14's TorchScript-based ONNX exporter prints its whole graph (dozens of lines) through C++ to
    # stdout when an operator fails, whatever ``verbose`` says: its logging switch is tested uncalled
    # (``if _C._jit_is_onnx_log_enabled``), so it is always on. The exception itself still says what failed.
    with quiet_deprecations(), native_stdout_discarded():
        try:
            torch.onnx.export(exported_network(classifier), (_example(classifier),), str(path), dynamo=False, opset_version=opset,
                              input_names=[INPUT_NAME], output_names=outputs,
                              dynamic_axes={name: {0: "batch"} for name in [INPUT_NAME, *outputs]})
        except torch.onnx.errors.OnnxExporterError as err:  # an operator ONNX cannot express at this size (lenet5 off 32 px)
            raise ValueError(f"{classifier.backbone} at {classifier.data_config.input_size} px cannot be exported to ONNX "
                             f"({in_brief(err, 200)}): use --format torchscript") from None
    proto = onnx.load(str(path))
    for key, value in export_metadata(classifier).items():
        entry = proto.metadata_props.add()
        entry.key, entry.value = key, value
    onnx.checker.check_model(proto)
    onnx.save(proto, str(path))
    return path


def export_torchscript(classifier: Classifier, path: Path) -> Path:
    with quiet_deprecations(), torch.no_grad():
        traced = torch.jit.trace(exported_network(classifier), _example(classifier))
        torch.jit.save(traced, str(path), _extra_files={METADATA_FILE: json.dumps(export_metadata(classifier))})
    return path


def read_metadata(path: str | os.PathLike) -> dict[str, Any]:
    """The metadata of an exported file, with classes, data_config and rejection decoded from JSON
    (a file exported before the rejection was stored gets what its checkpoint would: reject classes by
    name, no temperature, the uncalibrated threshold)."""
    path = Path(path)
    if path.suffix == ".onnx":
        import onnx

        raw = {p.key: p.value for p in onnx.load(str(path), load_external_data=False).metadata_props}
    else:
        files = {METADATA_FILE: ""}
        with quiet_deprecations():
            torch.jit.load(str(path), map_location="cpu", _extra_files=files)
        raw = json.loads(files[METADATA_FILE] or "{}")
    if raw.get("format") != "gesture-classifier":
        raise ValueError(f"{path} has no gesture-classifier metadata (export it with python -m training.export)")
    classes = json.loads(raw["classes"])
    rejection = json.loads(raw["rejection"]) if "rejection" in raw else Rejection.from_checkpoint({"classes": classes}).to_dict()
    return {**raw, "classes": classes, "data_config": json.loads(raw["data_config"]), "rejection": rejection}


class ExportedRunner:
    """Runs an exported file on a preprocessed batch: (N, C, H, W) float32 -> ((N, classes) logits,
    (N, D) features or None when the file has no features output)."""

    def __init__(self, path: Path, fmt: str):
        self.fmt = fmt
        if fmt == "onnx":
            import onnxruntime as ort

            self.session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        else:
            with quiet_deprecations():
                self.module = torch.jit.load(str(path), map_location="cpu").eval()

    def __call__(self, batch: torch.Tensor) -> tuple[np.ndarray, np.ndarray | None]:
        if self.fmt == "onnx":
            outputs = self.session.run(None, {INPUT_NAME: batch.numpy()})
        else:
            with torch.inference_mode():
                out = self.module(batch)
            outputs = [t.float().numpy() for t in (out if isinstance(out, tuple) else (out,))]
        return outputs[0], (outputs[1] if len(outputs) > 1 else None)


def exported_decisions(metadata: dict[str, Any], logits: np.ndarray, features: np.ndarray | None) -> list[str | None]:
    """The label, or None for "no gesture", of each image, from an exported file's outputs and metadata alone."""
    rejection = Rejection.from_checkpoint({"rejection": metadata["rejection"], "classes": metadata["classes"]})
    probs, gestures = rejection.probabilities_and_gestures(logits, features)
    return [decode_probs(row, metadata["classes"], k=1, threshold=rejection.threshold, reject_classes=rejection.reject_classes,
                         gesture=None if gestures is None else gestures[i]).label for i, row in enumerate(probs)]


def parity_images(checkpoint: Path, images: list[str] | None, limit: int) -> list[str]:
    """Up to ``limit`` image paths: those given (files or folders), else the run's saved test split."""
    if images:
        found: list[str] = []
        for item in map(Path, images):
            if item.is_dir():
                found += sorted(str(p) for p in item.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)
            elif item.is_file():
                found.append(str(item))
            else:
                raise DatasetError(f"--images {item}: no such file or folder")
    else:
        split = checkpoint.parent / "split.json"
        if not split.exists():
            raise DatasetError(f"{split} not found: pass --images FILES_OR_FOLDERS for the parity check")
        found = [s.path for s in Splits.load(split).test]
    if not found:
        raise DatasetError("no images for the parity check: pass --images FILES_OR_FOLDERS")
    # An even spread over the (class-ordered) list, so every class is represented.
    step = max(1, len(found) // limit)
    return found[::step][:limit]


def parity_inputs(classifier: Classifier, images: list[str]) -> list[torch.Tensor]:
    """The parity images as the model's inputs, each undecodable one skipped and said; a DatasetError
    when none is left. Run before the export, so that a check that cannot run leaves no model file."""
    crops, failed = [], []
    for path in images:
        try:
            crops += classifier.model_crops(path)  # a hand-crop model's hands: whole frames, which it never sees, were checked
        except ImageDecodeError as err:
            failed.append(str(err))  # the reason names the file
    for reason in failed[:SKIPS_SHOWN]:
        print(f"  skipping {reason}", file=sys.stderr)
    if len(failed) > SKIPS_SHOWN:  # a folder of 60 undecodable files was 60 lines above the error
        print(f"  ... and {len(failed) - SKIPS_SHOWN} more that do not decode", file=sys.stderr)
    if not crops and len(failed) < len(images):
        raise DatasetError(f"no hand found in the {len(images) - len(failed)} parity images that decode: pass --images with photos of hands")
    if classifier.hands_mode:  # the report counts the model's inputs
        print(f"  parity inputs: the {len(crops)} hand crops of {len(images) - len(failed)} images", file=sys.stderr)
    if not crops:
        raise DatasetError(f"none of the {len(images)} parity images could be decoded: pass --images with photos that decode")
    return list(classifier.preprocess.normalize_batch(crops))


def check_parity(classifier: Classifier, exported: Path, fmt: str, tensors: list[torch.Tensor], *, tolerance: float = DEFAULT_TOLERANCE,
                 batch_size: int = 16) -> ParityReport:
    runner, metadata = ExportedRunner(exported, fmt), read_metadata(exported)
    diffs, feature_diffs, agree, same_decision, no_gesture = [], [], 0, 0, 0
    logit_scale = feature_scale = 1.0
    for i in range(0, len(tensors), batch_size):
        batch = torch.stack(tensors[i : i + batch_size])
        ours, our_features = classifier.logits_and_features(batch)
        theirs, their_features = runner(batch)
        diffs.append(np.abs(ours - theirs).ravel())
        logit_scale = max(logit_scale, float(np.abs(ours).max()))
        if their_features is not None:
            feature_diffs.append(np.abs(our_features - their_features).ravel())
            feature_scale = max(feature_scale, float(np.abs(our_features).max()))
        agree += int((ours.argmax(1) == theirs.argmax(1)).sum())
        decided = [classifier.decide(scores).label for scores in classifier.scores_from_logits(ours, our_features)]
        no_gesture += decided.count(None)
        same_decision += sum(a == b for a, b in zip(decided, exported_decisions(metadata, theirs, their_features), strict=True))
    diff = np.concatenate(diffs)
    feature_diff = float(np.concatenate(feature_diffs).max()) if feature_diffs else None
    return ParityReport(len(tensors), float(diff.max()), float(diff.mean()), agree / len(tensors), tolerance,
                        same_decision / len(tensors), feature_diff, no_gesture, logit_scale, feature_scale)


def export(classifier: Classifier, fmt: str, path: Path, **kwargs: Any) -> Path:
    if fmt not in FORMATS:
        raise ValueError(f"format {fmt!r}: choose one of {', '.join(FORMATS)}")
    path.parent.mkdir(parents=True, exist_ok=True)
    return export_onnx(classifier, path, **kwargs) if fmt == "onnx" else export_torchscript(classifier, path)


def build_parser() -> argparse.ArgumentParser:
    p = CommandParser(prog="python -m training.export", description=__doc__.split("\n")[0])
    p.add_argument("--checkpoint", type=checkpoint_arg("best.pt"), required=True, help="RUN/best.pt, or the run folder RUN")
    p.add_argument("--format", choices=FORMATS, default=None, help="what to write (default: what --out's name says, .onnx or .pt, else onnx)")
    p.add_argument("--out", type=output_arg("file", replaces=tuple(FORMAT_OF_SUFFIX)), default=None, help="output file (default: RUN/model.onnx or RUN/model.torchscript.pt)")
    p.add_argument("--images", type=cli.input_path("an image file or folder"), nargs="+", default=None, help="images or folders for the parity check (default: the run's test split)")
    p.add_argument("--max-images", type=cli.int_at_least(1), default=64, help="parity images used at most")
    p.add_argument("--tolerance", type=cli.float_in(0.0, 1.0, high_inclusive=True), default=DEFAULT_TOLERANCE,  # past 1 it allows differences larger than the logits
                   help="max |Δlogit| and |Δfeature| allowed, as a share of the largest |logit| or |feature| (at least 1)")
    # torch.onnx's TorchScript exporter (dynamo=False, above) writes opsets 13-20 in torch 2.14: 999 was a traceback.
    p.add_argument("--opset", type=cli.int_at_least(13, 20), default=None, help=f"ONNX opset (default {DEFAULT_OPSET})")
    return p


def chosen_format(fmt: str | None, out: str | None) -> str:
    """--format, else the format --out's name says, else ONNX (the file most runtimes read)."""
    if fmt or out is None:
        return fmt or "onnx"
    if (named := FORMAT_OF_SUFFIX.get(Path(out).suffix.lower())) is None:
        raise ValueError(f"--out {out}: its name does not say the format: pass --format ({', '.join(FORMATS)}), "
                         "or name it .onnx or .pt")
    return named


@command
def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    args.format = chosen_format(args.format, args.out)
    out = Path(args.out) if args.out else args.checkpoint.parent / f"model{SUFFIX[args.format]}"
    if FORMAT_OF_SUFFIX.get(out.suffix.lower()) != args.format:  # the file is read back by its suffix, for the parity check
        kind, example = ("an ONNX", "model.onnx") if args.format == "onnx" else ("a TorchScript", "model.torchscript.pt")
        endings = " or ".join(suffix for suffix, fmt in FORMAT_OF_SUFFIX.items() if fmt == args.format)
        raise ValueError(f"--out {out}: {kind} file needs a name ending in {endings} after a stem, e.g. {example}")
    if args.opset is not None and args.format != "onnx":  # it was taken and ignored
        raise ValueError(f"--opset {args.opset} is an ONNX setting, and --format is {args.format}: leave it out, or export ONNX")
    check_output_spares_inputs("--out", out, {"--checkpoint": args.checkpoint})
    check_writable("--out", out)
    classifier = load_verified_classifier(args.checkpoint, "cpu", engine="torch")  # parity is defined against eager PyTorch, CPU fp32
    # a deployment of last.pt ships the latest epoch, uncalibrated, as import_model refuses to
    check_not_training_state(args.checkpoint, classifier.checkpoint_meta, f"{python_command()} -m training.export --checkpoint")
    inputs = parity_inputs(classifier, parity_images(args.checkpoint, args.images, args.max_images))
    report = export_checked(classifier, args.format, out, inputs, tolerance=args.tolerance, **({"opset": args.opset or DEFAULT_OPSET} if args.format == "onnx" else {}))
    print(report.describe())
    if not report.ok:  # the parity report stays the kept file's (or none): it described a file that was not written
        print(f"{out} was not written{' (the previous file is kept)' if out.exists() else ''}: the export failed its parity check", file=sys.stderr)
        return 1
    Path(f"{out}.parity.json").write_text(json.dumps({**asdict(report), "ok": report.ok, "format": args.format}, indent=2))
    return 0


class ParityFailure(Exception):
    def __init__(self, report: ParityReport) -> None:
        self.report = report


def export_checked(classifier: Classifier, fmt: str, out: Path, inputs: list[torch.Tensor], *, tolerance: float, **kwargs: Any) -> ParityReport:
    """Export to a temporary file beside ``out``, check it, and only then put it in ``out``'s place: a
    full disk, or an export that fails its parity check, left the previous file replaced by it."""
    # an export killed before its rename (kill -9, a power cut) left its temporary file, a model's size, hidden beside --out
    clear_partial_saves(out.parent, f".{glob.escape(out.name)}.*.tmp{glob.escape(out.suffix)}", what="export", by="export")
    try:
        with atomic_output(out, suffix=f".tmp{out.suffix}") as written:  # the parity check reads the format from the suffix
            export(classifier, fmt, written, **kwargs)
            size = written.stat().st_size
            report = check_parity(classifier, written, fmt, inputs, tolerance=tolerance)
            if not report.ok:
                raise ParityFailure(report)
    except ParityFailure as failed:
        return failed.report
    print(f"wrote {out} ({size / 2**20:.1f} MiB): {classifier.backbone}, {len(classifier.classes)} classes, metadata: {', '.join(export_metadata(classifier))}")
    return report


if __name__ == "__main__":
    sys.exit(main())
