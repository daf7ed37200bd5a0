#!/usr/bin/env bash
# train_and_score.sh - one command for a training session on a lent GPU:
# trains the FPDM and the DiT MNIST models side by side for a fixed wall
# time, then samples digits from each with fpdm-sample and scores them with
# tools/eval.py (class accuracy, Frechet distance, nearest-training-digit
# distance), and prints a summary table last.
#
#   bash tools/train_and_score.sh --seconds 240 --device cuda --data .mnist \
#       --build build-gpu --out-dir "$OUT" -- --hidden-size 128 --patch-size 2 \
#       --batch-size 256 --lr 0.001 --ema-decay 0.999 --label-lr-scale 10 --predict-v
#
# Arguments after -- go to both tools/train.py runs. Each model file is the
# last snapshot when the time runs out (train.py saves every --save-every
# steps, writing beside the file and renaming), and records in its metadata
# the exact command that reproduces it. Output in --out-dir:
# {fpdm,dit}-mnist.safetensors, {fpdm,dit}-train.log, {fpdm,dit}-score.json
# and the sampled PNGs in {fpdm,dit}-samples/; a previous run's move to
# previous/ first (replacing an older run's there), so that what is there
# afterwards is this run's and a failed rerun loses nothing. Relative paths are
# taken from the repository root. Exit status 0 when both models were trained,
# sampled and scored, 1 when a step failed (each failure says which and why).
set -u
cd "$(dirname "$0")/.."
TIME_LIMIT=240
DEVICE=cuda
DATA=/work/shared/data/mnist
BUILD=build
OUT_DIR=out/train
SAVE_EVERY=500
SAMPLE_STEPS=20
CFG_SCALE=4
PER_CLASS=20
TRAIN_ARGS=()
while [ $# -gt 0 ]; do
  case $1 in
    --seconds) TIME_LIMIT=$2; shift 2 ;;
    --device) DEVICE=$2; shift 2 ;;
    --data) DATA=$2; shift 2 ;;
    --build) BUILD=$2; shift 2 ;;
    --out-dir) OUT_DIR=$2; shift 2 ;;
    --save-every) SAVE_EVERY=$2; shift 2 ;;
    --sample-steps) SAMPLE_STEPS=$2; shift 2 ;;
    --cfg-scale) CFG_SCALE=$2; shift 2 ;;
    --per-class) PER_CLASS=$2; shift 2 ;;
    --) shift; TRAIN_ARGS=("$@"); break ;;
    *) echo "train_and_score.sh: unknown option $1 (see the comment at the top)" >&2; exit 2 ;;
  esac
done
PYTHON=$(command -v python3)
[ -x /usr/bin/python3 ] && /usr/bin/python3 -c "import torch" 2>/dev/null && PYTHON=/usr/bin/python3
SAMPLER=$BUILD/fpdm-sample
[ -x "$SAMPLER" ] || { echo "train_and_score.sh: $SAMPLER is not built" >&2; exit 1; }
mkdir -p "$OUT_DIR" || exit 1
failed=0
fail() {  # fail ARCH MESSAGE: reported on stderr; the script then exits 1
  echo "train_and_score.sh: $1: $2" >&2
  failed=1
}
# The sampling and the summary must see this run's models only, never an
# earlier run's left in the folder: those move to previous/ (replacing what
# an older run left there), so a rerun that fails has not lost them.
PREVIOUS=$OUT_DIR/previous
kept=0
for arch in fpdm dit; do
  for name in "$arch-mnist.safetensors" "$arch-score.json" "$arch-samples" "$arch-train.log"; do
    [ -e "$OUT_DIR/$name" ] || continue
    if [ $kept = 0 ]; then
      rm -rf "$PREVIOUS" && mkdir -p "$PREVIOUS" || exit 1
      kept=1
    fi
    mv "$OUT_DIR/$name" "$PREVIOUS/" || exit 1
  done
  rm -rf "$OUT_DIR/$arch-mnist.safetensors.partial" "$OUT_DIR/$arch-score.json.partial"
