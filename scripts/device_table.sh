#!/usr/bin/env bash
# Train backbones of the README's table (scripts/backbone_table.py --train_only) inside one device
# call and return each as $OUT/<backbone>.tar (its fp16 final model and .train.json); score them
# here, as the dev set does not travel beside the training set. One call returns at most 64 MiB:
# three backbones at a time (the six come to 67 MiB in fp16).
#
#   bash scripts/device_table.sh STEPS BACKBONE... [-- backbone_table.py arguments]
#
# Carries what device_train.sh carries ($DATA/train, .whl/deps, .whl/cache). Then, here:
#   for f in <returned files>/*.tar; do tar -xf "$f" -C models/backbone_table; done
#   python scripts/backbone_table.py --steps STEPS --use_gpu --out models/backbone_table
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:?set OUT to the folder whose files come back}
PY=${PYTHON:-python3}
DATA=${DATA:-.data}
# Where the data lists go: by default where the recipe names them (dataset/, empty in the device's
# checkout), so the recipe recorded there is the one a plain scoring run here checks against.
LISTS=${LISTS:-dataset}
GPU_FLAG=${GPU_FLAG---use_gpu}  # empty: train on the CPU (the tests do)
STEPS=${1:?give the training steps of every backbone}
shift
backbones=()
while [ $# -gt 0 ] && [ "$1" != "--" ]; do
  backbones+=("$1")
  shift
done
[ $# -gt 0 ] && shift
[ ${#backbones[@]} -gt 0 ] || { echo "name at least one backbone" >&2; exit 2; }
source scripts/device_env.sh

"$PY" create_data.py --data_root "$DATA" --out_dir "$LISTS" 2>&1 | tee "$OUT/table.log"
"$PY" scripts/backbone_table.py --train_only --steps "$STEPS" $GPU_FLAG --backbones "${backbones[@]}" \
  --out "$DATA/table" --no_progress --override "dataset_conf.train_list=$LISTS/train_list.txt" \
  --override dataset_conf.num_workers=8 "$@" 2>&1 | tee -a "$OUT/table.log"
for name in "${backbones[@]}"; do
  tar -cf "$OUT/$name.tar" -C "$DATA/table" "$name.train.json" "$name/final"
done
