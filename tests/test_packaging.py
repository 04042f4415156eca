"""The project as pip installs it (a wheel, not the editable checkout): every file the code reads is in it."""

from __future__ import annotations

import shutil
import subprocess
import sys
import zipfile

import pytest

from tests.helpers import REPO

PACKAGES = ("gesture_core", "training", "service")  # pyproject.toml's [tool.setuptools.packages.find]


@pytest.mark.integration
def test_the_wheel_holds_every_file_of_the_packages(tmp_path):
    """The wheel held the modules alone: the browser demo's page was left out, and an installed service failed
    at import (``Directory '…/service/demo' does not exist``), /predict with it. Built from a copy of the
    tracked files, so that the build leaves nothing in the checkout."""
    tracked = subprocess.run(["git", "ls-files", "-z"], cwd=REPO, capture_output=True, check=True).stdout.decode().split("\0")
    source = tmp_path / "source"
    for name in filter(None, tracked):
        if (REPO / name).is_file():
            (source / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(REPO / name, source / name)
    built = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(tmp_path / "wheel"), str(source)],
                           capture_output=True, text=True, timeout=300)  # fmt: skip
    assert built.returncode == 0, built.stderr[-2000:]
    (wheel,) = (tmp_path / "wheel").glob("*.whl")
    packed = set(zipfile.ZipFile(wheel).namelist())
    needed = {name for name in tracked if name.startswith(tuple(f"{p}/" for p in PACKAGES))}
    assert "service/demo/index.html" in needed and needed <= packed, sorted(needed - packed)
