"""Inference engines (gesture_core.engines): every installed engine against eager PyTorch, on real images.

fp32 engines must match eager within 1e-3 on every logit and give the same labels; reduced precision
must agree with eager fp32 on >= 99% of a real test split (the figures are printed and recorded as
junit properties). An engine is skipped only where it is not installed.
"""

from __future__ import annotations

import os

import numpy as np
import pytest
import torch

from gesture_core import build_model, load_classifier
from gesture_core.engines import (
    ENGINES,
    EngineUnavailableError,
    available_engines,
    build_engine,
    engine_installed,
    onnx_export_path,
    resolve_engine,
    supported_precisions,
)
from training.data import Splits

FP32_TOLERANCE = 1e-3
MIN_AGREEMENT = 0.99
EXPORTED = ("onnx", "openvino")


@pytest.fixture(scope="module", autouse=True)
def engine_cache(tmp_path_factory):
    """Exports go to a fresh folder, so the tests also cover the first (exporting) load."""
    with pytest.MonkeyPatch.context() as mp:
        path = tmp_path_factory.mktemp("engine-cache")
        mp.setenv("GESTURE_CACHE_DIR", str(path))
        yield path


@pytest.fixture(autouse=True)
def two_threads_at_least():
    """The engines as a 2-core machine builds them. tests/conftest.py gives each process of ``pytest -n 2`` one
    thread on 2 cores, and OpenVINO, which takes PyTorch's thread count, then compiles one stream and never
    splits a batch into requests, the path several of these tests are for."""
    before = torch.get_num_threads()
    torch.set_num_threads(max(2, before))
    yield
    torch.set_num_threads(before)


def require(engine: str, precision: str = "fp32") -> None:
    if not engine_installed(engine):
        pytest.skip(f"engine {engine} is not installed (pip install 'gesture-service[speed]')")
    if precision not in supported_precisions(engine, "cpu"):
        pytest.skip(f"{engine} has no {precision} on this CPU")


def batched(fn, images: torch.Tensor, size: int) -> torch.Tensor:
    return torch.cat([fn(images[i : i + size]) for i in range(0, len(images), size)])


# --- choosing an engine ------------------------------------------------------------------------


def test_auto_picks_an_installed_engine_that_supports_the_precision():
    name = resolve_engine("auto", "fp32", "cpu")
    assert name in available_engines("cpu")
    if engine_installed("openvino"):
        assert name == "openvino"  # the fastest on CPU (python -m benchmarks.inference)


@pytest.mark.parametrize(
    "engine, precision, message",
    [("tensorrt", "fp32", "choose one of auto, torch, compile, onnx, openvino"),
     ("torch", "int4", "choose one of fp32, bf16, fp16"),
     ("onnx", "bf16", "cannot run bf16 on cpu; available here: torch")],
)  # fmt: skip
def test_bad_engine_or_precision_is_a_clear_error(engine, precision, message):
    if engine == "onnx":
        require("onnx")
    with pytest.raises(EngineUnavailableError, match=message):
        resolve_engine(engine, precision, "cpu")


def test_load_classifier_rejects_an_unavailable_precision_listing_the_choices(random_head_checkpoint):
    require("onnx")
    with pytest.raises(EngineUnavailableError, match=r"onnx \(fp32\)"):
        load_classifier(random_head_checkpoint, "cpu", engine="onnx", precision="fp16")


# --- dynamic batch, empty batches, export cache ------------------------------------------------


