"""What turns a frame into class scores for the webcam demo: a local model or the HTTP service,
and the temporal smoothing that keeps the shown label steady.

Both scorers take a BGR frame (as OpenCV captures it) and return ``{label: probability}``; the
local engine returns every class, and the remote one asks the service for every class too. For a
model trained on hand crops (``DataConfig.hands``) they return ``HandsAnswer`` instead: each hand
found, with its box and its own ``{label: probability}``. Locally a ``HandTracker`` finds them, so
palm detection runs only every few frames; the service finds them in each frame it is sent.
"""

from __future__ import annotations

import http.client
import json
import os
import uuid
from collections import Counter, deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, NamedTuple, Protocol
from urllib.parse import urlsplit

import cv2
import numpy as np
import torch

from gesture_core import Classifier, ClassScores, Prediction, decode_probs
from gesture_core.classifier import frame_source
from gesture_core.hands import HandTracker
from gesture_core.images import bgr_to_rgb
from gesture_core.preprocess import frame_aspect_of, frame_shape_note
from gesture_core.rejection import Rejection
from gesture_core.runtime import Runtime

# What the webcam showed as "no gesture" before thresholds were calibrated; checkpoints from then keep it.
UNCALIBRATED_WEBCAM_THRESHOLD = 0.5
REMOTE_JPEG_QUALITY = 90  # the frames remote mode sends (the browser demo's demo.js sends its own at the same quality)


class Scores(dict[str, float]):
    """``{label: probability}`` for one frame (or hand), and ``gesture``: the score the model's threshold
    applies to when it is not the top probability (a model calibrated with another ``--reject-score`` than max_softmax),
    else None. A plain dict works wherever Scores is taken, as one with ``gesture`` None."""

    def __init__(self, probs: Any = (), gesture: float | None = None):
        super().__init__(probs)
        self.gesture = gesture


def gesture_of(scores: dict[str, float]) -> float | None:
    return getattr(scores, "gesture", None)


Box = tuple[int, int, int, int]  # x0, y0, x1, y1 in frame pixels
MAX_BOX_COORDINATE = 1 << 16  # past any camera's frame, and far inside OpenCV's 32-bit drawing


@dataclass(frozen=True)
class HandScores:
    """One hand that a hand-crop model found in a frame: where it is, and its class probabilities."""

    box: Box
    handedness: str | None
    hand_score: float  # the hand detector's confidence that a hand is there
    scores: Scores


@dataclass(frozen=True)
class HandsAnswer:
    """A hand-crop model's answer for one frame: the hands found, best first (none: empty)."""

    hands: tuple[HandScores, ...]


@dataclass(frozen=True)
class HandResult:
    """One hand as the live loop shows it: its box in the frame and its own decision (label None: no gesture)."""

    box: Box
    handedness: str | None
    hand_score: float
    prediction: Prediction


class Scorer(Protocol):
    name: str

    def __call__(self, bgr: np.ndarray) -> Scores | HandsAnswer: ...

    def rejection(self) -> Rejection | None: ...  # the model's "no gesture" rule, None if unknown

    def frame_shape_note(self, height: int, width: int) -> str | None: ...  # frames unlike the model's training frames

    def close(self) -> None: ...


class ServerError(RuntimeError):
    """The service is unreachable, too slow, or answered an error; ``str(err)`` is user-facing."""


class FrameRefused(ServerError):
    """The service refused this frame (a 4xx but 408 and 429, which say to ask again): the frame, not the server, is
    at fault, and asking again is no use. It was taken for an outage: retried every second, and the run ended with code 3."""


TRANSIENT_STATUSES = (408, 429)  # a slow upload, a busy server


def default_threads() -> int:
    """Model threads for the live loop: all cores but one, which capture, drawing and encoding need.

    On a busy machine, more model threads than free cores is far worse than fewer (threads wait for
    each other at every layer): 2 threads on a loaded 2-core box measured ~10x slower than 1.
    """
    return max(1, (os.cpu_count() or 1) - 1)


# Palm detection at least this often while hands are tracked (HandTracker's default; docs/hands.md).
REDETECT_EVERY = 10


