// The page's turn state in one pure reducer: reduce(state, event) → new state. No DOM, no I/O,
// no clock: the same events in give the same state out, so tests/web/turns.test.mjs runs it in
// Node.js and app.js only renders what it returns.
//
// Events are the server's events as they arrive (docs/protocol.md) plus the page's own:
//   ui.send_text {text, itemId}   the person typed a message
//   ui.stop                       Stop (button, Escape)
//   ui.ptt_down / ui.ptt_up       push-to-talk pressed / released
//   ui.greet {ask, fallback}      kiosk: someone stepped up. ask: a response.create with no new
//                                 input (the camera frame only), which the agent answers with the
//                                 pack's greeting; if it answers nothing (or ask is false: no
//                                 camera), `fallback` — the pack's greeting from /pack/kiosk.json
//                                 — is shown as the kiosk's first line (turn.local).
//   ui.mode {mode}                "handsfree" | "ptt"
//   ui.select_why {n}             the Why panel shows turn n
//   ui.dismiss_screen {n}         kiosk: close the map / hours / staff card of turn n
//   ui.reset                      a fresh conversation (kiosk: the next customer)
//   ui.connection_lost            the socket dropped: streaming replies end as "incomplete"
//   playback.started {source}     the reply is being heard: today "speech_synthesis" (the browser's
//   playback.ended                voice, kiosk.js Speaker); with server audio (issue 13) the player
//                                 of response.output_audio.delta dispatches the same two events
//                                 with source "server_audio", and nothing else changes here.
//   ui.voice {on}                 the person wants the server's voice (the Speak toggle): the
//                                 session asks for output_modalities ["audio"] when the server
//                                 has a voice (session.created's audio.output.voice)
//
// A reduction that must tell the server something puts client events in the new state's `outbox`
// (only that reduction's); the caller sends them in order.

/** What the kiosk's face shows; derived from the state by phase(). */
export const PHASES = Object.freeze(["idle", "listening", "thinking", "speaking"]);

/** The actions the kiosk renders as screens, by the screen they open. */
export const SCREEN_ACTIONS = Object.freeze({
  show_on_map: "map",
  show_opening_hours: "hours",
  handoff_to_human: "handoff",
});

const USER_PENDING = new Set(["listening", "transcribing"]);

export function initialState({ mode = "handsfree" } = {}) {
  return freeze({
    turns: [],            // oldest first; see newTurn()
    nextN: 1,
    active: null,         // n of the turn whose reply is streaming
    pttN: null,           // n of the push-to-talk turn still waiting for its item id
    pttHeld: false,
    queuedCreate: false,  // a response.create to send when the active reply has ended
    hearing: false,       // server VAD: the person is speaking right now
    playback: { speaking: false, source: null },
    voice: false,         // the server's voice is wanted (ui.voice)
    serverVoice: false,   // the server has one (its session says so)
    greetFallback: null,  // the pack's greeting, shown if the agent's greeting turn says nothing
    why: null,            // n of the turn the Why panel shows
    whyPinned: false,     // the person chose it: only a newer fused turn moves it
    mode,
    outbox: [],
  });
}

/** The session.update this page sends (after session.created and on a mode or voice change);
 * `voice`: spoken replies (PCM16 at 24 kHz, the transcript beside them). */
export function sessionUpdate(mode, voice = false) {
  return {
    type: "session.update",
    session: {
      type: "realtime",
      output_modalities: voice ? ["audio"] : ["text"],
      audio: {
        ...(voice ? { output: { format: { type: "audio/pcm", rate: 24000 } } } : {}),
        input: {
          turn_detection: mode === "handsfree"
            ? { type: "server_vad", create_response: true, interrupt_response: true }
            : null,
        },
      },
      vision: { presence_updates: true },
    },
  };
}

function newTurn(n, kind, itemId = null) {
  return {
    n,
    kind,                 // "typed" | "speech" | "camera" (a turn without words: the greeting)
    itemId,
    responseId: null,
    user: null,           // {text, status: typed | listening | transcribing | heard | lost}
    reply: null,          // {text, status: streaming | completed | cancelled | failed | incomplete, reason}
    actions: [],          // [{name, arguments}]
    fused: null,
    perception: null,
    transcript: null,
    transcriptConfidence: null,
    summary: null,        // {intent, emotion, route} from response.done
    timings: null,
    screenDismissed: false,
    local: false,         // its reply was written by the page (the pack's greeting), not streamed
  };
}

// ---- small immutable helpers --------------------------------------------------------------

function freeze(s) {
  return Object.freeze(s);
}

function byN(state, n) {
  return n == null ? null : state.turns.find((t) => t.n === n) || null;
}

function byItem(state, itemId) {
  return itemId ? state.turns.find((t) => t.itemId === itemId) || null : null;
}

