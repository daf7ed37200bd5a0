# common.sh - what the command-line tests share, sourced by tests/cli/test_*.sh
# (not a test itself): a temporary folder $tmp removed on exit, pass/fail
# counters with `check`, the tiny random-weight models, and `finish`.
tmp=$(mktemp -d)
# The checks compare outputs bit for bit across batch sizes and runs, which
# the CPU backend guarantees; on a GPU machine the tools would pick the GPU.
export FPDM_DEVICE=cpu
trap 'rm -rf "$tmp"' EXIT
passed=0
failed=0

check() {  # check NAME COMMAND...: passes when the command succeeds
    local name=$1
    shift
    if "$@"; then
        passed=$((passed + 1))
    else
        failed=$((failed + 1))
        echo "FAIL $name"
    fi
}

# write_tiny_models BENCH: tiny FPDM and DiT pixel-space models with random
# weights, written by fpdm-bench; their paths go into $fpdm and $dit.
write_tiny_models() {
    "$1" --config tiny-fpdm --write-model "$tmp/tiny-fpdm.safetensors" || { echo "cannot write tiny-fpdm"; exit 1; }
    "$1" --config tiny-dit --write-model "$tmp/tiny-dit.safetensors" || { echo "cannot write tiny-dit"; exit 1; }
    fpdm=$tmp/tiny-fpdm.safetensors
    dit=$tmp/tiny-dit.safetensors
}

finish() {  # the closing line, and the script's status: 0 when nothing failed
    echo "$passed passed, $failed failed"
    [ "$failed" = 0 ]
}
