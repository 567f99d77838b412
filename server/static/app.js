// mmagent web client: wires the connection, microphone, camera, chat, "Why" panel and kiosk mode.
// Protocol: docs/protocol.md (v1). No build step: plain ES modules served from server/static/.

import { Connection } from "./connection.js";
import { Microphone, DEFAULT_CHUNK_MS } from "./audio.js";
import { Camera, DEFAULT_FPS, DEFAULT_WIDTH } from "./camera.js";
import { ChatLog } from "./chat.js";
import { WhyPanel, readVision } from "./why.js";
import { Presence, Speaker, KioskScreen, enterFullscreen } from "./kiosk.js";

const $ = (id) => document.getElementById(id);
const params = new URLSearchParams(location.search);

function numParam(name, fallback, min, max) {
  const v = Number(params.get(name));
  return Number.isFinite(v) && params.has(name) ? Math.min(max, Math.max(min, v)) : fallback;
}

const config = {
  kiosk: params.get("kiosk") === "1",
  fps: numParam("fps", DEFAULT_FPS, 0.2, 5),
  width: numParam("width", DEFAULT_WIDTH, 160, 1280),
  chunkMs: numParam("chunk_ms", DEFAULT_CHUNK_MS, 20, 40),
  absentMs: numParam("absent_ms", 4000, 500, 60000),
  greeting: params.get("greeting") || "Hi there! How can I help you today?",
};

// ---- state ------------------------------------------------------------------------------

const state = {
  session: null, // the server's session object (session.created / .updated)
  rate: 24000,
  mode: "handsfree", // or "ptt"
  turns: [],
  byItem: new Map(),
  byResponse: new Map(),
  active: null, // turn whose reply is streaming
  pttTurn: null,
  pttHeld: false,
  queuedCreate: false, // response.create waiting for the active reply to end
  hadSession: false,
  quietReconnect: false,
  seen: {},
  preroll: [], // kiosk: audio heard while nobody was in view (base64 chunks)
  faces: null, // the server's latest face count
  autoStarted: false,
};

const conn = new Connection({ onEvent: handleEvent, onState: renderConnState });
const chat = new ChatLog($("log"), { onStop: stopReply, onWhy: (t) => showWhy(t, true) });
const why = new WhyPanel();
const speaker = new Speaker();
const mic = new Microphone({ onChunk: sendAudio, onLevel: renderLevel, chunkMs: config.chunkMs });
const camera = new Camera($("cam-video"), sendFrame, { fps: config.fps, width: config.width });
const kioskScreen = new KioskScreen({
  greetingText: config.greeting,
  onArrive: (text) => speaker.say(text),
});
const presence = new Presence({
  absentMs: config.absentMs,
  onChange: (present) => (present ? kioskScreen.arrive() : personLeft()),
});

// ---- errors -----------------------------------------------------------------------------

/** Show a plain error. `key` de-duplicates; `timeoutMs` removes transient ones by themselves. */
function showError(key, title, detail = "", { warn = false, timeoutMs = 0, action = null } = {}) {
  clearError(key);
  const box = document.createElement("div");
  box.className = "error" + (warn ? " warn" : "");
  box.dataset.key = key;
  const text = document.createElement("div");
  const strong = document.createElement("strong");
  strong.textContent = title;
  text.append(strong);
  if (detail) {
    const p = document.createElement("p");
    p.textContent = detail;
    text.append(p);
  }
  box.append(text);
  if (action) {
    const b = document.createElement("button");
    b.type = "button";
    b.className = "btn small";
    b.textContent = action.label;
    b.addEventListener("click", () => {
      clearError(key);
      action.run();
    });
    box.append(b);
  }
  const close = document.createElement("button");
  close.type = "button";
  close.className = "btn small ghost";
  close.textContent = "Dismiss";
  close.setAttribute("aria-label", `Dismiss: ${title}`);
  close.addEventListener("click", () => clearError(key));
  box.append(close);
  $("errors").append(box);
  if (timeoutMs) setTimeout(() => box.remove(), timeoutMs);
}

