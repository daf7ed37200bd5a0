#!/usr/bin/env bash
# run.sh - the one-shot GPU check, for a machine with an NVIDIA GPU and no
# network: finds nvcc and the CUDA libraries (toolkit folders or Python
# nvidia-* packages), builds for this GPU's architecture, runs the GPU tests
# (ctest -L gpu), then times fpdm-bench on DiT-XL/2 and FPDM-XL/2 at 256 px,
# batch 64 with classifier-free guidance (128 rows), bf16 and fp32; the
# FPDM-XL/2 time against --iters 1,2,4,8 (a straight line: the iterations are
# replayed CUDA graphs); the SD-VAE decoder (random weights) at 256 and 512 px;
# the attention kernel's variants (bench_attention) beside PyTorch's fused
# attention (torch_attention_bench.py); cuBLASLt's algorithm choice against
# the fastest of 8 (bench_linear); the LayerNorm kernel's variants
# (bench_layernorm); cuDNN's convolutions in NCHW and NHWC
# (bench_conv); and tests/gpu/torch_bench.py and
# torch_vae_bench.py on the same shapes. The summary table, printed last,
# gives our ms, torch's ms, their ratio, our fraction of the reference matrix
# product's rate and peak memory. Every step has a timeout and the
# whole run stops starting steps after RUN_BUDGET_S (default 470 s). Before
# the benchmarks it samples end to end: fpdm-sample with the shipped model on
# the GPU (PNGs), and whole sampling loops of the XL models. Logs, JSON and
# the PNGs go to $OUT (or build-gpu/logs).
#
#   bash tests/gpu/run.sh            (from the repository root; under 3 minutes on an H100)
#   PROFILE=1 bash tests/gpu/run.sh  (adds ncu's per-kernel times of one FPDM-XL/2 forward)
#   QUICK=1 bash tests/gpu/run.sh    (build, GPU tests and sanitizers only: about 2 minutes)
#   BENCH_PRECISIONS=bf16 VAE=0 bash tests/gpu/run.sh
#                                    (a re-timing of the bf16 forward alone: no fp32
#                                    forwards, no VAE decoder timings)
#
# On a machine without Debian packages (the lent GPU machines), the CPU
# backend's libraries travel as .deb files in .deps/ (see "CPU-side
# libraries" below); there, from this machine:
#   run command: OUT_DIR=$OUT; OUT=/tmp/logs bash tests/gpu/run.sh; tar czf $OUT_DIR/logs.tgz -C /tmp/logs .
#   carry: .deps
# (add compute-sanitizer, where the machine's toolkit lacks it, with
#   python3 -m pip download --no-deps -d .deps "nvidia-cuda-sanitizer-api==13.0.*")
# and, to time a change against the last verified commit on the same card,
#   mkdir -p .baseline && git archive main | tar -x -C .baseline     (here; carry .baseline too)
#   BASELINE=.baseline bash tests/gpu/run.sh
set -u
cd "$(dirname "$0")/../.."
ROOT=$PWD
BUILD=$ROOT/build-gpu
LOGS=${OUT:-$BUILD/logs}
mkdir -p "$BUILD" "$LOGS"
JOBS=$(nproc 2>/dev/null || echo 4)
SUMMARY=$LOGS/summary.txt
: > "$SUMMARY"
note() { echo "== $*" | tee -a "$SUMMARY"; }

# QUICK=1: build, the GPU tests (their quick cases) and the sanitizer checks
# only, for a check of a fix in what is left of a session's device time.
QUICK=${QUICK:-0}
if [ "$QUICK" = 1 ]; then
  for empty in ours.jsonl torch.jsonl torch_vae.jsonl baseline.jsonl; do : > "$LOGS/$empty"; done
fi
RUN_START=$(date +%s)
RUN_BUDGET_S=${RUN_BUDGET_S:-470}
# The timeout for a step: its own limit, cut to what is left of the budget;
# 0 when too little is left to start it.
step_timeout() {
  local left=$((RUN_START + RUN_BUDGET_S - $(date +%s)))
  if [ "$left" -lt 15 ]; then echo 0; elif [ "$left" -lt "$1" ]; then echo "$left"; else echo "$1"; fi
}
# run_step LIMIT NAME COMMAND...: runs it under its timeout, or notes the skip.
run_step() {
  local limit name=$2
  limit=$(step_timeout "$1")
  shift 2
  if [ "$limit" = 0 ]; then note "skipped $name: the run's time budget is spent"; return 124; fi
  timeout "$limit" "$@"
}
# run_bench LIMIT NAME OUTPUT: the benchmark tests/gpu/NAME.c, where built,
# into OUTPUT (emptied first); a note unless it ran through (0) or saw no
# GPU (77).
run_bench() {
  local limit=$1 name=$2 output=$3 rc=0
  : > "$output"
  [ -x "$BUILD/$name" ] || return 0
  run_step "$limit" "$name" "$BUILD/$name" > "$output" 2>&1 || rc=$?
  case $rc in
    0 | 77) ;;
    *) note "$name failed, disagreed or timed out (see $output)" ;;
  esac
}

# ---- toolchain ---------------------------------------------------------------
NVCC=$(command -v nvcc || true)
for candidate in /usr/local/cuda/bin/nvcc /usr/local/cuda-*/bin/nvcc /opt/cuda/bin/nvcc; do
  [ -n "$NVCC" ] && break
  [ -x "$candidate" ] && NVCC=$candidate
done
if [ -z "$NVCC" ]; then note "nvcc not found: cannot build the CUDA backend"; exit 1; fi
CUDA_HOME=$(dirname "$(dirname "$(readlink -f "$NVCC")")")
export PATH=$CUDA_HOME/bin:$PATH
note "nvcc: $NVCC ($("$NVCC" --version | tail -1))"

# Library folders: the toolkit's, then any Python nvidia-* wheels (cuBLAS,
# cuDNN, the runtime), whose libraries may lack the unversioned .so links
# CMake looks for; those get links in $BUILD/nvidia-links.
LIB_DIRS=()
INC_DIRS=()
for dir in "$CUDA_HOME/lib64" "$CUDA_HOME/lib" "$CUDA_HOME/targets/x86_64-linux/lib"; do
  [ -d "$dir" ] && LIB_DIRS+=("$dir")
