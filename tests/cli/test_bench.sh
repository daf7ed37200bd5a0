#!/bin/bash
# test_bench.sh - fpdm-bench on the tiny random-weight configurations: the
# JSON fields, their consistency, the FLOP count and the minimum activation
# footprint against independent counts written out below, the reference
# product and memory fields, the table, --mode sample, the VAE decoder timing
# (a tiny random decoder and the golden one), a VAE file that does not load
# (refused before any timing) and usage errors.
#   bash tests/cli/test_bench.sh BUILD_DIR   (from the repository root)
set -u
build=${1:?usage: test_bench.sh BUILD_DIR}
bench=$build/fpdm-bench
[ -x "$bench" ] || { echo "SKIP: $bench not built"; exit 77; }

. "$(dirname "$0")/common.sh"

check "fpdm forward json" "$bench" --config tiny-fpdm --batch-size 1,3 --iters 1,5 --cfg on --repeat 2 --warmup 1 --json >"$tmp/fpdm.json"
check "dit forward json" "$bench" --config tiny-dit --batch-size 2 --repeat 2 --warmup 0 --json >"$tmp/dit.json"
check "fpdm sample json" "$bench" --config tiny-fpdm --mode sample --steps 3 --iters 2 --batch-size 2 --repeat 1 --warmup 0 --json >"$tmp/sample.json"
check "fpdm sample json, 0 iterations" "$bench" --config tiny-fpdm --mode sample --steps 2 --iters 0 --repeat 1 --warmup 0 --json >"$tmp/sample0.json"
check "vae json" "$bench" --mode vae --vae-config tiny --vae-latent-sizes 4,8 --vae-batch 2 --repeat 2 --warmup 0 --json >"$tmp/vae.json"
check "vae file json" "$bench" --mode vae --vae tests/golden/vae-small.safetensors --vae-latent-sizes 4 --repeat 1 --warmup 0 --json >"$tmp/vae-file.json"
check "dit with vae json" "$bench" --config tiny-dit --vae-config tiny --vae-latent-sizes 4 --repeat 1 --warmup 0 --json >"$tmp/dit-vae.json"

# The FLOPs of one row (one image, one forward), counted independently:
# multiply-adds are 2 FLOPs; per block the qkv, proj and MLP linears,
# attention 4*T*T*D and the adaLN projection; FPDM adds the pre projection
# and the injection half of fc1 once, and per iteration the solution half of
# fc1, fc2 and the block.
check "json fields and FLOP counts" /usr/bin/python3 - "$tmp" <<'PY'
import json, math, sys
d = sys.argv[1]

