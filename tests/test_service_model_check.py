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
