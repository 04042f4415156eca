"""What one model call of the service costs around the network, on the OpenVINO engine (CPU).

Three measurements, each against the alternative it replaced:
* images per OpenVINO request: a batch goes to the streams as requests of a few images each
  (``OpenVinoEngine.IMAGES_PER_REQUEST``); img/s with every stream busy, per request size;
* normalising a batch: crops normalised one by one and then ``torch.stack``, against
  ``Preprocess.normalize_batch``;
* the softmax after the network: ``torch.softmax``, against the numpy one in ``Classifier.probs``.

CPU ms per image counts every thread of the process (``time.process_time``), so threads that spin
while they wait show up in it.

    .venv/bin/python -m benchmarks.model_call --backbones efficientnet_lite0,mobilenet_v3_large,resnet18
"""

from __future__ import annotations

import tempfile
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from benchmarks.common import best_rate_and_cpu, check_input_size, csv_list, describe_machine, emit, measured_seconds, note
from benchmarks.serve_latency import make_checkpoint
from gesture_core import Classifier, load_classifier
from gesture_core.cli import CommandParser, command
from gesture_core.engines import engine_installed
from training.cli import backbone_name, image_size

REQUEST_SIZES = (1, 2, 3, 4, 8, 16)
COLUMNS = [("backbone", "backbone", "s"), ("measure", "measure", "s"), ("variant", "variant", "s"), ("batch", "batch", "d"),
           ("img_per_s", "img/s", ".1f"), ("cpu_ms_per_img", "CPU ms/img", ".2f")]  # fmt: skip


def timed(call: Callable[[], Any], items: int, seconds: float) -> tuple[float, float]:
    """(img/s, CPU ms per image) after one warm-up call."""
    call()
    return best_rate_and_cpu(call, items=items, seconds=seconds)


def row(backbone: str, measure: str, variant: str, batch: int, result: tuple[float, float]) -> dict[str, Any]:
    return {"backbone": backbone, "measure": measure, "variant": variant, "batch": batch,
            "img_per_s": round(result[0], 2), "cpu_ms_per_img": round(result[1], 3)}  # fmt: skip


def input_shape(classifier: Classifier) -> tuple[int, int, int]:
    config = classifier.data_config
    return config.in_chans, config.input_size, config.input_size


def request_sizes(backbone: str, classifier: Classifier, seconds: float) -> list[dict[str, Any]]:
    """img/s with one request of n images on every stream at once, for each n."""
    engine = classifier.engine
    shape = input_shape(classifier)
    requests = [engine.throughput_model.create_infer_request() for _ in range(engine.streams)]
    rows = []
    for n in REQUEST_SIZES:
        chunk = np.random.default_rng(n).standard_normal((n, *shape), dtype=np.float32)

        def all_streams(chunk=chunk) -> None:
            for request in requests:
                request.start_async([chunk])
            for request in requests:
                request.wait()

        rows.append(row(backbone, "images per OpenVINO request", f"{n} per request", n * engine.streams,
                        timed(all_streams, n * engine.streams, seconds)))  # fmt: skip
    return rows


def normalisation(backbone: str, classifier: Classifier, seconds: float, batch: int = 16) -> list[dict[str, Any]]:
    preprocess = classifier.preprocess
    size = classifier.data_config.input_size
    rng = np.random.default_rng(0)
    crops = [rng.integers(0, 256, (size + 32, size + 32, 3), dtype=np.uint8)[16 : 16 + size, 16 : 16 + size] for _ in range(batch)]

    def one_by_one_then_stack() -> torch.Tensor:  # what a batch cost before normalize_batch
        return torch.stack([preprocess.normalize(c) for c in crops])

    assert torch.allclose(one_by_one_then_stack(), preprocess.normalize_batch(crops))
    return [row(backbone, "normalise a batch", "each crop, then torch.stack", batch, timed(one_by_one_then_stack, batch, seconds)),
            row(backbone, "normalise a batch", "Preprocess.normalize_batch", batch, timed(lambda: preprocess.normalize_batch(crops), batch, seconds))]  # fmt: skip


def softmax_after_model(backbone: str, classifier: Classifier, seconds: float) -> list[dict[str, Any]]:
    rows = []
    for batch in (2, 16):
        x = torch.from_numpy(np.random.default_rng(batch).standard_normal((batch, *input_shape(classifier)), dtype=np.float32))
        with_torch = timed(lambda x=x: torch.softmax(classifier.logits(x), dim=1).numpy(), batch, seconds)
        with_numpy = timed(lambda x=x: classifier.probs(x), batch, seconds)
        rows += [row(backbone, "network + softmax", "torch.softmax", batch, with_torch),
                 row(backbone, "network + softmax", "numpy (Classifier.probs)", batch, with_numpy)]  # fmt: skip
    return rows


@command
def main(argv: list[str] | None = None) -> int:
    p = CommandParser(prog="python -m benchmarks.model_call", description=__doc__.split("\n\n")[0])
    p.add_argument("--backbones", type=csv_list(backbone_name), default="efficientnet_lite0,mobilenet_v3_large,resnet18", help="comma-separated registry names")
    p.add_argument("--image-size", type=image_size, help="input size (default: each backbone's own)")
    p.add_argument("--seconds", type=measured_seconds, default=3.0, help="per measurement (best of 3 windows)")
    p.add_argument("--quick", action="store_true", help="0.6 s per measurement")
    p.add_argument("--json", action="store_true", help="JSON lines instead of a table")
    args = p.parse_args(argv)
    check_input_size(p, args.backbones, args.image_size)
    if not engine_installed("openvino"):
        p.error("OpenVINO is not installed: pip install -e '.[speed]'")
    seconds = 0.6 if args.quick else args.seconds
    note(describe_machine())
    rows = []
    with tempfile.TemporaryDirectory() as tmp, warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for backbone in args.backbones:
            checkpoint = make_checkpoint(Path(tmp) / f"{backbone}.pt", backbone, args.image_size)
            classifier = load_classifier(checkpoint, "cpu", engine="openvino", precision="fp32")
            note(f"{backbone} @ {classifier.data_config.input_size} px, {classifier.engine.streams} OpenVINO streams")
            rows += request_sizes(backbone, classifier, seconds)
            rows += normalisation(backbone, classifier, seconds)
            rows += softmax_after_model(backbone, classifier, seconds)
    emit(rows, COLUMNS, as_json=args.json, title=f"Around the network: one model call, OpenVINO fp32 ({describe_machine()})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
