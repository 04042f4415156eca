"""What a model answers for frames with nothing in them (``benchmarks.hostile_inputs.empty_frames``).

    .venv/bin/python -m benchmarks.empty_frames runs/sign-digits-efficientnet_lite0/best.pt [MORE.pt ...]

A covered lens, a blank wall or a dark room is the commonest "no gesture" a webcam sees. Each frame
goes through the checkpoint's own Classifier, as the service and the webcam send it; the table shows
the answer, the top class and its calibrated probability, and the gesture score where the model's
"no gesture" rule uses one (gesture_core.rejection).
"""

from __future__ import annotations

import sys

from benchmarks.common import describe_machine
from benchmarks.hostile_inputs import empty_frames
from gesture_core import load_classifier
from gesture_core.cli import CommandParser, command


def answers(checkpoint: str) -> list[str]:
    classifier = load_classifier(checkpoint, device="cpu", engine="torch")
    rule = classifier.rejection
    lines = [f"{checkpoint}: {classifier.backbone}, score {rule.score}, threshold {rule.threshold:.4g}, "
             f"reject classes {', '.join(rule.reject_classes) or 'none'}",
             "| frame | answer | top class (probability) | gesture score |", "| --- | --- | --- | ---: |"]
    for name, frame in empty_frames().items():
        p = classifier.predict(frame)
        top, prob = p.top_k[0]
        gesture = "" if p.gesture_score is None else f"{p.gesture_score:.4f}"
        lines.append(f"| {name} | {p.label or 'no gesture'} | {top} ({prob:.3f}) | {gesture} |")
    return lines


@command
def main(argv: list[str] | None = None) -> int:
    p = CommandParser(prog="python -m benchmarks.empty_frames", description=__doc__.split("\n")[0])
    p.add_argument("checkpoints", nargs="+", help="RUN/best.pt, one or more")
    args = p.parse_args(argv)
    print(describe_machine())
    for checkpoint in args.checkpoints:
        print("\n".join(["", *answers(checkpoint)]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
