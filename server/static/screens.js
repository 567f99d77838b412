// The kiosk's action screens, drawn from the pack's data (GET /pack/kiosk.json, docs/web.md):
// the store map with an aisle highlighted (show_on_map), the opening-hours card
// (show_opening_hours) and the "someone is coming" card (the pack's handoff action). Facts are
// never written here: every name, aisle and hour comes from the pack.

const SVG = "http://www.w3.org/2000/svg";

function el(tag, cls, text) {
  const e = document.createElement(tag);
  if (cls) e.className = cls;
  if (text !== undefined) e.textContent = text;
  return e;
}

function svg(tag, attrs = {}, text) {
  const e = document.createElementNS(SVG, tag);
  for (const [k, v] of Object.entries(attrs)) e.setAttribute(k, String(v));
  if (text !== undefined) e.textContent = text;
  return e;
}

function round(x) {
  return Math.round(x * 100) / 100;
}

/** A place's name centred in its box: one line if it fits, else two, as large as the box allows. */
function label(name, cx, cy, w, h) {
  const fits = (text, size) => text.length * size * 0.56 <= w * 0.9;
  let lines = [name];
  let size = Math.min(2.8, h * 0.55);
  if (!fits(name, size)) {
    const words = name.split(" ");
    if (words.length > 1) {
      // Break at the space nearest the middle.
      let best = 1;
      for (let i = 1; i < words.length; i++) {
        const a = words.slice(0, i).join(" ").length;
        const b = words.slice(0, best).join(" ").length;
        if (Math.abs(a - name.length / 2) < Math.abs(b - name.length / 2)) best = i;
      }
      lines = [words.slice(0, best).join(" "), words.slice(best).join(" ")];
      size = Math.min(2.8, h * 0.32);
    }
    const longest = Math.max(...lines.map((l) => l.length));
    size = Math.min(size, (w * 0.9) / (longest * 0.56));
  }
  const t = svg("text", { x: round(cx), y: round(cy), "font-size": round(size) });
  lines.forEach((line, i) => {
    const dy = lines.length === 1 ? 0 : (i - 0.5) * size * 1.15;
    t.append(svg("tspan", { x: round(cx), y: round(cy + dy) }, line));
  });
  return t;
}

/**
 * The store map as an SVG, the aisle `highlight` (a number, or null) marked, with a route from
 * "you are here" to the front of that aisle when the map says where the kiosk stands.
 */
export function storeMapSvg(map, highlight = null) {
  const { width: W, height: H } = map.size;
  const root = svg("svg", { viewBox: `-1 -1 ${W + 2} ${H + 2}`, class: "store-map", role: "img" });
  root.append(svg("rect", { class: "sm-floor", x: 0, y: 0, width: W, height: H, rx: 1.5 }));
  const target = map.aisles.find((a) => a.number === highlight) || null;
  for (const p of map.places || []) {
    const g = svg("g", { class: `sm-place sm-${p.kind}` });
    g.append(svg("rect", { x: p.x, y: p.y, width: p.width, height: p.height, rx: 0.8 }));
    g.append(label(p.name, p.x + p.width / 2, p.y + p.height / 2, p.width, p.height));
    root.append(g);
  }
  for (const a of map.aisles) {
    const on = target === a;
    const g = svg("g", { class: "sm-aisle" + (on ? " sm-on" : ""), "data-aisle": a.number });
    g.append(svg("rect", { x: a.x, y: a.y, width: a.width, height: a.height, rx: 0.6 }));
    const size = Math.min(3.4, a.width * 0.72);
    g.append(svg("text", { x: round(a.x + a.width / 2), y: round(a.y + a.height / 2), "font-size": round(on ? size * 1.15 : size) }, String(a.number)));
    root.append(g);
  }
  const here = map.you_are_here;
  if (target && here) {
    // Up from the kiosk into the cross aisle in front of the shelves, along it, into the aisle.
    const bottom = target.y + target.height;
    const front = Math.min(H, ...(map.places || []).filter((p) => p.y >= bottom).map((p) => p.y));
    const lane = round(bottom + (front - bottom) / 2);
    const ax = round(target.x + target.width / 2);
    const pts = here.y > bottom
      ? [[here.x, here.y], [here.x, lane], [ax, lane], [ax, bottom + 0.6]]
      : [[here.x, here.y], [ax, here.y], [ax, target.y + target.height / 2]];
    root.append(svg("polyline", { class: "sm-route", points: pts.map((p) => p.join(",")).join(" ") }));
  }
  if (here) {
    const g = svg("g", { class: "sm-here" });
    g.append(svg("circle", { class: "sm-here-ring", cx: here.x, cy: here.y, r: 2.6 }));
    g.append(svg("circle", { class: "sm-here-dot", cx: here.x, cy: here.y, r: 1.3 }));
    g.append(svg("text", { x: round(here.x + 2.4), y: round(here.y + 0.9), "font-size": 2.3, "text-anchor": "start" }, here.name || "You are here"));
    root.append(g);
  }
  return root;
}

