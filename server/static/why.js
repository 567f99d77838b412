// The "Why" panel: what the agent understood in one turn and which signals carried it.

export const MODALITIES = ["text", "speech", "vision", "context"];
const MODALITY_NAMES = { text: "Text", speech: "Speech", vision: "Vision", context: "Context" };

const $ = (id) => document.getElementById(id);

function pct(x) {
  return `${Math.round(Math.max(0, Math.min(1, x)) * 100)}%`;
}

function stripNulls(obj) {
  return Object.fromEntries(Object.entries(obj).filter(([, v]) => v !== null && v !== undefined));
}

function humanise(label) {
  return String(label || "").replace(/_/g, " ");
}

function withConf(node, value, conf) {
  node.textContent = "";
  node.append(document.createTextNode(humanise(value) || "—"));
  if (typeof conf === "number") {
    const c = document.createElement("span");
    c.className = "conf";
    c.textContent = pct(conf);
    c.setAttribute("aria-label", `confidence ${pct(conf)}`);
    node.append(c);
  }
}

/** Labels and faces out of a perception event, whatever nesting the server chose. */
export function readVision(p) {
  if (!p) return { labels: [], faces: null };
  const src = p.perception || p;
  let labels = src.labels || (src.vision && src.vision.labels) || [];
  if (!Array.isArray(labels)) labels = [];
  labels = labels
    .map((l) => (typeof l === "string" ? { label: l, score: null } : { label: l.label || l.name || l.class_name || "", score: l.score ?? l.confidence ?? l.prob ?? null }))
    .filter((l) => l.label);
  let faces = src.faces ?? (src.vision && src.vision.faces);
  let count = null;
  if (typeof faces === "number") count = faces;
  else if (Array.isArray(faces)) count = faces.length;
  else if (faces && typeof faces === "object") count = faces.count ?? (Array.isArray(faces.boxes) ? faces.boxes.length : null);
  if (count === null && typeof src.face_count === "number") count = src.face_count;
  if (count === null && typeof src.present === "boolean") count = src.present ? 1 : 0;
  // A turn without camera frames says nothing about faces (its face_count 0 is not "nobody").
  if (Array.isArray(src.frames) && src.frames.length === 0) return { labels: [], faces: null };
  return { labels, faces: count };
}

/**
 * The object labels the page may show. ImageNet has no class for a person, so with a face in
 * view its labels describe the person ("bobsled", "football helmet"): none are shown then.
 */
export function objectLabels(vision) {
  return vision.faces ? [] : vision.labels;
}

export class WhyPanel {
  constructor() {
    this.turnLabel = $("why-turn");
    this.empty = $("why-empty");
    this.body = $("why-body");
    this.shown = null;
  }

  clear() {
    this.shown = null;
    this.empty.hidden = false;
    this.body.hidden = true;
    this.turnLabel.textContent = "";
  }

  show(turn) {
    this.shown = turn;
    if (!turn) return;
    this.empty.hidden = true;
    this.body.hidden = false;
    this.turnLabel.textContent = `Turn ${turn.n}`;
    const f = { ...(turn.summary || {}), ...stripNulls(turn.fused || {}) };
    const note = $("why-note");
    const noFusion = turn.fused && turn.fused.intent == null && !Object.keys(turn.fused.modality_weights || {}).length;
    note.hidden = !noFusion;
    note.textContent = noFusion
      ? "This server runs without its fusion model, so it reports no intent confidence or signal weights for this turn."
      : "";
    withConf($("why-intent"), f.intent, f.intent_confidence);
    withConf($("why-emotion"), f.emotion, f.emotion_confidence);
    const addr = $("why-addressee");
    if (typeof f.addressee === "boolean") withConf(addr, f.addressee ? "yes" : "no", f.addressee_prob != null ? (f.addressee ? f.addressee_prob : 1 - f.addressee_prob) : undefined);
    else addr.textContent = "—";
    const heard = $("why-transcript");
    if (turn.transcript != null) {
      withConf(heard, turn.transcript ? `“${turn.transcript.trim()}”` : "no words", turn.transcriptConfidence ?? undefined);
    } else {
      heard.textContent = turn.kind === "typed" ? "typed, not spoken" : "—";
    }
    this.renderWeights(f.modality_weights || {});
    this.renderVision(turn.perception);
    this.renderActions(turn.actions || []);
    const t = f.timings || turn.timings;
    $("why-timings").textContent = t && typeof t === "object"
      ? "Timings: " + Object.entries(t).map(([k, v]) => `${humanise(k)} ${typeof v === "number" ? Math.round(v) + " ms" : v}`).join(" · ")
      : "";
  }

  renderWeights(weights) {
    const list = $("why-weights");
    list.textContent = "";
    for (const m of MODALITIES) {
      const w = typeof weights[m] === "number" ? weights[m] : null;
      const li = document.createElement("li");
      li.className = "bar" + (w === null ? " absent" : "");
      li.dataset.modality = m;
      li.dataset.weight = w === null ? "" : String(w);
      const name = document.createElement("span");
      name.textContent = MODALITY_NAMES[m];
      const track = document.createElement("span");
      track.className = "bar-track";
      track.setAttribute("role", "meter");
      track.setAttribute("aria-label", `${MODALITY_NAMES[m]} weight`);
      track.setAttribute("aria-valuemin", "0");
      track.setAttribute("aria-valuemax", "100");
      track.setAttribute("aria-valuenow", String(Math.round((w || 0) * 100)));
      const fill = document.createElement("span");
      fill.className = "bar-fill";
      fill.style.display = "block";
      fill.style.width = pct(w || 0);
      track.append(fill);
      const val = document.createElement("span");
      val.className = "bar-val";
      val.textContent = w === null ? "absent" : pct(w);
      li.append(name, track, val);
      list.append(li);
    }
  }

  renderVision(p) {
    const box = $("why-vision");
    box.textContent = "";
    const vision = readVision(p);
    const { faces } = vision;
    const labels = objectLabels(vision);
    if (faces !== null) {
      const c = document.createElement("span");
      c.className = "chip face";
      c.textContent = faces === 0 ? "no face" : faces === 1 ? "1 face" : `${faces} faces`;
      box.append(c);
    }
    for (const l of labels.slice(0, 5)) {
      const c = document.createElement("span");
      c.className = "chip label";
      c.textContent = humanise(l.label) + (typeof l.score === "number" ? ` ${pct(l.score)}` : "");
      box.append(c);
    }
    if (faces && vision.labels.length) {
      const s = document.createElement("span");
      s.className = "caption";
      s.textContent = "Object labels are not shown while a person is in view.";
      box.append(s);
    }
    if (!box.childElementCount) {
      const s = document.createElement("span");
      s.className = "caption";
      s.textContent = "Nothing for this turn.";
      box.append(s);
    }
  }

  renderActions(actions) {
    const list = $("why-actions");
    list.textContent = "";
    if (!actions.length) {
      const li = document.createElement("li");
      li.className = "caption";
      li.textContent = "None.";
      list.append(li);
      return;
    }
    for (const a of actions) {
      const li = document.createElement("li");
      if (a.rejected) li.className = "rejected";
      const name = document.createElement("strong");
      name.textContent = humanise(a.name) + (a.rejected ? " (refused)" : "");
      li.append(name);
      const args = a.arguments;
      if (args && Object.keys(args).length) {
        const code = document.createElement("code");
        code.textContent = typeof args === "string" ? args : JSON.stringify(args);
        li.append(" ", code);
      }
      if (a.rejected && a.reason) li.append(` — ${a.reason}`);
      list.append(li);
    }
  }
}
