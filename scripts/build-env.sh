# Sourced (not run) by scripts/test.sh and scripts/stress.sh, from the repository root: installs
# what is missing, configures and builds the folder the environment selects, and exports the
# sanitizer and UCX settings the tests run with. Sets: sanitize, build_type, build.
#   ZCX_SANITIZE    address (with UBSan), undefined, thread, or empty (default)
#   ZCX_BUILD_TYPE  CMake build type, default RelWithDebInfo (folder build/, or build-<sanitizer>/);
#                   any other type builds into build-<type in lower case>[-<sanitizer>]/
#   ZCX_JOBS        parallel compile jobs (default nproc)
# Always ZCX_WERROR=ON: a warning fails the build here and in CI (consumers get warnings only).
# shellcheck shell=bash

scripts/install-deps.sh

sanitize=${ZCX_SANITIZE:-}
build_type=${ZCX_BUILD_TYPE:-RelWithDebInfo}
type_suffix=
[ "$build_type" = RelWithDebInfo ] || type_suffix=-${build_type,,}
build=build${type_suffix}${sanitize:+-$sanitize}

cmake -S . -B "$build" -G Ninja -DCMAKE_BUILD_TYPE="$build_type" -DZCX_SANITIZE="$sanitize" \
  -DZCX_WERROR=ON >/dev/null
cmake --build "$build" -j "${ZCX_JOBS:-$(nproc)}"

export ASAN_OPTIONS=${ASAN_OPTIONS:-detect_leaks=1:abort_on_error=1}
export UBSAN_OPTIONS=${UBSAN_OPTIONS:-print_stacktrace=1:halt_on_error=1}
# librdmacm and UCX keep process-lifetime allocations on purpose (device lists, config tables).
export LSAN_OPTIONS=${LSAN_OPTIONS:-suppressions=$PWD/tests/lsan.supp:print_suppressions=0}
export TSAN_OPTIONS=${TSAN_OPTIONS:-suppressions=$PWD/tests/tsan.supp:halt_on_error=1}
if [ -n "$sanitize" ]; then
  # UCX's malloc/mmap hooks fight the sanitizers' own interceptors.
  export UCX_MEM_MALLOC_HOOKS=no UCX_MEM_MMAP_HOOK_MODE=none UCX_MEM_EVENTS=no
fi
