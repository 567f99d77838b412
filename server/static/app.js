// mmagent web client: wires the connection, microphone, camera and speaker to the turn state
// (turns.js, a pure reducer) and renders it — as the developer page, or in kiosk mode (?kiosk=1)
// as the customer's screen with a staff view behind ?staff=1 or Ctrl+Shift+S.
// Protocol: docs/protocol.md (v1). No build step: plain ES modules served from server/static/.

import { Connection } from "./connection.js";
import { Microphone, DEFAULT_CHUNK_MS } from "./audio.js";
import { Camera, DEFAULT_FPS, DEFAULT_WIDTH } from "./camera.js";
import { ChatLog } from "./chat.js";
import { WhyPanel, readVision, objectLabels } from "./why.js";
import { Presence, IdleTimer, Speaker, enterFullscreen } from "./kiosk.js";
import { KioskView } from "./kiosk-view.js";
import { ServerAudio } from "./player.js";
import { showError, clearError, deviceError, showServerError } from "./notices.js";
import * as T from "./turns.js";

const $ = (id) => document.getElementById(id);
const params = new URLSearchParams(location.search);

function numParam(name, fallback, min, max) {
  const v = Number(params.get(name));
  return Number.isFinite(v) && params.has(name) ? Math.min(max, Math.max(min, v)) : fallback;
}

const config = {
  kiosk: params.get("kiosk") === "1",
  staff: params.get("staff") === "1",
  fps: numParam("fps", DEFAULT_FPS, 0.2, 5),
  width: numParam("width", DEFAULT_WIDTH, 160, 1280),
  chunkMs: numParam("chunk_ms", DEFAULT_CHUNK_MS, 20, 40),
  absentMs: numParam("absent_ms", 4000, 500, 600000),
  idleMs: numParam("idle_s", 60, 5, 3600) * 1000,
  echoGuard: params.get("echo_guard") !== "0",
};

// ---- state ------------------------------------------------------------------------------

let turns = T.initialState();   // the turn state: only T.reduce changes it
const ui = {                     // everything else the page keeps (connection, devices, kiosk)
  session: null,                 // the server's session object (session.created / .updated)
  rate: 24000,
  seen: {},                      // server events by type, for tests and debugging
  faces: null,                   // the server's latest face count
  hadSession: false,
  quietReconnect: false,
  sessionReady: false,
  autoStarted: false,
  preroll: [],                   // kiosk: audio heard while nobody was in view (base64 chunks)
  greetPending: false,           // kiosk: greet once the session is ready
  sessionFrames: 0,              // camera frames the server has reported in this session
  offline: false,                // kiosk: the connection has been down for a moment
  micFailed: false,
  talkHintUntil: 0,              // kiosk: "Go ahead — I'm listening" after a tap on Talk
};

const conn = new Connection({ onEvent: handleEvent, onState: renderConnState });
const chat = new ChatLog($("log"), { onStop: () => stopReply(), onWhy: (n) => openWhy(n) });
const why = new WhyPanel();
const speaker = new Speaker({
  onSpeaking: (on) => dispatch(on ? { type: "playback.started", source: "speech_synthesis" } : { type: "playback.ended" }),
});
// The server's voice (response.output_audio.delta through an AudioWorklet); speechSynthesis above
// stays for lines the page writes itself and for a server without a voice.
const voice = new ServerAudio({
  onSpeaking: (on) => dispatch(on ? { type: "playback.started", source: "server_audio" } : { type: "playback.ended" }),
});
const mic = new Microphone({ onChunk: sendAudio, onLevel: renderLevel, chunkMs: config.chunkMs });
const camera = new Camera($("cam-video"), sendFrame, { fps: config.fps, width: config.width });
let kiosk = null;     // KioskView in kiosk mode
let presence = null;  // Presence in kiosk mode
let idle = null;      // IdleTimer in kiosk mode

/** Every change of the turn state goes through here: reduce, send what it asks, render. */
function dispatch(ev) {
  turns = T.reduce(turns, ev);
  for (const out of turns.outbox) conn.send(out);
  render();
}

