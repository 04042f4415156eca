"""The stored "no gesture" rule, served: a real `bentoml serve` answers `label: null` exactly where
`training.evaluate` rejects, and the webcam (local and remote) applies the same threshold."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from benchmarks.server_process import REPO, serve_process
from gesture_core import load_classifier
from service.webcam.scoring import LocalScorer, RemoteScorer, decision_rule
from tests.test_rejection import evaluate_decisions, scored_run  # noqa: F401 - the fixture is shared

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def test_served_labels_are_null_where_evaluate_rejects(scored_run, tmp_path):  # noqa: F811
    _, run = scored_run
    env = {"BENTOML_HOME": str(tmp_path), "BENTOML_DO_NOT_TRACK": "1"}
    done = subprocess.run([sys.executable, "-m", "service.import_model", str(run / "best.pt")], cwd=REPO,
                          env={**os.environ, **env}, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    rows = evaluate_decisions(run)
    by_threshold = [r for r in rows if r["label"] == "" and r["top_class"] != "0"]
    assert by_threshold, "the test split has no image rejected by the threshold alone: this test could not fail for it"
    chosen = by_threshold + [r for r in rows if r["top_class"] == "0"][:3] + [r for r in rows if r["label"]][:6]
    stored = load_classifier(run / "best.pt", device="cpu", engine="torch").rejection
    with serve_process(bentoml_home=tmp_path) as server, httpx.Client(base_url=server.url, timeout=60) as http:
        info = http.post("/info").json()["rejection"]
        assert info["threshold"] == stored.threshold and info["reject_classes"] == ["0"] and info["calibration"] == "calibrated"
        assert info["score"] == stored.score
        for row in chosen:
            served = http.post("/predict", files={"image": (Path(row["path"]).name, Path(row["path"]).read_bytes())}).json()
            assert (served["label"] or "") == row["label"], (row, served)
            assert served["top_k"][0]["label"] == row["top_class"]  # rejected answers keep their top-k
            assert (served["gesture_score"] is None) == (stored.score == "max_softmax")
            if served["gesture_score"] is not None:
                assert served["gesture_score"] == pytest.approx(float(row["gesture_score"]), abs=1e-3)
        # an explicit threshold still overrides the stored one, and one outside 0-1 is refused
        accepted = next(r for r in chosen if r["label"])
        image = {"image": ("x.jpg", Path(accepted["path"]).read_bytes())}
        assert http.post("/predict", files=image, data={"threshold": "1.0"}).json()["label"] is None
        refused = http.post("/predict", files=image, data={"threshold": "1.5"})
        assert refused.status_code == 400 and "less than or equal to 1" in refused.text
        remote = RemoteScorer(server.url, timeout=30)
        try:
            assert decision_rule(remote, None) == (stored.threshold, ("0",))
        finally:
            remote.close()
    local = LocalScorer(load_classifier(run / "best.pt", device="cpu", engine="torch"))
    assert decision_rule(local, None) == (stored.threshold, ("0",))
    assert decision_rule(local, 0.9) == (0.9, ("0",))
