// The browser demo: camera frames go to the service's /predict, its answers are smoothed and shown.
// Plain JavaScript with no build step and nothing fetched from elsewhere: it works offline, from
// the service alone. Settings come from the URL (?smooth=5&threshold=0.5&roi=0.6&server=URL) and
// the controls on the page.
"use strict";

const params = new URLSearchParams(location.search);
// Same origin by default. ?server=URL asks another service, which must allow this page's origin
// (GESTURE_CORS_ORIGINS on that server). A link can name any server, so the page says which one and
// sends nothing until the user agrees (a multipart POST needs no CORS preflight: a server that is not
// allowed still receives the frames, only its answers are hidden from the page).
const SERVER = (params.get("server") || "").replace(/\/+$/, "");
const SERVER_NAME = SERVER || location.origin;
// DEFAULT_ROI, JPEG_QUALITY, UNCALIBRATED_THRESHOLD and ASPECT_MISMATCH are the OpenCV demo's own constants, repeated
// here (the page runs no Python); tests/test_browser_demo.py fails when the two disagree.
const DEFAULT_ROI = 0.6; // as the OpenCV demo's bare --roi
const RETRY_MS = 1000; // during an outage or after a refusal, ask again this often
const TIMEOUT_MS = 10000; // a request still unanswered by then counts as an outage
const JPEG_QUALITY = 0.9; // as the OpenCV demo's remote mode
const ALL_CLASSES = 1000; // top_k: every class, so that smoothing averages whole probability vectors
const SHOWN_CLASSES = 3;
const UNCALIBRATED_THRESHOLD = 0.5; // the OpenCV demo's "no gesture" threshold for models from before calibration
const FPS_WINDOW = 30; // answers per second over the last this many answers
const FRAME_WAIT_MS = 1000; // longest wait for a new camera frame (a frozen camera still gets answers)
// gesture_core.preprocess.ASPECT_MISMATCH: frames this many times wider or narrower than a whole-frame
// model's training frames show hands in another shape than it learnt (a phone held upright)
const ASPECT_MISMATCH = 1.5;

const $ = (id) => document.getElementById(id);
const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

class Outage extends Error {} // no answer at all: the server is down, unreachable or too slow
class Refusal extends Error {} // the server answered with an error; the message is its reason

// --- talking to the service --------------------------------------------------------------------

async function post(path, body) {
  let response;
  try {
    response = await fetch(SERVER + path, { method: "POST", body, signal: AbortSignal.timeout(TIMEOUT_MS) });
  } catch (err) {
    if (err.name === "TimeoutError") throw new Outage(`${SERVER_NAME} did not answer within ${TIMEOUT_MS / 1000} s`);
    const cors = SERVER ? ", or it does not allow this page's origin (server setting GESTURE_CORS_ORIGINS)" : "";
    throw new Outage(`${SERVER_NAME} is not reachable: is the service running${cors}?`);
  }
  const text = await response.text();
  if (!response.ok) throw new Refusal(`${path} answered HTTP ${response.status}: ${errorReason(text)}`);
  return JSON.parse(text);
}

// The service answers every error with JSON {"error": reason}; a refused field's reason names it
// ("threshold: Input should be a valid number"), and its "detail" ([{loc, msg}, ...]) says the same
// again, so it is shown only where there is no "error". Anything else is shown as it came.
function errorReason(text) {
  try {
    const answer = JSON.parse(text);
    const details = Array.isArray(answer.detail) ? answer.detail.map((d) => `${(d.loc || []).join(".")}: ${d.msg}`).join("; ") : answer.detail;
    return answer.error || details || text;
  } catch {
    return text.trim().slice(0, 300) || "(empty body)";
  }
}

function predict(jpeg) {
  const form = new FormData();
  form.append("image", jpeg, "frame.jpg");
  form.append("top_k", String(ALL_CLASSES));
  form.append("threshold", $("threshold").value); // the server checks it, and says why when it refuses
  return post("/predict", form);
}

// --- the camera ----------------------------------------------------------------------------------

let stream = null;

