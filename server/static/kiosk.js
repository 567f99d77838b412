// Kiosk mode: attract screen while nobody is present, a greeting on arrival, spoken replies.

const $ = (id) => document.getElementById(id);

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
  }

  /** A face count from the server; null means the event carried no face information. */
  observe(count) {
    if (count === null || count === undefined) return;
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
    this.lastSeen = Date.now();
    this.arm();
    if (!this.present) this.set(true);
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

/** Speaks replies sentence by sentence while they stream, so speech starts before the reply ends. */
export class Speaker {
  constructor() {
    this.enabled = false;
    this.buffer = "";
    this.available = typeof window.speechSynthesis !== "undefined";
    this.onSpeaking = () => {};
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
    this.onSpeaking(true);
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

export class KioskScreen {
  constructor({ greetingText, onArrive }) {
    this.attract = $("attract");
    this.greeting = $("greeting");
    this.greetingText = greetingText;
    this.onArrive = onArrive;
    this.greetTimer = null;
  }

  showAttract() {
    this.attract.hidden = false;
    this.greeting.hidden = true;
    document.body.dataset.presence = "absent";
  }

  arrive() {
    const wasAttract = !this.attract.hidden;
    this.attract.hidden = true;
    document.body.dataset.presence = "present";
    if (!wasAttract) return;
    this.greeting.textContent = this.greetingText;
    this.greeting.hidden = false;
    if (this.greetTimer) clearTimeout(this.greetTimer);
    this.greetTimer = setTimeout(() => (this.greeting.hidden = true), 5000);
    this.onArrive(this.greetingText);
  }
}

export async function enterFullscreen() {
  if (document.fullscreenElement || !document.documentElement.requestFullscreen) return;
  try {
    await document.documentElement.requestFullscreen({ navigationUI: "hide" });
  } catch {
    /* needs a user gesture; the Full screen button is there for that */
  }
}