function byResponse(state, responseId) {
  return responseId ? state.turns.find((t) => t.responseId === responseId) || null : null;
}

/** The turn an event belongs to: by response id, then item id, then the streaming one. */
function turnFor(state, ev) {
  return byResponse(state, ev.response_id) || byItem(state, ev.item_id) || byN(state, state.active);
}

function put(state, turn, patch) {
  const next = { ...turn, ...patch };
  return { ...state, turns: state.turns.map((t) => (t.n === turn.n ? next : t)) };
}

function add(state, kind, itemId = null) {
  const turn = newTurn(state.nextN, kind, itemId);
  return [{ ...state, turns: [...state.turns, turn], nextN: state.nextN + 1 }, turn];
}

/** The Why panel follows the newest turn that has something to show. */
function follow(state, n) {
  const t = byN(state, n);
  if (!t || state.whyPinned) return state;
  if (state.why === null || state.why === n || (state.why < n && t.fused)) return { ...state, why: n };
  return state;
}

/** The spoken turn for an audio event: known by item id, the push-to-talk turn, or a new one. */
function speechTurn(state, itemId) {
  const known = byItem(state, itemId);
  if (known) return [state, known];
  const ptt = byN(state, state.pttN);
  if (ptt && !ptt.itemId) {
    if (!itemId) return [state, ptt];
    const s = put(state, ptt, { itemId });
    return [{ ...s, pttN: null }, byN(s, ptt.n)];
  }
  return add(state, "speech", itemId);
}

function cancelActive(state, out) {
  const t = byN(state, state.active);
  if (t && t.responseId) out.push({ type: "response.cancel", response_id: t.responseId });
}

// ---- the reducer --------------------------------------------------------------------------

/** One event in, the next state out (frozen; `outbox` holds what this event asks to send). */
export function reduce(state, ev) {
  const out = [];
  const next = step({ ...state, outbox: [] }, ev, out);
  return freeze({ ...next, outbox: out });
}

