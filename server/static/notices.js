// Plain-words problems at the top of the page (in kiosk mode: in the staff view only).

const $ = (id) => document.getElementById(id);

/** Show a plain error. `key` de-duplicates; `timeoutMs` removes transient ones by themselves. */
export function showError(key, title, detail = "", { warn = false, timeoutMs = 0, action = null } = {}) {
  clearError(key);
  const box = document.createElement("div");
  box.className = "error" + (warn ? " warn" : "");
  box.dataset.key = key;
  const text = document.createElement("div");
  const strong = document.createElement("strong");
  strong.textContent = title;
  text.append(strong);
  if (detail) {
    const p = document.createElement("p");
    p.textContent = detail;
    text.append(p);
  }
  box.append(text);
  if (action) {
    const b = document.createElement("button");
    b.type = "button";
    b.className = "btn small";
    b.textContent = action.label;
    b.addEventListener("click", () => {
      clearError(key);
      action.run();
    });
    box.append(b);
  }
  const close = document.createElement("button");
  close.type = "button";
  close.className = "btn small ghost";
  close.textContent = "Dismiss";
  close.setAttribute("aria-label", `Dismiss: ${title}`);
  close.addEventListener("click", () => clearError(key));
  box.append(close);
  $("errors").append(box);
  if (timeoutMs) setTimeout(() => box.remove(), timeoutMs);
}

export function clearError(key) {
  document.querySelectorAll(`#errors .error[data-key="${key}"]`).forEach((n) => n.remove());
}

/** [title, detail] for a getUserMedia failure of the microphone ("mic") or the camera. */
export function deviceError(what, err) {
  const name = (err && err.name) || "";
  const device = what === "mic" ? "microphone" : "camera";
  const Device = device[0].toUpperCase() + device.slice(1);
  if (!window.isSecureContext || !navigator.mediaDevices) {
    return [`${Device} unavailable on this address`, `Browsers only allow the ${device} on https:// pages or on localhost. Open the page through https or on this machine as http://localhost.`];
  }
  if (name === "NotAllowedError" || name === "SecurityError") {
    return [`${Device} access was denied`, `Allow the ${device} for this site in the browser (the icon at the left of the address bar), then press “Turn ${device} on” again.`];
  }
  if (name === "NotFoundError" || name === "OverconstrainedError") {
    return [`No ${device} found`, `Connect a ${device} and try again.`];
  }
  if (name === "NotReadableError" || name === "AbortError") {
    return [`The ${device} is busy`, `Another application may be using it. Close it and try again.`];
  }
  return [`The ${device} could not start`, (err && err.message) || String(err)];
}

const LIMIT_CODES = new Set(["message_too_large", "frame_rate_exceeded", "audio_rate_exceeded", "audio_buffer_full", "too_many_errors", "too_many_sessions"]);

/** A server `error` event in plain words; returns false for codes the page handles elsewhere. */
export function showServerError(e) {
  const code = e.code || "error";
  const msg = e.message || "";
  switch (code) {
    case "unauthorized":
    case "unsupported_version":
    case "session_replaced":
    case "session_not_found":
    case "response_cancel_not_active": // the reply ended on its own just before the stop arrived
    case "idle_timeout": // reconnects quietly
      return false;
    case "input_audio_buffer_commit_empty":
      showError("ptt", "Nothing was heard", "Hold the talk button while you speak, and release it when you are done.", { warn: true, timeoutMs: 6000 });
      return true;
    case "conversation_already_has_active_response":
      showError("busy", "Still answering", "Wait for the current reply to finish, or stop it first.", { warn: true, timeoutMs: 6000 });
      return true;
    default:
      break;
  }
  if (LIMIT_CODES.has(code) || e.type === "rate_limit_error") {
    showError(`limit-${code}`, "Limit exceeded", msg || code, { warn: true, timeoutMs: 10000 });
  } else if (["responder_failed", "model_load_failed", "internal_error", "checkpoint_mismatch"].includes(code)) {
    showError(`server-${code}`, "The agent could not answer", msg || code, { timeoutMs: 15000 });
  } else {
    showError(`err-${code}`, "The server reported a problem", `${msg} (${code})`, { timeoutMs: 12000 });
  }
  return true;
}
