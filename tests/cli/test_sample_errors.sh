#!/bin/bash
# test_sample_errors.sh - every bad input to fpdm-sample must be refused with
# the right exit code (2 usage, 1 runtime), a specific "fpdm-sample: ..."
# message on stderr, and no output folder or file left behind.
#   bash tests/cli/test_sample_errors.sh BUILD_DIR   (from the repository root)
set -u
build=${1:?usage: test_sample_errors.sh BUILD_DIR}
sample=$build/fpdm-sample
bench=$build/fpdm-bench
[ -x "$sample" ] && [ -x "$bench" ] || { echo "SKIP: $sample or $bench not built"; exit 77; }

. "$(dirname "$0")/common.sh"

write_tiny_models "$bench"

case_number=0
# expect NAME CODE PATTERN ARGS...: runs fpdm-sample with --out set to a fresh
# folder name, checks the exit code, that stderr matches PATTERN (grep -E)
# and starts with "fpdm-sample: ", and that nothing was written.
expect() {
    local name=$1 code=$2 pattern=$3
    shift 3
    case_number=$((case_number + 1))
    local out=$tmp/out-$case_number
    local before
    before=$(ls "$tmp" | sort)
    "$sample" --quiet --out "$out" "$@" >"$tmp/stdout" 2>"$tmp/stderr"
    local rc=$?
    local problems=""
    [ "$rc" = "$code" ] || problems+=" exit code $rc (expected $code);"
    grep -qE -- "$pattern" "$tmp/stderr" || problems+=" stderr lacks /$pattern/;"
    head -n1 "$tmp/stderr" | grep -q '^fpdm-sample: ' || problems+=" stderr does not start with 'fpdm-sample: ';"
    [ -e "$out" ] && problems+=" output folder $out was created;"
    local after
    after=$(ls "$tmp" | grep -v -e '^stdout$' -e '^stderr$' | sort)
    [ "$(echo "$before" | grep -v -e '^stdout$' -e '^stderr$')" = "$after" ] || problems+=" new files appeared: $(comm -13 <(echo "$before") <(echo "$after") | tr '\n' ' ');"
    if [ -z "$problems" ]; then
        passed=$((passed + 1))
    else
        failed=$((failed + 1))
        echo "FAIL $name:$problems"
        sed 's/^/    stderr: /' "$tmp/stderr"
    fi
}

# Noise files with the right and wrong shapes (the run below uses -n 4, --steps 3).
/usr/bin/python3 - "$tmp" <<'PY' || { echo "cannot write noise files (numpy)"; exit 1; }
import sys, numpy as np
d = sys.argv[1]
np.save(d + "/init-bad.npy", np.zeros((2, 1, 8, 8), np.float32))
np.save(d + "/step-bad.npy", np.zeros((3, 4, 1, 8, 4), np.float32))
np.save(d + "/init-f64.npy", np.zeros((4, 1, 8, 8), np.float64))
nan = np.zeros((4, 1, 8, 8), np.float32)
nan[3, 0, 7, 7] = np.nan
np.save(d + "/init-nan.npy", nan)
PY
echo "not a safetensors file" >"$tmp/malformed.safetensors"
echo "a file" >"$tmp/a-file"

