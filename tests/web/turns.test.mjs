// The web client's turn reducer (server/static/turns.js), run by Node.js's own test runner:
//   node --test tests/web/        (tests/test_web_reducer.py runs it inside pytest)
// Each test feeds the event sequence the real server sends (docs/protocol.md) and checks the
// state the page renders and the client events it asks to send.

import test from "node:test";
import assert from "node:assert/strict";

import {
  initialState, reduce, phase, visibleTurns, currentScreen, activeTurn, turnByN, sessionUpdate,
} from "../../server/static/turns.js";

/** Reduce a list of events; returns the final state and every outbox entry in order. */
function run(events, state = initialState()) {
  const sent = [];
  for (const ev of events) {
    state = reduce(state, ev);
    sent.push(...state.outbox);
  }
  return { state, sent };
}

const created = (id) => ({ type: "response.created", response: { id, status: "in_progress" } });
const delta = (id, d) => ({ type: "response.output_text.delta", response_id: id, delta: d });
const done = (id, status = "completed", extra = {}) => ({ type: "response.done", response: { id, status, ...extra } });

test("a typed turn: item.create then response.create, streamed reply, completed", () => {
  const { state, sent } = run([
    { type: "ui.send_text", text: "Where are the batteries?", itemId: "item_1" },
    created("resp_1"),
    delta("resp_1", "AA batteries are "),
    delta("resp_1", "in aisle 7."),
    done("resp_1", "completed", { turn: { intent: "find_product", emotion: "neutral", route: "respond", actions: [] } }),
  ]);
  assert.deepEqual(sent.map((e) => e.type), ["conversation.item.create", "response.create"]);
  assert.equal(sent[0].item.content[0].text, "Where are the batteries?");
  const [t] = state.turns;
  assert.equal(t.user.text, "Where are the batteries?");
  assert.deepEqual(t.reply, { text: "AA batteries are in aisle 7.", status: "completed", reason: "" });
  assert.equal(t.summary.intent, "find_product");
  assert.equal(state.active, null);
  assert.equal(phase(state), "idle");
});

test("states are frozen and never changed in place", () => {
  const s0 = initialState();
  const s1 = reduce(s0, { type: "ui.send_text", text: "hi", itemId: "item_1" });
  assert.ok(Object.isFrozen(s0) && Object.isFrozen(s1));
  assert.equal(s0.turns.length, 0);
  assert.equal(s1.turns.length, 1);
  const s2 = reduce(s1, created("resp_1"));
  assert.equal(s1.turns[0].reply, null, "the earlier state keeps its turn as it was");
  assert.equal(s2.turns[0].reply.status, "streaming");
});

test("a message typed while a reply streams cancels it and asks again once it has ended", () => {
  const { state, sent } = run([
    { type: "ui.send_text", text: "Tell me everything about returns", itemId: "item_1" },
    created("resp_1"),
    delta("resp_1", "You can return"),
    { type: "ui.send_text", text: "Actually, where is the milk?", itemId: "item_2" },
    done("resp_1", "cancelled", { status_details: { type: "cancelled", reason: "client_cancelled" } }),
    created("resp_2"),
  ]);
  assert.deepEqual(sent.map((e) => e.type), [
    "conversation.item.create", "response.create",
    "conversation.item.create", "response.cancel",
    "response.create",
  ]);
  assert.equal(sent[3].response_id, "resp_1");
  assert.equal(state.turns[0].reply.status, "cancelled");
  assert.equal(state.turns[0].reply.reason, "stopped");
  assert.equal(state.turns[1].responseId, "resp_2", "the new reply belongs to the new message");
  assert.equal(state.active, 2);
});

