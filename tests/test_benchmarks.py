"""The speed benchmarks keep working (shapes of their output, never their timings) and judge targets correctly."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from benchmarks import inference, run_all
from tests.helpers import REPO, make_image_folder

REQUIRED_KEYS = {"backbone", "engine", "precision", "batch", "img_per_s", "gflops_per_img", "ceiling_gflops", "pct_of_ceiling"}


def test_inference_benchmark_emits_one_json_line_per_configuration(capsys):
    assert (
        inference.main(
            ["--backbones", "lenet5", "--batch", "1,3", "--engines", "torch,onnx", "--precisions", "fp32", "--quick", "--json"]
        )
        == 0
    )
    rows = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [(r["engine"], r["batch"]) for r in rows] == [("torch", 1), ("torch", 3), ("onnx", 1), ("onnx", 3)]
    for row in rows:
        assert REQUIRED_KEYS <= set(row) and row["backbone"] == "lenet5" and row["precision"] == "fp32"
        assert row["img_per_s"] > 0 and row["ceiling_gflops"] > 0
        expected = 100 * row["img_per_s"] * row["gflops_per_img"] / row["ceiling_gflops"]
        assert abs(row["pct_of_ceiling"] - expected) <= 0.05 + 0.01 * expected and row["pct_of_ceiling"] <= 100
        assert row["ceiling_kernel"].split()[0] in ("torch", "onnxruntime", "openvino")
    # LeNet-5 at 32x32x3: 352,800 + 240,000 (convs) + 58,920 (linears) multiply-adds = 1.3034 MFLOP
    assert abs(rows[0]["gflops_per_img"] - 0.0013034) < 1e-6


def test_the_ceiling_is_the_best_gemm_or_convolution_of_the_installed_libraries_with_the_peak_beside_it():
    from benchmarks.common import hardware_ceiling

    ceiling = hardware_ceiling("fp32", seconds=0.4)
    assert {"torch GEMM", "torch conv3x3"} <= set(ceiling.by_kernel) and ceiling.gflops == max(ceiling.by_kernel.values())
    assert ceiling.kernel == max(ceiling.by_kernel, key=ceiling.by_kernel.get)
    assert all(rate > 0 for rate in ceiling.by_kernel.values())
    if ceiling.peak_gflops is not None:  # a clock speed was found
        assert "cores x" in ceiling.peak_formula and "GHz" in ceiling.peak_formula
        assert ceiling.gflops <= ceiling.peak_gflops  # measured never beats the hardware
    assert "theoretical peak" in ceiling.describe()


def test_a_gemm_too_slow_for_the_budget_is_measured_at_a_quarter_size(monkeypatch):
    """torch's bf16 GEMM on a CPU without native bf16 ran at 0.3 GFLOP/s: one full call took about a
    minute, and two torchrun processes measuring it held a 2-core machine for over nine minutes."""
    from benchmarks import common

    sizes = []

    def fake_rate(kernel, precision, seconds, device, windows=4):
        sizes.append(kernel.input_shape[0])
        return 0.3 if precision == "bf16" else 100.0

    monkeypatch.setattr(common, "_torch_rate", fake_rate)
    assert common.torch_rate(common.GEMM, "bf16", 1.0, "cpu") == 0.3 and sizes == [common.MATMUL_SIZE // 4]
    sizes.clear()
    assert common.torch_rate(common.GEMM, "fp32", 1.0, "cpu") == 100.0 and sizes == [common.MATMUL_SIZE // 4, common.MATMUL_SIZE]


def test_targets_are_judged_from_the_rows():
    speed = [
        dict(backbone="resnet18", engine="torch", precision="fp32", batch=16, img_per_s=30.0, pct_of_ceiling=50.0, ceiling_gflops=220.0, speedup_vs_eager=1.0),
        dict(backbone="resnet18", engine="openvino", precision="fp32", batch=16, img_per_s=58.0, pct_of_ceiling=96.0, ceiling_gflops=220.0, speedup_vs_eager=1.9),
        dict(backbone="resnet18", engine="openvino", precision="bf16", batch=16, img_per_s=100.0, pct_of_ceiling=90.0, ceiling_gflops=400.0, speedup_vs_eager=3.3),
    ]  # fmt: skip
    serve = [dict(route="/predict", clients=16, req_per_s=40.0, pct_of_engine=70.0, engine_img_per_s=57.0, p50_ms=300.0, p99_ms=600.0,
                  p99_over_p50=2.0, errors=1, requests=400)]  # fmt: skip
    frozen = [
        dict(
            cache="on (empty at start)",
            images=3670,
            epochs=5,
            first_epoch_s=30.0,
            later_epoch_s=0.1,
            speedup_after_first=300.0,
            wall_s=61.0,
            test_top1=0.9,
        )
    ]
    from benchmarks.train import VARIANTS, finetune_default_variant

    steps = [dict(backbone="resnet18", variant=name, precision="bf16" if bf16 else "fp32", img_per_s=30.0,
                  pct_of_ceiling=85.0 if name == finetune_default_variant("resnet18", "cpu") else 60.0) for name, (_, bf16) in VARIANTS.items()]  # fmt: skip
    measured = {target: (text, ok) for target, text, ok in run_all.targets(speed, [], steps, [], frozen, serve, [])}
    verdicts = {target: ok for target, (_, ok) in measured.items()}
    assert verdicts["resnet18, batch 16: engine ≥ 90% of the fp32 ceiling (best GEMM or 3×3 convolution of the installed libraries)"] is True
    # judged on the variant finetune runs with no flags here, against the ceiling of that variant's precision
    text, ok = measured["full fine-tune (finetune's default precision) ≥ 80% of the ceiling in its precision"]
    assert ok is True and finetune_default_variant("resnet18", "cpu") in text
    assert verdicts["resnet18, openvino, batch 16: bf16 ≥ 1.8× fp32"] is False  # 100 / 58 = 1.72
    assert verdicts["HTTP, 16 clients on /predict: ≥ 75% of the engine's batched img/s"] is False  # 70%
    assert verdicts["HTTP, 16 clients: p99 ≤ 2.5× p50"] is True
    assert verdicts["HTTP: zero errors"] is False
    assert verdicts["cached frozen epochs ≥ 50× faster than the first"] is True
    assert verdicts["flowers linear probe (3670 photos, efficientnet_lite0) ≤ 60 s wall"] is False


def test_write_docs_replaces_only_the_results_block(tmp_path):
    start, end = run_all.RESULTS_START, run_all.RESULTS_END
    page = tmp_path / "performance.md"
    page.write_text(f"# Performance\nmethod\n{start}\nold table\n{end}\nanalysis\n")
    run_all.write_results_block("new table", page)
    assert page.read_text() == f"# Performance\nmethod\n{start}\nnew table\n{end}\nanalysis\n"
    page.write_text("# Performance\nno markers\n")
    with pytest.raises(SystemExit, match="speed-results:start"):
        run_all.write_results_block("new table", page)
    assert page.read_text() == "# Performance\nno markers\n"


def test_run_all_write_docs_rewrites_the_block_of_the_performance_page(tmp_path, monkeypatch):
    real_page, readme = run_all.PERFORMANCE_PAGE, run_all.REPO / "README.md"
    assert real_page == run_all.REPO / "docs" / "performance.md"
    page = tmp_path / "performance.md"
    page.write_text(real_page.read_text())
    readme_before = readme.read_text()
    monkeypatch.setattr(run_all, "PERFORMANCE_PAGE", page)
    skip_every_benchmark = ["--skip", "train", "inference", "serve", "webcam"]
    assert run_all.main([*skip_every_benchmark, "--out", str(tmp_path / "out"), "--write-docs"]) == 0
    before, after = real_page.read_text(), page.read_text()
    start, end = run_all.RESULTS_START, run_all.RESULTS_END
    assert after.split(start)[0] == before.split(start)[0] and after.split(end)[1] == before.split(end)[1]
    assert after.split(start)[1].split(end)[0].startswith("\nMeasured with `python -m benchmarks.run_all` on ")
    assert readme.read_text() == readme_before and start not in readme_before  # generated blocks never go into the README


@pytest.mark.parametrize("extra", [[], ["--val-split", "0"]], ids=["with-val", "train+val"])
def test_flowers_recipes_runs_each_recipe_and_reports_val_and_test(tmp_path, monkeypatch, capsys, extra):
    from benchmarks import flowers_recipes

    data = make_image_folder(tmp_path / "photos", per_class=12, size=48)
    monkeypatch.setitem(flowers_recipes.RECIPES, "tiny", ["--image-size", "32", "--epochs", "2", "--batch-size", "8", *extra])
    argv = ["--data", str(data), "--out", str(tmp_path / "runs"), "--only", "tiny", "--test-per-class", "3",
            "--device", "cpu", "--workers", "0", "--quiet", "--json"]  # fmt: skip
    assert flowers_recipes.main(argv) == 0
    row = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    metrics = json.loads((tmp_path / "runs" / "tiny" / "metrics.json").read_text())
    assert row["recipe"] == "tiny" and row["test_top1"] == metrics["test"]["top1"]
    assert row["test_errors"] == round((1 - metrics["test"]["top1"]) * 9)
    if extra:  # no validation split: nothing to report, and the last epoch is kept
        assert row["best_val_top1"] is None and row["best_epoch"] == 2
    else:
        assert 0 <= row["best_val_top1"] <= 1


def test_flowers_recipes_refuses_an_unknown_recipe_listing_the_choices(capsys):
    from benchmarks import flowers_recipes

    with pytest.raises(SystemExit):
        flowers_recipes.main(["--only", "v9"])
    assert "choose from v3, v3-trainval, v3-ema, 256px-20ep" in capsys.readouterr().err


def test_py_spy_samples_are_put_in_the_innermost_matching_category():
    from benchmarks import pyspy

    process = 'process 7:"python -m bentoml serve service.service:GestureService"'
    raw = "\n".join([
        f"{process};run (asyncio/events.py:88);predict (service/service.py:120);load (gesture_core/images.py:40) 30",
        f"{process};run (asyncio/events.py:88);predict (service/service.py:118);__call__ (gesture_core/preprocess.py:90) 10",
        f"{process};_serve (service/microbatch.py:75);__call__ (gesture_core/engines.py:230) 5",
        f"{process};run (asyncio/events.py:88);handle (uvicorn/protocols/http/h11_impl.py:400) 4",
        f"{process};run (asyncio/events.py:88);parse (python_multipart/multipart.py:1000) 6",
        f"{process};main (bentoml/_internal/server.py:10) 3",
        f"{process};select (selectors.py:468) 2",
    ])  # fmt: skip
    counts = pyspy.categorise(raw)
    assert counts == {"JPEG decode": 30, "resize, crop, normalise": 10, "engine call (Python side, and waiting on the engine where that waits busily)": 5,
                      "HTTP server (uvicorn, h11/httptools, starlette)": 4, "multipart parsing": 6,
                      "BentoML request/response handling": 3, "other": 2}  # fmt: skip
    rows = pyspy.per_request_ms(counts, requests=10)
    assert rows[0]["category"] == "JPEG decode" and rows[0]["ms_per_req"] == pytest.approx(1000 * 30 / pyspy.RATE / 10)
    assert sum(r["share"] for r in rows) == pytest.approx(1.0)


SPINNING_CHILD = """
import threading, time
def spin():
    while time.thread_time() < 0.5:
        pass
    print("spun", flush=True)
    time.sleep(60)
