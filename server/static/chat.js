// The conversation log, rendered from the turn state (turns.js): the person's lines (typed or
// transcribed), streamed replies with their Stop and Why buttons, action chips. render(state) can
// be called after every event: only turns whose object changed are touched.

import { visibleTurns } from "./turns.js";

function el(tag, cls, text) {
  const e = document.createElement(tag);
  if (cls) e.className = cls;
  if (text !== undefined) e.textContent = text;
  return e;
}

const MIC_ICON = '<svg class="icon" viewBox="0 0 24 24" aria-hidden="true" focusable="false"><rect x="9" y="3" width="6" height="11" rx="3" fill="currentColor"/><path d="M5.5 11a6.5 6.5 0 0 0 13 0M12 17.5V21" stroke="currentColor" stroke-width="1.8" fill="none" stroke-linecap="round"/></svg>';

function clock() {
  return new Date().toLocaleTimeString([], { hour: "2-digit", minute: "2-digit" });
}

/** What the person's line says, by its status. */
export function userText(user) {
  switch (user.status) {
    case "listening": return "Listening…";
    case "transcribing": return "Transcribing…";
    case "lost": return "(connection lost before this was heard)";
    case "heard": return user.text || "(no words recognised)";
    default: return user.text;
  }
}

export function humanise(name) {
  return String(name || "").replace(/_/g, " ");
}

/** The developer page's log. */
export class ChatLog {
  /**
   * @param {HTMLElement} log  the scrolling role="log" container
   * @param {object} hooks  {onStop(turn), onWhy(turn)}
   */
  constructor(log, hooks) {
    this.log = log;
    this.hooks = hooks;
    this.empty = log.querySelector("#empty");
    this.emptyTemplate = this.empty ? this.empty.cloneNode(true) : null;
    this.views = new Map(); // turn n -> {turn, box, userEl, replyEl}
    this.selected = null;
  }

  nearBottom() {
    return this.log.scrollHeight - this.log.scrollTop - this.log.clientHeight < 80;
  }

  scrollToEnd() {
    this.log.scrollTop = this.log.scrollHeight;
  }

  system(text) {
    const stick = this.nearBottom();
    this.hideEmpty();
    this.log.append(el("div", "msg system", text));
    if (stick) this.scrollToEnd();
  }

  hideEmpty() {
    if (this.empty) {
      this.empty.remove();
      this.empty = null;
    }
  }

  /** Empty the log, system lines too (a fresh conversation), and show the empty hint again. */
  clear() {
    this.views.clear();
    this.selected = null;
    this.log.textContent = "";
    if (this.emptyTemplate) {
      this.empty = this.emptyTemplate.cloneNode(true);
      this.log.append(this.empty);
    }
  }

  /** Bring the DOM in line with the state's turns. */
  render(state) {
    const stick = this.nearBottom();
    const turns = visibleTurns(state);
    const keep = new Set(turns.map((t) => t.n));
    for (const [n, v] of this.views) {
      if (!keep.has(n)) {
        v.box.remove();
        this.views.delete(n);
      }
    }
    let grew = false;
    for (const t of turns) {
      let v = this.views.get(t.n);
      if (!v) {
        this.hideEmpty();
        // display: contents — the turn's lines sit in the log's flex column as before.
        v = { turn: null, box: el("div", "turn"), userEl: null, replyEl: null, userTime: clock(), replyTime: null };
        v.box.dataset.turn = String(t.n);
        this.log.append(v.box);
        this.views.set(t.n, v);
        grew = true;
      }
      if (v.turn !== t) {
        grew = this.update(v, t) || grew;
        v.turn = t;
      }
    }
    this.markSelected(state.why);
    if (stick && grew) this.scrollToEnd();
  }

  update(v, t) {
    let grew = false;
    if (t.user) {
      if (!v.userEl) {
        v.userEl = this.userLine(t);
        v.box.prepend(v.userEl);
        grew = true;
      }
      const pending = t.user.status === "listening" || t.user.status === "transcribing";
      v.userEl.classList.toggle("pending", pending);
      v.userEl.classList.toggle("transcript", t.kind === "speech" && !pending);
      v.userEl.querySelector(".bubble").textContent = userText(t.user);
    }
    if (t.reply) {
      if (!v.replyEl) {
        v.replyTime = clock();
        v.replyEl = this.replyLine(t, v.replyTime);
        v.box.append(v.replyEl);
        grew = true;
      }
      this.updateReply(v.replyEl, t);
    }
    return grew;
  }

  userLine(t) {
    const m = el("div", "msg me");
    m.dataset.turn = String(t.n);
    m.dataset.kind = t.kind;
    const meta = el("div", "meta");
    const who = el("span", "kind");
    if (t.kind === "speech") who.innerHTML = MIC_ICON;
    who.append(t.kind === "speech" ? "You said" : "You");
    meta.append(who, el("span", "", clock()));
    m.append(el("div", "bubble user-text"), meta);
    return m;
  }

  replyLine(t, time) {
    const m = el("div", "msg bot streaming");
    m.dataset.turn = String(t.n);
    const meta = el("div", "meta");
    const stop = el("button", "btn small danger stop-reply", "Stop");
    stop.type = "button";
    stop.setAttribute("aria-label", `Stop reply ${t.n}`);
    stop.addEventListener("click", () => this.hooks.onStop(t.n));
    const why = el("button", "btn small why-btn", "Why?");
    why.type = "button";
    why.setAttribute("aria-label", `Why this reply (turn ${t.n})`);
    why.addEventListener("click", () => this.hooks.onWhy(t.n));
    meta.append(el("span", "kind", "Agent"), el("span", "", time), el("span", "status-note"),
      el("span", "reply-actions"), stop, why);
    m.append(el("div", "bubble reply-text"), meta);
    return m;
  }

  updateReply(m, t) {
    const r = t.reply;
    const bubble = m.querySelector(".bubble");
    const streaming = r.status === "streaming";
    m.classList.toggle("streaming", streaming);
    if (!streaming) m.dataset.status = r.status;
    m.classList.toggle("cancelled", r.status === "cancelled");
    m.classList.toggle("failed", r.status === "failed" || r.status === "incomplete");
    const stop = m.querySelector(".stop-reply");
    if (stop && !streaming) stop.remove();
    const note = m.querySelector(".status-note");
    let text = r.text;
    if (r.status === "cancelled") {
      note.textContent = r.reason === "barge-in" ? "Interrupted — you started talking" : "Stopped";
      if (!text) text = "…";
    } else if (r.status === "failed" || r.status === "incomplete") {
      note.textContent = r.status === "failed" ? "Failed" : "Cut short";
      if (!text) text = r.reason || "No reply could be produced.";
    }
    bubble.textContent = text;
    const chips = m.querySelector(".reply-actions");
    if (chips.childElementCount !== t.actions.length) {
      chips.textContent = "";
      for (const a of t.actions) chips.append(el("span", "action-chip", humanise(a.name)));
    }
  }

  markSelected(n) {
    if (n === this.selected) return;
    this.selected = n;
    this.log.querySelectorAll(".msg.bot.selected").forEach((x) => x.classList.remove("selected"));
    const v = this.views.get(n);
    if (v && v.replyEl) v.replyEl.classList.add("selected");
  }
}