function clearError(key) {
  document.querySelectorAll(`#errors .error[data-key="${key}"]`).forEach((n) => n.remove());
}

function deviceError(what, err) {
  const name = (err && err.name) || "";
  const device = what === "mic" ? "microphone" : "camera";
  const Device = device[0].toUpperCase() + device.slice(1);
  if (!window.isSecureContext || !navigator.mediaDevices) {
    return [`${Device} unavailable on this address`, `Browsers only allow the ${device} on https:// pages or on localhost. Open the page through https or on this machine as http://localhost.`];
  }
  if (name === "NotAllowedError" || name === "SecurityError") {
    return [`${Device} access was denied`, `Allow the ${device} for this site in the browser (the icon at the left of the address bar), then press “Turn ${device} on” again.`];
  }
  if (name === "NotFoundError" || name === "OverconstrainedError") {
    return [`No ${device} found`, `Connect a ${device} and try again.`];
  }
  if (name === "NotReadableError" || name === "AbortError") {
    return [`The ${device} is busy`, `Another application may be using it. Close it and try again.`];
  }
  return [`The ${device} could not start`, (err && err.message) || String(err)];
}

// ---- connection -------------------------------------------------------------------------

let countdown = null;

function renderConnState(s, info) {
  const box = $("conn");
  const text = $("conn-text");
  const retry = $("conn-retry");
  box.dataset.state = s;
  retry.hidden = s !== "reconnecting";
  if (countdown) clearInterval(countdown);
  countdown = null;
  // The kiosk's attract screen covers the page: it repeats any connection problem itself.
  $("attract-status").textContent = s === "open" || s === "connecting" ? "" : "The assistant is offline at the moment — reconnecting…";
  if (s === "connecting") text.textContent = "Connecting…";
  else if (s === "open") {
    // The socket is up; "Connected" once the server has created the session.
    text.textContent = "Starting session…";
    $("token-form").hidden = true;
  } else if (s === "reconnecting") {
    if (info.now) {
      text.textContent = "Reconnecting…";
      return;
    }
    const prefix = info.unreachable
      ? "Server unreachable"
      : info.handshakeRefused
        ? "Connection refused"
        : "Connection lost";
    const tick = () => {
      const left = Math.max(0, Math.ceil((conn.retryAt - Date.now()) / 1000));
      text.textContent = `${prefix} — reconnecting in ${left} s`;
    };
    tick();
    countdown = setInterval(tick, 500);
    markStreamingLost();
    if (info.unreachable) {
      showError("conn", "Can't reach the server", `Nothing answers at ${location.host}. Is “mmagent serve” running? The page keeps trying and resumes your conversation when it is back.`, { warn: true });
    } else if (info.handshakeRefused) {
      showError("conn", "The server refused the connection", "The server is up but would not open a session for this page. Its allowed_origins setting may not include this address.", { warn: true });
    } else if (info.code === 1011) {
      showError("conn", "The server hit a problem with this session", "It has been logged on the server. Reconnecting…", { warn: true });
    } else if (info.slow) {
      showError("conn", "The server is full", "Too many sessions are open right now. The page will try again shortly.", { warn: true });
    } else {
      showError("conn", "Connection lost", "Reconnecting… your conversation will resume.", { warn: true });
    }
  } else if (s === "refused") {
    markStreamingLost();
    const code = info.code;
    if (code === "unauthorized") {
      text.textContent = "Token refused";
      showError("conn", "Token refused", conn.token
        ? "The server did not accept this access token. Check it and connect again."
        : "This server needs an access token. Enter it below.");
      showTokenForm(conn.token ? "Token refused — try another" : "Connect");
    } else if (code === "session_replaced") {
      text.textContent = "Opened elsewhere";
      showError("conn", "This conversation was opened in another tab or window", "Only one window can hold a conversation at a time.", {
        action: { label: "Use it here", run: () => conn.connect() },
      });
    } else if (code === "unsupported_version") {
      text.textContent = "Incompatible server";
      showError("conn", "This page and the server speak different protocol versions", info.message || "Reload the page to get the server's version of it.");
    } else {
      text.textContent = "Disconnected";
      showError("conn", "Disconnected", info.message || String(code || ""));
    }
  } else if (s === "closed") text.textContent = "Disconnected";
  else text.textContent = "Not connected";
}