class LocalScorer:
    def __init__(self, classifier: Classifier, *, redetect_every: int = REDETECT_EVERY, track_hands: bool = True):
        self.classifier = classifier
        self.name = f"{classifier.backbone} ({classifier.engine.name} {classifier.device.type})"
        # A hand-crop model follows the hands from frame to frame: the landmark model on last frame's
        # squares, and palm detection only when a hand is lost or every `redetect_every` frames.
        # `track_hands=False`: frames that are separate photos, each searched whole as the service does
        # (a hand followed from one photo into the next put boxes where the next had no hand).
        self.tracker = HandTracker(classifier.localiser, redetect_every=redetect_every) if classifier.hands_mode else None
        self.track_hands = track_hands
        if self.tracker is not None:
            self.name += ", hand crops"
        self._palm_calls_before = 0

    @classmethod
    def load(cls, checkpoint: str, runtime: Runtime = Runtime(), *, track_hands: bool = True) -> LocalScorer:
        """The checkpoint, running where ``runtime`` says (device, engine, precision, CPU threads)."""
        local = cls(runtime.load(checkpoint), track_hands=track_hands)
        local.warm_up()
        return local

    def warm_up(self) -> None:
        """The first forward pass allocates and picks kernels; keep it out of the latency figures."""
        size = self.classifier.data_config.input_size
        if self.tracker is None:
            self(np.zeros((size, size, 3), np.uint8))
            return
        self.classifier.classify([self.classifier.blank_crop()])
        self.tracker.update(np.zeros((size, size, 3), np.uint8))  # LiteRT's first run is slow too
        self.tracker.reset()
        self._palm_calls_before = self.classifier.localiser.palm_calls

    def __call__(self, bgr: np.ndarray) -> Scores | HandsAnswer:
        if self.tracker is not None:
            return self.score_hands(bgr)
        return self._scores(self.classifier.classify_scores([self.classifier.crop(bgr, bgr=True)])[0])

    def score_hands(self, bgr: np.ndarray) -> HandsAnswer:
        """The tracked hands of this frame, each crop classified; all crops of a frame in one model call."""
        rgb = bgr_to_rgb(bgr)
        hands = self.tracker.update(rgb) if self.track_hands else self.classifier.localiser.find(rgb)
        if not hands:
            return HandsAnswer(())
        scores = self.classifier.classify_scores(self.classifier.hand_crops(rgb, hands))
        return HandsAnswer(tuple(HandScores(tuple(hand.box), hand.handedness, float(hand.score), self._scores(s))
                                 for hand, s in zip(hands, scores, strict=True)))

    @property
    def palm_detections(self) -> int | None:
        """Palm detections run since the warm-up (hand-crop models); None for whole-image models."""
        return None if self.tracker is None else self.classifier.localiser.palm_calls - self._palm_calls_before

    def _scores(self, scores: ClassScores) -> Scores:
        return Scores(zip(self.classifier.classes, scores.probs.tolist(), strict=True), scores.gesture)

    def rejection(self) -> Rejection:
        return self.classifier.rejection

    def frame_shape_note(self, height: int, width: int) -> str | None:
        return self.classifier.frame_shape_note(height, width)

    def close(self) -> None:
        if self.classifier.device.type == "cuda":
            torch.cuda.empty_cache()


# Ask the service for every class (it caps top_k at the class count), so smoothing averages full
# probability vectors as in local mode; the service's own limit for top_k is 1000.
REMOTE_TOP_K = 1000