/** The map screen: "Aisle 7" and its name over the map. */
export function mapScreen(map, aisle) {
  const box = el("div", "screen screen-map");
  box.dataset.aisle = aisle == null ? "" : String(aisle);
  const head = el("div", "screen-head");
  const a = map ? map.aisles.find((x) => x.number === aisle) : null;
  head.append(el("p", "screen-kicker", aisle == null ? "Store map" : `Aisle ${aisle}`));
  if (a && a.name) head.append(el("p", "screen-title", a.name));
  box.append(head);
  if (map) {
    const fig = el("div", "screen-map-figure");
    const drawing = storeMapSvg(map, aisle);
    drawing.setAttribute("aria-label", aisle == null ? "Store map" : `Store map with aisle ${aisle} highlighted`);
    fig.append(drawing);
    box.append(fig);
  }
  return box;
}

/** Rows of a structured hours value, whatever shape the pack gives ({day: "8–21"} or [{...}]). */
function hoursRows(hours) {
  if (Array.isArray(hours)) {
    return hours.map((h) => {
      if (typeof h !== "object" || h === null) return [String(h), ""];
      const label = h.days || h.day || h.label || h.name || "";
      const value = h.hours || (h.open && h.close ? `${h.open} – ${h.close}` : h.closed ? "Closed" : h.text || "");
      return [Array.isArray(label) ? label.join(", ") : String(label), String(value)];
    });
  }
  if (hours && typeof hours === "object") {
    return Object.entries(hours).map(([k, v]) => [k, typeof v === "object" && v !== null ? Object.values(v).join(" – ") : String(v)]);
  }
  return [];
}

/** The opening-hours card: each hours entry of the pack, its title and its text (or its table). */
export function hoursScreen(entries) {
  const box = el("div", "screen screen-hours");
  const head = el("div", "screen-head");
  head.append(el("p", "screen-kicker", "Opening hours"));
  box.append(head);
  const list = el("div", "hours-list");
  const today = new Date().toLocaleDateString("en", { weekday: "long" }).toLowerCase();
  for (const e of entries || []) {
    const item = el("section", "hours-item");
    // The card says "Opening hours" already: an entry titled the same needs no heading of its own.
    if (e.title && e.title.toLowerCase() !== "opening hours") item.append(el("h3", "", e.title));
    const rows = hoursRows(e.hours);
    if (rows.length) {
      const table = el("table", "hours-table");
      for (const [label, value] of rows) {
        const tr = el("tr");
        if (label.toLowerCase().includes(today)) tr.className = "today";
        tr.append(el("th", "", label), el("td", "", value));
        table.append(tr);
      }
      item.append(table);
    } else {
      item.append(el("p", "", e.text));
    }
    list.append(item);
  }
  if (!list.childElementCount) list.append(el("p", "", "Please ask a member of staff."));
  box.append(list);
  return box;
}

const STAFF_ICON = '<svg viewBox="0 0 64 64" aria-hidden="true" focusable="false"><circle cx="32" cy="18" r="10" fill="currentColor"/><path d="M12 58c0-12 9-21 20-21s20 9 20 21" fill="currentColor"/><path d="M49 8l5-4M53 15h6M49 22l5 4" stroke="currentColor" stroke-width="3" stroke-linecap="round"/></svg>';

/** The handoff card: a member of staff is on the way (the reply says the pack's words). */
export function handoffScreen(text) {
  const box = el("div", "screen screen-handoff");
  const icon = el("div", "handoff-icon");
  icon.innerHTML = STAFF_ICON;
  box.append(icon, el("p", "screen-title", "A member of staff is on the way"));
  if (text) box.append(el("p", "handoff-text", text));
  return box;
}