function showTokenForm(title) {
  $("token-title").textContent = title;
  $("token-form").hidden = false;
  const input = $("token-input");
  input.value = "";
  input.focus();
}

function markStreamingLost() {
  for (const t of state.turns) {
    if (t.replyEl && t.replyEl.classList.contains("streaming")) chat.finishReply(t, "incomplete", "Connection lost before the reply finished.");
    if (t.userEl && t.userEl.classList.contains("pending")) chat.setTranscript(t, "(connection lost before this was heard)");
  }
  $("listening").hidden = true;
  state.active = null;
  state.queuedCreate = false;
  speaker.cancel();
  renderStop();
}

function sessionUpdate() {
  conn.send({
    type: "session.update",
    session: {
      type: "realtime",
      output_modalities: ["text"],
      audio: {
        input: {
          turn_detection: state.mode === "handsfree"
            ? { type: "server_vad", create_response: true, interrupt_response: true }
            : null,
        },
      },
      vision: { presence_updates: true },
    },
  });
}

function applySession(session) {
  state.session = session;
  const pack = session && session.pack && session.pack.name;
  $("pack-name").hidden = !pack;
  $("pack-name").textContent = pack ? String(pack).replace(/_/g, " ") : "";
  const fmt = session && session.audio && session.audio.input && session.audio.input.format;
  const rate = (fmt && fmt.rate) || 24000;
  if (rate !== state.rate) {
    state.rate = rate;
    if (mic.running) startMic(); // restart the worklet at the new rate
  }
  try {
    sessionStorage.setItem("mmagent.session", session.id);
  } catch {
    /* storage may be off */
  }
}

// ---- turns ------------------------------------------------------------------------------

function newTurn(kind, itemId = null) {
  const turn = { n: state.turns.length + 1, kind, itemId, responseId: null, fused: null, perception: null, transcript: null, transcriptConfidence: null, actions: [], replyEl: null, userEl: null, replyText: "" };
  state.turns.push(turn);
  if (itemId) state.byItem.set(itemId, turn);
  return turn;
}

/** The newest turn that has no response yet (a response is created for it next). */
function waitingTurn() {
  const t = state.turns[state.turns.length - 1];
  return t && !t.responseId ? t : null;
}

function turnFor(ev) {
  if (ev.response_id && state.byResponse.has(ev.response_id)) return state.byResponse.get(ev.response_id);
  if (ev.item_id && state.byItem.has(ev.item_id)) return state.byItem.get(ev.item_id);
  return state.active;
}

function speechTurn(itemId) {
  if (itemId && state.byItem.has(itemId)) return state.byItem.get(itemId);
  if (state.pttTurn && !state.pttTurn.itemId) {
    const t = state.pttTurn;
    if (itemId) {
      t.itemId = itemId;
      state.byItem.set(itemId, t);
      state.pttTurn = null;
    }
    return t;
  }
  return newTurn("speech", itemId);
}

function showWhy(turn, focus = false) {
  why.show(turn);
  chat.markSelected(turn);
  if (focus) $("why-title").scrollIntoView({ block: "nearest" });
  if (focus) {
    $("why-title").setAttribute("tabindex", "-1");
    $("why-title").focus();
  }
}

function refreshWhy(turn) {
  if (why.shown === turn || !why.shown || (why.shown.n < turn.n && turn.fused)) showWhy(turn);
}