async function startCamera(deviceId) {
  if (!navigator.mediaDevices) {
    throw new Error("this page has no camera access: browsers allow it only on https:// or http://localhost (see docs/webcam.md)");
  }
  stream?.getTracks().forEach((track) => track.stop());
  stream = null;
  const video = deviceId ? { deviceId: { exact: deviceId } } : true;
  try {
    stream = await navigator.mediaDevices.getUserMedia({ video, audio: false });
  } catch (err) {
    throw new Error(`no camera: ${err.name === "NotAllowedError" ? "access was refused; allow it in the address bar" : err.message}`);
  }
  $("preview").srcObject = stream;
  await listCameras(stream.getVideoTracks()[0].getSettings().deviceId);
}

// Camera names are only readable once the page may use a camera, so the list is filled after that.
async function listCameras(activeId) {
  const cameras = (await navigator.mediaDevices.enumerateDevices()).filter((d) => d.kind === "videoinput");
  const select = $("camera");
  select.replaceChildren(...cameras.map((camera, i) => new Option(camera.label || `camera ${i + 1}`, camera.deviceId)));
  select.value = activeId;
}

// Counts the frames the camera delivers, so that no frame is classified twice (as in the OpenCV demo):
// with a fast server the page waits for the camera, and FPS is frames classified per second.
let cameraFrames = 0;
let onCameraFrame = () => {};

function countFrames(video) {
  if (!video.requestVideoFrameCallback) return; // then every request takes whatever frame is current
  const tick = () => {
    cameraFrames += 1;
    onCameraFrame();
    video.requestVideoFrameCallback(tick);
  };
  video.requestVideoFrameCallback(tick);
}

function frameAfter(sent) {
  if (cameraFrames !== sent || !$("preview").requestVideoFrameCallback) return Promise.resolve();
  return new Promise((resolve) => {
    onCameraFrame = resolve;
    setTimeout(resolve, FRAME_WAIT_MS);
  });
}

function cameraReady() {
  const video = $("preview");
  return stream !== null && video.readyState >= video.HAVE_CURRENT_DATA && video.videoWidth > 0;
}

// --- frames --------------------------------------------------------------------------------------

const canvas = document.createElement("canvas");
let modelResize = null; // the model's resize size, from /info
let modelHands = false; // from /info: the model classifies hand crops, and /predict answers per hand

function roiFraction() {
  return $("use-roi").checked ? Number(params.get("roi")) || DEFAULT_ROI : null;
}

// What the URL's settings cannot be, said before anything starts (null when they are fine).
function urlProblem() {
  if (params.has("roi") && params.get("roi") !== "") {
    const roi = Number(params.get("roi"));
    if (!(roi > 0 && roi <= 1)) return `?roi=${params.get("roi")}: give the centre square's side as a fraction of the frame's shorter side, above 0 and at most 1 (e.g. ?roi=${DEFAULT_ROI})`;
  }
  if (SERVER) {
    let url = null;
    try {
      url = new URL(SERVER);
    } catch {}
    if (!url || !["http:", "https:"].includes(url.protocol)) return `?server=${SERVER}: give the service's http:// or https:// address, or leave it out to use this page's own service`;
  }
  return null;
}

// The camera's frames go to another origin than the page's only once the user has said so.
function agreedToServer() {
  if (!SERVER || new URL(SERVER).origin === location.origin) return Promise.resolve();
  $("elsewhere-origin").textContent = new URL(SERVER).origin;
  $("elsewhere").hidden = false;
  return new Promise((resolve) => $("elsewhere-send").addEventListener("click", () => {
    $("elsewhere").hidden = true;
    resolve();
  }, { once: true }));
}

// The part of the frame that is classified: all of it, or a centred square (fraction of the shorter side).
function cropBox(width, height) {
  const fraction = roiFraction();
  if (!fraction) return { x: 0, y: 0, width, height };
  const side = Math.max(1, Math.round(Math.min(width, height) * fraction));
  return { x: Math.floor((width - side) / 2), y: Math.floor((height - side) / 2), width: side, height: side };
}

