"""What a fine-tuned CNN looks at: feature maps by stage, and a Grad-CAM heatmap per class.

    python -m training.visualize --checkpoint RUN/best.pt --image hand.jpg
    python -m training.visualize --checkpoint RUN/best.pt --image hand.jpg --class 3 --class 5 --out vis/

Writes ``feature_maps.png`` (the most active channels of the first, a middle and the last spatial
stage: early stages respond to edges and colour, late ones to parts, as Zeiler & Fergus showed)
and ``gradcam.png`` (Selvaraju et al. 2017: the last stage's activations weighted by the gradient
of the class logit). The image goes through the checkpoint's own Classifier, so the maps are of
exactly the crop the model classifies: ``Classifier.crop``, or for a model trained on hand crops
(``--hands``) the crop of the first hand ``find_hands`` gives. Works for any registry backbone: stages are found by
watching where the spatial resolution changes in one forward pass, not from per-model layer names.
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from gesture_core.checkpoint import warn_if_training_state
from gesture_core.classifier import Classifier, load_classifier
from gesture_core.cli import (
    CommandParser,
    check_output_among_no_photos,
    check_output_outside_datasets,
    checkpoint_arg,
    command,
    output_arg,
    photos_in,
    trained_on,
)
from gesture_core.rejection import softmax
from training import cli
from training.report import plottable, save_figure

VISUALIZE_FILES = ("feature_maps.png", "gradcam.png")  # what it writes into --out


@dataclass
class Stage:
    """The output of the last (outermost) module to finish at one spatial resolution."""

    name: str  # dotted module path
    call: int  # which call of that module (a module can run several times per forward)
    output: torch.Tensor  # (C, H, W), detached copy

    def describe(self) -> str:
        c, h, w = self.output.shape
        return f"{self.name} ({c}x{h}x{w})"


@dataclass
class GradCam:
    heatmap: np.ndarray  # float32 (H, W) in [0, 1], the size of the model's input crop
    class_index: int
    label: str
    probability: float
    layer: str


def spatial_stages(model: nn.Module, batch: torch.Tensor) -> list[Stage]:
    """One Stage per run of consecutive module outputs sharing a spatial size (1x1 and flat outputs excluded).

    Within a run the shallowest module finishing last wins, so ResNet gives layer1..layer4, GoogLeNet
    its Inception blocks (their concatenated output, not one branch), VGG its post-ReLU convs.
    The last stage is where Grad-CAM looks (the last convolutional feature map).
    """
    records: list[tuple[str, int, torch.Tensor]] = []
    calls: dict[str, int] = {}

    def hook(name: str):
        def record(module: nn.Module, args, output) -> None:
            calls[name] = calls.get(name, -1) + 1
            if isinstance(output, torch.Tensor) and output.dim() == 4 and output.shape[2] * output.shape[3] > 1:
                records.append((name, calls[name], output[0].detach().clone()))

        return record

    handles = [m.register_forward_hook(hook(name)) for name, m in model.named_modules() if name]
    try:
        with torch.inference_mode():
            model.eval()(batch)
    finally:
        for h in handles:
            h.remove()
    groups: list[list[tuple[str, int, torch.Tensor]]] = []
    for rec in records:
        h, w = rec[2].shape[1:]
        if groups:
            last_h, last_w = groups[-1][-1][2].shape[1:]
            if (h, w) == (last_h, last_w):
                groups[-1].append(rec)
                continue
            # Stages only shrink: a larger output is a parallel branch still at the previous
            # resolution (Inception) or an adaptive pool padding a small input up (VGG's 7x7).
            if h >= last_h and w >= last_w:
                continue
        groups.append([rec])
    stages = []
    for group in groups:
        shallowest = min(name.count(".") for name, _, _ in group)
        name, call, out = [r for r in group if r[0].count(".") == shallowest][-1]
        stages.append(Stage(name, call, out))
    if not stages:
        raise ValueError(f"{type(model).__name__} has no layer with a spatial output to visualise")
    return stages


def first_middle_last(stages: list[Stage]) -> list[Stage]:
    picks = [stages[0], stages[len(stages) // 2], stages[-1]]
    return [s for i, s in enumerate(picks) if s not in picks[:i]]


def grad_cam(classifier: Classifier, crop: np.ndarray, class_index: int | None = None, *, layer: Stage | None = None) -> GradCam:
    """Grad-CAM of ``class_index`` (default: the predicted class) at ``layer`` (default: the last spatial stage),
    for a crop as the Classifier makes it (``model_view``)."""
    batch = classifier.preprocess.normalize(crop)[None].to(classifier.device)
    model = classifier.model.eval()
    layer = layer or spatial_stages(model, batch)[-1]
    module = model.get_submodule(layer.name)
    held: dict[str, torch.Tensor] = {}
    calls = [-1]

    def capture(mod: nn.Module, args, output: torch.Tensor):
        calls[0] += 1
        if calls[0] == layer.call:
            held["activation"] = output
            # Later layers get a copy: an in-place op downstream (ReLU, +=) must not alter what we differentiate.
            return output.clone()
        return None

    handle = module.register_forward_hook(capture)
    try:
        with torch.enable_grad():
            logits = model(batch.requires_grad_(True)).float()
            probs = softmax(classifier.rejection.scale(logits.detach().cpu().numpy()))[0]  # calibrated, as predict says it
            index = int(probs.argmax()) if class_index is None else class_index
            activation = held["activation"]
            (grad,) = torch.autograd.grad(logits[0, index], activation)
    finally:
        handle.remove()
    weights = grad.mean(dim=(2, 3), keepdim=True)  # global-average-pooled gradients: one weight per channel
    cam = F.relu((weights * activation).sum(dim=1, keepdim=True)).detach()
    size = classifier.data_config.input_size
    cam = F.interpolate(cam, size=(size, size), mode="bilinear", align_corners=False)[0, 0]
    cam = cam / cam.max() if cam.max() > 0 else cam
    return GradCam(cam.cpu().numpy().astype(np.float32), index, classifier.classes[index], float(probs[index]), layer.name)


def feature_grid(fmap: torch.Tensor, channels: int = 16, gap: int = 1) -> np.ndarray:
    """The ``channels`` most active maps of (C, H, W), each scaled to [0, 1], tiled in a square grid."""
    fmap = fmap.float().cpu()
    order = fmap.mean(dim=(1, 2)).argsort(descending=True)[:channels]
    maps = fmap[order]
    lo = maps.amin(dim=(1, 2), keepdim=True)
    hi = maps.amax(dim=(1, 2), keepdim=True)
    maps = ((maps - lo) / (hi - lo).clamp_min(1e-8)).numpy()
    cols = int(np.ceil(np.sqrt(len(maps))))
    rows = int(np.ceil(len(maps) / cols))
    h, w = maps.shape[1:]
    grid = np.full((rows * (h + gap) - gap, cols * (w + gap) - gap), np.nan, np.float32)
    for i, m in enumerate(maps):
        r, c = divmod(i, cols)
        grid[r * (h + gap) : r * (h + gap) + h, c * (w + gap) : c * (w + gap) + w] = m
    return grid


def overlay(view: np.ndarray, heatmap: np.ndarray, alpha: float = 0.45) -> np.ndarray:
    """RGB uint8: the heatmap in the JET colour map blended over the model's input crop."""
    import cv2

    colour = cv2.cvtColor(cv2.applyColorMap(np.uint8(255 * heatmap), cv2.COLORMAP_JET), cv2.COLOR_BGR2RGB)
    return np.uint8(np.clip((1 - alpha) * view + alpha * colour, 0, 255))


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save_feature_maps(path: Path, view: np.ndarray, stages: list[Stage], channels: int = 16) -> Path:
    plt = _pyplot()
    fig, axes = plt.subplots(1, len(stages) + 1, figsize=(2.9 * (len(stages) + 1), 3.2))
    axes[0].imshow(view)
    axes[0].set_title("input crop", fontsize=9)
    for ax, stage in zip(axes[1:], stages, strict=True):
        ax.imshow(feature_grid(stage.output, channels), cmap="viridis", interpolation="nearest")
        ax.set_title(stage.describe(), fontsize=8)
    for ax in axes:
        ax.axis("off")
    fig.tight_layout()
    save_figure(fig, path, dpi=80)
    plt.close(fig)
    return path