# Usage errors: exit 2.
expect "unknown flag"        2 "unknown option '--bogus'"                 -m "$fpdm" --bogus
expect "missing value"       2 "--steps: missing value"                   -m "$fpdm" --steps
expect "non-numeric steps"   2 "--steps: 'abc' is not an integer"         -m "$fpdm" --steps abc
expect "trailing garbage"    2 "--steps: '5x' is not an integer"          -m "$fpdm" --steps 5x
expect "leading space"       2 "--steps: ' 5' is not an integer"          -m "$fpdm" --steps " 5"
expect "plus sign"           2 "--steps: '\+5' is not an integer"         -m "$fpdm" --steps +5
expect "space in a list"     2 "--class: ' 2' is not an integer"          -m "$fpdm" --class "1, 2"
expect "shard with a sign"   2 "--shard N: '\+2' is not an integer"       -m "$fpdm" --shard 0/+2
expect "negative images"     2 "--num-images: -3 is out of range"         -m "$fpdm" -n -3
expect "zero batch"          2 "--batch-size: 0 is out of range"          -m "$fpdm" -b 0
expect "zero steps"          2 "--steps: 0 is out of range"               -m "$fpdm" --steps 0
expect "steps above model"   2 "--steps: 1001 is out of range \(allowed: 1\.\.1000" -m "$fpdm" --steps 1001
expect "class above model"   2 "--class: 10 is out of range \(allowed: 0\.\.9" -m "$fpdm" --steps 3 --class 1,10
expect "negative class"      2 "--class: -1 is out of range \(allowed: 0\.\.9" -m "$fpdm" --class -1
expect "fixed budget not a multiple" 2 "multiple of the 4 steps"          -m "$fpdm" --steps 4 --schedule fixed --budget 6
expect "empty class entry"   2 "--class: '1,,2' has an empty entry \(allowed: comma-separated 32-bit integers\)" -m "$fpdm" --class 1,,2
expect "class not a number"  2 "--class: 'x' is not an integer \(allowed: 32-bit integers\)" -m "$fpdm" --class x
expect "cfg below one"       2 "--cfg-scale: 0.5 is out of range \(allowed: 1\.\." -m "$fpdm" --cfg-scale 0.5
expect "cfg not a number"    2 "--cfg-scale: 'x' is not a number"         -m "$fpdm" --cfg-scale x
expect "cfg in hex"          2 "--cfg-scale: '0x4' is not a number"       -m "$fpdm" --cfg-scale 0x4
expect "cfg infinite"        2 "--cfg-scale: 'inf' is not a number"       -m "$fpdm" --cfg-scale inf
expect "cfg leading space"   2 "--cfg-scale: ' 4' is not a number"        -m "$fpdm" --cfg-scale " 4"
expect "negative tol"        2 "--tol: -1 is out of range \(allowed: 0\.\." -m "$fpdm" --tol -1
expect "negative eta"        2 "--eta: -0.5 is out of range"              -m "$fpdm" --eta -0.5
expect "tol rounds to 0"     2 "--tol: 1e-50 is too close to 0 for a float" -m "$fpdm" --tol 1e-50
expect "eta overflows"       2 "--eta: 1e400 is out of range"             -m "$fpdm" --sampler ddim --eta 1e400
expect "eta above 1"         2 "--eta: 1.5 is out of range \(allowed: 0\.\.1"  -m "$fpdm" --sampler ddim --eta 1.5
expect "negative seed"       2 "--seed: '-1' is not a non-negative integer" -m "$fpdm" --seed -1
expect "bad sampler"         2 "--sampler: 'euler' is not one of ddpm\|ddim" -m "$fpdm" --sampler euler
expect "bad schedule"        2 "--schedule: 'cosine' is not one of fixed\|increasing\|decreasing" -m "$fpdm" --schedule cosine
expect "bad precision"       2 "--precision: 'fp8' is not one of fp32\|bf16\|fp16" -m "$fpdm" --precision fp8
expect "grid too large"      2 "--grid .*g.png: a grid of 1000000000 images is .* too large" -m "$fpdm" -n 1000000000 --grid "$tmp/g.png"
expect "grid not a png"      2 "--grid .*g.jpg: the grid is a PNG; give a name ending in .png" -m "$fpdm" --grid "$tmp/g.jpg"
expect "bad cfg channels"    2 "--cfg-channels: '4' is not one of 3\|all" -m "$fpdm" --cfg-channels 4
expect "iters-per-step count" 2 "--iters-per-step has 3 entries but --steps is 4" -m "$fpdm" --steps 4 --iters-per-step 1,2,3
expect "iters-per-step default steps" 2 "--iters-per-step has 2 entries but --steps is 250" -m "$fpdm" --iters-per-step 1,2
expect "budget below steps"  2 "--budget 3 is less than --steps 5"        -m "$fpdm" --steps 5 --schedule increasing --budget 3
expect "budget below steps (decreasing)" 2 "--budget 2 is less than --steps 4" -m "$fpdm" --steps 4 --schedule decreasing --budget 2
expect "carry-over without tol" 2 "--carry-over needs --tol"              -m "$fpdm" --carry-over
expect "fpdm flag on a dit"  2 "--iters applies to fixed-point \(FPDM\) models only" -m "$dit" --steps 3 --iters 2
expect "verbose and quiet"   2 "--verbose and --quiet exclude each other" -m "$fpdm" --verbose
expect "eta with ddpm"       2 "--eta applies to --sampler ddim only"     -m "$fpdm" --steps 3 --eta 0.5
expect "iters and a list"    2 "--iters and --iters-per-step both"        -m "$fpdm" --steps 2 --iters 3 --iters-per-step 1,2
expect "shard not K/N"       2 "--shard: '3' is not K/N"                 -m "$fpdm" --shard 3
expect "shard K too large"   2 "--shard K: 2 is out of range \(allowed: 0\.\.1\)" -m "$fpdm" --shard 2/2
expect "shard N zero"        2 "--shard N: 0 is out of range"             -m "$fpdm" --shard 0/0
expect "shards past -n"      2 "--shard 1/9: 9 parts of 5 images leave some empty" -m "$fpdm" -n 5 --shard 1/9
expect "shard with npz"      2 "--npz packs the whole run, and a --shard part holds only its own images" -m "$fpdm" -n 4 --shard 1/2 --npz "$tmp/s.npz"
expect "shard with noise"    2 "--shard splits the built-in noise's run"  -m "$fpdm" -n 4 --steps 3 --shard 1/2 --init-noise "$tmp/init-bad.npy"
expect "init noise shape"    2 "--init-noise .*shape \[2, 1, 8, 8\] does not match the run \(allowed: \[4, 1, 8, 8\]\)" \
    -m "$fpdm" -n 4 --steps 3 --init-noise "$tmp/init-bad.npy"