function step(s, ev, out) {
  switch (ev.type) {
    // ---- what the person did ----
    case "ui.send_text": {
      let t;
      [s, t] = add(s, "typed", ev.itemId);
      s = put(s, t, { user: { text: ev.text, status: "typed" } });
      out.push({ type: "conversation.item.create",
        item: { id: ev.itemId, type: "message", role: "user", content: [{ type: "input_text", text: ev.text }] } });
      if (s.active !== null) {
        // A new message while a reply streams replaces it: cancel, then ask again once it ended.
        cancelActive(s, out);
        return { ...s, queuedCreate: true };
      }
      out.push({ type: "response.create" });
      return s;
    }
    case "ui.stop":
      cancelActive(s, out);
      return s;
    case "ui.ptt_down": {
      if (s.pttHeld) return s;
      cancelActive(s, out); // barge-in
      let t;
      [s, t] = add(s, "speech");
      s = put(s, t, { user: { text: "", status: "listening" } });
      return { ...s, pttHeld: true, pttN: t.n };
    }
    case "ui.ptt_up": {
      if (!s.pttHeld) return s;
      const t = byN(s, s.pttN);
      if (t && t.user && t.user.status === "listening") s = put(s, t, { user: { ...t.user, status: "transcribing" } });
      out.push({ type: "input_audio_buffer.commit" });
      return { ...s, pttHeld: false };
    }
    case "ui.greet": {
      if (s.active !== null || s.turns.some((t) => t.reply)) return s; // only a fresh conversation is greeted
      if (ev.ask) {
        out.push({ type: "response.create" });
        return { ...s, greetFallback: ev.fallback || null };
      }
      if (!ev.fallback) return s;
      let t;
      [s, t] = add(s, "camera");
      return put(s, t, { reply: { text: ev.fallback, status: "completed", reason: "" }, local: true });
    }
    case "ui.mode":
      if (ev.mode === s.mode) return s;
      if (ev.mode === "ptt") out.push({ type: "input_audio_buffer.clear" });
      out.push(sessionUpdate(ev.mode, s.voice && s.serverVoice));
      return { ...s, mode: ev.mode, hearing: false };
    case "ui.voice":
      if (!!ev.on === s.voice) return s;
      if (s.serverVoice) out.push(sessionUpdate(s.mode, !!ev.on));
      return { ...s, voice: !!ev.on };
    case "ui.select_why":
      return byN(s, ev.n) ? { ...s, why: ev.n, whyPinned: true } : s;
    case "ui.dismiss_screen": {
      const t = byN(s, ev.n);
      return t ? put(s, t, { screenDismissed: true }) : s;
    }
    case "ui.reset":
      return { ...initialState({ mode: s.mode }), voice: s.voice, serverVoice: s.serverVoice };
    case "ui.connection_lost": {
      const turns = s.turns.map((t) => {
        let u = t;
        if (t.reply && t.reply.status === "streaming") {
          u = { ...u, reply: { ...t.reply, status: "incomplete", reason: "Connection lost before the reply finished." } };
        }
        if (t.user && USER_PENDING.has(t.user.status)) u = { ...u, user: { text: "", status: "lost" } };
        return u;
      });
      return { ...s, turns, active: null, queuedCreate: false, hearing: false, pttHeld: false,
        playback: { speaking: false, source: null } };
    }
    case "playback.started":
      return { ...s, playback: { speaking: true, source: ev.source || "speech_synthesis" } };
    case "playback.ended":
      return { ...s, playback: { speaking: false, source: null } };

    // ---- what the server said ----
    case "session.created": {
      const output = ev.session && ev.session.audio && ev.session.audio.output;
      const serverVoice = !!(output && output.voice);
      out.push(sessionUpdate(s.mode, s.voice && serverVoice));
      return { ...s, serverVoice };
    }
    case "input_audio_buffer.speech_started": {
      let t;
      [s, t] = speechTurn(s, ev.item_id);
      if (!t.user) s = put(s, t, { user: { text: "", status: "listening" } });
      return { ...s, hearing: true };
    }
    case "input_audio_buffer.speech_stopped": {
      let t;
      [s, t] = speechTurn(s, ev.item_id);
      if (t.user && t.user.status === "listening") s = put(s, t, { user: { ...t.user, status: "transcribing" } });
      return { ...s, hearing: false };
    }
    case "input_audio_buffer.committed": {
      const fromPtt = s.pttN !== null && !s.pttHeld;   // the commit of a push-to-talk press
      let t;
      [s, t] = speechTurn(s, ev.item_id);
      if (!t.user || t.user.status === "listening") s = put(s, t, { user: { text: "", status: "transcribing" } });
      // Push-to-talk: as in Realtime GA, a commit starts no response by itself; ask for one
      // (after the active reply, if one is still ending).
      if (fromPtt) {
        if (s.active !== null) return { ...s, queuedCreate: true };
        out.push({ type: "response.create" });
      }
      return s;
    }
    case "conversation.item.input_audio_transcription.completed": {
      let t;
      [s, t] = speechTurn(s, ev.item_id);
      const transcript = ev.transcript || "";
      s = put(s, t, {
        transcript,
        transcriptConfidence: typeof ev.confidence === "number" ? ev.confidence : t.transcriptConfidence,
        user: { text: transcript.trim(), status: "heard" },
      });
      return follow(s, t.n);
    }
    case "response.created": {
      const id = (ev.response && ev.response.id) || null;
      const last = s.turns[s.turns.length - 1];
      let t = last && !last.responseId && !last.reply ? last : null;
      if (!t) [s, t] = add(s, "camera");
      s = put(s, t, { responseId: id, reply: { text: "", status: "streaming", reason: "" } });
      return { ...s, active: t.n };
    }
    case "perception.updated": {
      if (ev.source !== "turn") return s; // presence updates: the page's camera badge, not a turn
      const t = turnFor(s, ev);
      if (!t) return s;
      const conf = ev.speech && typeof ev.speech.confidence === "number" && t.transcriptConfidence == null
        ? ev.speech.confidence : t.transcriptConfidence;
      s = put(s, t, { perception: ev, transcriptConfidence: conf, timings: ev.timings_ms || t.timings });
      return follow(s, t.n);
    }
    case "turn.fused": {
      const t = turnFor(s, ev);
      if (!t) return s;
      const conf = t.transcriptConfidence == null && typeof ev.transcript_confidence === "number"
        ? ev.transcript_confidence : t.transcriptConfidence;
      s = put(s, t, { fused: ev, transcriptConfidence: conf });
      return s.whyPinned && s.why !== null && s.why >= t.n ? s : { ...s, why: t.n, whyPinned: false };
    }
    case "response.output_audio_transcript.delta":   // a spoken reply: its text
    case "response.output_text.delta": {
      const t = turnFor(s, ev);
      if (!t || !t.reply) return s;
      return put(s, t, { reply: { ...t.reply, text: t.reply.text + (ev.delta || "") } });
    }
    case "response.output_audio_transcript.done":
    case "response.output_text.done": {
      const t = turnFor(s, ev);
      const text = ev.type === "response.output_text.done" ? ev.text : ev.transcript;
      if (!t || !t.reply || typeof text !== "string" || !text) return s;
      return put(s, t, { reply: { ...t.reply, text } });
    }
    case "response.action": {
      const t = turnFor(s, ev);
      if (!t) return s;
      s = put(s, t, { actions: [...t.actions, { name: ev.name, arguments: ev.arguments || {} }] });
      return follow(s, t.n);
    }
    case "response.done":
      return responseDone(s, ev.response || {}, out);
    case "error":
      if (ev.error && ev.error.code === "empty_turn" && s.greetFallback && !s.turns.some((t) => t.reply)) {
        // The greeting request found nothing to answer (no camera frame yet): the pack's words.
        let t;
        const text = s.greetFallback;
        [s, t] = add({ ...s, greetFallback: null }, "camera");
        return put(s, t, { reply: { text, status: "completed", reason: "" }, local: true });
      }
      if (ev.error && ev.error.code === "input_audio_buffer_commit_empty") {
        // A push-to-talk press that carried no audio: its placeholder line goes away.
        const t = byN(s, s.pttN);
        s = { ...s, pttN: null };
        if (t && !t.itemId && !t.reply) s = { ...s, turns: s.turns.filter((x) => x.n !== t.n) };
      }
      return s;
    default:
      return s; // conversation.item.added, input_audio_buffer.cleared, ...: no turn state
  }
}