test("stop cancels the streaming reply; a barge-in is reported as such", () => {
  let { state, sent } = run([
    { type: "ui.send_text", text: "Hello", itemId: "item_1" },
    created("resp_1"),
    delta("resp_1", "Hi"),
    { type: "ui.stop" },
  ]);
  assert.deepEqual(sent.at(-1), { type: "response.cancel", response_id: "resp_1" });
  ({ state } = run([
    { type: "input_audio_buffer.speech_started", item_id: "item_2" },
    done("resp_1", "cancelled", { status_details: { reason: "turn_detected" } }),
  ], state));
  assert.equal(state.turns[0].reply.reason, "barge-in");
  assert.equal(phase(state), "listening");
});

test("stop with nothing streaming sends nothing", () => {
  const { sent } = run([{ type: "ui.stop" }]);
  assert.deepEqual(sent, []);
});

test("a hands-free spoken turn: listening, transcribing, heard, then the reply", () => {
  let { state } = run([{ type: "input_audio_buffer.speech_started", item_id: "item_a" }]);
  assert.equal(phase(state), "listening");
  assert.equal(state.turns[0].user.status, "listening");
  ({ state } = run([{ type: "input_audio_buffer.speech_stopped", item_id: "item_a" }], state));
  assert.equal(state.turns[0].user.status, "transcribing");
  assert.equal(phase(state), "thinking");
  ({ state } = run([
    { type: "input_audio_buffer.committed", item_id: "item_a" },
    { type: "conversation.item.input_audio_transcription.completed", item_id: "item_a", transcript: " Where can I return these shoes? ", confidence: 0.82 },
    created("resp_a"),
  ], state));
  assert.equal(state.turns.length, 1, "one turn from speech start to reply");
  assert.equal(state.turns[0].user.text, "Where can I return these shoes?");
  assert.equal(state.turns[0].transcriptConfidence, 0.82);
  assert.equal(phase(state), "thinking", "no words of the reply yet");
  ({ state } = run([delta("resp_a", "At the service desk.")], state));
  assert.equal(phase(state), "speaking");
  ({ state } = run([done("resp_a")], state));
  assert.equal(phase(state), "idle");
});

test("push to talk: the held turn gets the server's item id; an empty press disappears", () => {
  let { state, sent } = run([
    { type: "ui.ptt_down" },
    { type: "ui.ptt_up" },
    { type: "input_audio_buffer.committed", item_id: "item_p" },
    { type: "conversation.item.input_audio_transcription.completed", item_id: "item_p", transcript: "hello" },
  ]);
  assert.deepEqual(sent.map((e) => e.type), ["input_audio_buffer.commit", "response.create"]);
  assert.equal(state.turns.length, 1);
  assert.equal(state.turns[0].itemId, "item_p");
  assert.equal(state.turns[0].user.text, "hello");
  assert.equal(state.pttN, null);

  ({ state } = run([
    { type: "ui.ptt_down" },
    { type: "ui.ptt_up" },
    { type: "error", error: { code: "input_audio_buffer_commit_empty", message: "empty" } },
  ], state));
  assert.equal(state.turns.length, 1, "the empty press left no line behind");
});

test("pressing push-to-talk during a reply interrupts it", () => {
  const { sent, state } = run([
    { type: "ui.send_text", text: "Hi", itemId: "item_1" },
    created("resp_1"),
    { type: "ui.ptt_down" },
  ]);
  assert.deepEqual(sent.at(-1), { type: "response.cancel", response_id: "resp_1" });
  assert.equal(phase(state), "listening");
});

test("events of one response find their turn by response id, not by arrival order", () => {
  const { state } = run([
    { type: "ui.send_text", text: "one", itemId: "item_1" },
    created("resp_1"),
    done("resp_1"),
    { type: "ui.send_text", text: "two", itemId: "item_2" },
    created("resp_2"),
    { type: "turn.fused", response_id: "resp_1", intent: "greeting", modality_weights: { text: 1 } },
    delta("resp_2", "second"),
  ]);
  assert.equal(state.turns[0].fused.intent, "greeting");
  assert.equal(state.turns[1].reply.text, "second");
  assert.equal(state.turns[0].reply.text, "");
});

