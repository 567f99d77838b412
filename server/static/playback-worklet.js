// AudioWorklet that plays the server's voice: PCM16 chunks (posted by player.js as Float32 at
// the context's rate) in order from a queue; reports, per conversation item, how many frames
// have actually been played (for conversation.item.truncate's audio_end_ms).

class PcmPlayer extends AudioWorkletProcessor {
  constructor() {
    super();
    this.queue = [];        // {item, samples: Float32Array, offset}
    this.played = {};       // frames played by item id
    this.total = 0;         // frames played since the worklet started
    this.wasPlaying = false;
    this.sinceReport = 0;
    this.messages = 0;      // messages taken so far: the page ignores a report older than its last one
    this.port.onmessage = (e) => {
      const m = e.data;
      this.messages += 1;
      if (m.type === "push") this.queue.push({ item: m.item, samples: m.samples, offset: 0 });
      else if (m.type === "clear") {
        this.queue = [];
        this.report(true);
      }
    };
  }

  report(force) {
    const playing = this.queue.length > 0;
    if (force || playing !== this.wasPlaying || this.sinceReport >= 1200) {
      this.port.postMessage({ type: "progress", played: { ...this.played }, total: this.total, playing,
        messages: this.messages });
      this.wasPlaying = playing;
      this.sinceReport = 0;
    }
  }

  process(_inputs, outputs) {
    const out = outputs[0][0];
    let i = 0;
    while (i < out.length && this.queue.length) {
      const head = this.queue[0];
      const n = Math.min(out.length - i, head.samples.length - head.offset);
      out.set(head.samples.subarray(head.offset, head.offset + n), i);
      head.offset += n;
      i += n;
      this.played[head.item] = (this.played[head.item] || 0) + n;
      this.total += n;
      if (head.offset >= head.samples.length) this.queue.shift();
    }
    if (i < out.length) out.fill(0, i);
    for (let c = 1; c < outputs[0].length; c++) outputs[0][c].set(out);
    this.sinceReport += out.length;
    this.report(false);
    return true;
  }
}

registerProcessor("pcm-player", PcmPlayer);
