// The conversation log: the person's lines (typed or transcribed), streamed replies, stop buttons.

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
  }

  nearBottom() {
    return this.log.scrollHeight - this.log.scrollTop - this.log.clientHeight < 80;
  }

  /** Append a node, keeping the view pinned to the newest line unless the person scrolled up. */
  append(node) {
    const stick = this.nearBottom();
    if (this.empty) {
      this.empty.remove();
      this.empty = null;
    }
    this.log.appendChild(node);
    if (stick) this.scrollToEnd();
  }

  scrollToEnd() {
    this.log.scrollTop = this.log.scrollHeight;
  }

  /** Empty the log (a kiosk's next visitor starts fresh). */
  clear() {
    this.log.textContent = "";
    if (this.emptyTemplate) {
      this.empty = this.emptyTemplate.cloneNode(true);
      this.log.append(this.empty);
    }
  }

  system(text) {
    const m = el("div", "msg system", text);
    this.append(m);
    return m;
  }

  /** The person's line. kind: "typed" | "speech". Returns handles to update it later. */
  addUser(turn, { text = "", kind = "typed", imageUrl = null, pending = false } = {}) {
    const m = el("div", "msg me" + (pending ? " pending" : ""));
    m.dataset.turn = String(turn.n);
    m.dataset.kind = kind;
    const bubble = el("div", "bubble user-text", text);
    if (imageUrl) {
      const img = el("img");
      img.src = imageUrl;
      img.alt = "Camera frame sent with this message";
      bubble.appendChild(img);
    }
    const meta = el("div", "meta");
    const who = el("span", "kind");
    if (kind === "speech") who.innerHTML = MIC_ICON;
    who.append(kind === "speech" ? "You said" : "You");
    meta.append(who, el("span", "", clock()));
    m.append(bubble, meta);
    this.append(m);
    turn.userEl = m;
    return m;
  }

  /** Fill in (or create) the transcript line of a spoken turn. */
  setTranscript(turn, text) {
    if (!turn.userEl) this.addUser(turn, { kind: "speech", pending: true });
    const m = turn.userEl;
    const stick = this.nearBottom();
    m.classList.remove("pending");
    const bubble = m.querySelector(".bubble");
    bubble.textContent = text && text.trim() ? text.trim() : "(no words recognised)";
    m.classList.add("transcript");
    if (stick) this.scrollToEnd();
  }

  /** A reply bubble that text streams into. */
  addReply(turn) {
    const m = el("div", "msg bot streaming");
    m.dataset.turn = String(turn.n);
    const bubble = el("div", "bubble reply-text");
    const meta = el("div", "meta");
    const who = el("span", "kind", "Agent");
    const time = el("span", "", clock());
    const note = el("span", "status-note");
    const stop = el("button", "btn small danger stop-reply", "Stop");
    stop.type = "button";
    stop.setAttribute("aria-label", `Stop reply ${turn.n}`);
    stop.addEventListener("click", () => this.hooks.onStop(turn));
    const why = el("button", "btn small why-btn", "Why?");
    why.type = "button";
    why.setAttribute("aria-label", `Why this reply (turn ${turn.n})`);
    why.addEventListener("click", () => this.hooks.onWhy(turn));
    const actions = el("span", "reply-actions");
    meta.append(who, time, note, actions, stop, why);
    m.append(bubble, meta);
    this.append(m);
    turn.replyEl = m;
    turn.replyText = "";
    return m;
  }

  appendDelta(turn, delta) {
    if (!turn.replyEl) this.addReply(turn);
    const stick = this.nearBottom();
    turn.replyText += delta;
    turn.replyEl.querySelector(".bubble").textContent = turn.replyText;
    if (stick) this.scrollToEnd();
  }

  setReplyText(turn, text) {
    if (!turn.replyEl) this.addReply(turn);
    turn.replyText = text;
    turn.replyEl.querySelector(".bubble").textContent = text;
  }

  addAction(turn, label, rejected = false) {
    if (!turn.replyEl) this.addReply(turn);
    const chip = el("span", "action-chip" + (rejected ? " rejected" : ""), label);
    turn.replyEl.querySelector(".reply-actions").appendChild(chip);
  }

  /** status: "completed" | "cancelled" | "failed" | "incomplete"; reason: e.g. "barge-in". */
  finishReply(turn, status, reason = "") {
    if (!turn.replyEl) this.addReply(turn);
    const m = turn.replyEl;
    m.classList.remove("streaming");
    m.dataset.status = status;
    const stop = m.querySelector(".stop-reply");
    if (stop) stop.remove();
    const note = m.querySelector(".status-note");
    if (status === "cancelled") {
      m.classList.add("cancelled");
      note.textContent = reason === "barge-in" ? "Interrupted — you started talking" : "Stopped";
      if (!turn.replyText) m.querySelector(".bubble").textContent = "…";
    } else if (status === "failed" || status === "incomplete") {
      m.classList.add("failed");
      note.textContent = status === "failed" ? "Failed" : "Cut short";
      if (!turn.replyText) m.querySelector(".bubble").textContent = reason || "No reply could be produced.";
    }
  }

  markSelected(turn) {
    this.log.querySelectorAll(".msg.bot.selected").forEach((n) => n.classList.remove("selected"));
    if (turn && turn.replyEl) turn.replyEl.classList.add("selected");
  }
}
