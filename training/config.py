"""The run configuration, stored in every checkpoint and in RUN/config.json (as nanoGPT does)."""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from typing import Any

# Options whose `auto` a run settles from its data at start-up (training.finetune.resolve_data_choices); the
# settled value replaces `auto` in config.json and the checkpoint.
SETTLED_FROM_AUTO = ("flip", "crop")


@dataclass
class TrainConfig:
    # within 0.5 points of the best run on every dataset and budget over two or three splits (lite1 was not: 1.07 behind
    # on sign-digits at 3 epochs), and the cheaper one to train and serve (docs/training.md#backbones)
    backbone: str = "efficientnet_lite0"
    data: str = ""
    weights: str = "imagenet"
    epochs: int = 10
    batch_size: int = 32
    image_size: int | None = None  # None: the backbone's own input size
    train_size: int | None = None  # training crops' size; None: the input size (evaluation and serving keep image_size)
    in_chans: int = 3
    # optimisation
    opt: str = "adamw"
    lr: float = 3e-3  # with backbone_lr_mult 0.3 and warmup_epochs 0.5: the tuned sign-digits recipe (docs/training.md)
    backbone_lr_mult: float = 0.3  # discriminative LR: pretrained layers move slower than the new head
    weight_decay: float = 0.05
    momentum: float = 0.9
    warmup_epochs: float = 0.5
    label_smoothing: float = 0.1
    ema_decay: float = 0.0  # 0: no weight averaging
    class_weights: bool = False
    # strategy: freeze="backbone" is a linear probe; head_epochs > 0 trains the head alone first
    freeze: str = "none"
    head_epochs: int = 0
    patience: int = 0  # early stopping on val top-1; 0 disables
    # "no gesture" (training.calibrate): None finds reject classes by name, [""] turns them off
    reject_classes: list[str] | None = None
    reject_target_recall: float = 0.99
    # what the threshold applies to (gesture_core.rejection.SCORES): the lower of the energy's and the feature
    # cosine's ranks, which turned away more non-gestures than max-softmax in every comparison (docs/no-gesture.md)
    reject_score: str = "energy_and_feature"
    cache_features: str = "auto"  # frozen epochs on cached backbone features: auto (with augment "none") | on | off
    # augmentation
    augment: str = "default"
    flip: str = "auto"  # auto | on | off; auto: off when class names are direction-sensitive (training.augment.resolve_flip)
    pca_lighting: bool = False
    scale_jitter: bool = False
    # data split
    val_split: float = 0.1
    test_split: float = 0.2
    test_per_class: int | None = None
    group_by: str = "auto"  # auto | none | session | frames | REGEX (training.grouping)
    # auto | center | letterbox | resize: the input geometry, stored in the checkpoint's data config. auto keeps the
    # whole frame of wide recordings: fine-tuned on hands at the edge of 4:3 scenes the centre crop scored 49.67%
    # against 93.67% (docs/training.md, benchmarks.whole_frame)
    crop: str = "auto"
    # classify each hand found by gesture_core.hands instead of the frame (training.hand_crops; docs/hands.md)
    hands: bool = False
    # runtime
    seed: int = 0
    device: str = "auto"
    amp: str = "auto"
    workers: int = 2
    out: str = ""
    # distributed (torchrun): world_size is recorded, not chosen; it is set at the start of each run
    sync_bn: bool = False
    world_size: int = 1

    def __post_init__(self) -> None:
        if isinstance(self.flip, bool):  # configs and checkpoints written before --flip auto|on|off
            self.flip = "on" if self.flip else "off"

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> TrainConfig:
        known = {f.name for f in fields(cls)}
        if isinstance(d.get("flip"), bool):  # written before the auto choices: resume it as it ran, centre crop and all
            d = {"crop": "center", "group_by": "none", **d}
        return cls(**{k: v for k, v in d.items() if k in known})