function renderStop() {
  $("stop").hidden = !state.active;
}

// ---- server events ----------------------------------------------------------------------

function handleEvent(ev) {
  state.seen[ev.type] = (state.seen[ev.type] || 0) + 1; // event counts, for tests and debugging
  switch (ev.type) {
    case "session.created": {
      const resumed = !!(ev.session && ev.session.resumed);
      if (state.hadSession && !state.quietReconnect) chat.system(resumed ? "Reconnected — conversation resumed." : "Reconnected — a new conversation started.");
      else if (!state.hadSession && resumed) chat.system("Continuing your earlier conversation: the agent remembers it, this page shows only what follows.");
      state.hadSession = true;
      state.quietReconnect = false;
      applySession(ev.session);
      sessionUpdate();
      $("conn").dataset.state = "ready";
      $("conn-text").textContent = "Connected";
      clearError("conn");
      if (config.kiosk && !state.autoStarted) {
        state.autoStarted = true;
        startCamera();
        startMic();
      }
      break;
    }
    case "session.updated":
      applySession(ev.session);
      break;
    case "input_audio_buffer.speech_started": {
      $("listening").hidden = false;
      if (state.active) speaker.cancel(); // barge-in: the server cancels the reply itself
      const t = speechTurn(ev.item_id);
      if (!t.userEl) chat.addUser(t, { text: "Listening…", kind: "speech", pending: true });
      break;
    }
    case "input_audio_buffer.speech_stopped": {
      $("listening").hidden = true;
      const t = speechTurn(ev.item_id);
      if (t.userEl && t.userEl.classList.contains("pending")) t.userEl.querySelector(".bubble").textContent = "Transcribing…";
      break;
    }
    case "input_audio_buffer.committed": {
      if (state.mode === "ptt") conn.send({ type: "response.create" }); // Realtime GA: a commit alone starts no response
      const t = speechTurn(ev.item_id);
      if (!t.userEl) chat.addUser(t, { text: "Transcribing…", kind: "speech", pending: true });
      break;
    }
    case "conversation.item.input_audio_transcription.completed": {
      const t = speechTurn(ev.item_id);
      t.transcript = ev.transcript || "";
      if (typeof ev.confidence === "number") t.transcriptConfidence = ev.confidence;
      chat.setTranscript(t, t.transcript);
      refreshWhy(t);
      break;
    }
    case "response.created": {
      const id = ev.response && ev.response.id;
      const t = waitingTurn() || newTurn("camera");
      t.responseId = id;
      if (id) state.byResponse.set(id, t);
      state.active = t;
      chat.addReply(t);
      renderStop();
      break;
    }
    case "perception.updated":
      onPerception(ev);
      break;
    case "turn.fused": {
      const t = turnFor(ev);
      if (!t) break;
      t.fused = ev;
      if (t.transcriptConfidence == null && typeof ev.transcript_confidence === "number") t.transcriptConfidence = ev.transcript_confidence;
      showWhy(t);
      break;
    }
    case "response.output_text.delta": {
      const t = turnFor(ev);
      if (!t) break;
      chat.appendDelta(t, ev.delta || "");
      speaker.feed(ev.delta || "");
      break;
    }
    case "response.output_text.done": {
      const t = turnFor(ev);
      if (t && typeof ev.text === "string" && ev.text) chat.setReplyText(t, ev.text);
      break;
    }
    case "response.action": {
      const t = turnFor(ev);
      if (!t) break;
      t.actions.push({ name: ev.name, arguments: ev.arguments });
      chat.addAction(t, ev.name.replace(/_/g, " "));
      refreshWhy(t);
      break;
    }
    case "response.done":
      onResponseDone(ev.response || {});
      break;
    case "error":
      onError(ev.error || {});
      break;
    default:
      break; // conversation.item.added, input_audio_buffer.cleared, ...: nothing to show
  }
}