test("the Why panel follows the newest fused turn and stays where the person put it", () => {
  let { state } = run([
    { type: "ui.send_text", text: "one", itemId: "item_1" },
    created("resp_1"),
    { type: "turn.fused", response_id: "resp_1", intent: "greeting" },
    done("resp_1"),
    { type: "ui.send_text", text: "two", itemId: "item_2" },
    created("resp_2"),
    { type: "turn.fused", response_id: "resp_2", intent: "other" },
  ]);
  assert.equal(state.why, 2);
  ({ state } = run([{ type: "ui.select_why", n: 1 }], state));
  assert.equal(state.why, 1);
  ({ state } = run([{ type: "perception.updated", source: "turn", response_id: "resp_2", timings_ms: { text: 3 } }], state));
  assert.equal(state.why, 1, "a late perception event of another turn does not move it");
  ({ state } = run([{ type: "ui.select_why", n: 99 }], state));
  assert.equal(state.why, 1, "an unknown turn is ignored");
});

test("presence updates are not turns", () => {
  const { state } = run([{ type: "perception.updated", source: "presence", face_count: 1 }]);
  assert.equal(state.turns.length, 0);
});

test("the kiosk greeting: ui.greet asks for a response; the reply is a turn without a user line", () => {
  let { state, sent } = run([{ type: "ui.greet", ask: true, fallback: "Hello from the pack." }]);
  assert.deepEqual(sent, [{ type: "response.create" }]);
  ({ state } = run([
    created("resp_g"),
    delta("resp_g", "Hello! I'm Kit."),
    done("resp_g", "completed", { turn: { route: "greeting", actions: [] } }),
  ], state));
  assert.equal(state.turns[0].kind, "camera");
  assert.equal(state.turns[0].user, null);
  assert.equal(state.turns[0].reply.text, "Hello! I'm Kit.", "the agent's words, not the fallback");
  assert.equal(state.turns[0].local, false);
  assert.equal(visibleTurns(state).length, 1);
  ({ sent } = run([{ type: "ui.greet", ask: true, fallback: "x" }], state));
  assert.deepEqual(sent, [], "a conversation is greeted once");
});

test("the agent says nothing to the arrival: the pack's greeting is shown instead", () => {
  const { state } = run([
    { type: "ui.greet", ask: true, fallback: "Hello from the pack." },
    created("resp_g"),
    done("resp_g", "completed", { turn: { route: "empty", actions: [] } }),
  ]);
  assert.equal(state.turns[0].reply.text, "Hello from the pack.");
  assert.equal(state.turns[0].local, true);
  assert.equal(visibleTurns(state).length, 1);
  assert.equal(state.greetFallback, null);
});

test("a greeting request the server cannot answer (no frame yet) shows the pack's greeting", () => {
  const { state } = run([
    { type: "ui.greet", ask: true, fallback: "Hello from the pack." },
    { type: "error", error: { code: "empty_turn", message: "nothing to respond to" } },
  ]);
  assert.equal(state.turns.length, 1);
  assert.equal(state.turns[0].reply.text, "Hello from the pack.");
  assert.equal(state.turns[0].local, true);
});

test("without a camera the greeting is the pack's text at once; without one, nothing", () => {
  let { state, sent } = run([{ type: "ui.greet", ask: false, fallback: "Hello from the pack." }]);
  assert.deepEqual(sent, []);
  assert.equal(state.turns[0].reply.text, "Hello from the pack.");
  ({ state, sent } = run([{ type: "ui.greet", ask: false, fallback: null }]));
  assert.deepEqual(sent, []);
  assert.equal(state.turns.length, 0);
});

test("a camera-only turn that got no words is not shown", () => {
  const { state } = run([{ type: "ui.greet", ask: true }, created("resp_e"), done("resp_e", "completed", { turn: { route: "empty", actions: [] } })]);
  assert.equal(state.turns.length, 1);
  assert.equal(visibleTurns(state).length, 0);
});

