"""Every speed benchmark, then one table of results against the targets (docs/performance.md, "Results").

    .venv/bin/python -m benchmarks.run_all --quick                # ~6 minutes on a quiet 2-core machine
    .venv/bin/python -m benchmarks.run_all --quick --write-docs   # also replace the results in docs/performance.md

Runs, in order: ``benchmarks.train`` (keeping its flowers linear-probe run), ``benchmarks.inference``
(with ``--accuracy`` on that run, for the bf16 top-1 check), ``benchmarks.serve`` and
``benchmarks.webcam`` (efficientnet_lite0, local, torch and the default engine). Raw JSON lines and
each script's output are kept under ``--out`` (default runs/benchmarks/<time>/).
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from benchmarks.common import describe_machine, machine, note
from gesture_core.cli import CommandParser, command

REPO = Path(__file__).resolve().parents[1]
# The generated block lives in the docs page, never in README.md, whose headline table is updated by hand.
PERFORMANCE_PAGE = REPO / "docs" / "performance.md"
RESULTS_START, RESULTS_END = "<!-- speed-results:start -->", "<!-- speed-results:end -->"


def run(name: str, args: list[str], out: Path) -> tuple[list[dict[str, Any]], str]:
    """Run ``python -m benchmarks.NAME ARGS``; (JSON rows, stdout). Its stderr goes to OUT/NAME.log."""
    command = [sys.executable, "-m", f"benchmarks.{name}", *args]
    note(f"$ python -m benchmarks.{name} {' '.join(args)}")
    started = time.perf_counter()
    with (out / f"{name}.log").open("w") as log:
        done = subprocess.run(command, cwd=REPO, stdout=subprocess.PIPE, stderr=log, text=True)
    (out / f"{name}.out").write_text(done.stdout)
    note(f"  {time.perf_counter() - started:.0f} s, exit {done.returncode}")
    if done.returncode != 0:
        raise RuntimeError(f"benchmarks.{name} failed (exit {done.returncode}); see {out / (name + '.log')}")
    rows = []
    for line in done.stdout.splitlines():
        if line.startswith("{"):
            rows.append(json.loads(line))
    return rows, done.stdout


def webcam_rows(stdout: str) -> list[dict[str, Any]]:
    """Rows of benchmarks.webcam's markdown table (it prints no JSON)."""
    lines = [line for line in stdout.splitlines() if line.startswith("|")]
    if len(lines) < 3:
        return []
    header = [h.strip().lower() for h in lines[0].strip("|").split("|")]
    rows = []
    for line in lines[2:]:
        cells = [c.strip() for c in line.strip("|").split("|")]
        rows.append(dict(zip(header, cells, strict=False)))
    return rows


def number(text: str) -> float:
    match = re.search(r"[-\d.]+", text or "")
    return float(match.group()) if match else float("nan")


def pick(rows: list[dict], **where) -> list[dict]:
    return [r for r in rows if all(r.get(k) == v for k, v in where.items())]


def verdict(ok: bool | None) -> str:
    return "–" if ok is None else ("met" if ok else "**not met**")


