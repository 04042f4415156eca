"""A mistake on a benchmark's command line is refused before the benchmark starts: one `error:` line naming
the flag, with the valid choices or range, and exit code 2. Each of these ran for seconds to minutes first
(a server started, frames synthesised, the hardware measured), then ended in a traceback, or ran on."""

from __future__ import annotations

import importlib

import pytest

# What each benchmark does first once its command line is taken: here any of them fails the test, so that
# a mistake is seen to be refused before the work, and an unfixed one fails at once rather than running.
FIRST_WORK = ("machine", "describe_machine", "load_images", "make_checkpoint", "running_service", "model_only", "make_clip",
              "scenes", "split_photos", "synthesize", "quick_subset", "run_one", "run_recipe", "run_finetune")

MISTAKES = [
    # names the product lists (engines, backbones, recipes, ...), and files that are not what the flag takes
    ("benchmarks.hostile", ["--engine", "abc", "--quick"], "--engine", "choose from"),
    ("benchmarks.serve", ["--checkpoint", "{photo}", "--quick"], "--checkpoint", "is not a readable checkpoint"),
    ("benchmarks.serve", ["--backbone", "abc"], "--backbone", "choose one of"),
    ("benchmarks.serve_latency", ["--checkpoint", "{photo}"], "--checkpoint", "is not a readable checkpoint"),
    ("benchmarks.serve_latency", ["--env", "GESTURE_ENGINE=abc"], "--env", "choose one of auto, torch"),
    ("benchmarks.serve_latency", ["--batching", ","], "--batching", "choose from microbatch, adaptive"),
    ("benchmarks.hostile", ["--checkpoint", "{photo}"], "--checkpoint", "is not a readable checkpoint"),
    ("benchmarks.whole_frame", ["--backbone", "abc"], "--backbone", "choose one of"),
    ("benchmarks.whole_frame", ["--crops", "centre"], "--crops", "choose from"),
    ("benchmarks.whole_frame", ["--backbone", "inception_v3", "--image-size", "64"], "--image-size", "choose 75 or more"),
    ("benchmarks.hand_size", ["--backbone", "abc"], "--backbone", "choose one of"),
    ("benchmarks.hand_size", ["--letters", "A,,B"], "--letters", "empty item"),
    ("benchmarks.recipes", ["--recipes", ","], "--recipes", "choose from defaults, old-defaults"),
    ("benchmarks.recipes", ["--backbones", "abc"], "--backbones", "choose one of"),
    ("benchmarks.recipes", ["--datasets", "flowers,"], "--datasets", "empty item"),
    ("benchmarks.flowers_recipes", ["--only", "v3,"], "--only", "choose from v3, v3-trainval"),
    ("benchmarks.open_set", ["--scenarios", "all29,open21"], "--scenarios", "choose from all29, open20"),
    ("benchmarks.inference", ["--quick", "--backbones", "abc"], "--backbones", "choose one of"),
    ("benchmarks.inference", ["--quick", "--accuracy", "{missing}"], "--accuracy", "no such folder"),
    ("benchmarks.model_call", ["--backbones", "resnet18,abc"], "--backbones", "choose one of"),
    ("benchmarks.train", ["--backbone", "abc"], "--backbone", "choose one of"),
    ("benchmarks.webcam", ["--backbones", "abc"], "--backbones", "choose one of"),
    ("benchmarks.hands", ["--models", "{missing}"], "--models", "no such folder"),
    # numbers out of range: counts, sizes, workers and seconds
    ("benchmarks.decode_cost", ["--photos", "0"], "--photos", "must be >= 1"),
    ("benchmarks.decode_cost", ["--photos", "-1"], "--photos", "must be >= 1"),
    ("benchmarks.inference", ["--image-size", "0"], "--image-size", "must be in [32, 1024]"),
    ("benchmarks.model_call", ["--seconds", "1e30"], "--seconds", "must be in [0.1, 86400]"),
    ("benchmarks.model_call", ["--image-size", "0"], "--image-size", "must be in [32, 1024]"),
    ("benchmarks.open_set", ["--epochs", "-1"], "--epochs", "must be >= 1"),
    ("benchmarks.open_set", ["--workers", "-1"], "--workers", "must be in [0,"),
    ("benchmarks.recipes", ["--budgets", "0"], "--budgets", "must be >= 1"),
    ("benchmarks.recipes", ["--workers", "-1"], "--workers", "must be in [0,"),
    ("benchmarks.train", ["--epochs", "0"], "--epochs", "must be >= 1"),
    ("benchmarks.train", ["--test-per-class", "0"], "--test-per-class", "must be >= 1"),
    ("benchmarks.whole_frame", ["--per-class", "-1"], "--per-class", "must be >= 1"),
    ("benchmarks.whole_frame", ["--epochs", "0"], "--epochs", "must be >= 1"),
    ("benchmarks.serve", ["--clients", "0"], "--clients", "must be in [1,"),
    ("benchmarks.serve", ["--duration", "nan"], "--duration", "must be in [0.1, 86400]"),
    ("benchmarks.serve", ["--warmup", "-1"], "--warmup", "must be in [0.0, 86400]"),
    ("benchmarks.serve", ["--image-size", "0"], "--image-size", "must be in [32, 1024]"),
    ("benchmarks.serve_latency", ["--duration", "-1"], "--duration", "must be in [0.1, 86400]"),
    ("benchmarks.serve_latency", ["--clients", "0"], "--clients", "must be in [1,"),
    ("benchmarks.hostile", ["--slow-clients", "-1"], "--slow-clients", "must be in [1,"),
    ("benchmarks.hostile", ["--slow-seconds", "nan"], "--slow-seconds", "must be in [0.1, 86400]"),
    ("benchmarks.hostile", ["--idle-seconds", "inf"], "--idle-seconds", "must be in [0.1, 86400]"),
    ("benchmarks.body_memory", ["--clients", "-1"], "--clients", "must be in [1,"),
    ("benchmarks.rejection_scores", ["--run", "{missing}", "--workers", "-1"], "--workers", "must be in [0,"),
    ("benchmarks.shared_errors", ["{missing}", "{missing}", "--workers", "-1"], "--workers", "must be in [0,"),
    ("benchmarks.flowers_recipes", ["--test-per-class", "0"], "--test-per-class", "must be >= 1"),
    ("benchmarks.hand_size", ["--per-class", "0"], "--per-class", "must be >= 1"),
    ("benchmarks.hand_size", ["--pastes", "-1"], "--pastes", "must be >= 1"),
    ("benchmarks.hand_size", ["--epochs", "0"], "--epochs", "must be >= 1"),
    ("benchmarks.hand_size", ["--image-size", "-1"], "--image-size", "must be in [32, 1024]"),
    ("benchmarks.hands", ["--redetect-every", "0"], "--redetect-every", "must be >= 1"),
    ("benchmarks.hands", ["--redetect-every", "-1"], "--redetect-every", "must be >= 1"),
    ("benchmarks.hands", ["--threads", "0"], "--threads", "must be in [1,"),
    ("benchmarks.webcam", ["--image-size", "0"], "--image-size", "must be in [32, 1024]"),
    ("benchmarks.webcam", ["--clip-size", "8x8"], "--clip-size", "expected WIDTHxHEIGHT, each 16 to 8192"),
    ("benchmarks.webcam", ["--record"], "--record", "add --realtime"),
]


@pytest.mark.parametrize(("module", "argv", "flag", "says"), MISTAKES)
def test_a_mistake_on_a_benchmarks_command_line_is_refused_before_the_work(module, argv, flag, says, tmp_path, monkeypatch, capsys):
    photo = tmp_path / "photo.jpg"
    photo.write_bytes(b"\xff\xd8\xff\xe0 not a checkpoint")
    argv = [arg.format(photo=photo, missing=tmp_path / "missing") for arg in argv]
    benchmark = importlib.import_module(module)

    def started(*args, **kwargs):
        raise AssertionError(f"{module} {' '.join(argv)} started its work before refusing the input")

    for name in FIRST_WORK:
        monkeypatch.setattr(benchmark, name, started, raising=False)
    with pytest.raises(SystemExit) as stop:
        benchmark.main(argv)
    err = capsys.readouterr().err
    assert stop.value.code == 2 and err.count("\n") == 1 and err.startswith("error: "), err
    assert flag in err and says in err, err