test("actions open the kiosk's screens; a newer answer without one closes it", () => {
  let { state } = run([
    { type: "ui.send_text", text: "where are the batteries?", itemId: "item_1" },
    created("resp_1"),
    { type: "response.action", response_id: "resp_1", name: "show_on_map", arguments: { aisle: 7 } },
    delta("resp_1", "Aisle 7."),
  ]);
  let screen = currentScreen(state);
  assert.equal(screen.kind, "map");
  assert.deepEqual(screen.action.arguments, { aisle: 7 });
  ({ state } = run([done("resp_1"), { type: "ui.send_text", text: "when do you open?", itemId: "item_2" }, created("resp_2")], state));
  assert.equal(currentScreen(state).kind, "map", "a reply that has not said anything yet keeps the screen");
  ({ state } = run([
    { type: "response.action", response_id: "resp_2", name: "show_opening_hours", arguments: {} },
    delta("resp_2", "We open at 8 am."),
    done("resp_2"),
  ], state));
  assert.equal(currentScreen(state).kind, "hours");
  ({ state } = run([{ type: "ui.dismiss_screen", n: 2 }], state));
  assert.equal(currentScreen(state), null);
  ({ state } = run([{ type: "ui.send_text", text: "thanks", itemId: "item_3" }, created("resp_3"), delta("resp_3", "You're welcome."), done("resp_3")], state));
  assert.equal(currentScreen(state), null);
});

test("handoff wins over another screen action of the same turn; actions from response.done count", () => {
  const { state } = run([
    { type: "ui.send_text", text: "get me a person", itemId: "item_1" },
    created("resp_1"),
    delta("resp_1", "I'm calling a member of staff."),
    done("resp_1", "completed", { turn: { route: "handoff", actions: [
      { name: "handoff_to_human", arguments: { reason: "requested" } },
      { name: "show_on_map", arguments: { aisle: 1 } },
    ] } }),
  ]);
  const screen = currentScreen(state);
  assert.equal(screen.kind, "handoff");
  assert.equal(screen.text, "I'm calling a member of staff.");
});

test("playback (speech synthesis today, server audio later) is the speaking phase", () => {
  let { state } = run([
    { type: "ui.send_text", text: "hi", itemId: "item_1" },
    created("resp_1"),
    delta("resp_1", "Hello."),
    done("resp_1"),
    { type: "playback.started", source: "server_audio" },
  ]);
  assert.equal(phase(state), "speaking");
  assert.equal(state.playback.source, "server_audio");
  ({ state } = run([{ type: "playback.ended" }], state));
  assert.equal(phase(state), "idle");
});

test("a lost connection ends streaming replies as incomplete and forgets what was being heard", () => {
  const { state } = run([
    { type: "ui.send_text", text: "hi", itemId: "item_1" },
    created("resp_1"),
    delta("resp_1", "Hel"),
    { type: "input_audio_buffer.speech_started", item_id: "item_2" },
    { type: "ui.connection_lost" },
  ]);
  assert.equal(state.turns[0].reply.status, "incomplete");
  assert.equal(state.turns[1].user.status, "lost");
  assert.equal(state.active, null);
  assert.equal(activeTurn(state), null);
  assert.equal(phase(state), "idle");
});

test("a failed response carries the server's reason", () => {
  const { state } = run([
    { type: "ui.send_text", text: "hi", itemId: "item_1" },
    created("resp_1"),
    done("resp_1", "failed", { status_details: { type: "failed", error: { code: "responder_failed", message: "model crashed" } } }),
  ]);
  assert.equal(state.turns[0].reply.status, "failed");
  assert.equal(state.turns[0].reply.reason, "model crashed");
});

test("the reply text comes from response.done's output when no delta arrived", () => {
  const { state } = run([
    { type: "ui.send_text", text: "hi", itemId: "item_1" },
    created("resp_1"),
    done("resp_1", "completed", { output: [{ content: [{ type: "output_text", text: "Hello there." }] }] }),
  ]);
  assert.equal(state.turns[0].reply.text, "Hello there.");
});

