"""Builds the extension zcx._zcx with the project's CMake (the repository is this folder's
parent) for the interpreter that runs pip:

    pip install --no-build-isolation ./python         # offline: Debian's setuptools, cmake, g++

The build needs what scripts/install-deps.sh installs (UCX, rdma-core, glog, pybind11, ...).
ZCX_CMAKE_ARGS adds CMake arguments; ZCX_BUILD_JOBS sets the parallel jobs (default 2).
"""
import os
import shlex
import subprocess
import sys
from pathlib import Path

from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext

HERE = Path(__file__).resolve().parent
REPO = HERE.parent


class CMakeExtension(Extension):
    def __init__(self, name):
        super().__init__(name, sources=[])


class CMakeBuild(build_ext):
    def build_extension(self, ext):
        if not (REPO / "CMakeLists.txt").exists() or not (REPO / "core").is_dir():
            raise RuntimeError(f"zcx: the zcx repository is expected in {REPO} (build from a "
                               "checkout: pip install --no-build-isolation ./python)")
        out_dir = Path(self.get_ext_fullpath(ext.name)).resolve().parent
        build_dir = Path(self.build_temp).resolve() / "cmake"
        build_dir.mkdir(parents=True, exist_ok=True)
        args = [
            "cmake", "-S", str(REPO), "-B", str(build_dir), "-DCMAKE_BUILD_TYPE=Release",
            f"-DPython3_EXECUTABLE={sys.executable}", "-DZCX_PYTHON=ON",
            "-DZCX_BUILD_TESTS=OFF", "-DZCX_BUILD_PERF=OFF", "-DZCX_WERROR=OFF",
        ]
        try:
            subprocess.run(["ninja", "--version"], check=True, capture_output=True)
            args += ["-G", "Ninja"]
        except (OSError, subprocess.CalledProcessError):
            pass
        args += shlex.split(os.environ.get("ZCX_CMAKE_ARGS", ""))
        subprocess.run(args, check=True)
        jobs = os.environ.get("ZCX_BUILD_JOBS", "2")
        subprocess.run(["cmake", "--build", str(build_dir), "--target", "_zcx", "-j", jobs],
                       check=True)
        built = next((build_dir / "python" / "zcx").glob("_zcx*.so"))
        out_dir.mkdir(parents=True, exist_ok=True)
        self.copy_file(str(built), self.get_ext_fullpath(ext.name))


setup(ext_modules=[CMakeExtension("zcx._zcx")], cmdclass={"build_ext": CMakeBuild})
