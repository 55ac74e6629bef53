#!/usr/bin/env bash
# Reproduce the shipped default model (mvector/pretrained/EcapaTdnn_Fbank) from the training corpus:
# the three training stages and two weight averages of its model card, then the packaging (fp16
# backbone, EER threshold measured through MVectorPredictor on the dev trials). About 4 h on a
# 2-core CPU.
#
#   bash scripts/reproduce_default_model.sh [train.py arguments for every stage, e.g. --use_gpu true]
#
# MODELS (default models) holds the three runs and the averages; PACKAGE_DIR (default
# mvector/pretrained/EcapaTdnn_Fbank, the shipped model, overwritten) receives the result; TRIALS
# (default the dev trials) is what the threshold is measured on. Write the data lists first:
# python create_data.py.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python}
MODELS=${MODELS:-models}
PACKAGE_DIR=${PACKAGE_DIR:-mvector/pretrained/EcapaTdnn_Fbank}
TRIALS=${TRIALS:-../shared/data/dev/trials.tsv}
RECIPES=configs/recipes
# The model card's average: stage 3's last five epochs (12-16 of its 16).
AVERAGED_EPOCHS=5

"$PY" train.py --configs "$RECIPES/ecapa_tdnn_c256_cpu.yml" --save_model_path "$MODELS/stage1" "$@"
"$PY" train.py --configs "$RECIPES/ecapa_tdnn_c256_cpu_stage2.yml" --save_model_path "$MODELS/stage2" \
  --pretrained "$MODELS/stage1/EcapaTdnn_Fbank/last_model" "$@"
"$PY" train.py --configs "$RECIPES/ecapa_tdnn_c256_cpu_stage3.yml" --save_model_path "$MODELS/stage3" \
  --pretrained "$MODELS/stage2/EcapaTdnn_Fbank/best_model" "$@"
mapfile -t epochs < <(ls -d "$MODELS"/stage3/EcapaTdnn_Fbank/epoch_* | sort -V | tail -n "$AVERAGED_EPOCHS")
"$PY" average_model.py --model_dirs "${epochs[@]}" --out_dir "$MODELS/stage3/avg_last"
# A "soup" of two stages with different heads: their embedding backbones only.
"$PY" average_model.py --backbone_only --model_dirs "$MODELS/stage2/EcapaTdnn_Fbank/best_model" \
  "$MODELS/stage3/avg_last" --out_dir "$MODELS/soup"
"$PY" scripts/package_pretrained.py --model_dir "$MODELS/soup" --out_dir "$PACKAGE_DIR" --trials "$TRIALS"
