// What a customer sees in kiosk mode: the kiosk's face with its state (listening, thinking,
// speaking), the conversation in large type, the map / hours / staff screens, four big buttons
// (talk, type, stop, start over), the on-screen keyboard and the attract screen. Rendered from
// the turn state (turns.js); it never shows a device switch, a label, a percentage or an error code.

import { visibleTurns, currentScreen } from "./turns.js";
import { mapScreen, hoursScreen, handoffScreen } from "./screens.js";
import { OnScreenKeyboard } from "./keyboard.js";
import { userText } from "./chat.js";

const $ = (id) => document.getElementById(id);

const PHASE_TEXT = {
  idle: "Ask me anything",
  listening: "Listening…",
  thinking: "Thinking…",
  speaking: "",
};

/** A calm line instead of the technical reason a reply failed (that is in the staff view). */
const FAILED_TEXT = "Sorry, something went wrong there. Please ask me again, or ask a member of staff.";

function el(tag, cls, text) {
  const e = document.createElement(tag);
  if (cls) e.className = cls;
  if (text !== undefined) e.textContent = text;
  return e;
}

export class KioskView {
  /**
   * @param {object} hooks  {onTalk(), onSend(text), onStop(), onRestart(), onDismiss(n), onActivity()}
   */
  constructor(hooks) {
    this.hooks = hooks;
    this.root = $("kiosk");
    this.log = $("k-log");
    this.screenBox = $("k-screen");
    this.phaseText = $("k-phase");
    this.attract = $("attract");
    this.typer = $("k-typer");
    this.input = $("k-type-input");
    this.views = new Map(); // turn n -> {turn, box, userEl, replyEl}
    this.screenKey = "";
    this.pack = null; // /pack/kiosk.json
    this.keyboard = new OnScreenKeyboard($("k-keys"), this.input, () => hooks.onActivity());
    this.pinFrame = 0;
    new ResizeObserver(() => this.pin()).observe(this.log);
    this.wire();
  }

  wire() {
    const h = this.hooks;
    $("k-talk").addEventListener("click", () => h.onTalk());
    $("k-stop").addEventListener("click", () => h.onStop());
    $("k-restart").addEventListener("click", () => h.onRestart());
    $("k-type").addEventListener("click", () => (this.typer.hidden ? this.openTyper() : this.closeTyper()));
    $("k-type-close").addEventListener("click", () => this.closeTyper());
    $("k-type-form").addEventListener("submit", (e) => {
      e.preventDefault();
      const text = this.input.value.trim();
      if (!text) return;
      if (h.onSend(text)) {
        this.keyboard.reset();
        this.closeTyper();
      }
    });
    this.input.addEventListener("input", () => h.onActivity());
    this.root.addEventListener("pointerdown", () => h.onActivity());
  }

  show() {
    this.root.hidden = false;
  }

  /** The pack's screens data (GET /pack/kiosk.json); a screen already shown is drawn again. */
  setPack(pack) {
    this.pack = pack;
    this.screenKey = "(redraw)";
  }

  openTyper() {
    this.typer.hidden = false;
    this.root.classList.add("typing");
    $("k-type").setAttribute("aria-expanded", "true");
    this.input.focus();
    this.hooks.onActivity();
  }

  closeTyper() {
    this.typer.hidden = true;
    this.root.classList.remove("typing");
    $("k-type").setAttribute("aria-expanded", "false");
  }

  showAttract() {
    this.attract.hidden = false;
    this.closeTyper();
    document.body.dataset.presence = "absent";
  }

  hideAttract() {
    this.attract.hidden = true;
    document.body.dataset.presence = "present";
  }

  get attractShown() {
    return !this.attract.hidden;
  }

  /** A fresh conversation: empty log, no screen. */
  clear() {
    this.log.textContent = "";
    this.views.clear();
    this.setScreen(null);
  }