// The newest camera frame as JPEG (not mirrored: the model was trained on what the camera sees). Its
// shorter side is cut to twice the model's resize size at most: less to upload and decode, same crop.
// A hand-crop model finds the hands in the whole frame, small ones too: its frames keep their size.
// Returns the JPEG and where it lies in the camera frame (to draw the hands' boxes back on it), at what size.
function frameJpeg() {
  const video = $("preview");
  const box = cropBox(video.videoWidth, video.videoHeight);
  const scale = modelResize && !modelHands ? Math.min(1, (2 * modelResize) / Math.min(box.width, box.height)) : 1;
  canvas.width = Math.round(box.width * scale);
  canvas.height = Math.round(box.height * scale);
  canvas.getContext("2d").drawImage(video, box.x, box.y, box.width, box.height, 0, 0, canvas.width, canvas.height);
  const placed = { x: box.x, y: box.y, width: box.width, height: box.height, scaleX: canvas.width / box.width, scaleY: canvas.height / box.height };
  return new Promise((resolve, reject) =>
    canvas.toBlob((blob) => (blob ? resolve({ jpeg: blob, placed }) : reject(new Error("could not encode the frame as JPEG"))), "image/jpeg", JPEG_QUALITY));
}

function drawRoi() {
  const video = $("preview");
  const box = $("roi");
  box.hidden = !roiFraction() || !video.videoWidth;
  if (box.hidden) return;
  const crop = cropBox(video.videoWidth, video.videoHeight);
  // where object-fit: contain puts the picture in the element; a centred square is the same mirrored
  const scale = Math.min(video.clientWidth / video.videoWidth, video.clientHeight / video.videoHeight);
  const left = (video.clientWidth - scale * video.videoWidth) / 2 + scale * crop.x;
  const top = (video.clientHeight - scale * video.videoHeight) / 2 + scale * crop.y;
  Object.assign(box.style, { left: `${left}px`, top: `${top}px`, width: `${scale * crop.width}px`, height: `${scale * crop.height}px` });
}

// Where a camera-frame box is drawn in the preview element: object-fit: contain, then mirrored (the
// preview is a selfie view; the frames sent are not mirrored).
function previewRect(x0, y0, x1, y1) {
  const video = $("preview");
  const scale = Math.min(video.clientWidth / video.videoWidth, video.clientHeight / video.videoHeight);
  const left = (video.clientWidth - scale * video.videoWidth) / 2;
  const top = (video.clientHeight - scale * video.videoHeight) / 2;
  return { left: left + scale * (video.videoWidth - x1), top: top + scale * y0, width: scale * (x1 - x0), height: scale * (y1 - y0) };
}

// One box per hand of the answer (hand-crop models), with the hand's own label: its boxes are in the
// sent JPEG's pixels, `placed` says where that JPEG lies in the camera frame.
function drawHands(hands, placed) {
  const layer = $("hands");
  if (!Array.isArray(hands)) {
    layer.replaceChildren();
    return;
  }
  layer.replaceChildren(...hands.map((hand) => {
    const [x0, y0, x1, y1] = hand.box;
    const rect = previewRect(placed.x + x0 / placed.scaleX, placed.y + y0 / placed.scaleY, placed.x + x1 / placed.scaleX, placed.y + y1 / placed.scaleY);
    const box = Object.assign(document.createElement("div"), { className: hand.label === null ? "hand rejected" : "hand" });
    Object.assign(box.style, { left: `${rect.left}px`, top: `${rect.top}px`, width: `${rect.width}px`, height: `${rect.height}px` });
    const text = `${hand.label ?? "no gesture"} ${(100 * hand.score).toFixed(0)}%`;
    box.append(Object.assign(document.createElement("span"), { className: "hand-label", textContent: text }));
    return box;
  }));
}

// --- smoothing -----------------------------------------------------------------------------------

// Averages the probabilities of the last N answers, as the OpenCV demo does (service/webcam/scoring.py).
class Smoother {
  constructor() {
    this.history = [];
    this.rejectClasses = new Set();
  }