def targets(
    inference: list[dict],
    accuracy: list[dict],
    steps: list[dict],
    loader: list[dict],
    frozen: list[dict],
    serve: list[dict],
    webcam: list[dict],
) -> list[tuple[str, str, bool | None]]:
    """(target, measured, met?) for every target of the issue."""
    out = []
    r18 = [r for r in pick(inference, backbone="resnet18", batch=16, precision="fp32") if r["engine"] != "torch"]
    if r18:
        best = max(r18, key=lambda r: r["pct_of_ceiling"])
        eager = pick(inference, backbone="resnet18", batch=16, precision="fp32", engine="torch")
        measured = f"{best['engine']}: {best['img_per_s']:.1f} img/s = {best['pct_of_ceiling']:.0f}% of {best['ceiling_gflops']:.0f} GFLOP/s" + (
            f" (eager: {eager[0]['pct_of_ceiling']:.0f}%)" if eager else "")  # fmt: skip
        out.append(("resnet18, batch 16: engine ≥ 90% of the fp32 ceiling (best GEMM or 3×3 convolution of the installed libraries)", measured,
                    best["pct_of_ceiling"] >= 90))
    lite = [r for r in pick(inference, backbone="efficientnet_lite0", batch=16, precision="fp32") if r["engine"] != "torch"]
    if lite:
        best = max(lite, key=lambda r: r["speedup_vs_eager"] or 0)
        out.append(
            (
                "efficientnet_lite0, batch 16: engine ≥ 3× eager",
                f"{best['engine']}: {best['img_per_s']:.1f} img/s = {best['speedup_vs_eager']:.1f}× eager",
                best["speedup_vs_eager"] >= 3,
            )
        )
    for backbone in ("resnet18", "efficientnet_lite0"):
        for engine in sorted(
            {r["engine"] for r in inference if r["precision"] == "bf16" and r["engine"] != "torch"}
        ):  # eager bf16: table only
            bf16, fp32 = (
                pick(inference, backbone=backbone, batch=16, engine=engine, precision="bf16"),
                pick(inference, backbone=backbone, batch=16, engine=engine, precision="fp32"),
            )
            if bf16 and fp32:
                ratio = bf16[0]["img_per_s"] / fp32[0]["img_per_s"]
                out.append(
                    (
                        f"{backbone}, {engine}, batch 16: bf16 ≥ 1.8× fp32",
                        f"{ratio:.2f}× ({bf16[0]['img_per_s']:.1f} vs {fp32[0]['img_per_s']:.1f} img/s)",
                        ratio >= 1.8,
                    )
                )
    for row in accuracy:
        if row["precision"] != "fp32":
            out.append((f"{row['backbone']}, {row['engine']} {row['precision']}: top-1 within 0.5 points of fp32",
                        f"{row['top1']:.2%} ({row['top1_delta_points']:+.2f} points, {row['agreement']:.1%} same labels, {row['images']} flowers test photos)",
                        abs(row["top1_delta_points"]) <= 0.5))  # fmt: skip
    at16 = [r for r in serve if r["clients"] == 16 and r.get("batching", "microbatch") == "microbatch"]
    if at16:
        best = max(at16, key=lambda r: r["pct_of_engine"])
        out.append(
            (
                "HTTP, 16 clients on /predict: ≥ 75% of the engine's batched img/s",
                f"{best['route']}: {best['req_per_s']:.1f} req/s = {best['pct_of_engine']:.0f}% of {best['engine_img_per_s']:.1f}",
                best["pct_of_engine"] >= 75,
            )
        )
        out.append(
            (
                "HTTP, 16 clients: p99 ≤ 2.5× p50",
                f"{best['route']}: p50 {best['p50_ms']:.0f} ms, p99 {best['p99_ms']:.0f} ms ({best['p99_over_p50']:.2f}×)",
                best["p99_over_p50"] <= 2.5,
            )
        )
        errors = sum(r["errors"] for r in serve)
        out.append(
            ("HTTP: zero errors", f"{errors} errors in {sum(r['requests'] for r in serve)} requests (all runs)", errors == 0)
        )
    if steps:
        from benchmarks.train import finetune_default_variant  # lazily, like the tables: this process only orchestrates

        best = max(steps, key=lambda r: r["pct_of_ceiling"])
        default = next(r for r in steps if r["variant"] == finetune_default_variant(r["backbone"], "cpu"))
        out.append(
            (
                "full fine-tune (finetune's default precision) ≥ 80% of the ceiling in its precision",
                f"{default['backbone']} {default['variant']}: {default['pct_of_ceiling']:.0f}% of {default['precision']} ({default['img_per_s']:.1f} img/s); "
                f"{best['variant']}: {best['pct_of_ceiling']:.0f}% ({best['img_per_s']:.1f} img/s)",
                default["pct_of_ceiling"] >= 80,
            )
        )
    if loader and steps:
        rate = max(r["img_per_s"] for r in loader)
        fastest = max(r["img_per_s"] for r in steps)
        out.append(
            (
                "loader ≥ 5× the training step rate",
                f"{rate:.0f} img/s = {rate / fastest:.1f}× the fastest step rate ({fastest:.1f} img/s)",
                rate / fastest >= 5,
            )
        )
    cached = [r for r in frozen if r["cache"] != "off"]
    if cached:
        r = cached[0]
        if r["speedup_after_first"]:
            out.append(
                (
                    "cached frozen epochs ≥ 50× faster than the first",
                    f"epoch 1 {r['first_epoch_s']:.1f} s, later ≤ {r['later_epoch_s']:.2f} s ({r['speedup_after_first']:.0f}×)",
                    r["speedup_after_first"] >= 50,
                )
            )
        out.append(
            (
                "flowers linear probe (3670 photos, efficientnet_lite0) ≤ 60 s wall",
                f"{r['wall_s']:.0f} s for {r['epochs']} epochs, test top-1 {r['test_top1']:.1%}",
                r["wall_s"] <= 60 if r["images"] >= 3670 else None,
            )
        )
    lite_cam = [r for r in webcam if r.get("backbone") == "efficientnet_lite0" and "realtime" not in r.get("mode", "")]
    if lite_cam:
        best = max(lite_cam, key=lambda r: number(r.get("fps", "")))
        out.append(
            (
                "webcam loop, efficientnet_lite0, file source ≥ 30 FPS",
                f"{best['mode']}: {number(best['fps']):.1f} FPS, p50 {best.get('latency p50', '?')}",
                number(best["fps"]) >= 30,
            )
        )
    return out


def table(rows: list[dict], columns: list[tuple[str, str, str]]) -> list[str]:
    lines = ["| " + " | ".join(h for _, h, _ in columns) + " |", "|" + "|".join("---" for _ in columns) + "|"]
    for row in rows:
        lines.append("| " + " | ".join(format(row[k], f) if row.get(k) is not None else "–" for k, _, f in columns) + " |")
    return lines


