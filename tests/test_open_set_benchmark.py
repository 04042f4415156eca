"""benchmarks.open_set's check that the grouped split leaks nothing through neighbouring frames, and the like-for-like
comparison of rejection scores (benchmarks.rejection_scores)."""

from __future__ import annotations

import numpy as np

from benchmarks import rejection_scores
from benchmarks.open_set import format_open_set_table, neighbour_check
from training.calibrate import Outcome, SplitOutputs
from training.data import Sample, Splits
from training.open_set import matched_threshold


def test_test_frames_beside_training_frames_are_scored_apart_from_the_others():
    # one recording of class 0, frames 1..8 in running order: train 1-3, test 4-5, val 6, test 7-8
    split = {1: "train", 2: "train", 3: "train", 4: "test", 5: "test", 6: "val", 7: "test", 8: "test"}
    samples = {name: [Sample(f"A/A{n}.jpg", 0) for n, s in split.items() if s == name] for name in ("train", "val", "test")}
    splits = Splits(root=".", classes=["A", "B"], **samples)
    # test rows in splits.test order (frames 4, 5, 7, 8): only frame 4 has a training neighbour (3); it is
    # right, and of the others only frame 8 is right
    logits = np.array([[2.0, 0.0], [0.0, 2.0], [0.0, 2.0], [2.0, 0.0]])
    outputs = SplitOutputs(features=np.zeros((4, 1)), logits=logits, targets=np.zeros(4, int), index=np.arange(4))
    assert neighbour_check(splits, outputs) == {"beside_train": 1, "top1_beside_train": 1.0, "others": 3, "top1_others": 1 / 3}


def test_the_table_counts_never_learned_signs_rejected_by_the_runs_own_score():
    test = {"gesture_recall_unthresholded": 0.975, "gesture_recall": 0.9688, "gesture_precision": 0.98, "false_accept_rate_unthresholded": 0.0,
            "false_accept_rate": 0.0, "auroc": 1.0, "ece_before": 0.09, "ece_after": 0.01}
    scores = [{"score": "max_softmax", "unknown_rejection_rate": 0.374}, {"score": "energy_and_feature", "unknown_rejection_rate": 0.2615}]
    run = {"scenario": "open20", "classes": 21, "top1": 0.976, "scores": scores,
           "open_set": {"temperature": 0.63, "threshold": 0.0083, "score": "energy_and_feature", "test": test}}
    assert format_open_set_table([run]).splitlines()[-1].endswith("| 26.15% |")
    del run["open_set"]["score"]  # a checkpoint from before the key: its threshold is on max_softmax
    assert format_open_set_table([run]).splitlines()[-1].endswith("| 37.40% |")


def test_scores_are_compared_where_each_turns_away_the_same_share_of_correct_gestures():
    # 200 correct gesture images scoring 1..200, one wrong one and one reject-class image scoring 0:
    # only the correct ones set the like-for-like threshold, and 1% of them (2) fall below it
    scores = np.concatenate([np.arange(1, 201, dtype=float), [0.0, 0.0]])
    logits = np.zeros((202, 3))
    logits[np.arange(202), [0] * 200 + [1, 2]] = 1.0  # image 200: class 0 taken for 1; image 201: the reject class 2
    outputs = SplitOutputs(features=np.zeros((202, 1)), logits=logits, targets=np.array([0] * 201 + [2]), index=np.arange(202))
    threshold = matched_threshold(Outcome.of(scores, outputs, reject=[2]), cost=0.01)
    assert threshold == 3.0 and (scores[:200] < threshold).sum() == 2


def test_the_score_benchmark_names_what_is_missing_without_a_traceback(tmp_path, capsys):
    assert rejection_scores.main(["--run", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "best.pt" in err and "Traceback" not in err
