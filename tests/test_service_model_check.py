"""A stored model that the service cannot load stops `bentoml serve` with the reason, instead of a
worker that BentoML restarts for ever. Real `bentoml serve` on a free 127.0.0.1 port."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch

from benchmarks.server_process import REPO, ServerStartError, serve_process

pytestmark = pytest.mark.integration


def store_without_checking(checkpoint, home) -> None:
    """What an older import_model did, or a model copied into the store by hand: no check at all."""
    code = ("import shutil, sys, bentoml\n"
            "with bentoml.models.create('gesture-classifier') as model:\n"
            "    shutil.copyfile(sys.argv[1], model.path_of('checkpoint.pt'))\n")
    env = {**os.environ, "BENTOML_HOME": str(home), "BENTOML_DO_NOT_TRACK": "1"}
    subprocess.run([sys.executable, "-c", code, str(checkpoint)], cwd=REPO, env=env, check=True, timeout=120)


def test_a_model_with_the_wrong_class_count_stops_the_server_with_the_reason(random_head_checkpoint, tmp_path):
    ckpt = torch.load(random_head_checkpoint, weights_only=True)
    ckpt["classes"] = ckpt["classes"][:5]  # the head has 10 outputs
    torch.save(ckpt, tmp_path / "bad.pt")
    store_without_checking(tmp_path / "bad.pt", tmp_path / "home")
    with pytest.raises(ServerStartError) as failed:
        with serve_process(bentoml_home=tmp_path / "home", ready_timeout=150, env={"GESTURE_ENGINE": "torch"}):
            pass
    message = str(failed.value)
    assert "exited with code" in message  # it stopped: no worker restarting for ever
    assert "cannot be served" in message and "shape mismatch" in message and "python -m service.import_model" in message
    assert "Traceback" not in message


def test_a_model_an_engine_cannot_export_names_the_engine_setting_and_prints_no_graph(tmp_path):
    """lenet5 at 36 px pools 6x6 to 5x5, which ONNX cannot express: the server stopped telling the deployer to
    import another checkpoint, after torch's exporter had printed its whole graph into the log, twice."""
    from gesture_core.backbones import build_model, get_backbone
    from gesture_core.checkpoint import save_checkpoint

    backbone = get_backbone("lenet5")
    save_checkpoint(tmp_path / "lenet.pt", model=build_model("lenet5", 3, "none"), backbone="lenet5", classes=["a", "b", "c"],
                    data_config=backbone.data_config.with_input_size(36), train_config={"seed": 0}, metrics={})
    store_without_checking(tmp_path / "lenet.pt", tmp_path / "home")
    with pytest.raises(ServerStartError) as failed:
        with serve_process(bentoml_home=tmp_path / "home", ready_timeout=150, env={"GESTURE_ENGINE": "onnx"}):
            pass
    message = str(failed.value)
    assert "cannot be served with GESTURE_ENGINE=onnx: engine 'onnx': this model cannot be exported to ONNX" in message
    assert "set GESTURE_ENGINE to torch or auto" in message and "import_model" not in message
    assert "Torch IR graph" not in message and "Traceback" not in message


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without a CUDA GPU")
@pytest.mark.parametrize("env, said", [
    # a GPU node without its driver, or a container started without --gpus: it served on the CPU and said it was ready
    ({"GESTURE_GPUS": "1"}, "GESTURE_GPUS=1, but no CUDA GPU is visible here (no driver, or a container started without --gpus?): "
                            "set GESTURE_GPUS=0 to serve on the CPU"),
    ({"GESTURE_DEVICE": "cuda"}, "GESTURE_DEVICE=cuda, but no CUDA GPU is visible here: set GESTURE_DEVICE to auto or cpu"),
    # the model's load said so, and told the deployer to import another checkpoint
    ({"GESTURE_ENGINE": "onnx", "GESTURE_PRECISION": "bf16"}, "GESTURE_ENGINE=onnx with GESTURE_PRECISION=bf16: engine 'onnx' cannot run bf16 on cpu"),
], ids=["gpus", "device", "engine-precision"])
def test_hardware_this_machine_lacks_stops_the_server_naming_the_setting(random_head_checkpoint, tmp_path, env, said):
    import_cli = [sys.executable, "-m", "service.import_model", str(random_head_checkpoint)]
    subprocess.run(import_cli, cwd=REPO, env={**os.environ, "BENTOML_HOME": str(tmp_path / "home")}, check=True, capture_output=True, timeout=300)
    with pytest.raises(ServerStartError) as failed:
        with serve_process(bentoml_home=tmp_path / "home", ready_timeout=150, env=env):
            pass
    message = str(failed.value)
    assert "exited with code" in message and said in message and "Traceback" not in message and "import_model" not in message, message


@pytest.mark.parametrize("engine", ["torch", "openvino"])
def test_a_grayscale_model_is_served_and_answers_as_load_classifier_does(tmp_path, engine):
    """--in-channels 1: the start-up check passed, then each worker's warm-up sent one-channel crops to a
    pipeline of RGB crops, and BentoML restarted the worker for ever (/readyz never answered)."""
    import httpx

    from gesture_core import DataConfig, load_classifier
    from gesture_core.backbones import build_model
    from gesture_core.checkpoint import save_checkpoint
    from tests.service_inputs import jpeg

    torch.manual_seed(0)
    save_checkpoint(tmp_path / "gray.pt", model=build_model("lenet5", 3, "none", in_chans=1), backbone="lenet5", classes=["a", "b", "c"],
                    data_config=DataConfig(input_size=32, resize_size=36).with_channels(1), train_config={"seed": 0}, metrics={})
    subprocess.run([sys.executable, "-m", "service.import_model", str(tmp_path / "gray.pt")], cwd=REPO,
                   env={**os.environ, "BENTOML_HOME": str(tmp_path / "home")}, check=True, capture_output=True, timeout=300)
    photo = jpeg(1)
    with serve_process(bentoml_home=tmp_path / "home", ready_timeout=150, env={"GESTURE_ENGINE": engine}) as server:
        served = httpx.post(f"{server.url}/predict", files={"image": ("x.jpg", photo)}, data={"top_k": "3"}, timeout=60)
    assert served.status_code == 200, served.text
    expected = load_classifier(tmp_path / "gray.pt", device="cpu", engine="torch").predict(photo, k=3)
    assert served.json()["label"] == expected.label
    assert [s["score"] for s in served.json()["top_k"]] == pytest.approx([s for _, s in expected.top_k], abs=1e-4)