done
NVIDIA_PY=$(python3 -c 'import nvidia, os; print("\n".join(os.path.abspath(p) for p in nvidia.__path__))' 2>/dev/null || true)
LINKS=$BUILD/nvidia-links
mkdir -p "$LINKS"
for base in $NVIDIA_PY; do
  for pkg in "$base"/*/; do
    [ -d "$pkg/lib" ] && LIB_DIRS+=("${pkg%/}/lib")
    [ -d "$pkg/include" ] && INC_DIRS+=("${pkg%/}/include")
    for lib in "$pkg"/lib/lib*.so.*; do
      [ -e "$lib" ] || continue
      name=$(basename "$lib"); name=${name%%.so.*}.so
      [ -e "$LINKS/$name" ] || ln -s "$lib" "$LINKS/$name"
    done
  done
done
LIB_DIRS+=("$LINKS")
LIB_PATH=$(IFS=:; echo "${LIB_DIRS[*]}")
export LD_LIBRARY_PATH=$LIB_PATH${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}
note "library folders: $LIB_PATH"

ARCH=$(nvidia-smi --query-gpu=compute_cap --format=csv,noheader 2>/dev/null | head -1 | tr -d ' .')
GPU_NAME=$(nvidia-smi --query-gpu=name --format=csv,noheader 2>/dev/null | head -1)
if [ -z "$ARCH" ]; then ARCH=90; note "nvidia-smi gave no compute capability: building for sm_90"; fi
note "GPU: ${GPU_NAME:-unknown}, sm_$ARCH, $JOBS cores"

# The device machines have no Debian packages and no network: the CPU
# backend's libraries (OpenMP OpenBLAS, cJSON, stb) travel as .deb files in
# .deps/ (git-ignored; fetched here with `apt-get download libcjson-dev
# libcjson1 libgfortran5 libopenblas-openmp-dev libopenblas0-openmp libstb-dev
# libstb0` and named in the device call's carry). They are unpacked into the
# build folder, not into /, and handed to CMake as its cached answers.
DEP_FLAGS=()
if ls "$ROOT"/.deps/*.deb > /dev/null 2>&1; then
  DEP_ROOT=$BUILD/deps-root
  mkdir -p "$DEP_ROOT"
  for deb in "$ROOT"/.deps/*.deb; do dpkg -x "$deb" "$DEP_ROOT"; done
  DEP_LIB=$DEP_ROOT/usr/lib/x86_64-linux-gnu
  DEP_FLAGS=(-DOPENBLAS_OPENMP_LIBRARY="$DEP_LIB/openblas-openmp/libopenblas.so"
             -DCBLAS_INCLUDE_DIR="$DEP_ROOT/usr/include/x86_64-linux-gnu/openblas-openmp"
             -DCJSON_INCLUDE_DIR="$DEP_ROOT/usr/include" -DCJSON_LIBRARY="$DEP_LIB/libcjson.so"
             -DSTB_INCLUDE_DIR="$DEP_ROOT/usr/include/stb" -DSTB_LIBRARY="$DEP_LIB/libstb.so")
  export LD_LIBRARY_PATH=$DEP_LIB:$DEP_LIB/openblas-openmp:$LD_LIBRARY_PATH
  note "CPU-side libraries from .deps/ unpacked into $DEP_ROOT"
fi

# ---- build -------------------------------------------------------------------
CMAKE_LIBS=$(IFS=';'; echo "${LIB_DIRS[*]}")
CMAKE_INCS=$(IFS=';'; echo "${INC_DIRS[*]:-}")
CMAKE_FLAGS=(-DCMAKE_BUILD_TYPE=Release -DCMAKE_CUDA_COMPILER="$NVCC" -DCUDAToolkit_ROOT="$CUDA_HOME"
             -DCMAKE_CUDA_ARCHITECTURES="$ARCH" -DCMAKE_CUDA_FLAGS="-Xptxas=-v"
             -DCMAKE_LIBRARY_PATH="$CMAKE_LIBS" -DCMAKE_INCLUDE_PATH="$CMAKE_INCS" -DFPDM_WERROR=OFF
             "${DEP_FLAGS[@]}")
if ! run_step 90 configure cmake -S "$ROOT" -B "$BUILD" "${CMAKE_FLAGS[@]}" \
    > "$LOGS/configure.log" 2>&1; then
  note "configure FAILED (see $LOGS/configure.log)"; tail -30 "$LOGS/configure.log"; exit 1
fi
grep -q "CUDA backend ON" "$LOGS/configure.log" || note "warning: configure did not enable the CUDA backend"
# Only what this check runs (every GPU test, test_network included, and
# fpdm-bench), so an unrelated broken target cannot stop it.
TARGETS=()
for test_source in "$ROOT"/tests/gpu/test_*.c; do
  TARGETS+=("gpu_$(basename "$test_source" .c)")
done
[ -f "$ROOT/tools/fpdm_bench.c" ] && TARGETS+=(fpdm-bench)
[ -f "$ROOT/tools/fpdm_sample.c" ] && TARGETS+=(fpdm-sample)
for bench_source in "$ROOT"/tests/gpu/bench_*.c; do
  bench_name=$(basename "$bench_source" .c)
  # bench_conv exists only where the build found cuDNN.
  if [ "$bench_name" = bench_conv ] && grep -q "fpdm: cuDNN not found" "$LOGS/configure.log"; then continue; fi
  [ -f "$bench_source" ] && TARGETS+=("$bench_name")
done
if ! run_step 240 build cmake --build "$BUILD" -j "$JOBS" --target "${TARGETS[@]}" > "$LOGS/build.log" 2>&1; then
  note "build FAILED (see $LOGS/build.log)"; grep -E "error|Error" "$LOGS/build.log" | head -30; exit 1
fi
note "built: ${TARGETS[*]} ($(( $(date +%s) - RUN_START )) s in)"
# Registers and spills of the kernels that matter most (ptxas -v, in the build log).
python3 - "$LOGS/build.log" > "$LOGS/registers.txt" <<'PY'
import re, sys
# ptxas -v: "Compiling entry function 'NAME'", then "N bytes spill stores, M
# bytes spill loads", then "Used R registers".
function, spills = None, ""
for line in open(sys.argv[1], errors="replace"):
    m = re.search(r"Compiling entry function '(\S+)'", line)
    if m:
        function, spills = m.group(1), ""
    m = re.search(r"(\d+) bytes spill stores, (\d+) bytes spill loads", line)
    if m and function:
        spills = f", spills {m.group(1)}/{m.group(2)} bytes"
    m = re.search(r"Used (\d+) registers", line)
    if m and function and "half" not in function and re.search(r"attention_tc|layernorm|gated|residual", function):
        smem = re.search(r"(\d+) bytes smem", line)
        print(f"{function[:70]:<70} {m.group(1):>4} registers, {smem.group(1) if smem else 0}"
              f" bytes smem{spills}")
        function = None
PY

# The variant a build runs: the CMake option where set, else the default the
# kernel's source defines.
build_variant() {  # build_variant OPTION SOURCE
  local chosen
  chosen=$(sed -n "s/^$1:STRING=//p" "$BUILD/CMakeCache.txt")
  [ -n "$chosen" ] || chosen=$(sed -n "s/^#define $1 \([0-9]\)\$/\1/p" "$ROOT/$2")
  echo "$chosen"
}
DEFAULT_VARIANT=$(build_variant FPDM_ATTENTION_VARIANT kernels/attention.cu)
ATTENTION_VARIANT=$DEFAULT_VARIANT
DEFAULT_LAYERNORM=$(build_variant FPDM_LAYERNORM_VARIANT kernels/layernorm.cu)
LAYERNORM_VARIANT=$DEFAULT_LAYERNORM
BENCH_BATCH=${BENCH_BATCH:-64}
if [ "$QUICK" != 1 ]; then
# ---- kernel variants -----------------------------------------------------------
# The tensor-core attention kernel's variants (bench_attention, which also
# checks each against variant 0) and the cached LayerNorm's (bench_layernorm,
# each against variant 0 bit for bit) timed on this GPU; where one beats the
# build's default (CMake's FPDM_ATTENTION_VARIANT, FPDM_LAYERNORM_VARIANT) by
# more than 3% on DiT-XL/2's shapes (attention at 256 tokens, LayerNorm with
# the residual, the form a DiT block runs twice), the library is rebuilt to
# run it before any test or timing, and the summary names it.
# A variant that failed or disagreed is printed without a time and cannot be
# picked.
# fastest_variant FILE DEFAULT AWK-CONDITION TIME-FIELD: the variant (field 1)
# of the rows meeting the condition whose time is lowest, if 3% under the
# default's; else the default.
fastest_variant() {
  awk -v default="$2" "$3"' && $'"$4"' ~ /^[0-9.]+$/ {
      if ($1 == default) base = $'"$4"'
      if (best == "" || $'"$4"' < best) { best = $'"$4"'; variant = $1 } }
    END { if (base != "" && best < 0.97 * base) print variant; else print default }' "$1"
}
run_bench 60 bench_attention "$LOGS/attention.txt"
[ -s "$LOGS/attention.txt" ] &&
  ATTENTION_VARIANT=$(fastest_variant "$LOGS/attention.txt" "$DEFAULT_VARIANT" '$2 == 128 && $3 == 256' 4)
run_bench 60 bench_layernorm "$LOGS/layernorm.txt"
[ -s "$LOGS/layernorm.txt" ] &&
  LAYERNORM_VARIANT=$(fastest_variant "$LOGS/layernorm.txt" "$DEFAULT_LAYERNORM" '$2 == "residual"' 3)
if [ "$ATTENTION_VARIANT" != "$DEFAULT_VARIANT" ] || [ "$LAYERNORM_VARIANT" != "$DEFAULT_LAYERNORM" ]; then
  if run_step 60 "reconfigure" cmake -S "$ROOT" -B "$BUILD" -DFPDM_ATTENTION_VARIANT="$ATTENTION_VARIANT" \
        -DFPDM_LAYERNORM_VARIANT="$LAYERNORM_VARIANT" > "$LOGS/configure-variant.log" 2>&1 &&
      run_step 200 "rebuild" cmake --build "$BUILD" -j "$JOBS" --target "${TARGETS[@]}" \
        > "$LOGS/build-variant.log" 2>&1; then
    note "the fastest here: attention variant $ATTENTION_VARIANT, LayerNorm variant $LAYERNORM_VARIANT; the library now runs them"
  else
    note "rebuild with attention variant $ATTENTION_VARIANT, LayerNorm variant $LAYERNORM_VARIANT FAILED (see $LOGS/build-variant.log); back to the defaults"
    ATTENTION_VARIANT=$DEFAULT_VARIANT LAYERNORM_VARIANT=$DEFAULT_LAYERNORM
    cmake -S "$ROOT" -B "$BUILD" -DFPDM_ATTENTION_VARIANT="$DEFAULT_VARIANT" \
      -DFPDM_LAYERNORM_VARIANT="$DEFAULT_LAYERNORM" > /dev/null 2>&1
    cmake --build "$BUILD" -j "$JOBS" --target "${TARGETS[@]}" > /dev/null 2>&1
  fi
fi

# ---- baseline (optional) -------------------------------------------------------
# BASELINE=DIR names another copy of the project (the last verified commit:
# `git archive main | tar -x -C .baseline`, carried to the machine), whose
# fpdm-bench is built here too, so that one run on one card times a change
# against what it changes (runs on different machines do not compare).
BASE_BENCH=
if [ -n "${BASELINE:-}" ]; then
  if [ -f "$BASELINE/CMakeLists.txt" ] &&
      run_step 90 "baseline configure" cmake -S "$BASELINE" -B "$BUILD-baseline" "${CMAKE_FLAGS[@]}" \
        > "$LOGS/baseline-configure.log" 2>&1 &&
      run_step 200 "baseline build" cmake --build "$BUILD-baseline" -j "$JOBS" --target fpdm-bench \
        > "$LOGS/baseline-build.log" 2>&1; then
    BASE_BENCH=$BUILD-baseline/fpdm-bench
    note "baseline built from $BASELINE ($(( $(date +%s) - RUN_START )) s in)"
  else
    note "baseline $BASELINE did not build (see $LOGS/baseline-*.log): no A/B timings"
  fi
fi


fi  # QUICK
# ---- tests -------------------------------------------------------------------
[ "$QUICK" = 1 ] && export FPDM_TEST_QUICK=1
run_step 200 ctest ctest --test-dir "$BUILD" -L gpu --output-on-failure --timeout 120 \
  > "$LOGS/ctest.log" 2>&1
CTEST_RC=$?
cat "$LOGS/ctest.log"
TEST_LINES=$(grep -E "^ *[0-9]+/[0-9]+ Test +#[0-9]+: gpu_" "$LOGS/ctest.log" |
  sed -E 's/^ *[0-9]+\/[0-9]+ Test +#[0-9]+: ([^ ]+) [. ]*([A-Za-z*]+[A-Za-z ]*)[^0-9]*([0-9.]+ sec).*/\1 \2 \3/')