function render() {
  if (kiosk) {
    kiosk.render(turns, {
      phase: T.phase(turns),
      offline: ui.offline,
      canStop: turns.active !== null || speaker.pending > 0 || voice.playing,
      idleText: ui.micFailed ? "Touch “Type” to ask me" : Date.now() < ui.talkHintUntil ? "Go ahead — I'm listening" : null,
    });
    renderStaffStatus();
  } else {
    chat.render(turns);
  }
  const shown = T.turnByN(turns, turns.why);
  if (!shown) {
    if (why.shown) why.clear();
  } else if (shown !== why.shown) {
    why.show(shown);
  }
  $("stop").hidden = turns.active === null;
  $("listening").hidden = !turns.hearing;
}

// ---- connection -------------------------------------------------------------------------

let countdown = null;
let offlineTimer = null;

function renderConnState(s, info) {
  const box = $("conn");
  const text = $("conn-text");
  const retry = $("conn-retry");
  box.dataset.state = s;
  retry.hidden = s !== "reconnecting";
  if (countdown) clearInterval(countdown);
  countdown = null;
  if (s !== "open") ui.sessionReady = false;
  // The kiosk's attract screen covers the page: it repeats any connection problem itself.
  $("attract-status").textContent = s === "open" || s === "connecting" ? "" : "The assistant is offline at the moment — reconnecting…";
  if (kiosk && s !== "open" && !offlineTimer && !ui.offline) {
    // A moment of reconnecting is not worth a customer's attention; a longer one is.
    offlineTimer = setTimeout(() => {
      offlineTimer = null;
      if (!ui.sessionReady) {
        ui.offline = true;
        render();
      }
    }, 2500);
  }
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
    connectionLost();
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
    connectionLost();
    if (kiosk) setStaff(true); // a refused kiosk is a setup problem: show it to whoever set it up
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
  render();
}

function showTokenForm(title) {
  $("token-title").textContent = title;
  $("token-form").hidden = false;
  const input = $("token-input");
  input.value = "";
  input.focus();
}

/** Silence the server's voice; if a reply was playing, tell the server how much of it was heard
 * (conversation.item.truncate): the stored turn keeps only that. */
function cutVoice() {
  const heard = voice.stop();
  if (heard.item && conn.isOpen) {
    conn.send({ type: "conversation.item.truncate", item_id: heard.item, content_index: 0, audio_end_ms: heard.ms });
  }
}

function connectionLost() {
  speaker.cancel();
  voice.stop();
  dispatch({ type: "ui.connection_lost" });
}

function applySession(session) {
  ui.session = session;
  const pack = session && session.pack && session.pack.name;
  $("pack-name").hidden = !pack;
  $("pack-name").textContent = pack ? String(pack).replace(/_/g, " ") : "";
  const fmt = session && session.audio && session.audio.input && session.audio.input.format;
  const rate = (fmt && fmt.rate) || 24000;
  const out = session && session.audio && session.audio.output;
  const spoken = session && Array.isArray(session.output_modalities) && session.output_modalities.includes("audio");
  if (spoken && voice.enabled) {
    const outRate = (out && out.format && (out.format.rate || out.format.sample_rate)) || 24000;
    voice.open(outRate).catch((e) => showError("voice", "Cannot play the assistant's voice", String(e), { warn: true, timeoutMs: 8000 }));
  }
  if (rate !== ui.rate) {
    ui.rate = rate;
    if (mic.running) startMic(); // restart the worklet at the new rate
  }
  try {
    sessionStorage.setItem("mmagent.session", session.id);
  } catch {
    /* storage may be off */
  }
}

// ---- server events ----------------------------------------------------------------------

/** Server events that show the kiosk is in use (the idle timer starts again). */
const ACTIVITY = new Set(["input_audio_buffer.speech_started", "conversation.item.input_audio_transcription.completed",
  "response.created", "response.output_text.delta", "response.done"]);

