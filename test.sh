#!/usr/bin/env bash
# test.sh - runs the whole test suite (C, Python and command-line tests; GPU
# tests report SKIPPED without a GPU) on the build made by setup.sh, then
# once more on a CPU-only build under AddressSanitizer and
# UndefinedBehaviorSanitizer (build-sanitize/): reads and writes out of
# bounds, use after free, memory leaked on the failure paths the tests walk,
# undefined arithmetic, each of which fails its test; and the tests of threads
# sharing and loading models and parsing model headers under ThreadSanitizer
# (build-tsan/).
#   ./test.sh                        everything
#   ./test.sh -L cpu                 one label: cpu, python, cli, gpu
#   FPDM_NO_SANITIZE=1 ./test.sh     without the sanitizer passes
set -euo pipefail
cd "$(dirname "$0")"
cmake --build build -j"$(nproc)"
ctest --test-dir build --output-on-failure "$@"

if [ -z "${FPDM_NO_SANITIZE:-}" ]; then
    sanitize="-fsanitize=address,undefined -fno-sanitize-recover=all -fno-omit-frame-pointer"
    cmake -S . -B build-sanitize -DFPDM_CUDA=OFF -DCMAKE_BUILD_TYPE=RelWithDebInfo \
        -DCMAKE_C_FLAGS="$sanitize" -DCMAKE_EXE_LINKER_FLAGS="$sanitize" ${FPDM_CMAKE_FLAGS:-} >/dev/null
    cmake --build build-sanitize -j"$(nproc)"
    ctest --test-dir build-sanitize --output-on-failure "$@"

    # Threads sharing one model and loading models at once (test_shared_model),
    # and the JSON reader of model headers on two threads (test_json), under
    # ThreadSanitizer.
    # GCC's target_clones resolvers run before its runtime is up, so this
    # build takes the portable vector_math variants (VM_NO_CLONES).
    cmake -S . -B build-tsan -DFPDM_CUDA=OFF -DCMAKE_BUILD_TYPE=RelWithDebInfo \
        -DCMAKE_C_FLAGS="-fsanitize=thread -DVM_NO_CLONES" \
        -DCMAKE_EXE_LINKER_FLAGS="-fsanitize=thread" ${FPDM_CMAKE_FLAGS:-} >/dev/null
    cmake --build build-tsan -j"$(nproc)" --target test_shared_model test_json
    ctest --test-dir build-tsan --output-on-failure -R '^(test_shared_model|test_json)$' "$@"
fi