TEST_TOTAL=$(grep -E "tests passed|tests failed" "$LOGS/ctest.log" | tail -1)
note "tests done ($(( $(date +%s) - RUN_START )) s in)"

if [ "$QUICK" != 1 ]; then
# ---- end to end ---------------------------------------------------------------
# The command line as users run it, on the GPU: the shipped FPDM model (the
# default model), 16 digits as PNGs and a grid; then whole sampling loops of
# the XL models with random weights (fpdm-bench --mode sample, 10 steps, 8
# images with guidance).
SAMPLE=$BUILD/fpdm-sample
BENCH=$BUILD/fpdm-bench
: > "$LOGS/sampling.txt"
if [ -x "$SAMPLE" ]; then
  if run_step 60 "fpdm-sample" "$SAMPLE" --device cuda --steps 20 -n 16 --out "$LOGS/samples" \
      --grid "$LOGS/grid.png" --report "$LOGS/sample-report.json" > "$LOGS/sample.log" 2>&1; then
    echo "fpdm-sample --device cuda (shipped FPDM model, 20 steps): $(ls "$LOGS/samples" | grep -c '\.png$') PNGs;" \
      "$(grep -o '[0-9]* images in .*' "$LOGS/sample.log" | tail -1)" >> "$LOGS/sampling.txt"
  else
    note "fpdm-sample on the GPU FAILED (see $LOGS/sample.log)"
    tail -3 "$LOGS/sample.log"
  fi
