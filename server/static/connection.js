// The session's WebSocket: connect with a token, reconnect with backoff, resume the session.
//
// States: "idle" (no token yet), "connecting", "open", "reconnecting" (waiting to retry),
// "refused" (the server said no to the token: retrying would not help), "closed" (by the page).

const BACKOFF_MS = [500, 1000, 2000, 4000, 8000];
export const PROTOCOL_VERSION = 1;
// Close codes (docs/protocol.md) after which retrying as before cannot help.
const FATAL_CLOSE = {
  4400: "unsupported_version",
  4401: "unauthorized",
  4409: "session_replaced",
};
const SLOW_RETRY_CLOSE = new Set([4429]); // too_many_sessions: retry, but slowly

export class Connection {
  /**
   * @param {object} opts
   * @param {(ev: object) => void} opts.onEvent   every server event, parsed
   * @param {(state: string, info: object) => void} opts.onState
   */
  constructor({ onEvent, onState, path = "/v1/realtime" }) {
    this.onEvent = onEvent;
    this.onState = onState;
    this.path = path;
    this.token = "";
    this.sessionId = null;
    this.ws = null;
    this.state = "idle";
    this.attempt = 0;
    this.retryTimer = null;
    this.retryAt = 0;
    this.seq = 0;
    this.everOpened = false;
    this.lastError = null;
  }

  url() {
    const proto = location.protocol === "https:" ? "wss:" : "ws:";
    const q = new URLSearchParams();
    q.set("v", String(PROTOCOL_VERSION));
    if (this.token) q.set("token", this.token);
    if (this.sessionId) q.set("session_id", this.sessionId);
    const qs = q.toString();
    return `${proto}//${location.host}${this.path}${qs ? "?" + qs : ""}`;
  }

  setState(state, info = {}) {
    this.state = state;
    this.onState(state, info);
  }

  connect(token = this.token) {
    this.token = token;
    this.cancelRetry();
    this.dropSocket();
    this.lastError = null;
    this.setState(this.attempt === 0 ? "connecting" : "reconnecting", { attempt: this.attempt, now: true });
    let ws;
    try {
      ws = new WebSocket(this.url());
    } catch (err) {
      this.setState("refused", { message: `Bad server address: ${err.message}` });
      return;
    }
    this.ws = ws;
    let opened = false;
    ws.onopen = () => {
      opened = true;
      this.everOpened = true;
      this.attempt = 0;
      this.setState("open", {});
    };
    ws.onmessage = (msg) => {
      if (typeof msg.data !== "string") return;
      let ev;
      try {
        ev = JSON.parse(msg.data);
      } catch {
        return;
      }
      if (ev.type === "session.created" || ev.type === "session.updated") {
        const id = ev.session && ev.session.id;
        if (id) this.sessionId = id;
      }
      if (ev.type === "error" && ev.error && Object.values(FATAL_CLOSE).includes(ev.error.code)) {
        this.lastError = ev.error;
      }
      this.onEvent(ev);
    };
    ws.onclose = (ce) => {
      if (this.ws !== ws) return; // a socket we already dropped
      this.ws = null;
      this.onClose(ce, opened);
    };
  }

  async onClose(ce, opened) {
    if (this.state === "closed") return;
    const fatal = FATAL_CLOSE[ce.code] || (this.lastError && this.lastError.code);
    if (fatal) {
      const e = this.lastError || {};
      this.setState("refused", { code: fatal, message: e.message || ce.reason || "" });
      return;
    }
    if (!opened) {
      // A browser cannot see why a handshake failed (it reports 1006). If plain HTTP answers,
      // the server is up and refused the upgrade itself (the Origin check answers 403).
      const up = await this.probe();
      if (this.state === "closed" || this.ws !== null) return; // closed, or a retry already began
      this.scheduleRetry({ unreachable: !up, handshakeRefused: !!up, code: ce.code });
      return;
    }
    const reason = ce.reason || (this.lastError && this.lastError.code) || "";
    this.scheduleRetry({ unreachable: false, code: ce.code, reason, slow: SLOW_RETRY_CLOSE.has(ce.code) });
  }

  /** Is the HTTP side of the server answering? */
  async probe() {
    try {
      const r = await fetch("/healthz", { cache: "no-store" });
      return r.ok || r.status < 500;
    } catch {
      return false;
    }
  }

  scheduleRetry(info) {
    let delay = BACKOFF_MS[Math.min(this.attempt, BACKOFF_MS.length - 1)];
    if (info.slow) delay = Math.max(delay, 15000);
    this.attempt += 1;
    this.retryAt = Date.now() + delay;
    this.setState("reconnecting", { ...info, attempt: this.attempt, delay, everOpened: this.everOpened });
    this.retryTimer = setTimeout(() => this.connect(), delay);
  }

  cancelRetry() {
    if (this.retryTimer) clearTimeout(this.retryTimer);
    this.retryTimer = null;
  }

  dropSocket() {
    if (this.ws) {
      const ws = this.ws;
      this.ws = null;
      ws.onopen = ws.onmessage = ws.onclose = null;
      try {
        ws.close(1000);
      } catch {
        /* already closing */
      }
    }
  }

  close() {
    this.cancelRetry();
    this.setState("closed", {});
    this.dropSocket();
  }

  get isOpen() {
    return this.ws !== null && this.ws.readyState === WebSocket.OPEN;
  }

  /** Send one client event; returns its event_id, or null when not connected. */
  send(ev) {
    if (!this.isOpen) return null;
    const event_id = ev.event_id || `evt_web_${Date.now().toString(36)}_${(this.seq++).toString(36)}`;
    this.ws.send(JSON.stringify({ ...ev, event_id }));
    return event_id;
  }

  /** Send a binary message (docs/protocol.md, "Binary messages"): header JSON + raw payload. */
  sendBinary(header, payload) {
    if (!this.isOpen) return false;
    const head = new TextEncoder().encode(JSON.stringify(header));
    const out = new Uint8Array(2 + head.length + payload.byteLength);
    out[0] = head.length >> 8;
    out[1] = head.length & 0xff;
    out.set(head, 2);
    out.set(new Uint8Array(payload), 2 + head.length);
    this.ws.send(out.buffer);
    return true;
  }

  /** Bytes waiting in the socket: used to drop camera frames rather than build a backlog. */
  get buffered() {
    return this.ws ? this.ws.bufferedAmount : 0;
  }
}
