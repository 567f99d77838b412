// The server's voice in the page: response.output_audio.delta (base64 PCM16 mono at the
// session's output rate) → an AudioWorklet (playback-worklet.js) that plays the chunks in order
// and counts the frames it has played, per item. At a barge-in, stop() silences it at once and
// returns how much of the reply was heard, for conversation.item.truncate's audio_end_ms.

export class ServerAudio {
  /** @param {{onSpeaking?: (on: boolean) => void}} opts  true when playing starts, false when it ends */
  constructor({ onSpeaking = () => {} } = {}) {
    this.onSpeaking = onSpeaking;
    this.available = typeof AudioWorkletNode !== "undefined";
    this.enabled = false;
    this.ctx = null;
    this.node = null;
    this.rate = 24000;
    this.ready = null;
    this.item = null;           // the item whose audio is playing (or queued)
    this.received = {};         // frames received by item id
    this.played = {};           // frames played by item id (the worklet's count)
    this.playedFrames = 0;      // every frame played (tests watch it advance)
    this.playing = false;
    this.posted = 0;            // messages sent to the worklet (its reports say how many it has seen)
  }

  setEnabled(on) {
    this.enabled = on && this.available;
    if (!this.enabled) this.stop();
  }

  /** Open the audio context at the session's output rate (resumed on a user gesture if needed). */
  async open(rate) {
    if (this.ctx && this.rate === rate) return this.ready;
    await this.close();
    this.rate = rate;
    this.posted = 0;
    const ctx = new AudioContext({ sampleRate: rate, latencyHint: "interactive" });
    this.ctx = ctx;
    this.ready = (async () => {
      await ctx.audioWorklet.addModule(new URL("./playback-worklet.js", import.meta.url));
      const node = new AudioWorkletNode(ctx, "pcm-player", { numberOfInputs: 0, outputChannelCount: [1] });
      node.port.onmessage = (e) => this._progress(e.data);
      node.connect(ctx.destination);
      this.node = node;
    })();
    return this.ready;
  }

  async close() {
    if (this.ctx) {
      const ctx = this.ctx;
      this.ctx = this.node = null;
      this._setPlaying(false);
      await ctx.close().catch(() => {});
    }
  }

  /** One response.output_audio.delta. */
  async push(ev) {
    if (!this.enabled || !this.ctx) return;
    const bin = atob(ev.delta || "");
    const n = bin.length >> 1;
    const samples = new Float32Array(n);
    for (let i = 0; i < n; i++) {
      let v = bin.charCodeAt(2 * i) | (bin.charCodeAt(2 * i + 1) << 8);
      if (v >= 0x8000) v -= 0x10000;
      samples[i] = v / 32768;
    }
    if (this.ctx.state === "suspended") this.ctx.resume().catch(() => {});
    await this.ready;
    if (!this.node) return;
    this.item = ev.item_id;
    this.received[ev.item_id] = (this.received[ev.item_id] || 0) + n;
    this.posted += 1;
    this.node.port.postMessage({ type: "push", item: ev.item_id, samples }, [samples.buffer]);
    this._setPlaying(true);
  }

  /** Milliseconds of `item`'s audio played so far. */
  playedMs(item = this.item) {
    return item ? Math.floor((1000 * (this.played[item] || 0)) / this.rate) : 0;
  }

  /** Barge-in or Stop: silence now. Returns {item, ms} of what was heard (item null if nothing played). */
  stop() {
    const heard = { item: this.playing ? this.item : null, ms: this.playedMs() };
    if (this.node) {
      this.posted += 1;
      this.node.port.postMessage({ type: "clear" });
    }
    this._setPlaying(false);
    return heard;
  }

  _progress(m) {
    if (m.type !== "progress") return;
    for (const [item, frames] of Object.entries(m.played)) this.played[item] = frames;
    this.playedFrames = m.total;
    if (m.messages === this.posted) this._setPlaying(m.playing);   // else: news of an older queue
  }

  _setPlaying(on) {
    if (on === this.playing) return;
    this.playing = on;
    this.onSpeaking(on);
  }
}
