#!/usr/bin/env bash
# Reproduce the packaged small model (mvector/pretrained/EcapaTdnn_Small, model="small"): the
# 256-channel ECAPA-TDNN distilled from the imported 3D-Speaker CAM++ (its model card), about 1 h 15 min
# on a 2-core CPU, then the average of its chosen epoch with the model it started from, and the
# packaging (fp16 backbone, thresholds measured through MVectorPredictor on the dev trials).
#
#   bash scripts/reproduce_small_model.sh [train.py arguments, e.g. --use_gpu true]
#
# MODELS (default models/small) holds the run and the average; PACKAGE_DIR (default
# mvector/pretrained/EcapaTdnn_Small, overwritten) receives the result; TRIALS (default the dev
# trials) is what the thresholds are measured on; EPOCH (default the model card's) is the epoch
# averaged. Needs the data lists (python create_data.py) and the published checkpoint, fetched from
# the package index with its sha256 checked.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python}
MODELS=${MODELS:-models/small}
PACKAGE_DIR=${PACKAGE_DIR:-mvector/pretrained/EcapaTdnn_Small}
TRIALS=${TRIALS:-../shared/data/dev/trials.tsv}
EPOCH=${EPOCH:-3}
TEACHER=models/imported/campplus_3dspeaker   # the recipe's distillation teacher, in float32

if [ ! -f "$TEACHER/model.pth" ]; then
  checkpoint=$("$PY" -c "import importlib.util as u; s = u.spec_from_file_location('f', 'scripts/fetch_3dspeaker_campplus.py'); m = u.module_from_spec(s); s.loader.exec_module(m); print(m.fetch()[0])")
  "$PY" import_model.py --from 3dspeaker --checkpoint "$checkpoint" --out_dir "$TEACHER"
fi
"$PY" train.py --configs configs/recipes/ecapa_small_distill_cpu.yml --save_model_path "$MODELS" \
  --pretrained mvector/pretrained/EcapaTdnn_Fbank "$@"
# A "soup": the fine-tuned backbone averaged with the one it started from.
"$PY" average_model.py --backbone_only --model_dirs mvector/pretrained/EcapaTdnn_Fbank \
  "$MODELS/EcapaTdnn_Fbank/epoch_$EPOCH" --out_dir "$MODELS/soup"
"$PY" scripts/package_pretrained.py --model_dir "$MODELS/soup" --out_dir "$PACKAGE_DIR" --trials "$TRIALS"