function handleEvent(ev) {
  ui.seen[ev.type] = (ui.seen[ev.type] || 0) + 1;
  // Barge-in: the server cancels the reply itself; the voice stops here at once, and the server
  // hears how much of it was played.
  if (ev.type === "input_audio_buffer.speech_started") {
    speaker.cancel();
    if (voice.playing) cutVoice();
  }
  if (ev.type === "response.output_audio.delta") {
    voice.push(ev);
    return;   // no state change, and far too many to count
  }
  dispatch(ev);
  if (idle && ACTIVITY.has(ev.type)) idle.poke();
  switch (ev.type) {
    case "session.created": {
      const resumed = !!(ev.session && ev.session.resumed);
      if (ui.hadSession && !ui.quietReconnect) chat.system(resumed ? "Reconnected — conversation resumed." : "Reconnected — a new conversation started.");
      else if (!ui.hadSession && resumed) chat.system("Continuing your earlier conversation: the agent remembers it, this page shows only what follows.");
      ui.hadSession = true;
      ui.quietReconnect = false;
      ui.sessionReady = true;
      ui.sessionFrames = 0;
      ui.offline = false;
      applySession(ev.session);
      $("conn").dataset.state = "ready";
      $("conn-text").textContent = "Connected";
      clearError("conn");
      if (kiosk) {
        if (!ui.autoStarted) {
          ui.autoStarted = true;
          startCamera();
          startMic();
        }
        tryGreet();
      }
      render();
      break;
    }
    case "session.updated":
      applySession(ev.session);
      break;
    case "response.output_text.delta":
      speaker.feed(ev.delta || "");
      break;
    case "response.done": {
      const r = ev.response || {};
      if ((r.status || "completed") === "completed") {
        const t = turns.turns.find((x) => x.responseId === r.id);
        if (t && t.local) speakLocal(t);
        else speaker.end();
        if (t && t.reply && t.reply.text) $("announcer").textContent = `Agent: ${t.reply.text}`;
      } else {
        speaker.cancel();
      }
      break;
    }
    case "perception.updated":
      onPerception(ev);
      break;
    case "error":
      onError(ev.error || {});
      break;
    default:
      break;
  }
}

function onPerception(ev) {
  const vision = readVision(ev);
  if (vision.faces !== null) ui.faces = vision.faces;
  if (vision.faces !== null || vision.labels.length) renderCameraBadge(vision);
  if (presence && camera.running) presence.observe(vision.faces);
  if (ev.source === "frame") {
    ui.sessionFrames += 1;
    if (kiosk) tryGreet();
  }
}

function onError(e) {
  if (e.code === "session_not_found") chat.system("The earlier conversation had expired — a new one started.");
  showServerError(e);
}

// ---- sending ----------------------------------------------------------------------------

let itemSeq = 0;
const PREROLL_CHUNKS = Math.round(1000 / config.chunkMs);

function sendText(text) {
  if (!conn.isOpen) {
    showError("send", "Not connected", "The message was not sent. Wait until the page shows “Connected” and try again.", { warn: true, timeoutMs: 8000 });
    return false;
  }
  if (presence) presence.touch();
  if (idle) idle.poke();
  const itemId = `item_web_${Date.now().toString(36)}${(itemSeq++).toString(36)}`;
  dispatch({ type: "ui.send_text", text, itemId });
  chat.scrollToEnd();
  return true;
}

function stopReply() {
  speaker.cancel();
  cutVoice();
  dispatch({ type: "ui.stop" });
}