def save_gradcam(path: Path, view: np.ndarray, cams: list[GradCam]) -> Path:
    plt = _pyplot()
    fig, axes = plt.subplots(1, len(cams) + 1, figsize=(2.6 * (len(cams) + 1), 2.9))
    axes[0].imshow(view)
    axes[0].set_title("input crop", fontsize=9)
    for ax, cam in zip(axes[1:], cams, strict=True):
        ax.imshow(overlay(view, cam.heatmap))
        ax.set_title(plottable(f"{cam.label!r} p={cam.probability:.2f}"), fontsize=9)
    for ax in axes:
        ax.axis("off")
    fig.suptitle(f"Grad-CAM at {cams[0].layer}", fontsize=9)
    fig.tight_layout()
    save_figure(fig, path, dpi=80)
    plt.close(fig)
    return path


def build_parser() -> argparse.ArgumentParser:
    p = CommandParser(prog="python -m training.visualize", description=__doc__.split("\n")[0])
    p.add_argument("--checkpoint", type=checkpoint_arg("best.pt"), required=True, help="RUN/best.pt, or the run folder RUN")
    p.add_argument("--image", type=cli.existing_file, required=True, help="the photo to explain")
    p.add_argument("--class", dest="classes", action="append", default=[], metavar="NAME", help="also explain this class (repeatable)")
    p.add_argument("--out", type=output_arg("folder"), default=None, help="output folder (default: RUN/visualize-<image name>)")
    p.add_argument("--channels", type=cli.int_at_least(1), default=16, help="feature maps shown per stage")
    p.add_argument("--device", choices=("auto", "cpu", "cuda"), default="cpu", help="auto: CUDA when available")
    return p


