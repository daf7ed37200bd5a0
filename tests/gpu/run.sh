#!/usr/bin/env bash
# run.sh - the one-shot GPU check, for a machine with an NVIDIA GPU and no
# network: finds nvcc and the CUDA libraries (toolkit folders or Python
# nvidia-* packages), builds for this GPU's architecture, runs the GPU tests
# (ctest -L gpu), times fpdm-bench against the PyTorch reference
# (tests/gpu/torch_bench.py, bf16 with fused attention, and fp32), and prints a
# summary table last. Logs and JSON go to $OUT (or build-gpu/logs).
#
#   bash tests/gpu/run.sh            (from the repository root; ~8 minutes at most)
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

# ---- build -------------------------------------------------------------------
CMAKE_LIBS=$(IFS=';'; echo "${LIB_DIRS[*]}")
CMAKE_INCS=$(IFS=';'; echo "${INC_DIRS[*]:-}")
if ! timeout 120 cmake -S "$ROOT" -B "$BUILD" -DCMAKE_BUILD_TYPE=Release \
    -DCMAKE_CUDA_COMPILER="$NVCC" -DCUDAToolkit_ROOT="$CUDA_HOME" \
    -DCMAKE_CUDA_ARCHITECTURES="$ARCH" -DCMAKE_LIBRARY_PATH="$CMAKE_LIBS" \
    -DCMAKE_INCLUDE_PATH="$CMAKE_INCS" -DFPDM_WERROR=OFF > "$LOGS/configure.log" 2>&1; then
  note "configure FAILED (see $LOGS/configure.log)"; tail -30 "$LOGS/configure.log"; exit 1
fi
grep -q "CUDA backend ON" "$LOGS/configure.log" || note "warning: configure did not enable the CUDA backend"
# Only what this check runs, so an unrelated broken target cannot stop it.
TARGETS=()
for test_source in "$ROOT"/tests/gpu/test_*.c; do
  TARGETS+=("gpu_$(basename "$test_source" .c)")
done
[ -f "$ROOT/tools/fpdm_bench.c" ] && TARGETS+=(fpdm-bench)
if ! timeout 300 cmake --build "$BUILD" -j "$JOBS" --target "${TARGETS[@]}" > "$LOGS/build.log" 2>&1; then
  note "build FAILED (see $LOGS/build.log)"; grep -E "error|Error" "$LOGS/build.log" | head -30; exit 1
fi
note "built: ${TARGETS[*]}"

# ---- tests -------------------------------------------------------------------
timeout 300 ctest --test-dir "$BUILD" -L gpu --output-on-failure --timeout 240 \
  > "$LOGS/ctest.log" 2>&1
CTEST_RC=$?
cat "$LOGS/ctest.log"
TEST_LINES=$(grep -E "^ *[0-9]+/[0-9]+ Test +#[0-9]+: gpu_" "$LOGS/ctest.log" |
  sed -E 's/^ *[0-9]+\/[0-9]+ Test +#[0-9]+: ([^ ]+) [. ]*([A-Za-z*]+[A-Za-z ]*)[^0-9]*([0-9.]+ sec).*/\1 \2 \3/')
TEST_TOTAL=$(grep -E "tests passed|tests failed" "$LOGS/ctest.log" | tail -1)

# ---- benchmarks --------------------------------------------------------------
BENCH_BATCH=${BENCH_BATCH:-32}
BENCH_CONFIGS=${BENCH_CONFIGS:-"DiT-XL/2 FPDM-XL/2 DiT-S/2"}
: > "$LOGS/ours.jsonl"
: > "$LOGS/torch.jsonl"
if [ -x "$BUILD/fpdm-bench" ]; then
  for config in $BENCH_CONFIGS; do
    for precision in fp32 bf16; do
      tag=$(echo "$config-$precision" | tr '/' '_')
      if timeout 150 "$BUILD/fpdm-bench" --config "$config" --batch-size "$BENCH_BATCH" \
          --device cuda --precision "$precision" --cfg off --repeat 5 --warmup 2 --json \
          > "$LOGS/bench-$tag.json" 2> "$LOGS/bench-$tag.err"; then
        python3 - "$config" "$precision" "$LOGS/bench-$tag.json" >> "$LOGS/ours.jsonl" <<'PY'
import json, sys
config, precision, path = sys.argv[1:4]
report = json.load(open(path))
row = report["results"][0]
print(json.dumps({"config": config, "dtype": precision, "ms_min": 1000 * row["seconds_min"],
                  "ms_mean": 1000 * row["seconds_mean"], "batch_size": row["batch_size"]}))
PY
      else
        note "fpdm-bench $config $precision failed (see $LOGS/bench-$tag.err)"
        tail -3 "$LOGS/bench-$tag.err"
      fi
    done
  done
else
  note "fpdm-bench not built: no timings of ours"
fi
for config in $BENCH_CONFIGS; do
  for dtype in bf16 fp32; do
    timeout 150 python3 "$ROOT/tests/gpu/torch_bench.py" --config "$config" \
      --batch-size "$BENCH_BATCH" --dtype "$dtype" --json "$LOGS/torch.jsonl" \
      >> "$LOGS/torch.log" 2>&1 || note "torch_bench $config $dtype did not run (see $LOGS/torch.log)"
  done
done

# ---- summary -----------------------------------------------------------------
{
  echo
  echo "GPU: ${GPU_NAME:-unknown} (sm_$ARCH)"
  echo "GPU tests (ctest -L gpu, exit $CTEST_RC): ${TEST_TOTAL:-no result}"
  echo "${TEST_LINES:-  (no test lines)}" | sed 's/^/  /'
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
print(f"forward of batch {sys.argv[3]} at 256 px, cfg off, min of 5 (ms); ratio = ours / torch")
print(f"{'config':<11} {'dtype':<5} {'ours':>10} {'torch':>10} {'ratio':>7}  torch attention")
for key in sorted(set(ours) | set(torch_rows)):
    o, t = ours.get(key), torch_rows.get(key)
    o_ms = f"{o['ms_min']:.2f}" if o else "-"
    t_ms = f"{t['ms_min']:.2f}" if t else "-"
    ratio = f"{o['ms_min'] / t['ms_min']:.2f}" if o and t else "-"
    print(f"{key[0]:<11} {key[1]:<5} {o_ms:>10} {t_ms:>10} {ratio:>7}  {t['attention'] if t else '-'}")
PY
} | tee -a "$SUMMARY"
exit $CTEST_RC