  // after an outage or a refusal: old answers must not stand in for frames the server never classified
  reset() {
    this.history = [];
  }

  update(answer, window, threshold) {
    const scores = new Map(answer.top_k.map((item) => [item.label, item.score]));
    // a model calibrated with another --reject-score than max_softmax thresholds its gesture score, not the top probability
    scores.gesture = answer.gesture_score ?? null;
    this.history.push(scores);
    this.history.splice(0, this.history.length - window);
    const mean = new Map();
    for (const frame of this.history) {
      for (const [label, score] of frame) mean.set(label, (mean.get(label) || 0) + score / this.history.length);
    }
    const top = [...mean].sort((a, b) => b[1] - a[1]).slice(0, SHOWN_CLASSES);
    // no hand found (a hand-crop model answers with an empty top_k) counts 0 for every class
    if (top.length === 0 || top[0][1] <= 0) return { label: null, score: 0, top };
    const [best, score] = top[0];
    const gestured = this.history.filter((frame) => frame.gesture !== null);
    // the frames' median gesture score (a frame without one counts 0), as the OpenCV demo's Smoother does:
    // a gesture shows only where most frames pass the threshold, not through one sure frame among refused ones
    const gesture = gestured.length ? median(this.history.map((frame) => frame.gesture || 0)) : score;
    return { label: gesture < threshold || this.rejectClasses.has(best) ? null : best, score, top };
  }
}

function median(values) {
  const sorted = [...values].sort((a, b) => a - b);
  const middle = sorted.length >> 1;
  return sorted.length % 2 ? sorted[middle] : (sorted[middle - 1] + sorted[middle]) / 2;
}

// --- what the page shows -------------------------------------------------------------------------

const answerTimes = [];
let answers = 0;

// The model's own "no gesture" rule, from /info: its reject classes, and its calibrated threshold
// unless the URL sets one (models from before calibration: 0.5, as in the OpenCV demo).
function followModel(info, smoother) {
  const rejection = info.rejection || {};
  smoother.rejectClasses = new Set(rejection.reject_classes || []);
  if (!params.has("threshold")) {
    $("threshold").value = String(rejection.calibration === "calibrated" ? rejection.threshold : UNCALIBRATED_THRESHOLD);
  }
}

function showInfo(info) {
  const test = info.metrics?.test;
  const accuracy = test?.top1 != null ? `test accuracy ${(100 * test.top1).toFixed(1)}% on ${test.n} images` : "no test accuracy recorded";
  const hands = info.hands ? " · finds the hands first, one answer per hand" : "";
  const elsewhere = SERVER ? ` · served by ${SERVER_NAME}` : "";
  $("info").textContent = `${info.backbone} · ${info.classes.length} classes: ${info.classes.join(", ")} · ${accuracy}${hands} · ${info.model}${elsewhere}`;
}

// What the OpenCV demo says once (gesture_core.preprocess.frame_shape_note), shown while it holds:
// /info's frame_aspect is the training frames' width/height, for whole-frame models only.
function showFrameShape(info, width, height) {
  const trained = info.frame_aspect;
  const aspect = width / height;
  const differs = Boolean(trained) && ["resize", "letterbox"].includes(info.crop) && width > 0 && height > 0
    && Math.max(aspect, trained) / Math.min(aspect, trained) >= ASPECT_MISMATCH;
  const orientation = (a) => (a < 1 / 1.1 ? "portrait" : a > 1.1 ? "landscape" : "square");
  $("frame-shape").hidden = !differs;
  if (differs) {
    $("frame-shape").textContent = `These frames are ${width}x${height} (${orientation(aspect)}), and this model was trained on ` +
      `whole frames of about ${trained.toFixed(2)}:1 (${orientation(trained)}): it may read hands here worse. Turn the camera to match.`;
  }
}