def model_view(classifier: Classifier, image: Path) -> np.ndarray:
    """The crop the model classifies for ``image``: its own (``Classifier.crop``), or a hands-mode model's crop of
    the first hand, where the whole photo went through the geometry of a model that never sees one."""
    crops = classifier.model_crops(image)
    if not crops:
        raise ValueError(f"--image {image}: no hand found, and this model classifies hand crops (trained with --hands)")
    if len(crops) > 1:
        print(f"{len(crops)} hands found: explaining the first")
    return crops[0]


def class_indices(classifier: Classifier, names: list[str]) -> list[int]:
    unknown = [n for n in names if n not in classifier.classes]
    if unknown:
        raise ValueError(f"--class {', '.join(unknown)}: not a class of this model; choose from {', '.join(classifier.classes)}")
    return [classifier.classes.index(n) for n in names]


def class_folder_of(image: Path) -> Path | None:
    """The image's folder where it may be a dataset's class folder, whose next run would read PNGs written
    under it as more of that class: one that holds other photos besides it. A lone photo's folder (a
    home folder, ~/vis beside ~/photo.jpg) was refused as a dataset, and so was a run folder under it."""
    folder = image.expanduser().resolve().parent
    return folder if photos_in(folder, besides=[image.name]) else None


@command
def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    classifier = load_classifier(args.checkpoint, args.device)
    warn_if_training_state(args.checkpoint, classifier.checkpoint_meta)
    if args.out:  # its PNGs in a class folder were the next run's photos of that class
        class_folder = class_folder_of(args.image)
        check_output_outside_datasets("--out", Path(args.out), [trained_on(classifier.train_config), class_folder])
        lone_photo = () if class_folder else (args.image.name,)  # beside --out, it is no class's photo either
        check_output_among_no_photos("--out", Path(args.out), (*VISUALIZE_FILES, *lone_photo))
    extra = class_indices(classifier, args.classes)
    view = model_view(classifier, args.image)
    out = Path(args.out) if args.out else args.checkpoint.parent / f"visualize-{args.image.stem}"
    out.mkdir(parents=True, exist_ok=True)
    stages = spatial_stages(classifier.model, classifier.preprocess.normalize(view)[None].to(classifier.device))
    shown = first_middle_last(stages)
    cams = [grad_cam(classifier, view, layer=stages[-1])]
    cams += [grad_cam(classifier, view, i, layer=stages[-1]) for i in extra if i != cams[0].class_index]
    maps_png = save_feature_maps(out / VISUALIZE_FILES[0], view, shown, args.channels)
    cam_png = save_gradcam(out / VISUALIZE_FILES[1], view, cams)
    print(f"{len(stages)} spatial stages: {', '.join(s.describe() for s in stages)}")
    print(f"predicted {cams[0].label!r} (p={cams[0].probability:.3f}); Grad-CAM at {stages[-1].name}")
    print(f"wrote {maps_png} and {cam_png}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
