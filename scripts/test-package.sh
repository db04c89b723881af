#!/usr/bin/env bash
# The package as a user gets it: installs zcx into a temporary prefix, checks what was installed
# (headers, libzcx.so with its SONAME exporting only the public API, libzcx.a, the CMake package,
# zcx.pc), then builds the README's program (examples/readme_example.cc) against that prefix
# with find_package(zcx) (shared, and static with COMPONENTS static) and with pkg-config, and runs
# each build: two engines on this machine, default transport, every byte verified. Then the
# README's Python block (examples/readme_example.py) against the installed Python package.
#   scripts/test-package.sh          # builds the library alone into build-package/, as a user
#                                    # would: Release, no -Werror, no tests/perf/examples
#   scripts/test-package.sh build    # installs from an existing build folder instead
# The consumers compile with -Wall -Wextra -Werror: the public headers must be warning-clean.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD

step() { echo "test-package: $*"; }
die() {
  echo "test-package: FAILED: $*" >&2
  exit 1
}

if [ $# -ge 1 ]; then
  build=$1
  [ -f "$build/CMakeCache.txt" ] || die "$build is not a configured build folder"
  cmake --build "$build" -j "${ZCX_JOBS:-$(nproc)}" --target zcx_shared zcx_static >/dev/null
else
  scripts/install-deps.sh >/dev/null
  build=build-package
  step "building the library into $build/ (Release, as a user would)"
  cmake -S . -B "$build" -G Ninja -DCMAKE_BUILD_TYPE=Release -DZCX_BUILD_TESTS=OFF \
    -DZCX_BUILD_PERF=OFF -DZCX_BUILD_EXAMPLES=OFF -DZCX_WERROR=OFF >/dev/null
  cmake --build "$build" -j "${ZCX_JOBS:-$(nproc)}" >/dev/null
fi

work=$(mktemp -d "${TMPDIR:-/tmp}/zcx-package.XXXXXX")
trap 'rm -rf "$work"' EXIT
prefix=$work/prefix
step "installing into $prefix"
cmake --install "$build" --prefix "$prefix" >/dev/null

# What was installed.
version=$(sed -n 's/^#define ZCX_VERSION_STRING "\(.*\)"/\1/p' "$prefix/include/zcx/version.h")
[ -n "$version" ] || die "include/zcx/version.h carries no ZCX_VERSION_STRING"
for h in zcx.h engine.h connection.h memory.h request.h status.h options.h export.h version.h; do
  [ -f "$prefix/include/zcx/$h" ] || die "include/zcx/$h is not installed"
done
so=$(find "$prefix" -name 'libzcx.so' | head -1)
[ -n "$so" ] || die "libzcx.so is not installed"
libdir=$(dirname "$so")
[ -f "$libdir/libzcx.a" ] || die "libzcx.a is not installed"
soname=$(readelf -d "$so" | sed -n 's/.*(SONAME).*\[\(.*\)\]/\1/p')
[ -n "$soname" ] && [ -e "$libdir/$soname" ] || die "libzcx.so has no SONAME or no $soname link"
[ -f "$libdir/libzcx.so.$version" ] || die "libzcx.so.$version is not installed"
exported=$(nm -D --defined-only "$so" | c++filt)
leaked=$(grep -v -E ' zcx::| (typeinfo|typeinfo name|vtable) for zcx::' <<<"$exported" |
  grep -v -E ' [A-Z] (_init|_fini)$' || true)
internal=$(grep -E ' [A-Za-z] ((typeinfo|typeinfo name|vtable) for )?zcx::(detail|transport::(ucx|verbs))::' <<<"$exported" || true)
[ -z "$leaked" ] || die "libzcx.so exports symbols outside zcx::
$leaked"
[ -z "$internal" ] || die "libzcx.so exports internal symbols:
$internal"
grep -q 'zcx::Engine::create' <<<"$exported" || die "libzcx.so does not export zcx::Engine::create"
[ -n "$(find "$prefix" -name zcxConfig.cmake)" ] ||
  die "zcxConfig.cmake is not installed"
pc_dir=$(dirname "$(find "$prefix" -name zcx.pc | head -1)")
[ -f "$pc_dir/zcx.pc" ] || die "zcx.pc is not installed"
step "installed zcx $version: headers, $(basename "$(readlink -f "$so")") (SONAME $soname," \
  "$(grep -c ' T ' <<<"$exported") exported functions), libzcx.a, zcxConfig.cmake, zcx.pc"

# The consumer: the README's program, plus a check that headers and library agree on the version.
mkdir -p "$work/app"
cp examples/readme_example.cc "$work/app/"
cat >"$work/app/version_check.cc" <<'EOF'
#include <cstdio>
#include "zcx/zcx.h"
int main() {
  std::printf("headers %s, library %s\n", ZCX_VERSION_STRING,
              std::string(zcx::libraryVersion()).c_str());
  return zcx::libraryVersion() == ZCX_VERSION_STRING ? 0 : 1;
}
EOF
cat >"$work/app/CMakeLists.txt" <<'EOF'
cmake_minimum_required(VERSION 3.16)
project(zcx_consumer LANGUAGES CXX)
option(USE_STATIC "link zcx::zcx_static" OFF)
if(USE_STATIC)
  find_package(zcx 0.1 REQUIRED COMPONENTS static)
  set(lib zcx::zcx_static)
else()
  find_package(zcx 0.1 REQUIRED)
  set(lib zcx::zcx)
endif()
message(STATUS "zcx ${zcx_VERSION} from ${zcx_DIR}")
foreach(app readme_example version_check)
  add_executable(${app} ${app}.cc)
  target_compile_options(${app} PRIVATE -Wall -Wextra -Werror)
  target_link_libraries(${app} PRIVATE ${lib})  # C++20 and include paths come with the target
endforeach()
EOF

run() {  # run NAME BINARY: runs the consumer, which must exit 0 and say it verified
  local out
  out=$("$2" 2>"$work/$1.log") || die "$1: exit code $? ($(tail -3 "$work/$1.log"))"
  grep -q "verified" <<<"$out" || die "$1 did not verify its data: $out"
  step "$1: $out"
}

for flavour in shared static; do
  static=OFF
  [ $flavour = shared ] || static=ON
  cmake -S "$work/app" -B "$work/cmake-$flavour" -G Ninja -DUSE_STATIC=$static \
    -DCMAKE_PREFIX_PATH="$prefix" >"$work/cmake-$flavour.log" 2>&1 ||
    die "find_package(zcx) ($flavour) failed: $(tail -20 "$work/cmake-$flavour.log")"
  cmake --build "$work/cmake-$flavour" >>"$work/cmake-$flavour.log" 2>&1 ||
    die "building against zcx::zcx ($flavour) failed: $(tail -20 "$work/cmake-$flavour.log")"
  "$work/cmake-$flavour/version_check" >/dev/null || die "version mismatch ($flavour)"
  run "find_package(zcx) $flavour" "$work/cmake-$flavour/readme_example"
done
if [ "$(readelf -d "$work/cmake-static/readme_example" | grep -c libzcx)" != 0 ]; then
  die "the static build still needs libzcx.so"
fi

export PKG_CONFIG_PATH=$pc_dir${PKG_CONFIG_PATH:+:$PKG_CONFIG_PATH}
[ "$(pkg-config --modversion zcx)" = "$version" ] || die "pkg-config --modversion zcx != $version"
# shellcheck disable=SC2046 # word splitting of pkg-config's flags is intended
g++ -std=c++20 -Wall -Wextra -Werror -o "$work/pc_readme_example" "$work/app/readme_example.cc" \
  $(pkg-config --cflags --libs zcx) -Wl,-rpath,"$libdir" ||
  die "building with pkg-config failed"
ldd "$work/pc_readme_example" | grep -q "$libdir/libzcx.so" ||
  die "the pkg-config build does not use the installed libzcx.so"
run "pkg-config zcx" "$work/pc_readme_example"

# The README's Python block against the installed Python package (cmake --install puts it under
# the prefix's site-packages when the build has it, i.e. when pybind11 and numpy are there, which
# scripts/install-deps.sh installs). Run from outside the repository, so that `import zcx` can
# only find the installed package.
pyinit=$(find "$prefix" -path '*/zcx/__init__.py' | head -1)
[ -n "$pyinit" ] || die "the Python package is not installed (no zcx/__init__.py under $prefix)"
pyroot=$(dirname "$(dirname "$pyinit")")
python=$(sed -n 's/^Python3_EXECUTABLE:[A-Z]*=//p' "$build/CMakeCache.txt")
[ -n "$python" ] || python=/usr/bin/python3
cp examples/readme_example.py "$work/app/"
from=$(cd "$work/app" && PYTHONPATH="$pyroot" PYTHONDONTWRITEBYTECODE=1 "$python" -c \
  'import zcx; print(zcx.__file__)') || die "import zcx from $pyroot failed"
[[ $from == "$pyroot"/* ]] || die "import zcx found $from, not the installed package"
out=$(cd "$work/app" && PYTHONPATH="$pyroot" PYTHONDONTWRITEBYTECODE=1 "$python" readme_example.py \
  2>"$work/python.log") || die "the README's Python block: exit code $? ($(tail -3 "$work/python.log"))"
grep -q "intact: True" <<<"$out" || die "the README's Python block did not verify its data: $out"
step "python (installed package ${pyroot#"$prefix"/}): $out"
step "passed (prefix removed; root: $root)"