fi
if [ -x "$BENCH" ]; then
  for config in DiT-XL/2 FPDM-XL/2; do
    tag=$(echo "$config" | tr '/' '_')
    if run_step 100 "sampling $config" "$BENCH" --config "$config" --mode sample --steps 10 \
        --batch-size 8 --cfg on --device cuda --precision bf16 --repeat 2 --warmup 1 --json \
        > "$LOGS/sample-$tag.json" 2> "$LOGS/sample-$tag.err"; then
      python3 - "$config" "$LOGS/sample-$tag.json" >> "$LOGS/sampling.txt" <<'PY'
import json, sys
row = json.load(open(sys.argv[2]))["results"][0]
print(f"{sys.argv[1]} bf16, 10 steps, 8 images with CFG: {1000 * row['seconds_min']:.1f} ms a run, "
      f"{row['images_per_second']:.1f} images/s, {row['model_evaluations_per_second']:.0f} evaluations/s")
PY
    else
      note "sampling $config failed (see $LOGS/sample-$tag.err)"
      tail -3 "$LOGS/sample-$tag.err"
    fi
  done
fi

# ---- benchmarks --------------------------------------------------------------
# BENCH_BATCH images, doubled by classifier-free guidance into network rows.
BENCH_ROWS=$((2 * BENCH_BATCH))
BENCH_CONFIGS=${BENCH_CONFIGS:-"DiT-XL/2 FPDM-XL/2"}
BENCH_PRECISIONS=${BENCH_PRECISIONS:-"bf16 fp32"}
VAE=${VAE:-1}
: > "$LOGS/ours.jsonl"
: > "$LOGS/torch.jsonl"
# One summary line per fpdm-bench JSON: the first measurement's numbers.
summarize_ours() {  # CONFIG DTYPE JSON [OUTPUT]
  python3 - "$@" >> "${4:-$LOGS/ours.jsonl}" <<'PY'
import json, sys
config, dtype, path = sys.argv[1:4]
report = json.load(open(path))
row = report["results"][0]
print(json.dumps({"config": config, "dtype": dtype, "ms_min": 1000 * row["seconds_min"],
                  "ms_mean": 1000 * row["seconds_mean"], "rows": row["rows"],
                  "fraction_of_reference": row["fraction_of_reference"],
                  "reference_tflops": report["reference"]["tflops"],
                  "device_used_bytes": row["device_used_bytes"], "arena_bytes": row["arena_bytes"],
                  "min_activation_bytes": row["min_activation_bytes"],
                  "weight_bytes": row["weight_bytes"]}))
PY
}
if [ -x "$BENCH" ]; then
  for config in $BENCH_CONFIGS; do
    for precision in $BENCH_PRECISIONS; do
      tag=$(echo "$config-$precision" | tr '/' '_')
      if run_step 100 "fpdm-bench $config $precision" "$BENCH" --config "$config" \
          --batch-size "$BENCH_BATCH" --cfg on --device cuda --precision "$precision" \
          --repeat 5 --warmup 2 --json > "$LOGS/bench-$tag.json" 2> "$LOGS/bench-$tag.err"; then
        summarize_ours "$config" "$precision" "$LOGS/bench-$tag.json"
      else
        note "fpdm-bench $config $precision failed (see $LOGS/bench-$tag.err)"
        tail -3 "$LOGS/bench-$tag.err"
      fi
    done
  done
  # PyTorch on the same shapes right after ours (the ratio is the figure
  # that counts: before the budget can run out on the rest).
  for config in $BENCH_CONFIGS; do
    for dtype in $BENCH_PRECISIONS; do
      run_step 100 "torch_bench $config $dtype" python3 "$ROOT/tests/gpu/torch_bench.py" \
        --config "$config" --batch-size "$BENCH_ROWS" --dtype "$dtype" --json "$LOGS/torch.jsonl" \
        >> "$LOGS/torch.log" 2>&1 || note "torch_bench $config $dtype did not run (see $LOGS/torch.log)"
    done
  done
  # cuBLASLt's first algorithm (ours) against the fastest of its first 8 on
  # each product of a block: what autotuning the products would give.
  run_bench 60 bench_linear "$LOGS/linear.txt"
  # PyTorch's fused attention on the shapes of the variants' timings.
  run_step 60 "torch attention" python3 "$ROOT/tests/gpu/torch_attention_bench.py" \
    >> "$LOGS/attention.txt" 2>> "$LOGS/torch.log" || note "torch_attention_bench did not run (see $LOGS/torch.log)"
  # The baseline on the same shapes, bf16 (the precision changes aim at).
  : > "$LOGS/baseline.jsonl"
  if [ -n "$BASE_BENCH" ]; then
    for config in $BENCH_CONFIGS; do
      tag=$(echo "$config" | tr '/' '_')
      if run_step 100 "baseline $config" "$BASE_BENCH" --config "$config" \
          --batch-size "$BENCH_BATCH" --cfg on --device cuda --precision bf16 \
          --repeat 5 --warmup 2 --json > "$LOGS/baseline-$tag.json" 2> "$LOGS/baseline-$tag.err"; then
        summarize_ours "$config" bf16 "$LOGS/baseline-$tag.json" "$LOGS/baseline.jsonl"
      else
        note "baseline fpdm-bench $config failed (see $LOGS/baseline-$tag.err)"
      fi
    done
    if [ "$VAE" = 1 ]; then
      run_step 120 "baseline vae decode" "$BASE_BENCH" --mode vae --vae-config sd --vae-batch 8 \
          --vae-latent-sizes 32,64 --device cuda --repeat 3 --warmup 1 --json \
          > "$LOGS/baseline-vae.json" 2> "$LOGS/baseline-vae.err" ||
        note "baseline VAE timing failed (see $LOGS/baseline-vae.err)"
    fi
  fi
  # Time per forward against the iteration count: with the iterations
  # replayed as CUDA graphs this is a straight line, intercept = the rest of
  # the network, slope = one iteration.
  if run_step 100 "iteration series" "$BENCH" --config FPDM-XL/2 --batch-size "$BENCH_BATCH" \
      --cfg on --device cuda --precision bf16 --iters 1,2,4,8 --repeat 5 --warmup 2 --json \
      > "$LOGS/bench-iters.json" 2> "$LOGS/bench-iters.err"; then
    python3 - "$LOGS/bench-iters.json" > "$LOGS/iters.txt" <<'PY'
