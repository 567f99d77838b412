// AudioWorklet: microphone float samples -> PCM16 mono at the session's rate, in fixed chunks.
//
// Runs on the audio thread. The AudioContext's own rate (44.1 or 48 kHz, sometimes 16 kHz) rarely
// matches the session's rate (24 kHz by default), so the processor resamples: a box filter over
// one output period (anti-aliasing when downsampling) followed by linear interpolation. Each
// chunk goes to the main thread as a transferable Int16Array buffer together with its RMS level,
// which drives the level meter.

class PcmEncoder extends AudioWorkletProcessor {
  constructor(options) {
    super();
    const opts = (options && options.processorOptions) || {};
    this.outRate = opts.targetRate || 24000;
    this.chunkMs = opts.chunkMs || 20;
    this.inRate = sampleRate; // AudioWorkletGlobalScope global
    this.step = this.inRate / this.outRate; // input samples per output sample
    this.chunkLen = Math.round((this.outRate * this.chunkMs) / 1000);
    this.chunk = new Int16Array(this.chunkLen);
    this.fill = 0;
    this.pos = 0; // fractional read position into `hist` (input samples)
    this.hist = new Float32Array(0); // unread input samples, carried between render quanta
    this.sumSq = 0;
    this.enabled = true;
    this.port.onmessage = (ev) => {
      const msg = ev.data || {};
      if (msg.type === "enable" && !!msg.value !== this.enabled) {
        // Push-to-talk release: what was said up to now goes out before the commit.
        if (this.enabled) this.flush();
        this.enabled = !!msg.value;
        this.fill = 0;
        this.sumSq = 0;
        this.chunk = new Int16Array(this.chunkLen);
        this.port.postMessage({ type: "enabled", value: this.enabled });
      }
    };
  }

  flush() {
    if (this.fill > 0) {
      this.emit(this.chunk.slice(0, this.fill));
      this.fill = 0;
    }
  }

  emit(samples) {
    const rms = Math.sqrt(this.sumSq / Math.max(1, samples.length));
    this.sumSq = 0;
    this.port.postMessage({ type: "chunk", pcm: samples.buffer, rms }, [samples.buffer]);
  }

  process(inputs) {
    const input = inputs[0];
    if (!input || input.length === 0 || !input[0]) return true;
    const frames = input[0].length;
    // Downmix to mono.
    const mono = new Float32Array(this.hist.length + frames);
    mono.set(this.hist, 0);
    for (let c = 0; c < input.length; c++) {
      const ch = input[c];
      for (let i = 0; i < frames; i++) mono[this.hist.length + i] += ch[i] / input.length;
    }
    const step = this.step;
    const half = step > 1 ? step / 2 : 0;
    let pos = this.pos;
    // Need pos + half + 1 < mono.length to interpolate/average safely.
    while (pos + half + 1 < mono.length) {
      let v;
      if (step > 1) {
        // Average the input window centred on pos: cheap low-pass before decimation.
        const a = Math.max(0, Math.floor(pos - half));
        const b = Math.min(mono.length - 1, Math.ceil(pos + half));
        let s = 0;
        for (let k = a; k <= b; k++) s += mono[k];
        v = s / (b - a + 1);
      } else {
        const i = Math.floor(pos);
        const f = pos - i;
        v = mono[i] * (1 - f) + mono[i + 1] * f;
      }
      if (v > 1) v = 1;
      else if (v < -1) v = -1;
      this.sumSq += v * v;
      if (this.enabled) {
        this.chunk[this.fill++] = v < 0 ? v * 0x8000 : v * 0x7fff;
        if (this.fill === this.chunkLen) {
          this.emit(this.chunk);
          this.chunk = new Int16Array(this.chunkLen);
          this.fill = 0;
        }
      } else if (++this.fill >= this.chunkLen) {
        // Still report the level while muted (push-to-talk idle), but send no audio.
        this.port.postMessage({ type: "level", rms: Math.sqrt(this.sumSq / this.chunkLen) });
        this.sumSq = 0;
        this.fill = 0;
      }
      pos += step;
    }
    // Keep the tail (and a little history for the box filter) for the next quantum.
    const keepFrom = Math.max(0, Math.floor(pos - half) - 1);
    this.hist = mono.slice(keepFrom);
    this.pos = pos - keepFrom;
    return true;
  }
}

registerProcessor("pcm-encoder", PcmEncoder);