function showPrediction(prediction, latencyMs) {
  const label = $("label");
  label.textContent = prediction.label ?? "no gesture";
  label.className = prediction.label === null ? "label rejected" : "label";
  $("score").textContent = `${(100 * prediction.score).toFixed(0)}% over the last ${smoothWindow()} answers`;
  $("top3").replaceChildren(...prediction.top.map(([name, score]) => bar(name, score)));
  answerTimes.push(performance.now());
  answerTimes.splice(0, answerTimes.length - FPS_WINDOW);
  const seconds = (answerTimes.at(-1) - answerTimes[0]) / 1000;
  if (seconds > 0) $("fps").textContent = `${((answerTimes.length - 1) / seconds).toFixed(1)} FPS`;
  $("latency").textContent = `${latencyMs.toFixed(0)} ms`;
  $("answers").textContent = String(++answers);
}

function bar(name, score) {
  const row = document.createElement("li");
  const label = Object.assign(document.createElement("span"), { textContent: name });
  const track = Object.assign(document.createElement("span"), { className: "bar" });
  const fill = Object.assign(document.createElement("span"), { className: "fill" });
  fill.style.cssText = `display:block;width:${(100 * score).toFixed(1)}%`;
  track.append(fill);
  const value = Object.assign(document.createElement("span"), { className: "value", textContent: `${(100 * score).toFixed(0)}%` });
  row.append(label, track, value);
  return row;
}

function showProblem(err) {
  const status = $("status");
  status.hidden = false;
  if (err instanceof Outage) {
    status.textContent = `Server outage: ${err.message}. Retrying every ${RETRY_MS / 1000} s; the page recovers by itself.`;
    const label = $("label");
    label.textContent = "no answer";
    label.className = "label waiting";
  } else if (err instanceof Refusal) {
    status.textContent = `The server refused the frame: ${err.message}`;
  } else {
    status.textContent = `Problem: ${err.message}`;
  }
  answerTimes.length = 0;
}

function clearProblem() {
  $("status").hidden = true;
  $("status").textContent = "";
}

function smoothWindow() {
  return Math.max(1, Math.round(Number($("smooth").value)) || 1);
}

// --- the loop ------------------------------------------------------------------------------------

// One request at a time, each with the newest frame: frames that arrive meanwhile are never queued,
// so the page keeps the pace of the slower of camera and server, and never falls behind the camera.
async function recognise() {
  const smoother = new Smoother();
  let info = null;
  let sentFrame = -1;
  for (;;) {
    if (!cameraReady()) {
      await sleep(100);
      continue;
    }
    try {
      if (info === null) {
        info = await post("/info"); // again after an outage: the restarted server may serve another model
        showInfo(info);
        followModel(info, smoother);
        modelResize = info.resize_size;
        modelHands = Boolean(info.hands);
      }
      await frameAfter(sentFrame);
      sentFrame = cameraFrames;
      const { jpeg, placed } = await frameJpeg();
      showFrameShape(info, placed.width, placed.height);
      const started = performance.now();
      const answer = await predict(jpeg);
      const latencyMs = performance.now() - started;
      showPrediction(smoother.update(answer, smoothWindow(), Number($("threshold").value)), latencyMs);
      drawHands(answer.hands, placed);
      clearProblem();
    } catch (err) {
      if (err instanceof Outage) info = null;
      drawHands(null); // boxes of an old answer must not stay on a live picture
      smoother.reset(); // old answers must not stand in for frames the server never classified
      showProblem(err);
      await sleep(RETRY_MS);
    }
  }
}

async function main() {
  $("smooth").value = params.get("smooth") || "5";
  $("threshold").value = params.get("threshold") || "0.5";
  $("use-roi").checked = params.has("roi");
  $("use-roi").addEventListener("change", drawRoi);
  $("preview").addEventListener("loadedmetadata", drawRoi);
  window.addEventListener("resize", drawRoi);
  countFrames($("preview"));
  $("camera").addEventListener("change", (event) => startCamera(event.target.value).catch(showProblem));
  const problem = urlProblem();
  if (problem) {
    $("info").textContent = "not started";
    showProblem(new Error(problem));
    return;
  }
  await agreedToServer();
  recognise();
  try {
    await startCamera(null);
  } catch (err) {
    showProblem(err);
  }
}

main();
