#!/bin/bash
# test_train_and_score.sh - tools/train_and_score.sh on a few made-up digits
# with tiny models and a few seconds of training: a run that trains, samples
# and scores both models; a rerun whose scoring fails and one whose trainings
# fail, which must exit 1, say why, and not report the earlier run's models,
# which each rerun keeps in previous/ (one run back).
#   bash tests/cli/test_train_and_score.sh BUILD_DIR   (from the repository root)
set -u
build=${1:?usage: test_train_and_score.sh BUILD_DIR}
[ -x "$build/fpdm-sample" ] || { echo "SKIP: $build/fpdm-sample not built"; exit 77; }
/usr/bin/python3 -c "import torch" 2>/dev/null || { echo "SKIP: torch missing"; exit 77; }

. "$(dirname "$0")/common.sh"

# 40 random "digits" per split, gzipped IDX files as MNIST ships them.
write_digits() {  # write_digits FOLDER SPLIT...
    /usr/bin/python3 - "$@" <<'PY'
import gzip, os, struct, sys
import numpy as np
folder, splits = sys.argv[1], sys.argv[2:]
os.makedirs(folder, exist_ok=True)
rng = np.random.default_rng(0)
for split in splits:
    for kind, array in (("images-idx3", rng.integers(0, 256, (40, 28, 28), dtype=np.uint8)),
                        ("labels-idx1", (np.arange(40) % 10).astype(np.uint8))):
        header = bytes([0, 0, 0x08, array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape)
        with open(os.path.join(folder, f"{split}-{kind}-ubyte.gz"), "wb") as sink:
            sink.write(gzip.compress(header + array.tobytes()))
PY
}
write_digits "$tmp/data" train t10k
write_digits "$tmp/train-only" train
out=$tmp/out

# run NAME ARGS...: the script's exit status in $rc, its output in $tmp/NAME.{out,err}
run() {
    local name=$1
    shift
    bash tools/train_and_score.sh --device cpu --build "$build" --out-dir "$out" --save-every 1 \
        --per-class 1 --sample-steps 2 "$@" >"$tmp/$name.out" 2>"$tmp/$name.err"
    rc=$?
}
tiny=(-- --batch-size 4 --hidden-size 16 --num-heads 2 --depth 3)
no_traceback() { ! grep -q Traceback "$tmp/$1.out" "$tmp/$1.err"; }

run good --seconds 6 --data "$tmp/data" "${tiny[@]}"
check "a good run exits 0" [ "$rc" = 0 ]
for arch in fpdm dit; do
    check "$arch model" [ -f "$out/$arch-mnist.safetensors" ]
    check "$arch scored" /usr/bin/python3 -c "import json; assert json.load(open('$out/$arch-score.json'))['count'] == 10"
    check "$arch summary row" grep -qE "^$arch +[0-9]+ +[0-9]+ +[0-9.]+ +[0-9.]+% +[0-9.]+ +[0-9.]+$" "$tmp/good.out"
done
[ "$rc" = 0 ] || sed 's/^/    /' "$tmp/good.err" "$out"/*-train.log

# Scoring needs the t10k digits: the models train, then scoring fails.
run no-t10k --seconds 6 --data "$tmp/train-only" "${tiny[@]}"
check "failed scoring exits 1" [ "$rc" = 1 ]
check "failed scoring says so" grep -q "train_and_score.sh: fpdm: scoring failed" "$tmp/no-t10k.err"
check "no score file" [ ! -e "$out/fpdm-score.json" -a ! -e "$out/dit-score.json" ]
check "failed scoring: no traceback" no_traceback no-t10k
check "the good run's outputs kept" [ -f "$out/previous/fpdm-mnist.safetensors" -a -f "$out/previous/dit-score.json" -a -d "$out/previous/fpdm-samples" ]
check "where they went is said" grep -q "the previous run's outputs are in $out/previous" "$tmp/no-t10k.err"

# Both trainings refuse their arguments: nothing of the earlier runs is reported.
# They stop at argument parsing, after torch's import: a long limit costs
# nothing, where 6 s could end a slow import first (seen on a loaded machine:
# exit 124, the normal end of a training, and no message).
run bad-args --seconds 120 --data "$tmp/data" -- --num-heads 3
check "failed trainings exit 1" [ "$rc" = 1 ]
check "failed training says why" grep -q "fpdm: training failed (exit 2): train.py: error: hidden_size 64 is not divisible" "$tmp/bad-args.err"
check "no stale model" [ ! -e "$out/fpdm-mnist.safetensors" -a ! -e "$out/dit-mnist.safetensors" ]
check "no stale samples" [ ! -e "$out/fpdm-samples" -a ! -e "$out/dit-samples" ]
check "summary: no model" grep -qE "^dit +\(failed: no model\)" "$tmp/bad-args.out"
check "failed training: no traceback" no_traceback bad-args
# previous/ now holds the scoring-failed run's models (and no scores): one run back.
check "the run before kept instead" [ -f "$out/previous/fpdm-mnist.safetensors" -a ! -e "$out/previous/fpdm-score.json" ]

finish