  /**
   * @param {object} state   the turn state
   * @param {object} view    {phase, offline, canStop, idleText (what to say when idle, or null)}
   */
  render(state, { phase, offline, canStop, idleText = null }) {
    this.root.dataset.phase = phase;
    const text = offline ? "" : phase === "idle" && idleText ? idleText : PHASE_TEXT[phase];
    if (this.phaseText.textContent !== text) this.phaseText.textContent = text;
    $("k-talk").classList.toggle("active", phase === "listening");
    $("k-talk-text").textContent = phase === "listening" ? "Listening…" : "Talk";
    $("k-stop").disabled = !canStop;
    $("k-offline").hidden = !offline;
    this.renderLog(state);
    this.setScreen(currentScreen(state, (this.pack && this.pack.screens) || undefined));
  }

  renderLog(state) {
    const turns = visibleTurns(state);
    const keep = new Set(turns.map((t) => t.n));
    for (const [n, v] of this.views) {
      if (!keep.has(n)) {
        v.box.remove();
        this.views.delete(n);
      }
    }
    for (const t of turns) {
      let v = this.views.get(t.n);
      if (!v) {
        v = { turn: null, box: el("div", "k-turn"), userEl: null, replyEl: null };
        this.log.append(v.box);
        this.views.set(t.n, v);
      }
      if (v.turn === t) continue;
      v.turn = t;
      if (t.user) {
        if (!v.userEl) {
          v.userEl = el("p", "k-msg k-me");
          v.box.prepend(v.userEl);
        }
        const pending = t.user.status === "listening" || t.user.status === "transcribing";
        v.userEl.classList.toggle("pending", pending);
        // The customer sees "…" while their words are being heard, never "Transcribing".
        v.userEl.textContent = pending ? "…" : t.user.status === "lost" ? "…" : userText(t.user);
      }
      if (t.reply) {
        if (!v.replyEl) {
          v.replyEl = el("p", "k-msg k-bot");
          v.box.append(v.replyEl);
        }
        const r = t.reply;
        v.replyEl.classList.toggle("streaming", r.status === "streaming" && !!r.text);
        v.replyEl.classList.toggle("waiting", r.status === "streaming" && !r.text);
        v.replyEl.dataset.status = r.status;
        let text = r.text;
        if ((r.status === "failed" || r.status === "incomplete") && !text) text = FAILED_TEXT;
        if (r.status === "cancelled") text = text ? `${text.trimEnd()} …` : "…";
        v.replyEl.textContent = text || "";
      }
    }
    // The newest exchange is the large one; older lines step back.
    const boxes = [...this.log.children];
    boxes.forEach((b, i) => b.classList.toggle("k-old", i < boxes.length - 1));
    this.pin();
  }

  /** Keep the newest line in view, also when the layout changes under it (a screen opens). */
  pin() {
    const log = this.log;
    log.classList.toggle("overflowing", log.scrollHeight > log.clientHeight + 4);
    log.scrollTop = log.scrollHeight;
    if (!this.pinFrame) {
      this.pinFrame = requestAnimationFrame(() => {
        this.pinFrame = 0;
        log.classList.toggle("overflowing", log.scrollHeight > log.clientHeight + 4);
        log.scrollTop = log.scrollHeight;
      });
    }
  }

  setScreen(screen) {
    const key = screen ? `${screen.kind}:${screen.n}:${JSON.stringify(screen.action.arguments || {})}:${screen.kind === "handoff" ? screen.text : ""}` : "";
    if (key === this.screenKey) return;
    this.screenKey = key;
    const box = this.screenBox;
    box.textContent = "";
    this.root.classList.toggle("has-screen", !!screen);
    box.hidden = !screen;
    if (!screen) {
      delete box.dataset.kind;
      return;
    }
    box.dataset.kind = screen.kind;
    const pack = this.pack || {};
    let content;
    if (screen.kind === "map") {
      const aisle = Number((screen.action.arguments || {}).aisle);
      content = mapScreen(pack.map || null, Number.isFinite(aisle) ? aisle : null);
    } else if (screen.kind === "hours") {
      content = hoursScreen(pack.hours || []);
    } else {
      content = handoffScreen(screen.text);
    }
    const close = el("button", "screen-close", "✕");
    close.type = "button";
    close.setAttribute("aria-label", "Close");
    close.addEventListener("click", () => this.hooks.onDismiss(screen.n));
    box.append(content, close);
  }
}