@pytest.mark.parametrize("engine", EXPORTED)
def test_exported_engines_take_any_batch_size(engine, random_head_checkpoint):
    require(engine)
    eager = load_classifier(random_head_checkpoint, "cpu", engine="torch")
    fast = load_classifier(random_head_checkpoint, "cpu", engine=engine)
    assert fast.engine.name == engine and eager.engine.name == "torch"
    images = torch.randn(17, 3, 128, 128, generator=torch.Generator().manual_seed(0))
    for n in (1, 2, 5, 8, 17):  # OpenVINO: one latency request; 2, 2, 4 and 6 throughput requests
        assert (fast.logits(images[:n]) - eager.logits(images[:n])).abs().max() <= FP32_TOLERANCE
    assert fast.logits(images[:0]).shape == (0, 10)
    with pytest.raises(ValueError, match=r"exported for images of shape \(3, 128, 128\)"):
        fast.logits(torch.zeros(1, 3, 64, 64))


def test_openvino_splits_a_batch_into_small_requests_shared_evenly_by_the_streams(random_head_checkpoint):
    require("openvino")
    engine = load_classifier(random_head_checkpoint, "cpu", engine="openvino").engine
    most = engine.IMAGES_PER_REQUEST
    assert engine.streams >= 2  # with one stream, nothing is split
    for images in range(2, 50):
        count = engine._request_count(images)
        sizes = [len(chunk) for chunk in np.array_split(np.arange(images), count)]
        assert max(sizes) <= most and min(sizes) >= 1, (images, sizes)
        if images >= engine.streams:  # every stream gets the same number of requests
            assert count % engine.streams == 0, (images, count)


