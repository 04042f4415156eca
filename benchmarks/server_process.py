"""Run the real ``bentoml serve`` in a child process, for tests and benchmarks.

    with serve_process(bentoml_home=tmp) as server:
        httpx.post(f"{server.url}/predict", files={"image": open("hand.jpg", "rb")})

Binds 127.0.0.1 on a free port, waits for /readyz, and always stops the server (and its worker)
on the way out.
"""

from __future__ import annotations

import contextlib
import http.client
import os
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

import psutil

REPO = Path(__file__).resolve().parents[1]
SERVICE_TARGET = "service.service:GestureClassifier"


class ServerStartError(RuntimeError):
    pass


class PortTaken(ServerStartError):
    """Another process bound the port first (serve_process picks a free one again)."""


PORT_TRIES = 3  # ports serve_process picks before it gives up on a server that finds its port taken


@dataclass
class RunningServer:
    url: str
    process: subprocess.Popen
    log_path: Path

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def serve_process(
    *,
    bentoml_home: str | os.PathLike | None = None,
    env: Mapping[str, str] | None = None,
    target: str = SERVICE_TARGET,
    host: str = "127.0.0.1",
    port: int | None = None,
    ready_timeout: float = 180.0,
    log_path: str | os.PathLike | None = None,
    open_file_limit: int | None = None,
) -> Iterator[RunningServer]:
    """``bentoml serve TARGET`` from the repository root, ready to take requests. ``open_file_limit``:
    the soft limit on open files it starts with, as a shell's ``ulimit -n`` or a container's would set.

    A port it picks (``port`` None) is free when picked, and bound by the server seconds later, after its imports:
    another process may take it between (under ``pytest -n 2``, the other test process's servers), and a port picked
    again then."""
    with contextlib.ExitStack() as running:
        for attempt in range(1, PORT_TRIES + 1):
            try:
                server = running.enter_context(_served(target, host, port or free_port(host), bentoml_home, env, ready_timeout,
                                                       log_path, open_file_limit))
                break
            except PortTaken:
                if port is not None or attempt == PORT_TRIES:
                    raise
        yield server


@contextlib.contextmanager
def _served(target: str, host: str, port: int, bentoml_home: str | os.PathLike | None, env: Mapping[str, str] | None,
            ready_timeout: float, log_path: str | os.PathLike | None, open_file_limit: int | None) -> Iterator[RunningServer]:
    child_env = {**os.environ, "BENTOML_DO_NOT_TRACK": "1", "NO_ALBUMENTATIONS_UPDATE": "1", **(env or {})}
    if bentoml_home is not None:
        child_env["BENTOML_HOME"] = str(bentoml_home)
    # A log the caller did not ask to keep is deleted with the server: a failure to start quotes its tail.
    own_log = log_path is None
    log = Path(tempfile.mkstemp(prefix="bentoml-serve-", suffix=".log")[1]) if own_log else Path(log_path)
    cmd = [sys.executable, "-m", "bentoml", "serve", target, "--host", host, "--port", str(port)]
    with log.open("wb") as log_file:
        with soft_open_file_limit(open_file_limit):
            process = subprocess.Popen(cmd, cwd=REPO, env=child_env, stdout=log_file, stderr=subprocess.STDOUT, start_new_session=True)
    server = RunningServer(f"http://{host}:{port}", process, log)
    try:
        wait_ready(server, ready_timeout)
        yield server
    finally:
        stop(process)
        if own_log:
            log.unlink(missing_ok=True)


@contextlib.contextmanager
def soft_open_file_limit(limit: int | None) -> Iterator[None]:
    """This process's soft limit on open files lowered to ``limit`` while it starts a child, which
    inherits it (the hard limit stays, so it may raise it again)."""
    if limit is None:
        yield
        return
    import resource  # Unix only, as is lowering the limit

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (min(limit, hard), hard))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


def wait_ready(server: RunningServer, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if server.process.poll() is not None:
            log = server.log()
            error = PortTaken if "address already in use" in log.lower() else ServerStartError
            raise error(f"bentoml serve exited with code {server.process.returncode}:\n{tail(log)}")
        try:
            with urllib.request.urlopen(f"{server.url}/readyz", timeout=2) as resp:
                if resp.status == 200 and listens_on(server.process, urllib.parse.urlsplit(server.url).port):
                    return
        # Bytes that are no HTTP answer (http.client.HTTPException) come from another process that took the port, as a
        # refused connection comes from a server still importing: either way, wait for this one to bind or fail.
        except (urllib.error.URLError, http.client.HTTPException, ConnectionError, TimeoutError):
            pass
        time.sleep(0.25)
    raise ServerStartError(f"bentoml serve not ready after {timeout:.0f} s:\n{tail(server.log())}")


def listens_on(process: subprocess.Popen, port: int | None) -> bool:
    """Whether the server's own processes hold the socket listening on ``port``: a 200 from /readyz of another
    process that took the port first was this server's "ready", and its requests went to that other server."""
    try:
        server = psutil.Process(process.pid)
        return any(connection.status == psutil.CONN_LISTEN and connection.laddr.port == port
                   for member in (server, *server.children(recursive=True)) for connection in member.net_connections(kind="tcp"))
    except psutil.Error:  # it ended, or its children did, while they were read
        return False


def stop(process: subprocess.Popen, grace: float = 20.0) -> None:
    """SIGTERM lets BentoML stop its workers; whatever of them survives ``grace`` is killed."""
    if process.poll() is not None:
        return
    try:
        children = psutil.Process(process.pid).children(recursive=True)  # workers run in their own sessions
    except psutil.NoSuchProcess:
        children = []
    process.terminate()
    try:
        process.wait(grace)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait(5)
    _, alive = psutil.wait_procs(children, timeout=5)
    for child in alive:
        with contextlib.suppress(psutil.NoSuchProcess):
            child.kill()


def tail(text: str, lines: int = 40) -> str:
    return "\n".join(text.splitlines()[-lines:])