expect "init noise NaN"      2 "--init-noise .*init-nan.npy: value 255 is nan \(allowed: finite numbers\)" \
    -m "$fpdm" -n 4 --steps 3 --init-noise "$tmp/init-nan.npy"
expect "step noise shape"    2 "--step-noise .*shape \[3, 4, 1, 8, 4\] does not match the run \(allowed: \[3, 4, 1, 8, 8\]\)" \
    -m "$fpdm" -n 4 --steps 3 --step-noise "$tmp/step-bad.npy"
if [ -f tests/golden/forward-fpdm.model.safetensors ]; then
    expect "latent model without vae" 2 "samples VAE latents: give --vae FILE .* or --latents-out FILE.npy" \
        -m tests/golden/forward-fpdm.model.safetensors --steps 3
    expect "out for a latent-only run" 2 "--out is for PNG folders; this run writes only --latents-out" \
        -m tests/golden/forward-fpdm.model.safetensors --steps 3 --latents-out "$tmp/l.npy"
    expect "latent grid without vae" 2 "--grid needs --vae FILE" \
        -m tests/golden/forward-fpdm.model.safetensors --steps 3 --latents-out "$tmp/l.npy" --grid "$tmp/g.png"
    expect "latent npz without vae" 2 "--npz packs the run's PNGs, and this run writes none \(give --vae FILE" \
        -m tests/golden/forward-fpdm.model.safetensors --steps 3 --latents-out "$tmp/l.npy" --npz "$tmp/s.npz"
    expect "a model as the vae" 1 "^fpdm-sample: cannot load the VAE decoder: .*forward-fpdm.model.safetensors" \
        -m tests/golden/forward-fpdm.model.safetensors --steps 3 --vae tests/golden/forward-fpdm.model.safetensors
fi

