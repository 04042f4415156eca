"""benchmarks.open_set's check that the grouped split leaks nothing through neighbouring frames."""

from __future__ import annotations

import numpy as np

from benchmarks.open_set import neighbour_check
from training.calibrate import SplitOutputs
from training.data import Sample, Splits


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
