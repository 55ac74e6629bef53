#!/usr/bin/env bash
# The project's one test command (README "Run the tests"; .ci/run calls exactly this):
# installs what the suite needs, then runs it. Exits non-zero on any failure.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}

# A CPU build of torch first, so that pip never pulls a multi-GB CUDA build on a CPU machine.
"$PY" -c "import torch" 2>/dev/null || "$PY" -m pip install -q torch==2.13.0
"$PY" -m pip install -q -e ".[test]"

# The microphone test records through a real PulseAudio server; install it where we are allowed to.
if ! command -v pulseaudio >/dev/null 2>&1 && [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
      pulseaudio pulseaudio-utils >/dev/null) || echo "note: could not install pulseaudio; the microphone test will skip"
fi

# The web page test drives a headless Chromium through chromedriver (both from Debian, never downloaded).
if ! command -v chromedriver >/dev/null 2>&1 && [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
      chromium chromium-driver >/dev/null) || echo "note: could not install chromium; the web page test will skip"
fi

"$PY" -m pytest -q -p no:cacheprovider tests "$@"
