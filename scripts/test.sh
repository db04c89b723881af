#!/usr/bin/env bash
# The test command: installs what is missing, configures, builds, runs the whole suite with ctest.
#   scripts/test.sh                 # the normal build (build/)
#   ZCX_SANITIZE=address scripts/test.sh   # ASan+UBSan build (build-address/); also: thread
#   ZCX_BUILD_TYPE=Release scripts/test.sh # -O3 build (build-release/); also: Debug (build-debug/)
# ZCX_BUILD_TYPE is the CMake build type, default RelWithDebInfo (the folder build/, or
# build-<sanitizer>/); any other type builds into build-<type in lower case>[-<sanitizer>]/.
# Builds with -DZCX_WERROR=ON: a compiler warning fails the build (scripts/build-env.sh).
# Extra arguments go to ctest (e.g. -R shm, --output-on-failure is always on).
set -euo pipefail
cd "$(dirname "$0")/.."

# shellcheck source=scripts/build-env.sh
. scripts/build-env.sh

exclude=()

# Tests that reproduce known UCX 1.13 failures (tests/CMakeLists.txt) run only on request:
#   scripts/test.sh -L known-ucx-bugs
case " $* " in
  *known-ucx-bugs*) ;;
  *) exclude+=(-LE known-ucx-bugs) ;;
esac

(cd "$build" && ctest --output-on-failure -j "${ZCX_TEST_JOBS:-1}" "${exclude[@]}" "$@")

# The Python package's pytest suite (python/tests), against the build tree's package, with the
# interpreter CMake built it for. Not in sanitizer builds (ZCX_PYTHON is off there: an instrumented
# extension cannot be loaded into a plain interpreter), nor when ctest was given a selection.
if [ -z "$sanitize" ] && [ $# -eq 0 ]; then
  python=$(sed -n 's/^Python3_EXECUTABLE:[A-Z]*=//p' "$build/CMakeCache.txt")
  if ! ls "$build"/python/zcx/_zcx*.so >/dev/null 2>&1 || [ -z "$python" ]; then
    echo "test.sh: the Python package was not built ($build/python/zcx); pybind11 missing?" >&2
    exit 1
  fi
  PYTHONPATH="$PWD/$build/python" PYTHONDONTWRITEBYTECODE=1 \
    "$python" -m pytest -p no:cacheprovider -q python/tests
fi