function responseDone(s, r, out) {
  const t = byResponse(s, r.id) || byN(s, s.active);
  if (!t) return s;
  const status = r.status || "completed";
  const details = r.status_details || {};
  let text = t.reply ? t.reply.text : "";
  if (!text && Array.isArray(r.output)) {
    text = r.output.flatMap((o) => o.content || []).filter((c) => c.type === "output_text" || c.type === "output_audio")
      .map((c) => (c.type === "output_text" ? c.text : c.transcript) || "").join("");
  }
  const patch = {};
  if (!text && t.kind === "camera" && status === "completed" && s.greetFallback
      && !s.turns.some((x) => x.reply && x.reply.text)) {
    // The agent did not greet (nothing new to answer): the pack's greeting, as the page has it.
    text = s.greetFallback;
    patch.local = true;
  }
  s = { ...s, greetFallback: null };
  let reason = "";
  if (status === "cancelled") reason = details.reason === "turn_detected" ? "barge-in" : "stopped";
  if (status === "failed") reason = (details.error && details.error.message) || "The agent could not answer.";
  patch.reply = { text, status, reason };
  if (r.turn) {
    if (Array.isArray(r.turn.actions) && !t.actions.length) patch.actions = r.turn.actions.map((a) => ({ name: a.name, arguments: a.arguments || {} }));
    patch.summary = { intent: r.turn.intent, emotion: r.turn.emotion, route: r.turn.route };
  }
  if (r.timings_ms) patch.timings = { ...(t.timings || {}), ...r.timings_ms };
  s = put(s, t, patch);
  if (s.active === t.n) s = { ...s, active: null };
  if (s.queuedCreate) {
    out.push({ type: "response.create" });
    s = { ...s, queuedCreate: false };
  }
  return s;
}

// ---- selectors ----------------------------------------------------------------------------

export function turnByN(state, n) {
  return byN(state, n);
}

export function activeTurn(state) {
  return byN(state, state.active);
}

/** Turns a person sees: a camera-only turn that got no words (nobody to greet) is not one. */
export function visibleTurns(state) {
  return state.turns.filter((t) => !isSilent(t));
}

function isSilent(t) {
  return t.kind === "camera" && (!t.reply || (t.reply.status !== "streaming" && !t.reply.text));
}

/** listening (the person speaks) > speaking (the reply is heard or streams) > thinking > idle. */
export function phase(state) {
  if (state.pttHeld || state.hearing) return "listening";
  if (state.playback.speaking) return "speaking";
  const a = byN(state, state.active);
  if (a) return a.reply && a.reply.text ? "speaking" : "thinking";
  if (state.turns.some((t) => t.user && t.user.status === "transcribing")) return "thinking";
  return "idle";
}

/**
 * The kiosk's screen: the map / hours / staff card of the newest answered turn, or null.
 * {kind: "map" | "hours" | "handoff", n, action, text}. A newer answer without one closes it.
 */
export function currentScreen(state, screenActions = SCREEN_ACTIONS) {
  for (let i = state.turns.length - 1; i >= 0; i--) {
    const t = state.turns[i];
    if (!t.reply || isSilent(t) || (!t.reply.text && !t.actions.length)) continue; // not answered yet
    if (t.screenDismissed) return null;
    // Several screen actions in one turn: the person-facing one wins (staff coming), then the last.
    const shown = t.actions.filter((a) => screenActions[a.name]);
    if (!shown.length) return null;
    const a = shown.find((x) => screenActions[x.name] === "handoff") || shown[shown.length - 1];
    return { kind: screenActions[a.name], n: t.n, action: a, text: t.reply.text };
  }
  return null;
}