import json, sys
rows = json.load(open(sys.argv[1]))["results"]
xs = [r["iters"] for r in rows]
ys = [1000 * r["seconds_min"] for r in rows]
n = len(xs)
mx, my = sum(xs) / n, sum(ys) / n
slope = sum((x - mx) * (y - my) for x, y in zip(xs, ys)) / sum((x - mx) ** 2 for x in xs)
intercept = my - slope * mx
print(f"FPDM-XL/2 bf16, {rows[0]['rows']} rows: ms per forward against --iters (min of 5)")
print(f"{'iters':>6} {'ms':>10} {'line ms':>10} {'off %':>7}")
for x, y in zip(xs, ys):
    fit = intercept + slope * x
    print(f"{x:>6} {y:>10.2f} {fit:>10.2f} {100 * (y - fit) / fit:>7.2f}")
print(f"line: {intercept:.2f} ms + {slope:.2f} ms per iteration")
PY
  else
    note "iteration series failed (see $LOGS/bench-iters.err)"
    tail -3 "$LOGS/bench-iters.err"
  fi
  # The decoder runs on the GPU when the build found cuDNN, else on a CPU
  # context (the bench says which on stderr and in vae_settings.device).
  # Batch 1 against 8: what decoding a sampler's batch together buys.
  for vae_batch in 1 8; do
    [ "$VAE" = 1 ] || break
    run_step 120 "vae decode, batch $vae_batch" "$BENCH" --mode vae --vae-config sd \
        --vae-batch "$vae_batch" --vae-latent-sizes 32,64 --device cuda --repeat 3 --warmup 1 \
        --json > "$LOGS/bench-vae-$vae_batch.json" 2> "$LOGS/bench-vae-$vae_batch.err" || {
      note "VAE timing at batch $vae_batch failed (see $LOGS/bench-vae-$vae_batch.err)"
      tail -3 "$LOGS/bench-vae-$vae_batch.err"; }
  done
else
  note "fpdm-bench not built: no timings of ours"
fi
# The PyTorch VAE decoder: first checked against diffusers' golden output
# with this machine's torch (its fused-attention path), then timed on the
# same shapes as ours.
: > "$LOGS/torch_vae.jsonl"
if [ "$VAE" = 1 ]; then
run_step 60 "reference VAE check" python3 "$ROOT/tests/test_reference_vae.py" "$BUILD" \
  > "$LOGS/reference-vae.log" 2>&1 || note "tests/test_reference_vae.py FAILED or skipped (see $LOGS/reference-vae.log)"
for vae_batch in 1 8; do
  for dtype in bf16 fp32; do
    run_step 100 "torch_vae_bench $vae_batch $dtype" python3 "$ROOT/tests/gpu/torch_vae_bench.py" \
      --batch "$vae_batch" --latent-sizes 32,64 --dtype "$dtype" --json "$LOGS/torch_vae.jsonl" \
      >> "$LOGS/torch.log" 2>&1 || note "torch_vae_bench $vae_batch $dtype did not run (see $LOGS/torch.log)"
  done