function sendAudio(b64) {
  if (!conn.isOpen) return;
  if (turns.mode === "ptt" && !turns.pttHeld) return;
  if (kiosk) {
    // A kiosk listens only while someone stands at it (not to the shop behind), and not to itself.
    if (camera.running && !presence.present) {
      // Keep the last second: a visitor may start talking just before the camera reports them.
      ui.preroll.push(b64);
      if (ui.preroll.length > PREROLL_CHUNKS) ui.preroll.shift();
      return;
    }
    if (speaker.pending > 0 && config.echoGuard) return;
    for (const chunk of ui.preroll.splice(0)) conn.send({ type: "input_audio_buffer.append", audio: chunk });
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
  const ptt = turns.mode === "ptt";
  $("ptt").hidden = !ptt;
  $("ptt-help").hidden = !ptt;
  $("mic-status").textContent = !on
    ? "Off."
    : ptt
      ? `On — hold “Hold to talk” while speaking. Sending ${ui.rate / 1000} kHz audio while held.`
      : `On — just talk; the agent answers when you pause. Sending ${ui.rate / 1000} kHz audio.`;
}

async function startMic() {
  clearError("mic");
  try {
    if (!navigator.mediaDevices) throw new Error("no mediaDevices");
    await mic.start(ui.rate, { sending: turns.mode === "handsfree" || turns.pttHeld });
    ui.micFailed = false;
  } catch (err) {
    const [title, detail] = deviceError("mic", err);
    showError("mic", title, detail);
    ui.micFailed = true;
  }
  renderMic();
  render();
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
  $("cam-collapse").hidden = !on;
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
    if (kiosk) kiosk.hideAttract(); // without a camera, presence cannot be known
  }
  renderCamera();
}

function stopCamera() {
  camera.stop();
  renderCamera();
}

function renderCameraBadge(vision) {
  const badge = $("cam-badge");
  badge.textContent = "";
  if (!camera.running) return;
  const { faces } = vision;
  if (faces !== null) {
    const s = document.createElement("span");
    s.textContent = faces === 0 ? "no one in view" : faces === 1 ? "1 person" : `${faces} people`;
    badge.append(s);
  }
  for (const l of objectLabels(vision).slice(0, 2)) {
    const s = document.createElement("span");
    s.className = "label";
    s.textContent = l.label;
    badge.append(s);
  }
}

async function pttDown() {
  if (turns.pttHeld) return;
  $("ptt").classList.add("active");
  $("ptt").textContent = "Listening… release to send";
  speaker.cancel();
  dispatch({ type: "ui.ptt_down" }); // cancels a streaming reply (barge-in)
  if (!mic.running) await startMic();
  if (!turns.pttHeld) return;
  await mic.setSending(true);
}

async function pttUp() {
  if (!turns.pttHeld) return;
  $("ptt").classList.remove("active");
  $("ptt").textContent = "Hold to talk";
  await mic.setSending(false); // flushes the last partial chunk first
  dispatch({ type: "ui.ptt_up" }); // commits the held audio
}

function setMode(mode) {
  if (mode === turns.mode) return;
  dispatch({ type: "ui.mode", mode });
  if (mic.running) mic.setSending(mode === "handsfree");
  renderMic();
}

// ---- Why panel --------------------------------------------------------------------------

const narrow = window.matchMedia("(max-width: 68rem)");

/** Show turn n in the Why panel where the person can see it (a sheet over the page on a phone). */
function openWhy(n) {
  dispatch({ type: "ui.select_why", n });
  const panel = $("why");
  const title = $("why-title");
  title.setAttribute("tabindex", "-1");
  if (narrow.matches && !kiosk) {
    panel.classList.add("open");
    document.body.classList.add("sheet-open");
  } else {
    panel.scrollIntoView({ block: "nearest" });
  }
  title.focus({ preventScroll: narrow.matches });
}

function closeWhy() {
  $("why").classList.remove("open");
  document.body.classList.remove("sheet-open");
}

// ---- kiosk ------------------------------------------------------------------------------