done
[ $kept = 1 ] && echo "train_and_score.sh: the previous run's outputs are in $PREVIOUS" >&2

# ---- training: both models at once, stopped by the time limit ----------------
declare -A pid
for arch in fpdm dit; do
  timeout "$TIME_LIMIT" "$PYTHON" tools/train.py "$arch" --out "$OUT_DIR/$arch-mnist.safetensors" \
      --data "$DATA" --device "$DEVICE" --steps 100000000 --save-every "$SAVE_EVERY" \
      --log-every "$SAVE_EVERY" "${TRAIN_ARGS[@]}" > "$OUT_DIR/$arch-train.log" 2>&1 &
  pid[$arch]=$!
done
trained=()
for arch in fpdm dit; do
  wait "${pid[$arch]}"
  status=$?
  log=$OUT_DIR/$arch-train.log
  # 124: stopped by the time limit, the normal end.
  if [ $status != 0 ] && [ $status != 124 ]; then
    fail "$arch" "training failed (exit $status): $(tail -n 1 "$log") (see $log)"
  elif [ ! -f "$OUT_DIR/$arch-mnist.safetensors" ]; then
    fail "$arch" "no snapshot was written in $TIME_LIMIT s: raise --seconds or lower --save-every (see $log)"
  else
    trained+=("$arch")
  fi
done

# ---- sampling and scoring -----------------------------------------------------
classes=$("$PYTHON" -c "print(','.join(str(i % 10) for i in range(10 * $PER_CLASS)))")
sample_device=cpu
case $DEVICE in cuda*) sample_device=$DEVICE ;; esac
for arch in "${trained[@]}"; do
  model=$OUT_DIR/$arch-mnist.safetensors
  score=$OUT_DIR/$arch-score.json
  if ! "$SAMPLER" -m "$model" --device "$sample_device" -n $((10 * PER_CLASS)) --class "$classes" \
      --seed 0 --steps "$SAMPLE_STEPS" --cfg-scale "$CFG_SCALE" --out "$OUT_DIR/$arch-samples" \
      --overwrite --quiet; then
    fail "$arch" "sampling failed"
  elif ! "$PYTHON" tools/eval.py --data "$DATA" score "$OUT_DIR/$arch-samples" > "$score.partial"; then
    fail "$arch" "scoring failed"
  else
    mv "$score.partial" "$score"
  fi
done

# ---- summary -------------------------------------------------------------------
"$PYTHON" - "$OUT_DIR" "$SAMPLE_STEPS" "$CFG_SCALE" <<'PY'
import json, os, sys
sys.path.insert(0, "tools")
import safetensors_io
out_dir, steps, cfg = sys.argv[1:4]
print(f"\nmodels in {out_dir}; digits sampled with {steps} steps, cfg {cfg}")
print(f"{'model':<6} {'steps':>7} {'wall s':>7} {'loss':>7} {'accuracy':>9} {'Frechet':>8} {'nearest/t10k':>13}")
for arch in ("fpdm", "dit"):
    path = os.path.join(out_dir, f"{arch}-mnist.safetensors")
    score_path = os.path.join(out_dir, f"{arch}-score.json")
    if not os.path.exists(path):
        print(f"{arch:<6} (failed: no model)")
        continue
    meta = safetensors_io.read_metadata(path)
    score = json.load(open(score_path)) if os.path.exists(score_path) else {}
    accuracy = score.get("class_accuracy")
    print(f"{arch:<6} {meta.get('training.steps', '-'):>7} {meta.get('training.wall_seconds', '-'):>7}"
          f" {meta.get('training.final_loss', '-'):>7}"
          f" {format(100 * accuracy, '.1f') + '%' if accuracy is not None else '-':>9}"
          f" {format(score['frechet_distance'], '.1f') if 'frechet_distance' in score else '-':>8}"
          f" {format(score['nearest_train_l2_ratio'], '.2f') if 'nearest_train_l2_ratio' in score else '-':>13}")
PY
exit $failed
