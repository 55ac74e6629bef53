#!/usr/bin/env bash
# Train the default model's GPU recipe inside one device call and return fp16 weights through $OUT
# (a call runs at most 10 minutes and returns files of at most 16 MiB: no checkpoint with optimizer
# state can travel, so the whole run fits in one call). Evaluate what comes back on the dev set on
# the CPU (eval.py --model_dir ...), which does not fit beside the training set in a call.
#
#   bash scripts/device_train.sh [TRAIN_SECONDS] [train.py arguments, e.g. --override k=v ...]
#
# The checkout must carry (README "Train on a borrowed GPU machine in one call" prepares them):
#   $DATA/train  a copy of ../shared/data/train (DATA defaults to .data, git-ignored)
#   .whl/deps    wheels the device image lacks (soundfile, cffi, pycparser, soxr), if any
#   .whl/cache   the simulated RIR bank, as pyroomacoustics is absent there
# Data lists and checkpoints go under $DATA. Returns $OUT/train.log, $OUT/last (the last epoch) and
# $OUT/avg_last5 (the mean of the last five).
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:?set OUT to the folder whose files come back}
PY=${PYTHON:-python3}
DATA=${DATA:-.data}
CONFIG=${CONFIG:-configs/recipes/ecapa_tdnn_gpu.yml}
TRAIN_SECONDS=${1:-420}
shift || true
RUN=$DATA/run
LOG=$OUT/train.log

source scripts/device_env.sh

"$PY" create_data.py --data_root "$DATA" --out_dir "$DATA/lists" 2>&1 | tee "$LOG"
# Stopped at the time limit, the run still leaves every finished epoch: better a model from those
# than nothing when the call's limit comes.
train() {
  local seconds=$1
  shift
  timeout --signal=INT --kill-after=30 "$seconds" "$PY" train.py --configs "$CONFIG" --use_gpu true \
    --save_model_path "$RUN" --log_dir "$RUN/log" --override "dataset_conf.train_list=$DATA/lists/train_list.txt" \
    --override dataset_conf.trials=null "$@" 2>&1 | tee -a "$LOG"
}
start=$SECONDS
status=0
train "$TRAIN_SECONDS" "$@" || status=$?
# A torch.compile that fails on that machine's torch must not cost the call: go on without it.
left=$((TRAIN_SECONDS - (SECONDS - start)))
if [ "$status" -eq 2 ] && grep -q "torch.compile failed" "$LOG" && [ "$left" -ge 10 ]; then
  echo "retrying without torch.compile for the ${left} s left" | tee -a "$LOG"
  rm -rf "$RUN"
  status=0
  train "$left" "$@" --override train_conf.use_compile=false || status=$?
fi
echo "train.py exit status $status (124: stopped at the time limit)" | tee -a "$LOG"

mapfile -t epochs < <(ls -d "$RUN"/*/epoch_* 2>/dev/null | sort -V | tail -n 5)
if [ ${#epochs[@]} -eq 0 ]; then
  echo "no epoch finished; see $LOG" >&2
  exit 1
fi
"$PY" average_model.py --backbone_only --half --model_dirs "${epochs[-1]}" --out_dir "$OUT/last" | tee -a "$LOG"
"$PY" average_model.py --backbone_only --half --model_dirs "${epochs[@]}" --out_dir "$OUT/avg_last5" | tee -a "$LOG"