function onPerception(ev) {
  const vision = readVision(ev);
  if (vision.faces !== null) state.faces = vision.faces;
  if (vision.faces !== null || vision.labels.length) renderCameraBadge(vision);
  if (config.kiosk && camera.running) presence.observe(vision.faces);
  if (ev.source === "turn") {
    const t = turnFor(ev);
    if (!t) return;
    t.perception = ev;
    if (ev.speech && typeof ev.speech.confidence === "number" && t.transcriptConfidence == null) t.transcriptConfidence = ev.speech.confidence;
    if (ev.timings_ms) t.timings = ev.timings_ms;
    refreshWhy(t);
  }
}

function onResponseDone(r) {
  const t = (r.id && state.byResponse.get(r.id)) || state.active;
  if (!t) return;
  const status = r.status || "completed";
  const details = r.status_details || {};
  if (r.turn && Array.isArray(r.turn.actions) && !t.actions.length) t.actions = r.turn.actions.slice();
  if (r.turn) t.summary = { intent: r.turn.intent, emotion: r.turn.emotion };
  if (r.timings_ms) t.timings = { ...(t.timings || {}), ...r.timings_ms };
  if (!t.replyText && Array.isArray(r.output)) {
    const text = r.output.flatMap((o) => o.content || []).filter((c) => c.type === "output_text").map((c) => c.text).join("");
    if (text) chat.setReplyText(t, text);
  }
  let reason = "";
  if (status === "cancelled") reason = details.reason === "turn_detected" ? "barge-in" : "stopped";
  if (status === "failed") reason = (details.error && details.error.message) || "The agent could not answer.";
  chat.finishReply(t, status, reason);
  if (status === "completed") {
    speaker.end();
    $("announcer").textContent = `Agent: ${t.replyText}`;
  } else {
    speaker.cancel();
  }
  if (state.active === t) state.active = null;
  renderStop();
  if (why.shown === t) why.show(t);
  if (state.queuedCreate) {
    state.queuedCreate = false;
    conn.send({ type: "response.create" });
  }
}

const LIMIT_CODES = new Set(["message_too_large", "frame_rate_exceeded", "audio_rate_exceeded", "audio_buffer_full", "too_many_errors", "too_many_sessions"]);

function onError(e) {
  const code = e.code || "error";
  const msg = e.message || "";
  switch (code) {
    case "unauthorized":
    case "unsupported_version":
    case "session_replaced":
      return; // the close that follows is rendered by the connection state
    case "session_not_found":
      chat.system("The earlier conversation had expired — a new one started.");
      return;
    case "response_cancel_not_active":
      return; // the reply ended on its own just before the stop arrived
    case "input_audio_buffer_commit_empty":
      dropPttTurn();
      showError("ptt", "Nothing was heard", "Hold the talk button while you speak, and release it when you are done.", { warn: true, timeoutMs: 6000 });
      return;
    case "conversation_already_has_active_response":
      showError("busy", "Still answering", "Wait for the current reply to finish, or stop it first.", { warn: true, timeoutMs: 6000 });
      return;
    case "idle_timeout":
      return; // reconnects quietly
    default:
      break;
  }
  if (LIMIT_CODES.has(code) || e.type === "rate_limit_error") {
    showError(`limit-${code}`, "Limit exceeded", msg || code, { warn: true, timeoutMs: 10000 });
  } else if (["responder_failed", "model_load_failed", "internal_error", "checkpoint_mismatch"].includes(code)) {
    showError(`server-${code}`, "The agent could not answer", msg || code, { timeoutMs: 15000 });
  } else {
    showError(`err-${code}`, "The server reported a problem", `${msg} (${code})`, { timeoutMs: 12000 });
  }
}

// ---- sending ----------------------------------------------------------------------------

let itemSeq = 0;
const PREROLL_CHUNKS = Math.round(1000 / config.chunkMs);

