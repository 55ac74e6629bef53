#!/usr/bin/env bash
# Reproduce the shipped default model (mvector/pretrained/CAMPPlus_3DSpeaker): fetch 3D-Speaker's
# published CAM++ checkpoint, import it unchanged, package it (fp16 weights, thresholds measured
# through MVectorPredictor on the dev trials; the model card, LICENSE and NOTICE are kept).
# A few minutes on a 2-core CPU.
#
#   bash scripts/reproduce_campplus_3dspeaker.sh
#
# MODELS (default models) receives the imported float32 directory; PACKAGE_DIR (default the shipped
# model, overwritten) the packaged one; TRIALS (default the dev trials) is what the thresholds are
# measured on.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python}
MODELS=${MODELS:-models}
PACKAGE_DIR=${PACKAGE_DIR:-mvector/pretrained/CAMPPlus_3DSpeaker}
TRIALS=${TRIALS:-../shared/data/dev/trials.tsv}

checkpoint=$("$PY" scripts/fetch_3dspeaker_campplus.py)
"$PY" import_model.py --from 3dspeaker --checkpoint "$checkpoint" --out_dir "$MODELS/imported/campplus_3dspeaker" \
  --overwrite
"$PY" scripts/package_pretrained.py --model_dir "$MODELS/imported/campplus_3dspeaker" --out_dir "$PACKAGE_DIR" \
  --trials "$TRIALS"