done
# The same in PyTorch's default NCHW layout: the gap to channels-last says what
# an NHWC decoder of ours could gain.
run_step 100 "torch_vae_bench 8 bf16 nchw" python3 "$ROOT/tests/gpu/torch_vae_bench.py" \
  --batch 8 --latent-sizes 32,64 --dtype bf16 --layout nchw --json "$LOGS/torch_vae.jsonl" \
  >> "$LOGS/torch.log" 2>&1 || note "torch_vae_bench 8 bf16 nchw did not run (see $LOGS/torch.log)"
# The same question for our own convolutions: cuDNN's bf16 3x3 products of
# the decoder's heaviest shapes in NCHW (ours) and NHWC.
run_bench 60 bench_conv "$LOGS/conv.txt"
fi  # VAE

# Where an FPDM-XL/2 bf16 forward spends its time, kernel by kernel (Nsight
# Compute's per-kernel durations over one forward with 2 iterations; the
# bench's reference product shows up too). Only with PROFILE=1 and ncu.
NCU=$(command -v ncu || ls /opt/nvidia/nsight-compute/*/ncu 2>/dev/null | head -1 || true)
if [ "${PROFILE:-0}" = 1 ] && [ -n "$NCU" ] && [ -x "$BENCH" ]; then
  run_step 120 "profile" "$NCU" --clock-control none --metrics gpu__time_duration.sum --print-summary per-kernel \
      "$BENCH" --config FPDM-XL/2 --batch-size "$BENCH_BATCH" --cfg on --device cuda \
      --precision bf16 --iters 2 --repeat 1 --warmup 0 > "$LOGS/profile.txt" 2>&1 ||
    note "profile failed (see $LOGS/profile.txt)"
  # Why the attention kernel runs where it does: occupancy, issue and stall
  # reasons of one launch (DiT-XL/2 shapes).
  run_step 90 "attention profile" "$NCU" --kernel-name regex:attention_tc_kernel --launch-count 1 \
      --section SpeedOfLight --section Occupancy --section LaunchStats --section WarpStateStats \
      --section SchedulerStats "$BENCH" --config DiT-XL/2 --batch-size "$BENCH_BATCH" --cfg on \
      --device cuda --precision bf16 --repeat 1 --warmup 0 > "$LOGS/profile-attention.txt" 2>&1 ||
    note "attention profile failed (see $LOGS/profile-attention.txt)"
  grep -E "Duration|Registers Per Thread|Achieved Occupancy|Theoretical Occupancy|Compute \(SM\) Throughput|Memory Throughput|Issued Warp Per Scheduler|No Eligible|Warp Cycles Per Issued|Block Limit|Stall|stall" \
    "$LOGS/profile-attention.txt" | head -30 > "$LOGS/profile-attention-top.txt"
  # Kernel time against wall time for whole DiT-XL/2 forwards (nsys, where
  # the machine has it): a difference is time the GPU sat idle between kernels.
  NSYS=$(command -v nsys || ls /opt/nvidia/nsight-systems/*/bin/nsys /usr/local/cuda/bin/nsys 2>/dev/null | head -1 || true)
  if [ -n "$NSYS" ]; then
    run_step 120 "timeline" "$NSYS" profile -t cuda --stats=true --force-overwrite true \
        -o "$LOGS/timeline" "$BENCH" --config DiT-XL/2 --batch-size "$BENCH_BATCH" --cfg on \
        --device cuda --precision bf16 --repeat 3 --warmup 1 --json > "$LOGS/nsys.txt" 2>&1 ||
      note "timeline failed (see $LOGS/nsys.txt)"
    python3 - "$LOGS/nsys.txt" > "$LOGS/nsys-top.txt" <<'PY'
import re, sys
# The cuda_gpu_kern_sum table: "Time (%)  Total Time (ns)  Instances ... Name".
text = open(sys.argv[1], errors="replace").read()
section = text.split("cuda_gpu_kern_sum", 1)[-1]
rows = []
for line in section.splitlines():
    # Time (%), Total Time, Instances, then Avg, Med, Min, Max, StdDev, Name.
    m = re.match(r"\s*([\d.]+)\s+([\d,]+)\s+([\d,]+)(?:\s+[\d,.]+){5}\s+(\S.*)$", line)
    if m:
        rows.append((int(m.group(2).replace(",", "")), int(m.group(3).replace(",", "")), m.group(4)))
    elif rows and not line.strip():
        break
forwards = 4  # 1 warm-up + 3 timed; the reference product runs too
total = sum(r[0] for r in rows)
print(f"DiT-XL/2 bf16 (nsys): kernel time {total / 1e6:.1f} ms over {forwards} forwards and the"
      f" reference product; per kernel (ms per forward, largest first):")
for ns, calls, name in sorted(rows, reverse=True)[:12]:
    print(f"  {ns / 1e6 / forwards:8.2f} ms {calls // forwards:5d} x  {name[:80]}")
PY
  fi
  python3 - "$LOGS/profile.txt" > "$LOGS/profile-top.txt" <<'PY'
import re, sys
# ncu's per-kernel summary: a kernel's name line, then its metric rows with
# columns (metric, unit, minimum, maximum, average) and an invocation count.
kernels, name, calls = [], None, 0
for line in open(sys.argv[1], errors="replace"):
    m = re.match(r"\s+(\S.*?) \(\d+, \d+, \d+\)x\(\d+, \d+, \d+\).*Invocations (\d+)", line)
    if m:
        name, calls = m.group(1), int(m.group(2))
        continue
    m = re.match(r"\s+gpu__time_duration\.sum\s+(\S+)\s+\S+\s+\S+\s+(\S+)", line)
    if m and name:
        scale = {"ns": 1e-6, "us": 1e-3, "ms": 1.0, "s": 1e3, "nsecond": 1e-6, "usecond": 1e-3,
                 "msecond": 1.0, "second": 1e3}.get(m.group(1), 0)
        average = float(m.group(2).replace(",", "")) * scale
        kernels.append((average * calls, calls, average, name[:90]))
        name = None
kernels.sort(reverse=True)
print("FPDM-XL/2 bf16, 2 iterations: kernels by total ms (ncu, clocks as found)")
for total, calls, average, name in kernels[:14]:
    print(f"{total:9.3f} ms {calls:4d} x {average:8.4f}  {name}")