threading.Thread(target=spin, name="gesture-model-0").start()
time.sleep(60)
"""


def thread_names_or_skip(pyspy, pid: int) -> dict[int, str]:
    """py-spy attaches with ptrace, which the kernel refuses for a sibling process under Yama's
    ptrace_scope >= 1 without CAP_SYS_PTRACE (containers often drop it): that is a skip, not an error."""
    try:
        return pyspy.thread_names(pid)
    except RuntimeError as err:
        if any(word in str(err).lower() for word in ("permission", "not permitted", "ptrace")):
            scope = Path("/proc/sys/kernel/yama/ptrace_scope")
            pytest.skip(f"py-spy may not attach to another process here (ptrace_scope {scope.read_text().strip() if scope.exists() else 'n/a'}): {err}")
        raise


def test_thread_cpu_is_counted_per_thread_role():
    from benchmarks import pyspy

    if not pyspy.available():
        pytest.skip("py-spy is not installed")
    child = subprocess.Popen([sys.executable, "-c", SPINNING_CHILD], stdout=subprocess.PIPE, text=True)
    try:
        assert child.stdout.readline().strip() == "spun"
        names = thread_names_or_skip(pyspy, child.pid)
        ms = pyspy.cpu_by_role({}, pyspy.thread_cpu_seconds(child.pid), names, requests=2)
    finally:
        child.kill()
    assert sorted(names.values()) == ["MainThread", "gesture-model-0"]
    model, loop = ms[pyspy.THREAD_ROLES[1][0]], ms[pyspy.THREAD_ROLES[0][0]]
    assert model == pytest.approx(250, abs=30) and loop < model  # 0.5 s of the thread's CPU over 2 requests
    assert pyspy.thread_role(None) == pyspy.NATIVE_ROLE and pyspy.thread_role("Thread-3") == "other Python threads"


def test_serve_benchmark_takes_only_service_settings(capsys):
    from benchmarks import serve

    assert serve.service_setting("GESTURE_TRACING=on") == ("GESTURE_TRACING", "on")
    with pytest.raises(SystemExit):
        serve.main(["--service-env", "TRACING=on"])
    assert "expected GESTURE_<SETTING>=VALUE" in capsys.readouterr().err


def test_model_call_benchmark_compares_each_step_with_what_it_replaced(capsys):
    from benchmarks import model_call
    from gesture_core.engines import engine_installed

    if not engine_installed("openvino"):
        pytest.skip("OpenVINO is not installed")
    assert model_call.main(["--backbones", "lenet5", "--quick", "--json"]) == 0
    rows = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    variants = [(r["measure"], r["variant"]) for r in rows]
    assert variants[: len(model_call.REQUEST_SIZES)] == [("images per OpenVINO request", f"{n} per request") for n in model_call.REQUEST_SIZES]
    assert ("normalise a batch", "Preprocess.normalize_batch") in variants and ("network + softmax", "torch.softmax") in variants
    assert len(rows) == len(model_call.REQUEST_SIZES) + 2 + 4
    assert all(r["backbone"] == "lenet5" and r["img_per_s"] > 0 and r["cpu_ms_per_img"] >= 0 for r in rows)


def test_serve_benchmark_measures_a_real_server_and_its_memory(capsys):
    """Real bentoml serves under two clients, the service, the A/B's adaptive batching and BentoML's floor
    (the same /predict with no model): every row has requests, latencies and the server's RSS, and the
    floor gives the bound. (The adaptive side once answered every request with a 500 for weeks.)"""
    from benchmarks import serve

    argv = ["--backbone", "lenet5", "--clients", "2", "--duration", "1.5", "--warmup", "0.5", "--json", "--batching", "floor", "microbatch", "adaptive"]
    assert serve.main(argv) == 0
    out = capsys.readouterr()
    rows = [json.loads(line) for line in out.out.splitlines() if line.startswith("{")]
    assert [(r["batching"], r["clients"]) for r in rows] == [("microbatch", 2), ("adaptive", 2), ("floor", 2)]  # the model's first
    for row in rows:
        # the adaptive side calls its model service over BentoML's own client, which now and then meets a
        # closed keep-alive connection ("Server disconnected", BentoML issues #3669 and #4238): some 500s,
        # about one request in nine at 16 clients (docs/performance.md); every one failed when it was broken
        allowed = max(2, row["requests"] // 4) if row["batching"] == "adaptive" else 0
        assert row["requests"] > 0 and row["errors"] <= allowed and row["p50_ms"] > 0 and row["input_size"] == 32
        assert set(row["error_kinds"]) <= {"HTTP 500"}, row["error_kinds"]
        assert row["rss_mb"] > 100  # the server's processes hold torch (the floor's too: the service's settings import gesture_core)
        assert abs(row["rss_growth_mb"]) < row["rss_mb"]
    assert rows[0]["pct_of_engine"] > 0 and rows[1]["pct_of_engine"] > 0
    assert rows[2]["pct_of_engine"] is None and rows[2]["server_cpu_ms_per_req"] > 0
    assert "/predict can serve at most" in out.err


def test_the_floor_bounds_predict_by_the_engine_plus_bentomls_own_cost(capsys):
    from benchmarks import serve

    floor = {"batching": "floor", "clients": 16, "requests": 100, "server_cpu_ms_per_req": 0.5, "client_cpu_ms_per_req": 0.1}
    cores = os.cpu_count() or 1
    engine = 1000 * cores / 6.0  # 6 ms of the cores per image
    text = serve.floor_bound([{**floor, "clients": 1, "server_cpu_ms_per_req": 9.0}, floor], engine)
    bound = 1000 * cores / 6.6
    assert f"{bound:.1f} req/s = {100 * bound / engine:.0f}% of the engine" in text and "16 clients" in text
    assert serve.floor_bound([{**floor, "batching": "microbatch"}], engine) is None
    with pytest.raises(SystemExit):
        serve.main(["--batching", "floor"])
    assert "add microbatch or adaptive" in capsys.readouterr().err


def test_decode_cost_shows_pil_decoding_an_ico_to_open_it_and_the_service_refusing_it(capsys):
    from benchmarks import decode_cost

    decode_cost.format_rows()
    rows = [line for line in capsys.readouterr().out.splitlines() if line.startswith(("| 4000x4000", "| 8000x8000"))]
    # PIL reports the PNG's own size, not the 256x256 the ICO's directory claims: it decoded the image to open it
    assert [row.split(" | ")[3:] for row in rows] == [["4000x4000", "refused |"], ["8000x8000", "refused |"]]


def test_empty_frames_benchmark_answers_every_frame_through_the_classifier(random_head_checkpoint, capsys):
    from benchmarks import empty_frames
    from benchmarks.hostile_inputs import empty_frames as frames
    from gesture_core import load_classifier

    assert empty_frames.main([str(random_head_checkpoint)]) == 0
    rows = [line for line in capsys.readouterr().out.splitlines() if line.startswith("| ") and "---" not in line][1:]
    classifier = load_classifier(random_head_checkpoint, device="cpu", engine="torch")
    expected = [(name, classifier.predict(frame)) for name, frame in frames().items()]
    assert len(rows) == len(expected) == 8
    for row, (name, p) in zip(rows, expected, strict=True):
        assert row.startswith(f"| {name} | {p.label or 'no gesture'} | {p.top_k[0][0]} ({p.top_k[0][1]:.3f}) |"), row
    assert empty_frames.main(["missing.pt"]) == 2


def test_shared_errors_counts_each_runs_misses_as_its_test_metrics_do(sign_digits_run, random_head_checkpoint, tmp_path, capsys):
    """A trained run and an untrained head on the same saved split: each run's misses match its own test
    top-1, and "missed by every run" is exactly the images both got wrong."""
    import shutil

    from benchmarks import shared_errors

    untrained = tmp_path / "untrained"
    untrained.mkdir()
    shutil.copy(random_head_checkpoint, untrained / "best.pt")
    shutil.copy(sign_digits_run / "split.json", untrained / "split.json")
    out = tmp_path / "report"
    assert shared_errors.main([str(sign_digits_run), str(untrained), "--out", str(out), "--workers", "0"]) == 0
    answers = [shared_errors.run_answers(run, workers=0) for run in (sign_digits_run, untrained)]
    truth = answers[0][1]
    missed = [{p for p, label in a.items() if label != truth[p]} for a, _ in answers]
    test = json.loads((sign_digits_run / "metrics.json").read_text())["test"]
    assert len(missed[0]) == round((1 - test["top1"]) * test["n"])
    assert len(missed[1]) > len(truth) / 2  # an untrained head misses most images
    report = (out / "shared_errors.md").read_text()
    assert f"| 1 of 2 | {len(missed[0] | missed[1])} |" in report
    assert f"| 2 of 2 | {len(missed[0] & missed[1])} |" in report
    assert sorted(line.split(" | ")[0][2:] for line in report.splitlines() if line.startswith("| /")) == sorted(missed[0] & missed[1])
    assert (out / "shared_errors.png").exists() == bool(missed[0] & missed[1])


def test_shared_errors_refuses_runs_with_different_test_splits(sign_digits_run, tmp_path, capsys):
    from benchmarks import shared_errors

    other = tmp_path / "other"
    other.mkdir()
    (other / "best.pt").write_bytes((sign_digits_run / "best.pt").read_bytes())
    split = json.loads((sign_digits_run / "split.json").read_text())
    split["test"] = split["test"][1:]
    (other / "split.json").write_text(json.dumps(split))
    assert shared_errors.main([str(sign_digits_run), str(other)]) == 2
    assert "different test splits" in capsys.readouterr().err
    assert shared_errors.main([str(sign_digits_run), str(tmp_path / "missing")]) == 2
    assert "not a finished run" in capsys.readouterr().err


@pytest.mark.parametrize("module, argv, reason", [
    ("benchmarks.model_call", ["--backbones", "foo"], "error: argument --backbones: unknown backbone 'foo'; choose one of: resnet18,"),
    ("benchmarks.open_set", ["--data", "/nonexistent", "--quick"], "error: /nonexistent not found"),
    ("benchmarks.run_all", ["--out", "README.md"], "error: README.md: File exists"),
    ("benchmarks.inference", ["--batch", "0"], "argument --batch: must be >= 1, got 0"),
])
def test_a_benchmarks_user_mistake_is_one_error_line(module, argv, reason):
    """Each was a traceback (a ValueError, a ZeroDivisionError for --batch 0, a FileExistsError)."""
    done = subprocess.run([sys.executable, "-m", module, *argv], cwd=REPO, capture_output=True, text=True, timeout=120,
                          env={**os.environ, "NO_ALBUMENTATIONS_UPDATE": "1"})
    assert done.returncode == 2 and "Traceback" not in done.stderr and reason in done.stderr.strip().splitlines()[-1], done.stderr[-2000:]