def render(rows: list[tuple[str, str, bool | None]], info: dict, command: str, results: dict[str, list[dict]]) -> str:
    from benchmarks.inference import ACCURACY_COLUMNS, SPEED_COLUMNS
    from benchmarks.serve import COLUMNS as SERVE_COLUMNS
    from benchmarks.train import FROZEN_COLUMNS, LOADER_COLUMNS, STEP_COLUMNS

    kind = lambda name, k: [r for r in results[name] if r.get("kind") == k]  # noqa: E731
    lines = [f"Measured with `{command}` on {describe_machine(info)}.", "",
             "| target | measured | |", "|---|---|---|", *[f"| {t} | {m} | {verdict(ok)} |" for t, m, ok in rows]]  # fmt: skip
    sections = [
        (
            "Inference (best of short windows; ceiling = the best large GEMM or 3×3 convolution of torch, ONNX Runtime and OpenVINO in the row's precision, same process)",
            kind("inference", "speed"),
            SPEED_COLUMNS,
        ),
        ("Accuracy of each engine on the flowers linear probe's test split", kind("inference", "accuracy"), ACCURACY_COLUMNS),
        ("HTTP service (real `bentoml serve`, clients on the same machine)", results["serve"], SERVE_COLUMNS),
        ("Full fine-tune step rate (in-memory batches)", kind("train", "train_step"), STEP_COLUMNS),
        ("Training data loader alone", kind("train", "loader"), LOADER_COLUMNS),
        ("Frozen backbone, with and without the feature cache", kind("train", "frozen"), FROZEN_COLUMNS),
    ]
    for title, section_rows, columns in sections:
        if section_rows:
            lines += ["", f"**{title}**", "", *table(section_rows, columns)]
    if results["webcam"]:
        header = list(results["webcam"][0])
        lines += ["", "**Webcam loop on a 640x480 video file** (`benchmarks.webcam`)", "",
                  "| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|",
                  *["| " + " | ".join(r.get(h, "") for h in header) + " |" for r in results["webcam"]]]  # fmt: skip
    return "\n".join(lines)


def write_results_block(block: str, page: Path) -> None:
    """Replace what lies between PAGE's speed-results markers with BLOCK; the rest of the page is kept."""
    text = page.read_text()
    if RESULTS_START not in text or RESULTS_END not in text:
        raise SystemExit(f"{page} has no {RESULTS_START} … {RESULTS_END} block (under its Results heading)")
    head, rest = text.split(RESULTS_START, 1)
    _, tail = rest.split(RESULTS_END, 1)
    page.write_text(f"{head}{RESULTS_START}\n{block}\n{RESULTS_END}{tail}")


@command
def main(argv: list[str] | None = None) -> int:
    p = CommandParser(prog="python -m benchmarks.run_all", description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="every benchmark in its quick mode")
    p.add_argument("--out", type=Path, help="where raw results go (default runs/benchmarks/<time>)")
    p.add_argument("--write-docs", action="store_true", help=f"replace the {RESULTS_START} block of docs/performance.md with the results")
    p.add_argument("--skip", nargs="*", default=[], choices=("train", "inference", "serve", "webcam"))
    args = p.parse_args(argv)
    out = args.out or REPO / "runs" / "benchmarks" / time.strftime("%Y%m%d-%H%M%S")
    out.mkdir(parents=True, exist_ok=True)
    quick = ["--quick"] if args.quick else []
    info = machine()
    note(f"machine: {describe_machine(info)}\nresults in {out}")
    results: dict[str, list[dict]] = {k: [] for k in ("train", "inference", "serve", "webcam")}
    with tempfile.TemporaryDirectory(prefix="bench-all-") as tmp:
        probe = Path(tmp) / "flowers-probe"
        if "train" not in args.skip:
            results["train"], _ = run("train", [*quick, "--json", "--keep-run", str(probe)], out)
        if "inference" not in args.skip:
            accuracy = ["--accuracy", str(probe)] if probe.is_dir() else []
            results["inference"], _ = run("inference", [*quick, "--json", *accuracy], out)
        if "serve" not in args.skip:
            results["serve"], _ = run("serve", [*quick, "--json"], out)
        if "webcam" not in args.skip:
            frames = "150" if args.quick else "300"
            _, stdout = run(
                "webcam",
                ["--backbones", "efficientnet_lite0", "--modes", "local", "--engines", "torch", "auto", "--frames", frames],
                out,
            )
            results["webcam"] = webcam_rows(stdout)
    (out / "results.json").write_text(json.dumps({"machine": info, **results}, indent=1))
    kind = lambda rows, k: [r for r in rows if r.get("kind") == k]  # noqa: E731
    rows = targets(
        kind(results["inference"], "speed"), kind(results["inference"], "accuracy"), kind(results["train"], "train_step"),
        kind(results["train"], "loader"), kind(results["train"], "frozen"), results["serve"], results["webcam"],
    )  # fmt: skip
    block = render(rows, info, "python -m benchmarks.run_all" + (" --quick" if args.quick else ""), results)
    (out / "targets.md").write_text(block + "\n")
    print(block)
    if args.write_docs:
        write_results_block(block, PERFORMANCE_PAGE)
        note(f"{PERFORMANCE_PAGE} updated")
    return 0


if __name__ == "__main__":
    sys.exit(main())