function sendText(text) {
  if (!conn.isOpen) {
    showError("send", "Not connected", "The message was not sent. Wait until the page shows “Connected” and try again.", { warn: true, timeoutMs: 8000 });
    return false;
  }
  if (config.kiosk) presence.touch();
  const turn = newTurn("typed");
  const itemId = `item_web_${Date.now().toString(36)}${(itemSeq++).toString(36)}`;
  turn.itemId = itemId;
  state.byItem.set(itemId, turn);
  chat.addUser(turn, { text, kind: "typed" });
  chat.scrollToEnd();
  conn.send({ type: "conversation.item.create", item: { id: itemId, type: "message", role: "user", content: [{ type: "input_text", text }] } });
  if (state.active) {
    // A new message while a reply streams replaces it.
    stopReply(state.active);
    state.queuedCreate = true;
  } else {
    conn.send({ type: "response.create" });
  }
  return true;
}

function stopReply(turn) {
  speaker.cancel();
  if (!turn || !turn.responseId) return;
  conn.send({ type: "response.cancel", response_id: turn.responseId });
}

function sendAudio(b64) {
  if (!conn.isOpen) return;
  if (state.mode === "ptt" && !state.pttHeld) return;
  if (config.kiosk) {
    // A kiosk listens only while someone stands at it (not to the shop behind), and not to itself.
    if (camera.running && !presence.present) {
      // Keep the last second: a visitor may start talking just before the camera reports them.
      state.preroll.push(b64);
      if (state.preroll.length > PREROLL_CHUNKS) state.preroll.shift();
      return;
    }
    if (speaker.pending > 0 && params.get("echo_guard") !== "0") return;
    for (const chunk of state.preroll.splice(0)) conn.send({ type: "input_audio_buffer.append", audio: chunk });
  }
  conn.send({ type: "input_audio_buffer.append", audio: b64 });
}

function sendFrame(blob) {
  if (!conn.isOpen || conn.buffered > 512 * 1024) return; // drop rather than queue on a slow link
  blob.arrayBuffer().then((buf) => {
    conn.sendBinary({ type: "input_image_buffer.append", timestamp_ms: Math.round(performance.now()) }, buf);
  });
}

// ---- microphone & camera ----------------------------------------------------------------

function renderLevel(rms) {
  const db = rms > 0 ? 20 * Math.log10(rms) : -100;
  const level = Math.max(0, Math.min(100, Math.round(((db + 60) / 60) * 100)));
  $("meter-fill").style.width = `${level}%`;
  $("meter-fill").parentElement.setAttribute("aria-valuenow", String(level));
}

function renderMic() {
  const on = mic.running;
  const b = $("mic-toggle");
  b.setAttribute("aria-pressed", String(on));
  b.textContent = on ? "Turn microphone off" : "Turn microphone on";
  const ptt = state.mode === "ptt";
  $("ptt").hidden = !ptt;
  $("ptt-help").hidden = !ptt;
  $("mic-status").textContent = !on
    ? "Off."
    : ptt
      ? `On — hold “Hold to talk” while speaking. Sending ${state.rate / 1000} kHz audio while held.`
      : `On — just talk; the agent answers when you pause. Sending ${state.rate / 1000} kHz audio.`;
}

async function startMic() {
  clearError("mic");
  try {
    if (!navigator.mediaDevices) throw new Error("no mediaDevices");
    await mic.start(state.rate, { sending: state.mode === "handsfree" || state.pttHeld });
  } catch (err) {
    const [title, detail] = deviceError("mic", err);
    showError("mic", title, detail);
  }
  renderMic();
}

async function stopMic() {
  await mic.stop();
  renderMic();
}