class RemoteScorer:
    """POSTs each frame as JPEG (multipart field ``image``) to ``URL/predict`` over one kept-alive connection."""

    def __init__(self, url: str, *, timeout: float = 2.0, jpeg_quality: int = REMOTE_JPEG_QUALITY):
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"--url {url!r}: expected http://HOST:PORT or https://HOST:PORT (e.g. http://127.0.0.1:3000)")
        self.url = url.rstrip("/")
        self.name = f"remote {parts.netloc}"
        self.model: str | None = None  # what the service says it runs, from its answers
        self._scheme, self._host, self._port = parts.scheme, parts.hostname, parts.port
        self._path = parts.path.rstrip("/") + "/predict"
        self._info_path = parts.path.rstrip("/") + "/info"
        self._timeout = timeout
        self._jpeg_params = [cv2.IMWRITE_JPEG_QUALITY, jpeg_quality]
        self._connection: http.client.HTTPConnection | None = None
        self._info_answer: Any = None

    def __call__(self, bgr: np.ndarray) -> Scores | HandsAnswer:
        ok, jpeg = cv2.imencode(".jpg", bgr, self._jpeg_params)
        if not ok:
            raise RuntimeError("could not encode the frame as JPEG")
        status, body = self._post(jpeg.tobytes())
        if status != 200:
            refused = 400 <= status < 500 and status not in TRANSIENT_STATUSES
            raise (FrameRefused if refused else ServerError)(f"{self.url}/predict answered HTTP {status}: {_error_text(body)}")
        return self._parse(body)

    def close(self) -> None:
        if self._connection is not None:
            self._connection.close()
            self._connection = None

    def _post(self, jpeg: bytes) -> tuple[int, bytes]:
        boundary = uuid.uuid4().hex
        body = b"".join([
            f'--{boundary}\r\nContent-Disposition: form-data; name="top_k"\r\n\r\n{REMOTE_TOP_K}\r\n'.encode(),
            f"--{boundary}\r\n".encode(),
            b'Content-Disposition: form-data; name="image"; filename="frame.jpg"\r\n',
            b"Content-Type: image/jpeg\r\n\r\n", jpeg, f"\r\n--{boundary}--\r\n".encode(),
        ])
        return self._send(self._path, body, f"multipart/form-data; boundary={boundary}")

    def rejection(self) -> Rejection | None:
        """The served model's "no gesture" rule, from /info; None if the service does not say."""
        try:
            return Rejection.from_checkpoint(info) if (info := self._info()) is not None else None
        except (ValueError, KeyError, TypeError, AttributeError, OverflowError):  # /info answered [1, 2]: an AttributeError
            return None

    def frame_shape_note(self, height: int, width: int) -> str | None:
        """The served model's ``Classifier.frame_shape_note``, from /info's crop and frame_aspect."""
        info = self._info()
        return frame_shape_note(str(info.get("crop")), frame_aspect_of(info), width, height) if isinstance(info, dict) else None

    def _info(self) -> Any:
        """/info's JSON, read once it answers; None while the service does not."""
        if self._info_answer is None:
            try:
                status, body = self._send(self._info_path, b"{}", "application/json")
                self._info_answer = json.loads(body) if status == 200 else None
            except (ServerError, ValueError, RecursionError):  # RecursionError: JSON nested 100,000 deep
                return None
        return self._info_answer

    def _send(self, path: str, body: bytes, content_type: str) -> tuple[int, bytes]:
        headers = {"Content-Type": content_type, "Accept": "application/json"}
        try:
            connection = self._connect()
            connection.request("POST", path, body=body, headers=headers)
            response = connection.getresponse()
            return response.status, response.read()
        except TimeoutError:
            self.close()
            raise ServerError(f"{self.url} did not answer within {self._timeout:g} s") from None
        except ConnectionRefusedError:
            self.close()
            raise ServerError(f"{self.url} is not reachable (connection refused): is the service running?") from None
        except (OSError, http.client.HTTPException) as err:
            self.close()
            raise ServerError(f"{self.url} is not reachable ({type(err).__name__}: {err})") from None

    def _connect(self) -> http.client.HTTPConnection:
        if self._connection is None:
            cls = http.client.HTTPSConnection if self._scheme == "https" else http.client.HTTPConnection
            self._connection = cls(self._host, self._port, timeout=self._timeout)
        return self._connection

    def _parse(self, body: bytes) -> Scores | HandsAnswer:
        """The answer's top_k; for a hand-crop model (``hands`` is a list, null otherwise) each hand's."""
        try:
            answer = json.loads(body)
            scores = _top_k_scores(answer)
            hands = answer.get("hands")
            if hands is not None:
                scores = HandsAnswer(tuple(HandScores(_box(hand["box"]), hand.get("handedness"),
                                                      _probability(hand["hand_score"]), _top_k_scores(hand)) for hand in hands))
        except (ValueError, KeyError, TypeError, AttributeError, OverflowError, RecursionError):
            raise ServerError(f"{self.url}/predict answered something other than a prediction: {_error_text(body)}") from None
        self.model = answer.get("model") or self.model
        return scores


