#!/bin/bash
# test_c_api.sh - the README's "C API in ten lines", a whole program, built
# as it stands against an installed fpdm: `cmake --install` into a temporary
# prefix, compiled with `pkg-config --cflags --libs fpdm`, run on the shipped
# model and from a folder without it; and the installed fpdm-sample, which
# finds the shipped model installed beside it.
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

# The installed fpdm-sample finds the shipped model installed beside it, from
# any folder; a copy with no model near it says where it looked.
check "installed fpdm-sample finds its model" bash -c "cd '$tmp' && '$tmp/prefix/bin/fpdm-sample' \
    --device cpu -n 1 --steps 1 --quiet --out '$tmp/installed-out'"
check "and draws with it" ls "$tmp"/installed-out/00000-*.png
mkdir -p "$tmp/lonely/bin"
cp "$tmp/prefix/bin/fpdm-sample" "$tmp/lonely/bin/"
(cd "$tmp" && lonely/bin/fpdm-sample --device cpu -n 1 --steps 1 --out "$tmp/lonely-out" 2>"$tmp/lonely.err")
check "a lonely fpdm-sample fails" [ $? = 1 ]
check "and says where it looked" grep -q "no -m FILE given, and the shipped model is in none of: ./models/fpdm-mnist.safetensors, $tmp/lonely/bin/../models/fpdm-mnist.safetensors, $tmp/lonely/bin/../share/fpdm/models/fpdm-mnist.safetensors" "$tmp/lonely.err"

# The README's block, a whole program, exactly as it stands.
awk '/^## The C API in ten lines/ {section = 1} section && /^```c$/ {code = 1; next}
     code && /^```$/ {exit} code {print}' README.md >"$tmp/readme_example.c"
check "README has the block" grep -q "int main(void)" "$tmp/readme_example.c"

# The build's compiler and flags (fpdm.pc's OpenMP flag is the compiler's;
# a sanitizer build's objects need its runtime).
cached() { sed -n "s/^$1:[A-Z]*=//p" "$build/CMakeCache.txt"; }
compiler=$(cached CMAKE_C_COMPILER)
build_flags="$(cached CMAKE_C_FLAGS) $(cached CMAKE_EXE_LINKER_FLAGS)"
flags=$(PKG_CONFIG_PATH=$pc_dir pkg-config --cflags --libs fpdm)
check "compiles against the installed library" \
    "${compiler:-cc}" -std=c11 -Wall -Wextra -Werror $build_flags "$tmp/readme_example.c" \
    -o "$tmp/readme_example" $flags
check "runs on the shipped model" bash -c "'$tmp/readme_example' >'$tmp/run.out' 2>'$tmp/run.err'"
check "prints its images" grep -qE "^4 images, first pixel -?[0-9]+\.[0-9]{3}$" "$tmp/run.out"
check "shows every step" grep -q "step 20/20" "$tmp/run.err"
# Without the model (another folder), it says why and fails.
(cd "$tmp" && ./readme_example >run2.out 2>run2.err)
check "fails without the model" [ $? = 1 ]
check "says why" grep -q "models/fpdm-mnist.safetensors: cannot open" "$tmp/run2.err"

finish