function renderCamera() {
  const on = camera.running;
  const b = $("cam-toggle");
  b.setAttribute("aria-pressed", String(on));
  b.textContent = on ? "Turn camera off" : "Turn camera on";
  $("preview").classList.toggle("on", on);
  $("cam-badge").hidden = !on;
  $("cam-caption").textContent = on
    ? `Sending ${config.fps} frame${config.fps === 1 ? "" : "s"} per second, ${config.width} px wide.`
    : `Frames are sent to the agent at ${config.fps} per second, ${config.width} px wide, only while the camera is on.`;
}

async function startCamera() {
  clearError("cam");
  try {
    if (!navigator.mediaDevices) throw new Error("no mediaDevices");
    await camera.start();
  } catch (err) {
    const [title, detail] = deviceError("cam", err);
    showError("cam", title, detail);
    if (config.kiosk) $("attract").hidden = true; // without a camera, presence cannot be known
  }
  renderCamera();
}

function stopCamera() {
  camera.stop();
  renderCamera();
}

function renderCameraBadge({ labels, faces }) {
  const badge = $("cam-badge");
  badge.textContent = "";
  if (!camera.running) return;
  if (faces !== null) {
    const s = document.createElement("span");
    s.textContent = faces === 0 ? "no one in view" : faces === 1 ? "1 person" : `${faces} people`;
    badge.append(s);
  }
  for (const l of labels.slice(0, 2)) {
    const s = document.createElement("span");
    s.textContent = l.label;
    badge.append(s);
  }
}

async function pttDown() {
  if (state.pttHeld) return;
  state.pttHeld = true;
  $("ptt").classList.add("active");
  $("ptt").textContent = "Listening… release to send";
  if (state.active) stopReply(state.active); // barge-in
  speaker.cancel();
  if (!mic.running) await startMic();
  if (!state.pttHeld) return;
  state.pttTurn = newTurn("speech");
  chat.addUser(state.pttTurn, { text: "Listening…", kind: "speech", pending: true });
  await mic.setSending(true);
}

async function pttUp() {
  if (!state.pttHeld) return;
  $("ptt").classList.remove("active");
  $("ptt").textContent = "Hold to talk";
  await mic.setSending(false); // flushes the last partial chunk first
  state.pttHeld = false;
  const t = state.pttTurn;
  if (t && t.userEl) t.userEl.querySelector(".bubble").textContent = "Transcribing…";
  conn.send({ type: "input_audio_buffer.commit" });
}

/** A push-to-talk press that carried no audio: its placeholder line goes away. */
function dropPttTurn() {
  const t = state.pttTurn;
  state.pttTurn = null;
  if (!t || t.itemId) return;
  if (t.userEl) t.userEl.remove();
  state.turns = state.turns.filter((x) => x !== t);
}

function setMode(mode) {
  if (mode === state.mode) return;
  state.mode = mode;
  if (mode === "ptt") conn.send({ type: "input_audio_buffer.clear" });
  sessionUpdate();
  if (mic.running) mic.setSending(mode === "handsfree");
  renderMic();
}

// ---- kiosk ------------------------------------------------------------------------------

function personLeft() {
  kioskScreen.showAttract();
  speaker.cancel();
  if (state.active) stopReply(state.active);
  if (state.turns.length) freshConversation();
}

/** Kiosk: the next visitor gets a new conversation, not the last one's history. */
function freshConversation() {
  state.turns = [];
  state.byItem.clear();
  state.byResponse.clear();
  state.active = null;
  state.queuedCreate = false;
  chat.clear();
  why.clear();
  renderStop();
  try {
    sessionStorage.removeItem("mmagent.session");
  } catch {
    /* storage may be off */
  }
  conn.sessionId = null;
  state.quietReconnect = true;
  conn.attempt = 0;
  conn.connect();
}

// ---- wiring -----------------------------------------------------------------------------

function autoGrow(t) {
  t.style.height = "auto";
  t.style.height = `${Math.min(t.scrollHeight + 2, 144)}px`;
}