def _top_k_scores(answer: dict) -> Scores:
    gesture = answer.get("gesture_score")
    return Scores({str(item["label"]): _probability(item["score"]) for item in answer["top_k"]}, None if gesture is None else _probability(gesture))


def _probability(value: Any) -> float:
    """A score from the server, which must lie in [0, 1]: Infinity drew an overlay bar of infinite width
    (an OverflowError, a traceback), and NaN went into the JSON lines as what strict parsers refuse."""
    number = float(value)
    if not 0.0 <= number <= 1.0:  # NaN too
        raise ValueError(f"score {value!r} outside [0, 1]")
    return number


def _box(values: Any) -> Box:
    """A hand's box (x0, y0, x1, y1) in whole pixels of a plausible frame: three numbers or 1e15 were a
    traceback from the drawing (an IndexError, OpenCV's "Can't parse 'rec'")."""
    box = tuple(int(v) for v in values)
    if len(box) != 4 or any(abs(v) > MAX_BOX_COORDINATE for v in box):
        raise ValueError(f"box {values!r} is not 4 pixel coordinates")
    return box


def _error_text(body: bytes, limit: int = 200) -> str:
    text = body.decode("utf-8", "replace").strip()
    try:
        answer = json.loads(text)
        if isinstance(answer, dict) and ("error" in answer or "detail" in answer):
            text = str(answer.get("error") or answer.get("detail"))
    except (ValueError, RecursionError):
        pass
    text = " ".join(text.split())  # one line: a proxy's HTML error page took ten of the log, and of each JSON line's error
    return (text[:limit] + " …") if len(text) > limit else (text or "(empty body)")


class _Seen(NamedTuple):
    """A frame in a Smoother's window."""

    vector: np.ndarray  # its probabilities over the classes seen up to it (later classes are 0 for it)
    vote: str | None  # its own label (vote mode; None otherwise, and for "no gesture")
    gesture: float | None