PY
fi


fi  # QUICK
# ---- memory and race checks (what the budget leaves) -----------------------------
# Kernel tests once more under compute-sanitizer: memcheck reports reads and
# writes outside an allocation that agree with the CPU all the same (the arena
# is one allocation, so it sees only its ends); racecheck, shared-memory
# hazards between a block's threads; synccheck, barriers misused. The last two
# on the attention kernels' quick cases (FPDM_TEST_QUICK=1). Last, since they
# run tens of times slower: a check cut short by the budget is noted, not
# failed.
# The toolkit's compute-sanitizer, else the one in a nvidia-cuda-sanitizer-api
# wheel carried in .deps/ (`python3 -m pip download --no-deps -d .deps
# "nvidia-cuda-sanitizer-api==13.0.*"`), unpacked into the build folder.
SANITIZER=$(command -v compute-sanitizer ||
  ls "$CUDA_HOME"/bin/compute-sanitizer "$CUDA_HOME"/compute-sanitizer/compute-sanitizer 2>/dev/null |
  head -1 || true)
SANITIZER_WHEEL=$(ls "$ROOT"/.deps/nvidia_cuda_sanitizer_api-*.whl 2>/dev/null | head -1 || true)
if [ -z "$SANITIZER" ] && [ -n "$SANITIZER_WHEEL" ]; then
  # The binary sits in bin/ (13.0 wheels) or compute-sanitizer/ (later ones),
  # its helpers beside it or in lib/; zip keeps no permissions.
  python3 -m zipfile -e "$SANITIZER_WHEEL" "$BUILD/sanitizer" > /dev/null 2>&1 &&
    chmod -R +x "$BUILD"/sanitizer/nvidia &&
    SANITIZER=$(ls "$BUILD"/sanitizer/nvidia/cu*/compute-sanitizer/compute-sanitizer \
      "$BUILD"/sanitizer/nvidia/cu*/bin/compute-sanitizer 2>/dev/null | head -1 || true)
  [ -n "$SANITIZER" ] && note "compute-sanitizer from $(basename "$SANITIZER_WHEEL")"
fi
MEMCHECK_LINES=
if [ -n "$SANITIZER" ]; then
  # TOOL:TEST[:GROUP]: GROUP is the test's argument, one group of its checks
  # (test_ops' LayerNorm ones: its shared-memory kernels. Under racecheck the
  # whole test, cuBLASLt's Hopper products included, stopped with "Internal
  # Sanitizer Error" on an H100, and --kernel-name does not keep a kernel
  # from running under the tool).
  for check in memcheck:gpu_test_vae_gpu memcheck:gpu_test_noise memcheck:gpu_test_ops \
               racecheck:gpu_test_attention synccheck:gpu_test_attention \
               racecheck:gpu_test_ops:layernorm synccheck:gpu_test_ops:layernorm; do
    tool=${check%%:*} test_name=${check#*:} group=
    case $test_name in *:*) group=${test_name#*:} test_name=${test_name%%:*} ;; esac
    [ -x "$BUILD/$test_name" ] || continue
    log="$LOGS/$tool-$test_name${group:+-$group}.txt"
    rc=0
    (cd "$ROOT" && FPDM_TEST_QUICK=1 run_step 90 "$tool $test_name" "$SANITIZER" --tool "$tool" \
        --error-exitcode 99 "$BUILD/$test_name" $group) > "$log" 2>&1 || rc=$?
    case $rc in
      0) outcome="clean" ;;
      99) outcome="ERRORS (see $log)" ;;
      124) outcome="cut short by the time budget" ;;
      *) outcome="exit $rc (see $log)" ;;
    esac
    MEMCHECK_LINES+="  $tool $test_name${group:+ ($group checks)}: $outcome"$'\n'
  done
else
  MEMCHECK_LINES="  compute-sanitizer not found"$'\n'
fi

