"""``benchmarks.server_process``, which starts the real ``bentoml serve`` for the tests and the benchmarks, on a port
that another process takes first (under ``pytest -n 2``, the other test process's servers)."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
from http.server import BaseHTTPRequestHandler
from socketserver import StreamRequestHandler, ThreadingTCPServer

import pytest

import benchmarks.server_process as server_process
from benchmarks.server_process import REPO, PortTaken, serve_process

pytestmark = pytest.mark.integration
real_free_port = server_process.free_port  # before a test replaces it


class AlwaysReady(BaseHTTPRequestHandler):
    """Another server: 200 to every GET, /readyz included."""

    def do_GET(self):
        self.send_response(200)
        self.send_header("Content-Length", "7")
        self.end_headers()
        self.wfile.write(b"another")

    def log_message(self, *args):
        pass


class NotHttp(StreamRequestHandler):
    """Another server that speaks some other protocol: bytes that are no HTTP status line (the harness's readiness
    poll raised http.client.BadStatusLine on them, and a test's setup failed where a port should have been picked)."""

    def handle(self):
        self.wfile.write(b"\xff\x00\x00\x00\x01binary\r\n")


@pytest.fixture(params=[AlwaysReady, NotHttp], ids=["http", "not-http"])
def other_server(request):
    server = ThreadingTCPServer(("127.0.0.1", 0), request.param)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield server.server_address[1]
    server.shutdown()
    server.server_close()


@pytest.fixture
def stored_model(tmp_path):
    """A small three-class model in a fresh BentoML store."""
    import torch

    from gesture_core import DataConfig
    from gesture_core.backbones import build_model
    from gesture_core.checkpoint import save_checkpoint

    torch.manual_seed(0)
    save_checkpoint(tmp_path / "small.pt", model=build_model("lenet5", 3, "none"), backbone="lenet5", classes=["a", "b", "c"],
                    data_config=DataConfig(input_size=32, resize_size=36), train_config={"seed": 0}, metrics={})
    subprocess.run([sys.executable, "-m", "service.import_model", str(tmp_path / "small.pt")], cwd=REPO,
                   env={**os.environ, "BENTOML_HOME": str(tmp_path / "home")}, check=True, capture_output=True, timeout=300)
    return tmp_path / "home"


def test_a_port_another_process_took_first_is_picked_again(stored_model, other_server, monkeypatch):
    """The port is free when picked and bound seconds later, after the server's imports. Taken between, the other
    process's 200 from /readyz was this server's "ready", and the test's requests went to that other server."""
    import httpx

    picks = iter([other_server])
    monkeypatch.setattr(server_process, "free_port", lambda host="127.0.0.1": next(picks, None) or real_free_port(host))
    with serve_process(bentoml_home=stored_model, ready_timeout=150, env={"GESTURE_ENGINE": "torch"}) as server:
        assert server.url != f"http://127.0.0.1:{other_server}"
        assert httpx.post(f"{server.url}/info", timeout=30).json()["classes"] == ["a", "b", "c"]


def test_a_port_given_and_taken_is_an_error_that_says_so(stored_model, other_server):
    with pytest.raises(PortTaken, match="(?i)address already in use"):
        with serve_process(bentoml_home=stored_model, port=other_server, ready_timeout=150, env={"GESTURE_ENGINE": "torch"}):
            pass

