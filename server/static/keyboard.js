// An on-screen keyboard for the kiosk (a touch screen has no keys): big keys that type into one
// input. A physical keyboard keeps working in the same input.

const ROWS = [
  ["1", "2", "3", "4", "5", "6", "7", "8", "9", "0"],
  ["q", "w", "e", "r", "t", "y", "u", "i", "o", "p"],
  ["a", "s", "d", "f", "g", "h", "j", "k", "l", "'"],
  ["⇧", "z", "x", "c", "v", "b", "n", "m", ",", "?"],
  ["space", "⌫"],
];

export class OnScreenKeyboard {
  /**
   * @param {HTMLElement} box    where the keys go
   * @param {HTMLInputElement} input  the field they type into
   * @param {() => void} onKey   called on every key (the kiosk counts it as activity)
   */
  constructor(box, input, onKey = () => {}) {
    this.box = box;
    this.input = input;
    this.onKey = onKey;
    this.shift = true; // a question starts with a capital
    this.build();
  }

  build() {
    this.box.textContent = "";
    for (const row of ROWS) {
      const r = document.createElement("div");
      r.className = "k-keys-row";
      for (const k of row) {
        const b = document.createElement("button");
        b.type = "button";
        b.className = "k-key" + (k === "space" ? " k-key-space" : k.length > 1 || k === "⌫" || k === "⇧" ? " k-key-wide" : "");
        b.dataset.key = k;
        b.textContent = k === "space" ? "space" : k;
        if (k === "⌫") b.setAttribute("aria-label", "Delete");
        if (k === "⇧") b.setAttribute("aria-label", "Capital letter");
        if (k === "space") b.setAttribute("aria-label", "Space");
        // pointerdown, not click: the input keeps its focus and caret.
        b.addEventListener("pointerdown", (e) => {
          e.preventDefault();
          this.press(k);
        });
        b.addEventListener("keydown", (e) => {
          if (e.key === "Enter" || e.key === " ") {
            e.preventDefault();
            this.press(k);
          }
        });
        r.append(b);
      }
      this.box.append(r);
    }
    this.renderShift();
  }

  press(k) {
    const inp = this.input;
    const start = inp.selectionStart ?? inp.value.length;
    const end = inp.selectionEnd ?? inp.value.length;
    if (k === "⇧") {
      this.shift = !this.shift;
      this.renderShift();
      return;
    }
    if (k === "⌫") {
      const from = start === end ? Math.max(0, start - 1) : start;
      inp.value = inp.value.slice(0, from) + inp.value.slice(end);
      inp.setSelectionRange(from, from);
    } else {
      let ch = k === "space" ? " " : k;
      if (this.shift && /[a-z]/.test(ch)) ch = ch.toUpperCase();
      inp.value = inp.value.slice(0, start) + ch + inp.value.slice(end);
      inp.setSelectionRange(start + ch.length, start + ch.length);
      if (this.shift && ch !== " ") {
        this.shift = false;
        this.renderShift();
      }
    }
    inp.dispatchEvent(new Event("input", { bubbles: true }));
    this.onKey();
  }

  /** After sending: empty, capital first letter again. */
  reset() {
    this.input.value = "";
    this.shift = true;
    this.renderShift();
  }

  renderShift() {
    for (const b of this.box.querySelectorAll(".k-key")) {
      const k = b.dataset.key;
      if (k === "⇧") b.setAttribute("aria-pressed", String(this.shift));
      else if (/^[a-z]$/.test(k)) b.textContent = this.shift ? k.toUpperCase() : k;
    }
  }
}
