// Kiosk behaviour without DOM: who is at the kiosk (Presence), how long nothing has happened
// (IdleTimer), and the browser's voice for replies (Speaker). The screen is kiosk-view.js.

/** Presence from the server's face counts, with hysteresis so a blink does not flip the screen. */
export class Presence {
  /**
   * @param {object} opts
   * @param {number} opts.absentMs  no face for this long -> nobody present
   * @param {(present: boolean) => void} opts.onChange
   */
  constructor({ absentMs = 4000, onChange }) {
    this.absentMs = absentMs;
    this.onChange = onChange;
    this.present = false;
    this.lastSeen = 0;
    this.timer = null;
    this.waitForEmpty = false; // after an idle timeout: the person still in view is not a new arrival
    this.emptySince = null;
  }

  /** A face count from the server; null means the event carried no face information. */
  observe(count) {
    if (count === null || count === undefined) return;
    if (this.waitForEmpty) {
      // Re-arm only once nobody has been seen for a while (one missed detection is not enough).
      if (count > 0) this.emptySince = null;
      else if (this.emptySince === null) this.emptySince = Date.now();
      else if (Date.now() - this.emptySince >= Math.min(this.absentMs, 3000)) this.waitForEmpty = false;
      return;
    }
    if (count > 0) {
      this.lastSeen = Date.now();
      this.arm();
      if (!this.present) this.set(true);
    } else if (this.present && !this.timer) {
      this.arm();
    }
  }

  /** Someone is clearly there (typed, touched, talked) even if the camera cannot see them. */
  touch() {
    this.waitForEmpty = false;
    this.lastSeen = Date.now();
    this.arm();
    if (!this.present) this.set(true);
  }

  /** Nobody present from now on; with waitForEmpty, faces count again only after an empty view. */
  reset({ waitForEmpty = false } = {}) {
    if (this.timer) clearTimeout(this.timer);
    this.timer = null;
    this.present = false;
    this.waitForEmpty = waitForEmpty;
    this.emptySince = null;
  }

  arm() {
    if (this.timer) clearTimeout(this.timer);
    const wait = Math.max(0, this.lastSeen + this.absentMs - Date.now());
    this.timer = setTimeout(() => {
      this.timer = null;
      if (Date.now() - this.lastSeen >= this.absentMs) this.set(false);
      else this.arm();
    }, wait + 10);
  }

  set(present) {
    this.present = present;
    this.onChange(present);
  }
}

/** Calls onIdle once nothing has happened for `ms` (poke() on every sign of use), unless busy(). */
export class IdleTimer {
  constructor({ ms, onIdle, busy = () => false }) {
    this.ms = ms;
    this.onIdle = onIdle;
    this.busy = busy;
    this.last = Date.now();
    this.timer = null;
  }

  start() {
    this.poke();
    if (!this.timer) this.timer = setInterval(() => this.check(), Math.min(1000, this.ms / 4));
  }

  stop() {
    if (this.timer) clearInterval(this.timer);
    this.timer = null;
  }

  poke() {
    this.last = Date.now();
  }

  check() {
    if (this.busy()) {
      this.poke(); // a reply that is still streaming or being spoken is not idleness
      return;
    }
    if (Date.now() - this.last >= this.ms) {
      this.stop();
      this.onIdle();
    }
  }
}

/**
 * Speaks replies sentence by sentence while they stream, so speech starts before the reply ends.
 * The browser's speechSynthesis: the fallback once the server sends audio (issue 13), which a
 * player of response.output_audio.delta plays instead, reporting playback the same way.
 */
export class Speaker {
  /** @param {(speaking: boolean) => void} onSpeaking  true when the first sentence starts, false when all ended */
  constructor({ onSpeaking = () => {} } = {}) {
    this.enabled = false;
    this.buffer = "";
    this.available = typeof window.speechSynthesis !== "undefined";
    this.onSpeaking = onSpeaking;
    this.pending = 0;
  }

  setEnabled(on) {
    this.enabled = on && this.available;
    if (!this.enabled) this.cancel();
  }

  feed(delta) {
    if (!this.enabled) return;
    this.buffer += delta;
    const m = this.buffer.match(/^([\s\S]*?[.!?…])(\s+)([\s\S]*)$/);
    if (m) {
      this.say(m[1]);
      this.buffer = m[3];
    }
  }

  end() {
    if (this.buffer.trim()) this.say(this.buffer);
    this.buffer = "";
  }

  say(text) {
    if (!this.enabled || !text.trim()) return;
    const u = new SpeechSynthesisUtterance(text.trim());
    u.lang = document.documentElement.lang || "en";
    this.pending += 1;
    if (this.pending === 1) this.onSpeaking(true);
    let finished = false;
    const done = () => {
      if (finished) return;
      finished = true;
      clearTimeout(guard);
      this.pending = Math.max(0, this.pending - 1);
      if (!this.pending) this.onSpeaking(false);
    };
    // Some systems have no voice and never fire end or error: do not stay "speaking" forever
    // (a kiosk stops listening while it speaks). About 2.5 words a second, plus slack.
    const guard = setTimeout(done, 3000 + text.split(/\s+/).length * 600);
    u.onend = done;
    u.onerror = done;
    window.speechSynthesis.speak(u);
  }

  cancel() {
    this.buffer = "";
    if (this.available) window.speechSynthesis.cancel();
    if (this.pending) {
      this.pending = 0;
      this.onSpeaking(false);
    }
  }
}

export async function enterFullscreen() {
  if (document.fullscreenElement || !document.documentElement.requestFullscreen) return;
  try {
    await document.documentElement.requestFullscreen({ navigationUI: "hide" });
  } catch {
    /* needs a user gesture; the first touch is one */
  }
}
