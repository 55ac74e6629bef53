#!/usr/bin/env bash
# The project's one test command (README "Run the tests"; .ci/run calls exactly this):
# installs what the suite needs, then runs it. Exits non-zero on any failure.
#
#   bash scripts/test.sh [--system-packages] [pytest arguments...]
#
# System packages (PulseAudio for the real-microphone test, Chromium and chromedriver, about 380 MB,
# for the web page test) are installed only under CI=true or with --system-packages, as root on
# Debian; elsewhere those tests skip, saying so. An mvector already installed in this environment is
# kept as it is (only the test requirements are added); the tests run this checkout's code either way.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}

system_packages=0
[ "${CI:-}" = "true" ] && system_packages=1
pytest_args=()
for arg in "$@"; do
  if [ "$arg" = "--system-packages" ]; then system_packages=1; else pytest_args+=("$arg"); fi
done

# A CPU build of torch first, so that pip never pulls a multi-GB CUDA build on a CPU machine.
"$PY" -c "import torch" 2>/dev/null || "$PY" -m pip install -q torch==2.13.0
if (cd / && "$PY" -c "import mvector" 2>/dev/null); then
  "$PY" -m pip install -q -r requirements.txt -r requirements-test.txt
else
  "$PY" -m pip install -q -e ".[test]"
fi

apt_install() {  # what: the test that needs it; then the Debian packages
  local what=$1; shift
  if [ "$system_packages" = 1 ] && [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "$@" \
        >/dev/null) || echo "note: could not install $*; the $what test will skip"
  fi
}
command -v pulseaudio >/dev/null 2>&1 || apt_install "microphone" pulseaudio pulseaudio-utils
command -v chromedriver >/dev/null 2>&1 || apt_install "web page" chromium chromium-driver
# PostgreSQL's server programs (the tests start their own cluster in a temporary folder).
ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || command -v initdb >/dev/null 2>&1 \
  || apt_install "PostgreSQL library" postgresql

# Two workers, each taking whole test modules (their module fixtures are built once): much of the
# suite is single-threaded tracing, exporting and subprocess start-up, so two workers finish it in
# about two thirds of the time even on 2 cores. A later -n in the arguments replaces it (-n 0: one process).
"$PY" -m pytest -q -p no:cacheprovider -n 2 --dist loadfile tests "${pytest_args[@]}"