function setupKiosk() {
  document.documentElement.classList.add("kiosk");
  document.body.classList.add("kiosk");
  // The customer's screen; the developer's controls go into the staff view.
  const staff = $("staff");
  staff.append(document.querySelector(".topbar"), $("errors"), $("token-form"), $("media"), $("why"));
  $("main").hidden = true;
  kiosk = new KioskView({
    onTalk: kioskTalk,
    onSend: sendText,
    onStop: stopReply,
    onRestart: () => freshConversation({ greet: true }),
    onDismiss: (n) => dispatch({ type: "ui.dismiss_screen", n }),
    onActivity: () => {
      if (presence && !kiosk.attractShown) presence.touch();
      if (idle) idle.poke();
    },
  });
  kiosk.show();
  presence = new Presence({ absentMs: config.absentMs, onChange: (present) => (present ? arrive() : leave("absent")) });
  idle = new IdleTimer({ ms: config.idleMs, onIdle: () => leave("idle"), busy: () => turns.active !== null || speaker.pending > 0 || voice.playing });
  fetch("/pack/kiosk.json", { cache: "no-store" })
    .then((r) => (r.ok ? r.json() : null))
    .then((p) => {
      if (p) {
        kiosk.setPack(p);
        render();
      }
    })
    .catch(() => {});
  const fs = $("kiosk-fullscreen");
  fs.hidden = false;
  fs.addEventListener("click", enterFullscreen);
  const firstGesture = () => {
    enterFullscreen();
    window.removeEventListener("pointerdown", firstGesture);
  };
  window.addEventListener("pointerdown", firstGesture);
  $("attract").addEventListener("pointerdown", () => presence.touch());
  window.addEventListener("keydown", (e) => {
    if (e.ctrlKey && e.shiftKey && (e.key === "S" || e.key === "s")) {
      e.preventDefault();
      setStaff($("staff").hidden);
    } else if (kiosk.attractShown && !e.ctrlKey && !e.altKey) {
      presence.touch();
    } else if (e.key.length === 1 && !e.ctrlKey && !e.altKey && !e.metaKey && $("k-typer").hidden
               && $("staff").hidden) {
      kiosk.openTyper(); // a keyboard plugged into the kiosk types straight into the question
    }
  });
  $("staff-close").addEventListener("click", () => setStaff(false));
  setStaff(config.staff);
  kiosk.showAttract();
}

function setStaff(on) {
  $("staff").hidden = !on;
  document.body.classList.toggle("staff-open", on);
}

/** Talk: during a reply it stops the kiosk to listen; otherwise it makes sure the microphone is on. */
function kioskTalk() {
  if (turns.active !== null || speaker.pending > 0 || voice.playing) stopReply();
  if (!mic.running) startMic();
  if (idle) idle.poke();
  // The kiosk listens all the time someone is there; a tap on Talk gets a word of encouragement.
  ui.talkHintUntil = Date.now() + 4000;
  render();
  setTimeout(render, 4100);
}

/** Someone stepped up (a face, a touch): the attract screen goes, the pack's greeting comes. */
function arrive() {
  kiosk.hideAttract();
  idle.start();
  ui.greetPending = true;
  tryGreet();
}

function tryGreet() {
  // The greeting is the agent's reply to a turn without words (the camera frame of the person
  // who arrived): the pack's greeting message. If the agent has nothing to say to it, or there
  // is no camera, the page shows the pack's greeting from /pack/kiosk.json (turns.js ui.greet).
  if (!ui.greetPending || !ui.sessionReady || kiosk.attractShown) return;
  if (camera.running && !ui.sessionFrames) return; // the new session has no frame yet: next presence update
  ui.greetPending = false;
  const fallback = (kiosk.pack && kiosk.pack.greeting) || null;
  dispatch({ type: "ui.greet", ask: camera.running, fallback });
  speakLocal(turns.turns[turns.turns.length - 1]);
}

/** A line the page wrote itself (the pack's greeting) is spoken like a streamed reply. */
function speakLocal(t) {
  if (t && t.local && t.reply && t.reply.text) {
    speaker.feed(t.reply.text);
    speaker.end();
  }
}

/** Nobody in view (absent) or nothing happened for idle_s (idle): attract screen, session ends. */
function leave(reason) {
  kiosk.showAttract();
  speaker.cancel();
  voice.stop();
  if (turns.active !== null) dispatch({ type: "ui.stop" });
  idle.stop();
  ui.greetPending = false;
  // After an idle timeout the person may still stand there: a new conversation begins only
  // after the view was empty, or with a touch.
  if (reason === "idle") presence.reset({ waitForEmpty: true });
  if (turns.turns.length) freshConversation({ greet: false });
}