@pytest.mark.parametrize("engine", ["onnx", "openvino"])
def test_a_cached_export_damaged_since_is_exported_again(engine_cache, engine):
    """A cut .onnx in the cache failed every start of the service and the webcam (ONNX Runtime's 'Protobuf parsing
    failed', OpenVINO's 'Model can't be parsed') until someone found and deleted it."""
    require(engine)
    torch.manual_seed(0)
    model = build_model("lenet5", 3, "none").eval()
    build_engine(model, engine=engine, input_shape=(3, 32, 32))  # exports and caches
    cached = onnx_export_path(model, (3, 32, 32))
    cached.write_bytes(cached.read_bytes()[:2000])
    with pytest.warns(UserWarning, match=rf"the cached ONNX export {cached} does not load \(.+\): exported again"):
        rebuilt = build_engine(model, engine=engine, input_shape=(3, 32, 32))
    images = torch.rand(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.allclose(rebuilt(images), model(images), atol=1e-4)
    assert cached.stat().st_size > 2000


def test_a_librarys_error_is_quoted_on_one_line_with_its_reason():
    """OpenVINO's first line names only the source file that raised; the reason is on the next."""
    from gesture_core.native_output import in_brief

    openvino_style = RuntimeError("Exception from src/inference/src/cpp/core.cpp:97:\n[ NETWORK ] Model can't be parsed\n")
    assert in_brief(openvino_style) == "Exception from src/inference/src/cpp/core.cpp:97: [ NETWORK ] Model can't be parsed"
    long = in_brief(ValueError("x" * 500), limit=200)
    assert len(long) == 200 and long.endswith("…")
    assert in_brief(MemoryError()) == "MemoryError"


def test_export_is_cached_by_weights_and_input_shape(engine_cache):
    require("onnx")
    torch.manual_seed(0)
    model = build_model("lenet5", 3, "none").eval()
    build_engine(model, engine="onnx", input_shape=(3, 32, 32))
    first = onnx_export_path(model, (3, 32, 32))
    stamp = first.stat().st_mtime_ns
    build_engine(model, engine="onnx", input_shape=(3, 32, 32))
    assert onnx_export_path(model, (3, 32, 32)) == first and first.stat().st_mtime_ns == stamp  # reused, not rewritten
    assert onnx_export_path(model, (3, 52, 52)) != first
    with torch.no_grad():
        model.fc.weight.add_(1.0)
    assert onnx_export_path(model, (3, 32, 32)) != first
    assert first.parent == engine_cache / "engines"
    assert not [p for p in first.parent.iterdir() if p.name.startswith(".")]  # no temp files left


def test_a_model_that_cannot_be_exported_fails_clearly_or_falls_back_to_eager_under_auto(capfd):
    require("onnx")
    model = build_model("lenet5", 3, "none").eval()  # adaptive pooling 10x10 -> 5x5 exports; 6x6 -> 5x5 does not
    with pytest.raises(EngineUnavailableError, match="cannot be exported to ONNX.*use engine torch"):
        build_engine(model, engine="onnx", input_shape=(3, 36, 36))
    # torch's exporter printed its whole graph through C++ to stdout: TAG=$(python -m service.import_model ...) held 36 lines
    assert capfd.readouterr().out == ""
    with pytest.warns(UserWarning, match="running eager PyTorch instead"):
        engine = build_engine(model, engine="auto", input_shape=(3, 36, 36))
    assert engine.name == "torch" and engine(torch.zeros(2, 3, 36, 36)).shape == (2, 3)


def test_openvino_is_thread_safe(random_head_checkpoint):
    require("openvino")
    from concurrent.futures import ThreadPoolExecutor

    classifier = load_classifier(random_head_checkpoint, "cpu", engine="openvino")
    images = [torch.randn(n, 3, 128, 128, generator=torch.Generator().manual_seed(n)) for n in (1, 3, 5, 7)]
    expected = [classifier.logits(x) for x in images]
    with ThreadPoolExecutor(4) as pool:
        results = list(pool.map(classifier.logits, images * 3))
    for got, want in zip(results, expected * 3, strict=True):
        assert torch.equal(got, want)


# --- parity on real images ---------------------------------------------------------------------


@pytest.fixture(scope="module")
def real_test_split(sign_digits_run):
    """The run's saved test split, preprocessed, with eager fp32 logits as the reference."""
    checkpoint = sign_digits_run / "best.pt"
    splits = Splits.load(sign_digits_run / "split.json")
    reference = load_classifier(checkpoint, "cpu", engine="torch")
    images = torch.stack([reference.preprocess.load(s.path) for s in splits.test])
    labels = np.array([s.label for s in splits.test])
    return checkpoint, images, labels, batched(reference.logits, images, 64)


@pytest.mark.slow
@pytest.mark.parametrize("engine", [e for e in ENGINES if e != "torch"])
def test_fp32_engine_matches_eager_on_real_images(engine, real_test_split, record_property):
    require(engine)
    checkpoint, images, labels, reference = real_test_split
    if engine == "compile":  # each new batch size compiles for minutes on 2 cores: whole batches of 64 only
        n = len(images) - len(images) % 64
        images, reference = images[:n], reference[:n]
    classifier = load_classifier(checkpoint, "cpu", engine=engine)
    logits = batched(classifier.logits, images, 64)  # 64s and a remainder: the batch size varies
    diff = float((logits - reference).abs().max())
    record_property(f"{engine}_fp32_max_abs_logit_diff", diff)
    print(f"\n{engine} fp32 on {len(images)} real test images: max |Δlogit| {diff:.2e}")
    assert diff <= FP32_TOLERANCE
    assert torch.equal(logits.argmax(1), reference.argmax(1))


@pytest.mark.slow
@pytest.mark.parametrize("engine, precision", [("torch", "bf16"), ("openvino", "bf16"), ("torch", "fp16"), ("openvino", "fp16")])
def test_reduced_precision_agrees_with_eager_fp32_on_a_real_test_split(engine, precision, real_test_split, record_property):
    require(engine, precision)
    checkpoint, images, labels, reference = real_test_split
    classifier = load_classifier(checkpoint, "cpu", engine=engine, precision=precision)
    predicted = batched(classifier.logits, images, 64).argmax(1).numpy()
    eager = reference.argmax(1).numpy()
    agreement = float((predicted == eager).mean())
    top1, top1_fp32 = float((predicted == labels).mean()), float((eager == labels).mean())
    for key, value in (("agreement", agreement), ("top1", top1), ("top1_fp32", top1_fp32)):
        record_property(f"{engine}_{precision}_{key}", value)
    print(
        f"\n{engine} {precision} on {len(images)} real test images: top-1 agreement with eager fp32 {agreement:.2%}, "
        f"top-1 {top1:.2%} (fp32 {top1_fp32:.2%})"
    )
    assert agreement >= MIN_AGREEMENT


@pytest.mark.parametrize("engine", ENGINES)
def test_engine_of_a_plain_module_matches_eager(engine):
    """build_engine works on any module, not only checkpoints (training's feature extractor uses it)."""
    require(engine)
    if engine == "compile" and not os.environ.get("GESTURE_TEST_COMPILE"):
        pytest.skip("torch.compile takes minutes on 2 cores: set GESTURE_TEST_COMPILE=1 (the slow real-image parity test compiles anyway)")
    torch.manual_seed(0)
    model = build_model("lenet5", 4, "none").eval()
    x = torch.randn(6, 3, 32, 32)
    with torch.no_grad():
        expected = model(x)
    got = build_engine(model, engine=engine, device="cpu", input_shape=(3, 32, 32))(x)
    assert (got - expected).abs().max() <= 1e-4


def test_exports_and_downloads_stay_out_of_the_users_cache_folders(tmp_path_factory):
    """conftest.private_cache_folders: a stale export from an earlier run cannot hide a regression."""
    from pathlib import Path

    from gesture_core.engines import cache_root
    from gesture_core.weights import torch_cache_dir

    session = tmp_path_factory.getbasetemp()
    for folder in (cache_root(), torch_cache_dir(), Path(os.environ["XDG_CACHE_HOME"])):
        assert session in folder.parents, folder


def test_the_compile_engine_says_nothing_of_cuda_on_a_cpu(tmp_path):
    """Inductor's C++ build logged "W1206 … cpp_extension.py:183] No CUDA runtime is found, using CUDA_HOME=…" amid
    the webcam's and the service's output, on every machine without a GPU. In a process of its own: the line is
    logged once per process."""
    import subprocess
    import sys

    code = ("import torch; from gesture_core import build_model; from gesture_core.engines import build_engine\n"
            "engine = build_engine(build_model('lenet5', 3, 'none').eval(), engine='compile', precision='fp32', device=torch.device('cpu'), input_shape=(3, 32, 32))\n"
            "print(tuple(engine(torch.zeros(2, 3, 32, 32)).shape))")
    env = {**os.environ, "GESTURE_CACHE_DIR": str(tmp_path / "cache"), "TORCHINDUCTOR_CACHE_DIR": str(tmp_path / "inductor"), "CUDA_VISIBLE_DEVICES": ""}
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, env=env)
    assert done.returncode == 0 and done.stdout.strip() == "(2, 3)", done.stderr
    assert "No CUDA runtime" not in done.stderr and "cpp_extension" not in done.stderr, done.stderr


def test_the_compile_engine_meets_each_bucket_with_one_kind_of_tensor():
    """A padded batch is made in inference mode, and a batch of a bucket's own size was passed on as it came: dynamo
    guards on the difference, so each bucket compiled twice, the warm-up to 32 passed the limit of eight compiles
    ("torch._dynamo hit config.recompile_limit (8)"), and batches of 17-32 ran uncompiled from then on."""
    engine = build_engine(build_model("lenet5", 3, "none", in_chans=3).eval(), engine="compile", precision="fp32",
                          device=torch.device("cpu"), input_shape=(3, 32, 32))
    seen: list[bool] = []
    engine._compiled = lambda batch: (seen.append(batch.is_inference()), torch.zeros(len(batch), 3))[1]  # no compiling here
    for size in (1, 2, 3, 4, 16, 17, 32):
        assert engine(torch.zeros(size, 3, 32, 32)).shape == (size, 3)
    assert seen == [True] * 7
