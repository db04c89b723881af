# Finds what the Python package (python/) needs: a Python 3 interpreter with its headers and
# pybind11 (Debian: python3-dev, pybind11-dev). Sets ZCX_PYTHON_AVAILABLE, and when available
# ZCX_PYTHON_INSTALL_DIR (relative to the install prefix) and ZCX_PYTHON_BUILD_DIR.
#
# Which interpreter: -DPython3_EXECUTABLE=... if given (pip's build passes its own). Otherwise
# the first python3 on PATH, then /usr/bin/python3, that can import numpy: the Debian packages
# the package is used with (numpy, torch) belong to the system interpreter, and a python3 that
# comes first on PATH (pyenv, a bare venv) may not have them. The extension's ABI is the same.
set(ZCX_PYTHON_AVAILABLE OFF)
if(NOT Python3_EXECUTABLE)
  string(REPLACE ":" ";" _zcx_path "$ENV{PATH}")
  foreach(_dir IN LISTS _zcx_path ITEMS /usr/bin)
    if(EXISTS "${_dir}/python3")
      execute_process(COMMAND "${_dir}/python3" -c "import numpy"
        RESULT_VARIABLE _zcx_rc OUTPUT_QUIET ERROR_QUIET)
      if(_zcx_rc EQUAL 0)
        set(Python3_EXECUTABLE "${_dir}/python3" CACHE FILEPATH "The Python the zcx package is built for")
        break()
      endif()
    endif()
  endforeach()
endif()
find_package(Python3 3.8 QUIET COMPONENTS Interpreter Development.Module)
if(Python3_FOUND)
  set(PYBIND11_FINDPYTHON ON)
  find_package(pybind11 2.6 CONFIG QUIET)
endif()
if(Python3_FOUND AND pybind11_FOUND)
  set(ZCX_PYTHON_AVAILABLE ON)
  # site-packages relative to the interpreter's prefix: lib/python3/dist-packages on Debian's
  # /usr/bin/python3, lib/python3.X/site-packages elsewhere.
  execute_process(COMMAND "${Python3_EXECUTABLE}" -c "import sys; print(sys.prefix)"
    OUTPUT_VARIABLE _zcx_py_prefix OUTPUT_STRIP_TRAILING_WHITESPACE)
  file(RELATIVE_PATH _zcx_site "${_zcx_py_prefix}" "${Python3_SITEARCH}")
  if(_zcx_site MATCHES "^\\.\\." OR IS_ABSOLUTE "${_zcx_site}")
    set(_zcx_site "lib/python3/dist-packages")
  endif()
  set(ZCX_PYTHON_INSTALL_DIR "${_zcx_site}" CACHE STRING
    "Where cmake --install puts the zcx Python package, relative to the prefix")
  set(ZCX_PYTHON_BUILD_DIR "${PROJECT_BINARY_DIR}/python")
  message(STATUS "zcx: Python package for ${Python3_EXECUTABLE} (${Python3_VERSION}), pybind11 "
    "${pybind11_VERSION}; installs to <prefix>/${ZCX_PYTHON_INSTALL_DIR}")
else()
  message(STATUS "zcx: no Python package (needs Python 3 headers and pybind11: python3-dev, "
    "pybind11-dev)")
endif()