def flops(fpdm, iters, D=32, heads=2, P=2, size=8, C=1, depth=2, pre=1, post=1, classes=10):
    T = (size // P) ** 2
    M = 4 * D
    block = 2 * T * (3 * D * D + D * D + 2 * D * M) + 4 * T * T * D
    adaln = 2 * D * 6 * D
    base = 2 * T * D * C * P * P + 2 * (256 * D + D * D) + 2 * T * D * P * P * 2 * C + 2 * D * 2 * D
    if not fpdm:
        return base + depth * (block + adaln)
    base += (pre + post) * (block + adaln) + 2 * T * D * D + 2 * T * D * 2 * D + adaln
    return base + iters * (2 * T * D * 2 * D + 2 * T * 2 * D * D + block)

def close(a, b, rel=1e-6):
    return abs(a - b) <= rel * max(abs(a), abs(b), 1e-30)

# The smallest activation memory of one forward, float32: per token, the
# larger of attention (stream, qkv, output: 5D) and MLP (stream, normed, hidden:
# 2D + 4D); FPDM also keeps the iterate (D) and fc1's injection half (2D).
def min_activation_bytes(fpdm, rows, D=32, P=2, size=8):
    T = (size // P) ** 2
    per_token = max(5 * D, 2 * D + 4 * D) + (3 * D if fpdm else 0)
    return 4 * rows * T * per_token

# The reference product (1024^3 on the CPU: its fastest of rounds of 5
# timed runs, at most 20 rounds, no round begun after half a second) and the
# memory fields of a run. Each round before the last took at least 5 times the
# fastest product, and all of them less than the half second.
def check_reference_and_memory(r, fpdm):
    ref = r["reference"]
    assert ref["matmul_size"] == 1024 and ref["seconds"] > 0, ref
    assert isinstance(ref["runs"], int) and ref["runs"] % 5 == 0 and 5 <= ref["runs"] <= 100, ref
    assert (ref["runs"] - 5) * ref["seconds"] < 0.5, ref
    assert close(ref["tflops"], 2 * 1024 ** 3 / ref["seconds"] / 1e12), ref
    # What the context resolved, as fpdm-sample --report records it.
    assert r["settings"]["precision"] == "fp32", r["settings"]
    assert isinstance(r["settings"]["threads"], int) and r["settings"]["threads"] >= 1, r["settings"]
    # float32 on the CPU: the parameters and the stored position table (T x D).
    assert r["settings"]["weight_bytes"] == 4 * (r["settings"]["parameters"] + 16 * 32), r["settings"]
    for x in r["results"]:
        assert x["fraction_of_reference"] > 0, x
        assert close(x["fraction_of_reference"], x["gflops"] / (1000 * ref["tflops"])), x
        assert x["weight_bytes"] == r["settings"]["weight_bytes"], x
        assert close(x["min_activation_bytes"], min_activation_bytes(fpdm, x["rows"])), x
        # The arena holds at least the minimum; the CPU reports no device memory.
        assert x["min_activation_bytes"] <= x["arena_bytes"], x
        assert x["device_used_bytes"] == 0 and x["device_total_bytes"] == 0, x

fields = ["batch_size", "iters", "rows", "seconds_mean", "seconds_min", "images_per_second",
          "model_evaluations_per_second", "fixed_point_iterations_per_second", "gflop", "gflops"]
r = json.load(open(d + "/fpdm.json"))
assert r["tool"] == "fpdm-bench" and r["settings"]["architecture"] == "fpdm", r["settings"]
assert r["settings"]["mode"] == "forward" and r["settings"]["cfg"] is True
rows = r["results"]
assert [(x["batch_size"], x["iters"]) for x in rows] == [(1, 1), (1, 5), (3, 1), (3, 5)], rows
for x in rows:
    assert all(f in x for f in fields), x
    assert x["rows"] == 2 * x["batch_size"]                      # --cfg on doubles the rows
    assert 0 < x["seconds_min"] <= x["seconds_mean"], x
    assert close(x["images_per_second"], x["batch_size"] / x["seconds_mean"]), x
    assert close(x["model_evaluations_per_second"], x["rows"] / x["seconds_mean"]), x
    assert close(x["fixed_point_iterations_per_second"], x["rows"] * x["iters"] / x["seconds_mean"]), x
    assert close(x["gflop"], x["rows"] * flops(True, x["iters"]) / 1e9), (x["gflop"], x["rows"] * flops(True, x["iters"]) / 1e9)
    assert close(x["gflops"], x["gflop"] / x["seconds_mean"]), x
check_reference_and_memory(r, True)

r = json.load(open(d + "/dit.json"))
(x,) = r["results"]
assert r["settings"]["architecture"] == "dit" and x["iters"] == -1, x
assert x["rows"] == 2 and x["fixed_point_iterations_per_second"] == 0, x
assert close(x["gflop"], 2 * flops(False, 0) / 1e9), (x["gflop"], 2 * flops(False, 0) / 1e9)
check_reference_and_memory(r, False)

r = json.load(open(d + "/sample.json"))
(x,) = r["results"]
assert r["settings"]["mode"] == "sample" and r["settings"]["steps"] == 3, r["settings"]
# 3 steps of 2 rows, each forward with 2 iterations.
assert close(x["gflop"], 3 * 2 * flops(True, 2) / 1e9), (x["gflop"], 3 * 2 * flops(True, 2) / 1e9)
assert close(x["images_per_second"], 2 / x["seconds_mean"]), x
assert close(x["model_evaluations_per_second"] * x["seconds_mean"], 6), x
check_reference_and_memory(r, True)
r = json.load(open(d + "/sample0.json"))
(x,) = r["results"]
# 2 steps of 1 row without fixed-point iterations.
assert x["iters"] == 0 and x["fixed_point_iterations_per_second"] == 0, x
assert close(x["gflop"], 2 * flops(True, 0) / 1e9), (x["gflop"], 2 * flops(True, 0) / 1e9)

# The VAE decoder: the tiny one upsamples 2x (two blocks), the arena holds at
# least the input and output of one image, and --mode vae times nothing else.
def check_vae(r, latent_sizes, batch, upscale=None):
    rows = r["vae"]
    assert [x["latent_size"] for x in rows] == latent_sizes, rows
    assert r["vae_settings"]["device"] == "cpu" and r["vae_settings"]["batch_size"] == batch
    assert r["vae_settings"]["repeat"] >= 1 and r["vae_settings"]["warmup"] >= 0, r["vae_settings"]
    assert r["vae_settings"]["precision"] == "fp32" and r["vae_settings"]["threads"] >= 1, r["vae_settings"]
    for x in rows:
        assert x["batch_size"] == batch, x
        if upscale:
            assert x["image_size"] == upscale * x["latent_size"], x
        else:
            assert x["image_size"] > x["latent_size"] and x["image_size"] % x["latent_size"] == 0, x
        assert 0 < x["seconds_min"] <= x["seconds_mean"], x
        assert close(x["images_per_second"], batch / x["seconds_mean"]), x
        assert x["arena_bytes"] >= 4 * (4 * x["latent_size"] ** 2 + 3 * x["image_size"] ** 2), x

r = json.load(open(d + "/vae.json"))
assert "results" not in r and "reference" not in r, r.keys()
assert r["vae_settings"]["vae"] == "tiny", r["vae_settings"]
check_vae(r, [4, 8], 2, upscale=2)
r = json.load(open(d + "/vae-file.json"))
check_vae(r, [4], 1)
r = json.load(open(d + "/dit-vae.json"))
assert len(r["results"]) == 1 and r["results"][0]["iters"] == -1, r["results"]
check_vae(r, [4], 1, upscale=2)
PY

# The human table: a header and one line per measurement.
check "table run" "$bench" --config tiny-dit --batch-size 1,2 --repeat 1 --warmup 0 >"$tmp/table.txt"
check "table header" grep -q "batch  *iters  *rows  *mean s  *min s  *images/s  *evals/s  *fp-iters/s  *GFLOP  *GFLOP/s" "$tmp/table.txt"
check "table rows" [ "$(grep -cE '^ +[12] +- +[12] ' "$tmp/table.txt")" = 2 ]
check "a tiny model's parameters in full" grep -q "tiny-dit (DiT, 49992 parameters, pixel 1x8x8)" "$tmp/table.txt"
check "table memory columns" grep -q "GFLOP/s  *%ref  *arena MB  *used MB  *min MB" "$tmp/table.txt"
check "table reference line" grep -qE "^reference: 1024\^3 product [0-9.]+ s = [0-9.]+ TFLOP/s \(fastest of [0-9]+\); weights [0-9.]+ MB" "$tmp/table.txt"
check "vae table run" "$bench" --mode vae --vae-config tiny --vae-latent-sizes 4 --repeat 1 --warmup 0 >"$tmp/vae.txt"
check "vae table" grep -qE "^ +4 +8 +1 +[0-9.]+ +[0-9.]+ +[0-9.]+ +[0-9.]+$" "$tmp/vae.txt"

# A written model file is loadable and benchmarks the same architecture.
check "write model" "$bench" --config tiny-fpdm --write-model "$tmp/m.safetensors"
# A write that fails (past a file-size limit, as on a full disk) says so and
# leaves the file that was there whole, and no temporary file.
cp "$tmp/m.safetensors" "$tmp/m-before.safetensors"
( trap '' XFSZ; ulimit -f 4; exec "$bench" --config tiny-dit --write-model "$tmp/m.safetensors" ) >/dev/null 2>"$tmp/write-fail.err"
check "a failed --write-model exits non-zero" [ $? != 0 ]
check "a failed --write-model says so" grep -q "m.safetensors: write failed: File too large" "$tmp/write-fail.err"
check "a failed --write-model keeps the old file" cmp -s "$tmp/m.safetensors" "$tmp/m-before.safetensors"
check "a failed --write-model leaves no temporary" [ -z "$(ls "$tmp" | grep 'm.safetensors.tmp')" ]
check "bench a model file (json)" bash -c "'$bench' --model '$tmp/m.safetensors' --iters 3 --repeat 1 --warmup 0 --json | /usr/bin/python3 -c 'import json,sys; r=json.load(sys.stdin); assert r[\"results\"][0][\"iters\"] == 3 and r[\"settings\"][\"parameters\"] > 0'"

# fails NAME STATUS PATTERN ARGS...: fpdm-bench exits with STATUS, nothing on
# stdout (where a run is timed the table's header comes first), and a message
# matching PATTERN on stderr.
fails() {
    local name=$1 status=$2 pattern=$3
    shift 3
    "$bench" "$@" >"$tmp/out" 2>"$tmp/err"
    local rc=$?
    if [ $rc = "$status" ] && [ ! -s "$tmp/out" ] && grep -qE -- "$pattern" "$tmp/err"; then
        passed=$((passed + 1))
    else
        failed=$((failed + 1))
        echo "FAIL $name: exit $rc"
        sed 's/^/    stdout: /' "$tmp/out"
        sed 's/^/    stderr: /' "$tmp/err"
    fi
}

# A VAE file that cannot be loaded fails (exit 1) before the model is timed.
echo "not a safetensors file" >"$tmp/bad-vae.safetensors"
fails "missing vae file" 1 "cannot load the VAE decoder: $tmp/missing.safetensors: cannot open" \
    --config tiny-dit --repeat 1 --warmup 0 --vae "$tmp/missing.safetensors"
fails "bad vae file (json)" 1 "cannot load the VAE decoder: $tmp/bad-vae.safetensors" \
    --config tiny-fpdm --mode sample --repeat 1 --warmup 0 --vae "$tmp/bad-vae.safetensors" --json

# Usage errors: exit 2 with a message naming what is allowed.
usage() {  # usage NAME PATTERN ARGS...
    local name=$1
    shift
    fails "$name" 2 "$@"
}
usage "unknown config" "unknown configuration 'DiT-Q/2' \(allowed: DiT-XL/2, .*tiny-fpdm\)" --config DiT-Q/2
usage "bad image size" "--image-size: '300' is not one of 256\|512" --config DiT-S/2 --image-size 300
usage "tiny image size" "--image-size: '7' is not one of 256\|512" --config DiT-S/2 --image-size 7
usage "zero batch" "--batch-size: 0 is out of range" --batch-size 1,0
usage "bad mode" "--mode: 'train' is not one of forward\|sample" --mode train
usage "bad cfg" "--cfg: 'yes' is not one of off\|on" --cfg yes
usage "unknown flag" "unknown option '--fast'" --fast
usage "empty model path" "--model: empty value" --model ""
usage "empty write-model path" "--write-model: empty value" --config tiny-dit --write-model=
usage "bf16 on the cpu" "--device cpu: the CPU backend computes in fp32 only" --config tiny-dit --device cpu --precision bf16
usage "unknown device" "--device tpu: unknown device" --config tiny-dit --device tpu
usage "iters on a dit" "--iters applies to fixed-point \(FPDM\) models only" --config tiny-dit --iters 2
usage "guided sampling of an unconditional model" "--cfg on: tests/golden/forward-fpdm-unconditional.model.safetensors is unconditional" \
    --model tests/golden/forward-fpdm-unconditional.model.safetensors --mode sample --cfg on
usage "model and config" "give --model FILE or --config NAME, not both" --model x --config tiny-dit
usage "unknown vae config" "unknown VAE configuration 'xl' \(allowed: sd, tiny\)" --vae-config xl
usage "vae mode without a vae" "--mode vae needs --vae FILE or --vae-config NAME" --mode vae
usage "vae and vae config" "give --vae FILE or --vae-config NAME, not both" --vae x --vae-config tiny
usage "zero vae batch" "--vae-batch: 0 is out of range" --vae-batch 0
# Options the run would ignore.
usage "steps in forward mode" "--steps applies to --mode sample only; --mode forward runs no sampling steps" --config tiny-fpdm --steps 5
usage "steps in vae mode" "--steps applies to --mode sample only; --mode vae" --mode vae --vae-config tiny --steps 5
usage "image size of a pixel config" "--image-size applies to the latent configurations; tiny-dit is a pixel-space model of 8x8" --config tiny-dit --image-size 512
usage "image size of a pixel config (write)" "--image-size applies to the latent configurations; tiny-fpdm" --config tiny-fpdm --image-size 256 --write-model "$tmp/unused.safetensors"
check "a refused --write-model writes nothing" [ ! -e "$tmp/unused.safetensors" ]
usage "image size of a model file" "--image-size applies to --config; a --model file has its own size" --model "$tmp/m.safetensors" --image-size 512
usage "config in vae mode" "--config has no effect with --mode vae, which times the VAE decoder only" --mode vae --vae-config tiny --config tiny-dit
usage "model in vae mode" "--model has no effect with --mode vae" --mode vae --vae-config tiny --model "$tmp/m.safetensors"
usage "batch size in vae mode" "--batch-size has no effect with --mode vae" --mode vae --vae-config tiny --batch-size 2
usage "iters in vae mode" "--iters has no effect with --mode vae" --mode vae --vae-config tiny --iters 2
usage "cfg in vae mode" "--cfg has no effect with --mode vae" --mode vae --vae-config tiny --cfg on
usage "cfg off in vae mode" "--cfg has no effect with --mode vae" --mode vae --vae-config tiny --cfg off
# --write-model writes a file and times nothing.
written="has no effect with --write-model, which writes the --config model file and exits"
usage "mode with write-model" "--mode $written" --config tiny-fpdm --write-model "$tmp/unused.safetensors" --mode sample
usage "iters with write-model" "--iters $written" --config tiny-fpdm --iters 3 --write-model "$tmp/unused.safetensors"
usage "batch size with write-model" "--batch-size $written" --config tiny-dit --write-model "$tmp/unused.safetensors" --batch-size 4
usage "json with write-model" "--json $written" --config tiny-dit --json --write-model "$tmp/unused.safetensors"
usage "vae with write-model" "--vae-config $written" --write-model "$tmp/unused.safetensors" --vae-config tiny --vae-latent-sizes 4
check "a refused --write-model writes nothing (timing options)" [ ! -e "$tmp/unused.safetensors" ]
check "write model with its seed" "$bench" --config tiny-dit --seed 3 --write-model "$tmp/seeded.safetensors"
usage "vae batch without a vae" "--vae-batch applies to the VAE decoder: give --vae FILE or --vae-config NAME" --config tiny-dit --vae-batch 2
usage "vae sizes without a vae" "--vae-latent-sizes applies to the VAE decoder" --config tiny-dit --vae-latent-sizes 4

# Results that cannot reach standard output (a full disk) fail the run.
"$bench" --config tiny-dit --repeat 1 --warmup 0 --json >/dev/full 2>"$tmp/full.err"
check "a full standard output exits 1" [ $? = 1 ]
check "and says so" grep -q "fpdm-bench: writing standard output failed" "$tmp/full.err"

finish