test("mode changes: push-to-talk clears the server's buffer and turns server VAD off", () => {
  let { state, sent } = run([{ type: "session.created", session: { id: "sess_1" } }]);
  assert.deepEqual(sent, [sessionUpdate("handsfree")]);
  assert.equal(sent[0].session.audio.input.turn_detection.type, "server_vad");
  ({ state, sent } = run([{ type: "ui.mode", mode: "ptt" }], state));
  assert.deepEqual(sent.map((e) => e.type), ["input_audio_buffer.clear", "session.update"]);
  assert.equal(sent[1].session.audio.input.turn_detection, null);
  ({ sent } = run([{ type: "ui.mode", mode: "ptt" }], state));
  assert.deepEqual(sent, [], "no change, nothing sent");
});

test("reset starts a fresh conversation and keeps the talking mode", () => {
  const { state } = run([
    { type: "ui.mode", mode: "ptt" },
    { type: "ui.send_text", text: "hi", itemId: "item_1" },
    created("resp_1"),
    { type: "ui.reset" },
  ]);
  assert.equal(state.turns.length, 0);
  assert.equal(state.active, null);
  assert.equal(state.mode, "ptt");
  assert.equal(turnByN(state, 1), null);
});

test("unknown and out-of-order events leave the state alone", () => {
  const s0 = initialState();
  for (const ev of [
    { type: "conversation.item.added" },
    { type: "response.output_text.delta", response_id: "nope", delta: "x" },
    { type: "response.done", response: { id: "nope" } },
    { type: "response.action", name: "show_on_map" },
    { type: "ui.ptt_up" },
  ]) {
    const s = reduce(s0, ev);
    assert.deepEqual(s.turns, []);
    assert.deepEqual(s.outbox, ev.type === "ui.ptt_up" ? [] : []);
  }
});

test("the server's voice: asked for when wanted and the server has one; transcript deltas are the reply", () => {
  const withVoice = { type: "session.created", session: { id: "s1", audio: { output: { voice: "en_US-joe-medium" } } } };
  const { state, sent } = run([
    { type: "ui.voice", on: true },
    withVoice,
    { type: "ui.send_text", text: "Where are the batteries?", itemId: "item_1" },
    created("resp_1"),
    { type: "response.output_audio_transcript.delta", response_id: "resp_1", delta: "Aisle " },
    { type: "playback.started", source: "server_audio" },
    { type: "response.output_audio_transcript.delta", response_id: "resp_1", delta: "seven." },
    { type: "response.output_audio_transcript.done", response_id: "resp_1", transcript: "Aisle seven." },
    done("resp_1"),
  ]);
  const update = sent.find((e) => e.type === "session.update");
  assert.deepEqual(update.session.output_modalities, ["audio"]);
  assert.deepEqual(update.session.audio.output.format, { type: "audio/pcm", rate: 24000 });
  assert.equal(state.turns[0].reply.text, "Aisle seven.");
  assert.equal(phase(state), "speaking", "the reply is still being heard after response.done");
  // A server without a voice: text, whatever the page wants.
  const plain = run([{ type: "ui.voice", on: true }, { type: "session.created", session: { id: "s2" } }]);
  assert.deepEqual(plain.sent[0].session.output_modalities, ["text"]);
  // Turning the voice off mid-session asks for text again.
  const off = reduce(state, { type: "ui.voice", on: false });
  assert.deepEqual(off.outbox[0].session.output_modalities, ["text"]);
  assert.equal(sessionUpdate("handsfree").session.audio.output, undefined);
});

test("a spoken reply's text comes from response.done's output_audio transcript when no delta arrived", () => {
  const { state } = run([
    { type: "ui.send_text", text: "hi", itemId: "item_1" },
    created("resp_1"),
    done("resp_1", "completed", { output: [{ type: "message", content: [{ type: "output_audio", transcript: "Hello!" }] }] }),
  ]);
  assert.equal(state.turns[0].reply.text, "Hello!");
});