# ---- summary -----------------------------------------------------------------
{
  echo
  echo "GPU: ${GPU_NAME:-unknown} (sm_$ARCH), $(( $(date +%s) - RUN_START )) s"
  echo "GPU tests (ctest -L gpu, exit $CTEST_RC): ${TEST_TOTAL:-no result}; attention variant $ATTENTION_VARIANT, LayerNorm variant $LAYERNORM_VARIANT"
  echo "${TEST_LINES:-  (no test lines)}" | sed 's/^/  /'
  echo "compute-sanitizer:"
  printf "%s" "$MEMCHECK_LINES"
  python3 - "$LOGS/ours.jsonl" "$LOGS/torch.jsonl" "$BENCH_BATCH" <<'PY'
import json, sys
def load(path):
    rows = {}
    for line in open(path):
        line = line.strip()
        if line:
            r = json.loads(line)
            rows[(r["config"], r["dtype"])] = r
    return rows
ours, torch_rows = load(sys.argv[1]), load(sys.argv[2])
MB = 2 ** 20
print(f"\nforward of {sys.argv[3]} images with CFG ({2 * int(sys.argv[3])} rows) at 256 px, min of 5 (ms);")
print("ratio = ours / torch; %ref = our rate / an 8192^3 product's in the same precision;")
print("used MB = device memory in use after the run (CUDA context, weights, arena); w+a MB = our")
print("weights + arena; limit MB = weights + 1.5 x the analytic minimum activations; torch MB = peak tensors")
print(f"{'config':<10} {'dtype':<5} {'ours':>9} {'torch':>9} {'ratio':>6} {'%ref':>6} {'ref TF/s':>8}"
      f" {'used MB':>8} {'w+a MB':>8} {'limit MB':>8} {'torch MB':>8}")
for key in sorted(set(ours) | set(torch_rows)):
    o, t = ours.get(key), torch_rows.get(key)
    def cell(value, fmt):
        return format(value, fmt) if value is not None else "-"
    print(f"{key[0]:<10} {key[1]:<5} {cell(o and o['ms_min'], '.2f'):>9} {cell(t and t['ms_min'], '.2f'):>9}"
          f" {cell(o and t and o['ms_min'] / t['ms_min'], '.2f'):>6}"
          f" {cell(o and 100 * o['fraction_of_reference'], '.1f'):>6}"
          f" {cell(o and o['reference_tflops'], '.0f'):>8}"
          f" {cell(o and o['device_used_bytes'] / MB, '.0f'):>8}"
          f" {cell(o and (o['weight_bytes'] + o['arena_bytes']) / MB, '.0f'):>8}"
          f" {cell(o and (o['weight_bytes'] + 1.5 * o['min_activation_bytes']) / MB, '.0f'):>8}"
          f" {cell(t and t.get('peak_allocated_bytes', 0) / MB, '.0f'):>8}")
PY
  if [ -s "$LOGS/baseline.jsonl" ] || [ -s "$LOGS/baseline-vae.json" ]; then
    python3 - "$LOGS" <<'PY'
import json, os, sys
logs = sys.argv[1]
def rows(path):
    out = {}
    if os.path.exists(path):
        for line in open(path):
            if line.strip():
                r = json.loads(line)
                out[(r["config"], r["dtype"])] = r
    return out
ours, base = rows(os.path.join(logs, "ours.jsonl")), rows(os.path.join(logs, "baseline.jsonl"))
print("\nA/B on this card (BASELINE): ms, min of 5; ratio = this tree / baseline")
for key in sorted(base):
    o, b = ours.get(key), base[key]
    ratio = f"{o['ms_min'] / b['ms_min']:.3f}" if o else "-"
    print(f"  {key[0]:<10} {key[1]:<5} this {o['ms_min'] if o else float('nan'):8.2f}"
          f"  baseline {b['ms_min']:8.2f}  ratio {ratio}")
def vae(path):
    try:
        report = json.load(open(path))
    except (OSError, ValueError):
        return {}
    return {row["image_size"]: row for row in report["vae"]}
this_vae, base_vae = vae(os.path.join(logs, "bench-vae-8.json")), vae(os.path.join(logs, "baseline-vae.json"))
for px in sorted(base_vae):
    o, b = this_vae.get(px), base_vae[px]
    if o:
        print(f"  VAE batch 8 {px:>4} px: this {1000 * o['seconds_min']:8.1f} ms, arena"
              f" {o['arena_bytes'] >> 20} MB; baseline {1000 * b['seconds_min']:8.1f} ms, arena"
              f" {b['arena_bytes'] >> 20} MB; ratio {o['seconds_min'] / b['seconds_min']:.3f}")
PY
  fi
  [ -s "$LOGS/iters.txt" ] && { echo; cat "$LOGS/iters.txt"; }
  python3 - "$LOGS" <<'PY'
import glob, json, os, sys
logs = sys.argv[1]
ours = {}
device = None
for path in sorted(glob.glob(os.path.join(logs, "bench-vae-*.json"))):
    try:
        report = json.load(open(path))
    except ValueError:
        continue
    device = report["vae_settings"]["device"]
    for row in report["vae"]:
        ours[(report["vae_settings"]["batch_size"], row["image_size"])] = row
theirs = {}
for line in open(os.path.join(logs, "torch_vae.jsonl")):
    if line.strip():
        row = json.loads(line)
        theirs[(row["batch"], row["image_size"], row["dtype"], row.get("layout", "nhwc"))] = row
if ours or theirs:
    print(f"\nSD-VAE decoder (random weights), ours on {device}: ms per call, min of 3;")
    print("torch = tools/reference_vae.py, channels-last (NCHW: contiguous), cuDNN autotuned; fp32 allows TF32")
    print(f"{'batch':>5} {'px':>4} {'ours':>8} {'torch bf16':>10} {'bf16 NCHW':>9} {'torch fp32':>10} {'/bf16':>6} {'/fp32':>6}"
          f" {'img/s':>7} {'arena MB':>8} {'torch MB':>8}")
    for batch, px in sorted(set(ours) | {k[:2] for k in theirs}):
        o = ours.get((batch, px))
        b, f = theirs.get((batch, px, "bf16", "nhwc")), theirs.get((batch, px, "fp32", "nhwc"))
        b_nchw = theirs.get((batch, px, "bf16", "nchw"))
        def cell(value, fmt):
            return format(value, fmt) if value is not None else "-"
        ms = o and 1000 * o["seconds_min"]
        print(f"{batch:>5} {px:>4} {cell(ms, '.1f'):>8} {cell(b and b['ms_min'], '.1f'):>10}"
              f" {cell(b_nchw and b_nchw['ms_min'], '.1f'):>9}"
              f" {cell(f and f['ms_min'], '.1f'):>10} {cell(ms and b and ms / b['ms_min'], '.2f'):>6}"
              f" {cell(ms and f and ms / f['ms_min'], '.2f'):>6} {cell(o and o['images_per_second'], '.1f'):>7}"
              f" {cell(o and o['arena_bytes'] / 2**20, '.0f'):>8}"
              f" {cell(b and b['peak_allocated_bytes'] / 2**20, '.0f'):>8}")
PY
  [ -s "$LOGS/sampling.txt" ] && { echo; cat "$LOGS/sampling.txt"; }
  [ -s "$LOGS/attention.txt" ] && { echo; cat "$LOGS/attention.txt"; }
  [ -s "$LOGS/linear.txt" ] && { echo; cat "$LOGS/linear.txt"; }
  [ -s "$LOGS/layernorm.txt" ] && { echo; cat "$LOGS/layernorm.txt"; }
  [ -s "$LOGS/conv.txt" ] && { echo; cat "$LOGS/conv.txt"; }
  [ -s "$LOGS/profile-top.txt" ] && { echo; cat "$LOGS/profile-top.txt"; }
  [ -s "$LOGS/registers.txt" ] && { echo; echo "registers (ptxas -v):"; cat "$LOGS/registers.txt"; }
  [ -s "$LOGS/nsys-top.txt" ] && { echo; cat "$LOGS/nsys-top.txt"; }
  [ -s "$LOGS/profile-attention-top.txt" ] && { echo; echo "attention_tc_kernel (ncu, one launch):"; cat "$LOGS/profile-attention-top.txt"; }
} | tee -a "$SUMMARY"
exit $CTEST_RC
