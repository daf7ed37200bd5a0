#!/bin/bash
# test_c_api.sh - the README's "C API in ten lines", as a program of its own
# built against an installed fpdm: `cmake --install` into a temporary
# prefix, the README's code block wrapped in a main(), compiled with
# `pkg-config --cflags --libs fpdm` and run on the shipped model.
#   bash tests/cli/test_c_api.sh BUILD_DIR   (from the repository root)
set -u
build=${1:?usage: test_c_api.sh BUILD_DIR}
[ -f "$build/libfpdm.a" ] || { echo "SKIP: $build/libfpdm.a not built"; exit 77; }
command -v pkg-config >/dev/null || { echo "SKIP: no pkg-config"; exit 77; }

. "$(dirname "$0")/common.sh"

check "install" cmake --install "$build" --prefix "$tmp/prefix" >"$tmp/install.log" 2>&1 ||
    sed 's/^/    /' "$tmp/install.log"
pc_dir=$(dirname "$(find "$tmp/prefix" -name fpdm.pc | head -1)")
check "fpdm.pc installed" [ -f "$pc_dir/fpdm.pc" ]
check "fpdm.h installed" [ -f "$tmp/prefix/include/fpdm.h" ]

# The README's block: its first line includes fpdm.h, the rest is a body.
snippet=$(awk '/^## The C API in ten lines/ {section = 1} section && /^```c$/ {code = 1; next}
               code && /^```$/ {exit} code {print}' README.md)
check "README has the block" [ -n "$snippet" ]
{
    echo '#include <math.h>'
    echo '#include <stdio.h>'
    echo '#include <stdlib.h>'
    echo "$snippet" | head -1
    echo 'static int progress_calls;'
    echo 'static int my_progress(const fpdm_progress *progress, void *user_data) {'
    echo '    (void)progress, (void)user_data;'
    echo '    progress_calls++;'
    echo '    return 0;'
    echo '}'
    echo 'int main(void) {'
    echo "$snippet" | tail -n +2
    echo '    if (fpdm_last_error(ctx)[0]) { fprintf(stderr, "%s\n", fpdm_last_error(ctx)); return 1; }'
    echo '    size_t n = fpdm_sample_output_size(model, 4);'
    echo '    for (size_t i = 0; i < n; i++) if (!isfinite(images[i])) return 1;'
    echo '    printf("%zu values, %d progress calls\n", n, progress_calls);'
    echo '    free(images);'
    echo '    fpdm_model_free(model);'
    echo '    fpdm_context_free(ctx);'
    echo '    return progress_calls == 20 ? 0 : 1;'
    echo '}'
} >"$tmp/readme_example.c"

# The build's compiler and flags (fpdm.pc's OpenMP flag is the compiler's;
# a sanitizer build's objects need its runtime).
cached() { sed -n "s/^$1:[A-Z]*=//p" "$build/CMakeCache.txt"; }
compiler=$(cached CMAKE_C_COMPILER)
build_flags="$(cached CMAKE_C_FLAGS) $(cached CMAKE_EXE_LINKER_FLAGS)"
flags=$(PKG_CONFIG_PATH=$pc_dir pkg-config --cflags --libs fpdm)
check "compiles against the installed library" \
    "${compiler:-cc}" -std=c11 -Wall -Wextra -Werror $build_flags "$tmp/readme_example.c" \
    -o "$tmp/readme_example" $flags
check "runs on the shipped model" "$tmp/readme_example"

finish
