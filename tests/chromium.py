"""Headless Chromium driven over the Chrome DevTools protocol, for the browser demo's tests.

    with Chromium.launch(tmp_path, fake_camera=Path("digit.y4m")) as browser:
        browser.navigate("http://127.0.0.1:3000/demo/")
        browser.wait_for("document.getElementById('answers').textContent > 0", "a first answer")

Chromium's fake camera plays a .y4m (or .mjpeg) file in a loop; the permission prompt is answered
yes. Debian's ``chromium`` package provides the browser; ``websocket-client`` talks to it.
"""

from __future__ import annotations

import base64
import json
import os
import shutil
import subprocess
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

import cv2
import numpy as np

CHROMIUM_NAMES = ("chromium", "chromium-browser", "google-chrome")
FLAGS = (
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
    "--disable-sync", "--no-first-run", "--window-size=1100,720",
    # a headless page counts as hidden: keep its timers and its camera running at full speed
    "--disable-background-timer-throttling", "--disable-renderer-backgrounding", "--disable-backgrounding-occluded-windows",
)


class BrowserError(RuntimeError):
    pass


def find_chromium() -> str | None:
    return next((path for name in CHROMIUM_NAMES if (path := shutil.which(name))), None)


def write_y4m(path: Path, frames_bgr: list[np.ndarray], fps: int) -> Path:
    """An uncompressed 4:2:0 video, the format of Chromium's fake camera file."""
    height, width = frames_bgr[0].shape[:2]
    with path.open("wb") as video:
        video.write(f"YUV4MPEG2 W{width} H{height} F{fps}:1 Ip A1:1 C420jpeg\n".encode())
        for frame in frames_bgr:
            video.write(b"FRAME\n" + cv2.cvtColor(frame, cv2.COLOR_BGR2YUV_I420).tobytes())
    return path


class Chromium:
    def __init__(self, process: subprocess.Popen, log_path: Path, socket: Any, socket_dir: Path):
        self.process, self.log_path, self.socket, self.socket_dir = process, log_path, socket, socket_dir
        self._next_id = 0

    @classmethod
    def launch(cls, work_dir: Path, *, fake_camera: Path | None = None, executable: str | None = None,
               start_timeout: float = 60.0) -> Chromium:
        import websocket  # websocket-client, in the [dev] extra

        executable = executable or find_chromium()
        if executable is None:
            raise BrowserError(f"no Chromium found (looked for {', '.join(CHROMIUM_NAMES)})")
        profile = work_dir / "chromium-profile"  # a fresh profile for every browser
        camera = [] if fake_camera is None else ["--use-fake-device-for-media-stream", f"--use-file-for-fake-video-capture={fake_camera}",
                                                 "--use-fake-ui-for-media-stream"]
        log_path = work_dir / "chromium.log"
        # Its singleton socket's folder goes in TMPDIR and outlives a terminated browser: one a test left in
        # /tmp for good. Not the test's own folder: a socket's path holds at most 107 bytes.
        socket_dir = Path(tempfile.mkdtemp(prefix="chromium-"))
        with log_path.open("wb") as log:
            process = subprocess.Popen([executable, *FLAGS, *camera, f"--user-data-dir={profile}", "--remote-debugging-port=0", "about:blank"],
                                       stdout=log, stderr=subprocess.STDOUT, start_new_session=True, env={**os.environ, "TMPDIR": str(socket_dir)})
        try:
            port = wait_for_devtools_port(process, profile / "DevToolsActivePort", start_timeout, log_path)
            socket = websocket.create_connection(page_socket_url(port), timeout=start_timeout, suppress_origin=True)
        except BaseException:
            process.kill()
            process.wait(10)
            shutil.rmtree(socket_dir, ignore_errors=True)
            raise
        return cls(process, log_path, socket, socket_dir)

    def __enter__(self) -> Chromium:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self.socket.close()
        self.process.terminate()
        try:
            self.process.wait(10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(10)
        shutil.rmtree(self.socket_dir, ignore_errors=True)

    def call(self, method: str, **params: Any) -> dict[str, Any]:
        """One DevTools command and its result (events that arrive meanwhile are skipped)."""
        self._next_id += 1
        self.socket.send(json.dumps({"id": self._next_id, "method": method, "params": params}))
        while True:
            message = json.loads(self.socket.recv())
            if message.get("id") == self._next_id:
                if "error" in message:
                    raise BrowserError(f"{method}: {message['error']}")
                return message["result"]

    def navigate(self, url: str, timeout: float = 60.0) -> None:
        """Open ``url`` and wait until its document and scripts have loaded."""
        self.call("Page.navigate", url=url)  # answers once the new document is committed
        self.wait_for("document.readyState === 'complete'", f"page load of {url}", timeout)

    def evaluate(self, expression: str) -> Any:
        """The value of a JavaScript expression in the page (a promise's, once it settles)."""
        result = self.call("Runtime.evaluate", expression=expression, returnByValue=True, awaitPromise=True)
        if "exceptionDetails" in result:
            raise BrowserError(f"{expression}: {result['exceptionDetails']}")
        return result["result"].get("value")

    def wait_for(self, expression: str, what: str, timeout: float = 120.0) -> Any:
        """The first truthy value of ``expression``, polled; BrowserError naming ``what`` after ``timeout``."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if value := self.evaluate(expression):
                return value
            time.sleep(0.1)
        raise BrowserError(f"no {what} within {timeout:.0f} s; the page shows: {self.evaluate('document.body.innerText')!r}")

    def screenshot(self, path: Path) -> Path:
        path.write_bytes(base64.b64decode(self.call("Page.captureScreenshot", format="png")["data"]))
        return path


def wait_for_devtools_port(process: subprocess.Popen, port_file: Path, timeout: float, log_path: Path) -> int:
    """Chromium writes the port it picked (--remote-debugging-port=0) into its profile."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise BrowserError(f"Chromium exited with code {process.returncode}:\n{log_path.read_text(errors='replace')[-3000:]}")
        if port_file.is_file() and (lines := port_file.read_text().split()):
            return int(lines[0])
        time.sleep(0.1)
    raise BrowserError(f"Chromium did not open its DevTools port within {timeout:.0f} s")


def page_socket_url(port: int) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/json/list", timeout=10) as resp:
        pages = [target for target in json.load(resp) if target["type"] == "page"]
    if not pages:
        raise BrowserError("Chromium opened no page")
    return pages[0]["webSocketDebuggerUrl"]