class Smoother:
    """Steadies the label over the last ``window`` frames: averaged probabilities and the median gesture
    score, or a majority vote.

    Rejection ("no gesture", label None) comes from ``decode_probs``: below ``threshold``, or one of
    ``reject_classes`` (None: the classes with a common "no gesture" name). In vote mode each frame
    votes with its own (thresholded) label. A frame with no scores (a hand-crop model that found no
    accepted hand) is "no gesture": it counts as probability 0 for every class in the average.
    """

    def __init__(self, window: int = 1, *, vote: bool = False, threshold: float = 0.0, k: int = 3, reject_classes: tuple[str, ...] | None = None):
        if window < 1:
            raise ValueError(f"smoothing window must be >= 1 frame, got {window}")
        self.window, self.vote, self.threshold, self.k, self.reject_classes = window, vote, threshold, k, reject_classes
        self._classes: list[str] = []  # first-seen order, so remote answers with varying top_k line up
        # The window's sums, kept as frames come and go: re-deciding every frame of a 10,000-frame window on each
        # new one took 48 ms a frame after 3,000 frames (a probe), so a live camera dropped frames half a minute in.
        self._history: deque[_Seen] = deque()
        self._sum = np.zeros(0)  # the probabilities summed over the window, per class of _classes
        self._votes: Counter[str | None] = Counter()  # vote mode: each frame's own label, counted
        self._gestures = np.zeros(window)  # a ring of the window's gesture scores (0 for a frame without one)
        self._with_gesture = 0  # frames of the window that have a gesture score
        self._oldest = 0  # the ring slot of the window's oldest frame

    def reset(self) -> None:
        self._history.clear()
        self._sum[:] = 0.0
        self._votes.clear()
        self._with_gesture = self._oldest = 0

    def update(self, scores: Scores) -> Prediction:
        for label in scores:
            if label not in self._classes:
                self._classes.append(label)
        if len(self._sum) < len(self._classes):  # a new class: 0 in the frames before
            self._sum = np.pad(self._sum, (0, len(self._classes) - len(self._sum)))
        if len(self._history) == self.window:
            self._forget(self._history.popleft())
        seen = _Seen(self._vector(scores), self.decide(scores).label if self.vote else None, gesture_of(scores))
        self._gestures[(len(self._history) + self._oldest) % self.window] = seen.gesture or 0.0
        self._history.append(seen)
        self._sum[:len(seen.vector)] += seen.vector
        self._votes[seen.vote] += 1
        self._with_gesture += seen.gesture is not None
        mean = self._sum / len(self._history)
        mean[mean < 1e-12] = 0.0  # what subtraction leaves of frames gone: no evidence is none (a window without hands)
        averaged = self._decode(mean, self._classes, self._typical_gesture())
        if not self.vote:
            return averaged
        best = max(self._votes.values())
        winner = next(s.vote for s in reversed(self._history) if self._votes[s.vote] == best)  # ties: the most recent
        score = float(mean[self._classes.index(winner)]) if winner is not None else averaged.score
        return Prediction(winner, score, averaged.top_k, averaged.gesture_score)

    def _forget(self, gone: _Seen) -> None:
        self._sum[:len(gone.vector)] -= gone.vector
        self._votes[gone.vote] -= 1
        if not self._votes[gone.vote]:
            del self._votes[gone.vote]
        self._with_gesture -= gone.gesture is not None
        self._oldest = (self._oldest + 1) % self.window
        if not self._oldest:  # once a window: the sums afresh, so that rounding cannot pile up over a long run
            self._sum[:] = 0.0
            for seen in self._history:
                self._sum[:len(seen.vector)] += seen.vector

    def decide(self, scores: Scores) -> Prediction:
        """One frame on its own, with the same threshold and rejection rules."""
        classes = list(scores)
        return self._decode(np.asarray([scores[c] for c in classes], np.float64), classes, gesture_of(scores))

    def _decode(self, probs: np.ndarray, classes: list[str], gesture: float | None = None) -> Prediction:
        if not classes or probs.max() <= 0.0:  # no evidence at all (no hand) is no gesture, even at threshold 0
            return Prediction(None, 0.0, [])
        return decode_probs(probs, classes, k=self.k, threshold=self.threshold, reject_classes=self.reject_classes, gesture=gesture)

    def _typical_gesture(self) -> float | None:
        """The frames' median gesture score, for a model whose threshold applies to one (a frame without a
        hand counts 0, as its probabilities do); None for a model whose threshold applies to the top probability.
        The median, so the window shows a gesture only where most of its frames pass the threshold: the score
        is a rank, near 0 for what is no gesture, and through the mean one sure frame among four refused ones
        showed a label (a probe's non-gesture video showed one on 10 frames where 4 passed on their own)."""
        if not self._with_gesture:
            return None
        return float(np.median(self._gestures[:len(self._history)]))  # the ring's order does not matter to a median

    def _vector(self, scores: Scores) -> np.ndarray:
        return np.asarray([scores.get(label, 0.0) for label in self._classes], np.float64)


def decide_hands(answer: HandsAnswer, smoother: Smoother, offset: tuple[int, int] = (0, 0)) -> tuple[tuple[HandResult, ...], Scores]:
    """Each hand's own decision (the smoother's threshold and reject classes), and the frame's scores
    for smoothing: those of the hand the frame's answer comes from (``Classifier.decide_hands``'s rule,
    ``frame_source``: the accepted hand with the highest gesture score, else the best rejected one), none
    without a hand. ``offset``: where the scored image sits in the frame (the ROI's corner)."""
    dx, dy = offset
    hands = tuple(HandResult((h.box[0] + dx, h.box[1] + dy, h.box[2] + dx, h.box[3] + dy), h.handedness, h.hand_score,
                             smoother.decide(h.scores)) for h in answer.hands)
    source = frame_source([hand.prediction for hand in hands])
    return hands, (answer.hands[source].scores if source is not None else {})


def decision_rule(scorer: Scorer, threshold: float | None, log: Callable[[str], None] = print) -> tuple[float, tuple[str, ...] | None]:
    """(threshold, reject classes) for the live loop: ``threshold`` if given, else the model's calibrated
    one; a model from before calibration (or a service that does not say) keeps the old 0.5."""
    rejection = scorer.rejection() if hasattr(scorer, "rejection") else None
    if rejection is not None and (note := rejection.override_note(threshold)):
        log(f"note: {note}")
    if threshold is None:
        threshold = rejection.threshold if rejection is not None and rejection.calibrated else UNCALIBRATED_WEBCAM_THRESHOLD
    return threshold, rejection.reject_classes if rejection is not None else None
