#!/usr/bin/env bash
# test.sh - runs the whole test suite (C, Python and command-line tests; GPU
# tests report SKIPPED without a GPU) on the build made by setup.sh.
#   ./test.sh            everything
#   ./test.sh -L cpu     one label: cpu, python, cli, gpu
set -euo pipefail
cd "$(dirname "$0")"
cmake --build build -j"$(nproc)"
ctest --test-dir build --output-on-failure "$@"