/** The next visitor gets a new session, not the last one's history. */
function freshConversation({ greet }) {
  speaker.cancel();
  voice.stop();
  dispatch({ type: "ui.reset" });
  chat.clear();
  if (kiosk) kiosk.clear();
  why.clear();
  try {
    sessionStorage.removeItem("mmagent.session");
  } catch {
    /* storage may be off */
  }
  ui.greetPending = greet;
  ui.quietReconnect = true;
  ui.sessionReady = false;
  conn.sessionId = null;
  conn.attempt = 0;
  conn.connect();
}

function renderStaffStatus() {
  const dl = $("staff-status");
  const rows = [
    ["Connection", $("conn-text").textContent],
    ["Session", (ui.session && ui.session.id) || "—"],
    ["Pack", (ui.session && ui.session.pack && ui.session.pack.name) || "—"],
    ["Presence", !presence ? "—" : presence.waitForEmpty ? "waiting for an empty view" : presence.present ? "someone at the kiosk" : "nobody"],
    ["Faces", ui.faces === null ? "—" : String(ui.faces)],
    ["State", T.phase(turns)],
    ["Idle after", `${Math.round(config.idleMs / 1000)} s; nobody in view after ${(config.absentMs / 1000).toFixed(1)} s`],
  ];
  const html = rows.map(([k]) => k).join("|");
  if (dl.dataset.keys !== html) {
    dl.textContent = "";
    for (const [k] of rows) {
      const d = document.createElement("div");
      const dt = document.createElement("dt");
      dt.textContent = k;
      d.append(dt, document.createElement("dd"));
      dl.append(d);
    }
    dl.dataset.keys = html;
  }
  rows.forEach(([, v], i) => {
    const dd = dl.children[i].querySelector("dd");
    if (dd.textContent !== v) dd.textContent = v;
  });
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
  $("stop").addEventListener("click", () => stopReply());
  document.addEventListener("keydown", (e) => {
    if (e.key === "Escape" && $("why").classList.contains("open")) {
      closeWhy();
    } else if (e.key === "Escape" && turns.active !== null) {
      e.preventDefault();
      stopReply();
    }
  });
  $("why-close").addEventListener("click", closeWhy);

  $("cam-toggle").addEventListener("click", () => (camera.running ? stopCamera() : startCamera()));
  $("cam-collapse").addEventListener("click", () => {
    const b = $("cam-collapse");
    const open = b.getAttribute("aria-expanded") !== "true";
    b.setAttribute("aria-expanded", String(open));
    b.textContent = open ? "Hide preview" : "Show preview";
    $("preview").classList.toggle("collapsed", !open);
  });
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
  const serverVoice = params.get("voice") !== "0";   // ?voice=0: the browser's speechSynthesis only
  const canSpeak = speaker.available || (voice.available && serverVoice);
  speak.checked = canSpeak && ((config.kiosk && params.get("speak") !== "0") || params.get("speak") === "1");
  const setSpeaking = () => {
    speaker.setEnabled(speak.checked);
    voice.setEnabled(speak.checked && serverVoice);
    dispatch({ type: "ui.voice", on: voice.enabled });
    if (voice.enabled && ui.session) applySession(ui.session);
  };
  setSpeaking();
  speak.disabled = !canSpeak;
  speak.addEventListener("change", setSpeaking);

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

  if (config.kiosk) setupKiosk();
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
    // A kiosk never resumes the previous visitor's conversation after a reload.
    conn.sessionId = config.kiosk ? null : sessionStorage.getItem("mmagent.session");
  } catch {
    conn.sessionId = null;
  }
  conn.connect(token || "");
  render();
}

start();

// For tests and debugging in the console: `state` is the page's own (event counts, faces),
// `turns` the reducer's.
window.mmagent = {
  state: ui,
  get turns() {
    return turns;
  },
  dispatch,
  conn,
  mic,
  camera,
  speaker,
  voice,
  config,
  get presence() {
    return presence;
  },
};