# Runtime failures: exit 1.
expect "vae as the model"    1 "cannot load the model: .*holds a VAE decoder"      -m tests/golden/vae-small.safetensors
expect "missing model"       1 "cannot load the model: .*no-such-model.safetensors" -m "$tmp/no-such-model.safetensors"
expect "malformed model"     1 "cannot load the model: .*malformed.safetensors"     -m "$tmp/malformed.safetensors"
expect "noise not float32"   1 "--init-noise: .*init-f64.npy"                       -m "$fpdm" -n 4 --steps 3 --init-noise "$tmp/init-f64.npy"
expect "noise file missing"  1 "--init-noise: .*absent.npy"                         -m "$fpdm" -n 4 --steps 3 --init-noise "$tmp/absent.npy"
expect "noise is a folder"   1 "--init-noise: .*: is a folder"                       -m "$fpdm" -n 4 --steps 3 --init-noise "$tmp"
expect "grid folder missing" 1 "--grid .*: folder .*no-dir does not exist"           -m "$fpdm" --steps 3 --grid "$tmp/no-dir/grid.png"
expect "report folder missing" 1 "--report .*: folder .*no-dir does not exist"       -m "$fpdm" --steps 3 --report "$tmp/no-dir/r.json"
expect "npz folder missing"  1 "--npz .*: folder .*no-dir does not exist"            -m "$fpdm" --steps 3 --npz "$tmp/no-dir/s.npz"
# Checked before sampling: a folder as the file, a folder that is not writable
# (root may write anywhere: that case is skipped).
mkdir -p "$tmp/a-folder" "$tmp/a-folder.npz" "$tmp/read-only"
chmod 555 "$tmp/read-only"
expect "report is a folder"  1 "--report .*a-folder: is a folder"                    -m "$fpdm" --steps 3 --report "$tmp/a-folder"
expect "latents is a folder" 1 "--latents-out .*a-folder: is a folder"               -m "$fpdm" --steps 3 --latents-out "$tmp/a-folder"
expect "npz is a folder"     1 "--npz .*a-folder.npz: is a folder"                   -m "$fpdm" --steps 3 --npz "$tmp/a-folder.npz"
expect "npz not an npz"      2 "--npz .*a.zip: the archive is an .npz; give a name ending in .npz" -m "$fpdm" --steps 3 --npz "$tmp/a.zip"
expect "report names a folder" 1 "--report .*r.json/: is a folder"                   -m "$fpdm" --steps 3 --report "$tmp/r.json/"
if ! touch "$tmp/read-only/probe" 2>/dev/null; then
    expect "grid folder read-only" 1 "--grid .*: folder .*read-only is not writable"  -m "$fpdm" --steps 3 --grid "$tmp/read-only/g.png"
fi
rm -f "$tmp/read-only/probe"
expect "unknown device"      2 "--device gpu: unknown device \"gpu\": use auto, cpu, cuda or cuda:N" -m "$fpdm" --steps 3 --device gpu
FPDM_DEVICE=gpu expect "unknown FPDM_DEVICE" 2 "FPDM_DEVICE=gpu: unknown device"    -m "$fpdm" --steps 3
# Device numbers are digits only (strtol would take " 1", "+0" and "-0").
for device in "cuda: 1" "cuda:+0" "cuda:-0" "cuda:" "cuda:1x" "cuda:99999999999999999999"; do
    expect "device '$device'" 2 "unknown device \"${device//+/\\+}\""    -m "$fpdm" --steps 3 --device "$device"
done
# No machine runs 16 bits on the CPU (2); a GPU that is missing is this
# machine's lack (1), as is auto falling back to the CPU.
expect "bf16 on the cpu"     2 "fpdm-sample: --device cpu: the CPU backend computes in fp32 only" -m "$fpdm" --steps 3 --device cpu --precision bf16
FPDM_DEVICE=cpu expect "fp16 on FPDM_DEVICE=cpu" 2 "FPDM_DEVICE=cpu: the CPU backend" -m "$fpdm" --steps 3 --precision fp16
if ! command -v nvidia-smi >/dev/null 2>&1; then
    # Neither --device nor FPDM_DEVICE: the message names no flag.
    unset FPDM_DEVICE
    expect "bf16 where auto finds no gpu" 1 "^fpdm-sample: device auto: the CPU backend computes in fp32 only" -m "$fpdm" --steps 3 --precision bf16
    export FPDM_DEVICE=cpu
    expect "cuda without a gpu" 1 "fpdm-sample: --device cuda: ."                    -m "$fpdm" --steps 3 --device cuda
