"""Which test images every run gets wrong: the hard core of a test split, to look at by eye.

    .venv/bin/python -m benchmarks.shared_errors runs/A runs/B [runs/C ...] [--out DIR]

The runs must share one saved test split (the same data, seed and split flags). Each run's
``best.pt`` classifies that split as the service would (``training.served.served_outputs``). When
several backbones, precisions and schedules all miss the same photo, more training is unlikely to
fix it: look at those photos before tuning for the last points. The table counts the images missed
by at least k of the n runs; ``shared_errors.md`` lists the images every run missed, with each run's
answer, and ``shared_errors.png`` shows them.
"""

from __future__ import annotations

import sys
from pathlib import Path

from gesture_core import load_classifier
from gesture_core.cli import CommandParser, command
from training.cli import workers
from training.data import Sample, Splits
from training.report import plot_image_grid
from training.served import served_outputs


def run_answers(run: Path, workers: int, test: list[Sample] | None = None) -> tuple[dict[str, str], dict[str, str]]:
    """({test path: predicted class}, {test path: true class}) for the run's best.pt on its saved test split
    (``test``, when the caller has loaded it)."""
    classifier = load_classifier(run / "best.pt", device="cpu", engine="torch")
    test = Splits.load(run / "split.json").test if test is None else test
    outputs, _ = served_outputs(classifier, test, workers=workers)
    predicted = outputs.logits.argmax(1)
    paths = [test[i].path for i in outputs.index]
    return ({p: classifier.classes[c] for p, c in zip(paths, predicted, strict=True)},
            {p: classifier.classes[t] for p, t in zip(paths, outputs.targets, strict=True)})


def miss_counts(answers: list[dict[str, str]], truth: dict[str, str]) -> dict[str, int]:
    """How many runs missed each test image (images every run decoded)."""
    common = set(truth).intersection(*answers)
    return {p: sum(a[p] != truth[p] for a in answers) for p in sorted(common)}


def report(runs: list[Path], answers: list[dict[str, str]], truth: dict[str, str], out: Path) -> list[str]:
    counts = miss_counts(answers, truth)
    n = len(runs)
    lines = [f"{len(counts)} test images, {n} runs: " + ", ".join(f"{r} {sum(a[p] != truth[p] for p in counts)} missed" for r, a in zip(runs, answers, strict=True)),
             "", "| missed by at least | images |", "| ---: | ---: |"]
    lines += [f"| {k} of {n} | {sum(c >= k for c in counts.values())} |" for k in range(1, n + 1)]
    every = [p for p, c in counts.items() if c == n]
    lines += ["", f"missed by every run ({len(every)}):", "", "| image | true class | answers |", "| --- | --- | --- |"]
    lines += [f"| {p} | {truth[p]} | {', '.join(a[p] for a in answers)} |" for p in every]
    out.mkdir(parents=True, exist_ok=True)
    (out / "shared_errors.md").write_text("\n".join(lines) + "\n")
    captions = [f"{Path(p).name}\n{truth[p]} -> {' / '.join(a[p] for a in answers)}" for p in every]
    plot_image_grid(out / "shared_errors.png", every, captions, f"missed by all {n} runs: true class -> each run's answer")
    return lines


@command
def main(argv: list[str] | None = None) -> int:
    p = CommandParser(prog="python -m benchmarks.shared_errors", description=__doc__.split("\n")[0])
    p.add_argument("runs", nargs="+", type=Path, help="run folders (RUN/best.pt and RUN/split.json) that share one test split")
    p.add_argument("--out", type=Path, default=None, help="report folder (default: the first run's shared-errors/)")
    p.add_argument("--workers", type=workers, default=2)
    args = p.parse_args(argv)
    if len(args.runs) < 2:
        p.error("give two or more run folders")
    missing = [str(r) for r in args.runs if not (r / "best.pt").is_file() or not (r / "split.json").is_file()]
    if missing:
        raise ValueError(f"not a finished run (needs best.pt and split.json): {', '.join(missing)}")
    tests = [Splits.load(r / "split.json").test for r in args.runs]
    if any(sorted(s.path for s in t) != sorted(s.path for s in tests[0]) for t in tests):
        raise ValueError("the runs have different test splits: give runs made with the same data, --seed and split flags")
    results = [run_answers(r, args.workers, test) for r, test in zip(args.runs, tests, strict=True)]
    lines = report(args.runs, [a for a, _ in results], results[0][1], args.out or args.runs[0] / "shared-errors")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