function wire() {
  const input = $("composer-input");
  $("composer").addEventListener("submit", (e) => {
    e.preventDefault();
    const text = input.value.trim();
    if (!text) return;
    if (sendText(text)) {
      input.value = "";
      autoGrow(input);
    }
  });
  input.addEventListener("keydown", (e) => {
    if (e.key === "Enter" && !e.shiftKey && !e.isComposing) {
      e.preventDefault();
      $("composer").requestSubmit();
    }
  });
  input.addEventListener("input", () => autoGrow(input));
  $("stop").addEventListener("click", () => stopReply(state.active));
  document.addEventListener("keydown", (e) => {
    if (e.key === "Escape" && state.active) {
      e.preventDefault();
      stopReply(state.active);
    }
  });

  $("cam-toggle").addEventListener("click", () => (camera.running ? stopCamera() : startCamera()));
  $("mic-toggle").addEventListener("click", () => (mic.running ? stopMic() : startMic()));
  document.querySelectorAll('input[name="mic-mode"]').forEach((r) => r.addEventListener("change", () => r.checked && setMode(r.value)));

  const ptt = $("ptt");
  ptt.addEventListener("pointerdown", (e) => {
    ptt.setPointerCapture(e.pointerId);
    pttDown();
  });
  ptt.addEventListener("pointerup", pttUp);
  ptt.addEventListener("pointercancel", pttUp);
  ptt.addEventListener("keydown", (e) => {
    if ((e.key === " " || e.key === "Enter") && !e.repeat) {
      e.preventDefault();
      pttDown();
    }
  });
  ptt.addEventListener("keyup", (e) => {
    if (e.key === " " || e.key === "Enter") {
      e.preventDefault();
      pttUp();
    }
  });
  ptt.addEventListener("blur", pttUp);

  const speak = $("speak-toggle");
  speak.checked = config.kiosk && speaker.available && params.get("speak") !== "0";
  if (params.get("speak") === "1") speak.checked = speaker.available;
  speaker.setEnabled(speak.checked);
  speak.disabled = !speaker.available;
  speak.addEventListener("change", () => speaker.setEnabled(speak.checked));

  $("conn-retry").addEventListener("click", () => conn.connect());
  $("token-form").addEventListener("submit", (e) => {
    e.preventDefault();
    const token = $("token-input").value.trim();
    try {
      sessionStorage.setItem("mmagent.token", token);
    } catch {
      /* storage may be off */
    }
    conn.attempt = 0;
    conn.connect(token);
  });

  if (config.kiosk) {
    document.documentElement.classList.add("kiosk");
    document.body.classList.add("kiosk");
    const fs = $("kiosk-fullscreen");
    fs.hidden = false;
    fs.addEventListener("click", enterFullscreen);
    const firstGesture = () => {
      enterFullscreen();
      window.removeEventListener("pointerdown", firstGesture);
    };
    window.addEventListener("pointerdown", firstGesture);
    $("attract").addEventListener("pointerdown", () => presence.touch());
    window.addEventListener("keydown", () => {
      if (!$("attract").hidden) presence.touch();
    });
    kioskScreen.showAttract();
  }
}

function start() {
  wire();
  renderMic();
  renderCamera();
  let token = params.get("token");
  if (token !== null) {
    try {
      sessionStorage.setItem("mmagent.token", token);
    } catch {
      /* storage may be off */
    }
    // Keep the token out of the address bar (and screenshots); reloads read it from sessionStorage.
    params.delete("token");
    const q = params.toString();
    history.replaceState(null, "", location.pathname + (q ? `?${q}` : "") + location.hash);
  } else {
    try {
      token = sessionStorage.getItem("mmagent.token") || "";
    } catch {
      token = "";
    }
  }
  try {
    conn.sessionId = sessionStorage.getItem("mmagent.session");
  } catch {
    conn.sessionId = null;
  }
  conn.connect(token || "");
}

start();

// For tests and debugging in the console.
window.mmagent = { state, conn, mic, camera, speaker, presence, config };