fi

# The output folder cannot be created (its parent is a file): nothing else may
# be written either. The folder name is passed directly, so expect() is not used.
"$sample" --quiet -m "$fpdm" --steps 3 --out "$tmp/a-file/sub" --report "$tmp/report.json" >/dev/null 2>"$tmp/stderr"
rc=$?
if [ $rc = 1 ] && grep -q "fpdm-sample: --out $tmp/a-file/sub: cannot create folder" "$tmp/stderr" \
   && [ ! -e "$tmp/report.json" ]; then
    passed=$((passed + 1))
else
    failed=$((failed + 1))
    echo "FAIL output folder not creatable: exit $rc"
    sed 's/^/    stderr: /' "$tmp/stderr"
fi

# Outputs that are one file, or would replace an input, the --out folder, an
# image or the folder's settings record. The folder names the run's own
# (expect gives each case out-N); a copy of the model stands for the input.
cp "$fpdm" "$tmp/model-copy.safetensors"
ln -s model-copy.safetensors "$tmp/model-link.safetensors"
next_out=$tmp/out-$((case_number + 1))
expect "grid and report one file" 2 "--grid .*same.png and --report .*same.png are the same file" \
    -m "$fpdm" --steps 3 --grid "$tmp/same.png" --report "$tmp/./same.png"
expect "latents and npz one file" 2 "--latents-out .*x.npz and --npz .*x.npz are the same file" \
    -m "$fpdm" --steps 3 --latents-out "$tmp/x.npz" --npz "$tmp/x.npz"
expect "report over the model" 2 "--report .*model-copy.safetensors is -m .*model-copy.safetensors, which it would replace" \
    -m "$tmp/model-copy.safetensors" --steps 3 --report "$tmp/model-copy.safetensors"
expect "report over the model through a link" 2 "--report .*model-link.safetensors is -m .*model-copy.safetensors, which it would replace" \
    -m "$tmp/model-copy.safetensors" --steps 3 --report "$tmp/model-link.safetensors"
next_out=$tmp/out-$((case_number + 1))
expect "grid under an image's name" 2 "--grid .*/00000-[0-9]+.png is a name that --out .* keeps its images in" \
    -m "$fpdm" --steps 3 --grid "$next_out/00000-5.png"
next_out=$tmp/out-$((case_number + 1))
expect "report as the settings record" 2 "--report .*\.fpdm-sample-settings is a name that --out .* keeps its settings record in" \
    -m "$fpdm" --steps 3 --report "$next_out/.fpdm-sample-settings"
next_out=$tmp/out-$((case_number + 1))
expect "report as the out folder" 2 "--report .* is the --out folder" -m "$fpdm" --steps 3 --report "$next_out"
expect "budget and iters disagree" 2 "--budget 6 and --iters 5 disagree: --budget is the total, which --iters 5 makes 15 over --steps 3" \
    -m "$fpdm" --steps 3 --budget 6 --iters 5
expect "budget above the plan's limit" 2 "--budget: 100000001 is out of range \(allowed: 1\.\.100000000\)" \
    -m "$fpdm" --budget 100000001

# --help succeeds, shows the defaults and writes nothing.
if "$sample" --help >"$tmp/help" 2>&1 && grep -q "default: 250" "$tmp/help" && grep -q "default: 4.0" "$tmp/help"; then
    passed=$((passed + 1))
else
    failed=$((failed + 1))
    echo "FAIL --help"
fi

finish
