#!/usr/bin/env bash
# The main job: convert the bundled sample MVCT with the shipped model and write, into out/, the
# enhanced volume, the DIG and NSelfSSIM maps, a JSON report and a PNG montage.
# Uses the default trained model when this checkout has one, else the tiny UNTRAINED test generator
# (its output is not a kV-like image; it only shows the pipeline works).
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${1:-out}
mkdir -p "$OUT"
MODEL=Resources/models/mvctenhance-default.pt
if [ ! -f "$MODEL" ]; then
  MODEL=Resources/models/mvctenhance-tiny-test.pt
  echo "NOTE: no trained default model in this checkout; using the tiny UNTRAINED test generator" >&2
fi
.venv/bin/mvct-enhance enhance Resources/sample/sample_mvct.nrrd \
  --planning-ct Resources/sample/sample_planning_ct.nrrd \
  --model "$MODEL" --output-dir "$OUT" --overwrite
