"""Native parts of vrift, compiled by the package build so no compiler is needed at run time.

Both are plain shared objects that happen to be built as extensions: Python never imports
them; vrift.native locates them by file name.  `_vdir_native` holds the VDir atomics loaded
with ctypes; `_libvrift` is the LD_PRELOAD library.  Since neither depends on the Python
version, they are named `vrift/<name>.so` (not `<name>.cpython-311-….so`) and the wheel is
tagged `py3-none-<platform>`: one wheel for every CPython 3 on the platform.  The platform is
`manylinux_X_Y_<arch>` with X.Y the build machine's glibc: objects linked against it need no
newer glibc, and they link nothing but libc and libdl (`auditwheel show` finds an older X.Y that
suffices; `auditwheel repair` adds it to the wheel's tags).
"""
import glob
import os
import re

from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext

try:
    from setuptools.command.bdist_wheel import bdist_wheel
except ImportError:  # setuptools < 70.1
    from wheel.bdist_wheel import bdist_wheel

CFLAGS = ["-O2", "-Wall", "-Wextra", "-fvisibility=hidden", "-std=gnu11"]
NATIVE = "vrift/native"

extensions = [
    Extension(
        "vrift._vdir_native",
        sources=sorted(glob.glob(f"{NATIVE}/*.c")),  # vdir_native.c holds the module's method table
        include_dirs=[NATIVE],
        depends=sorted(glob.glob(f"{NATIVE}/*.h")),
        extra_compile_args=CFLAGS,
    ),
]

PRELOAD = "vrift/preload"
preload_sources = sorted(glob.glob(f"{PRELOAD}/*.c"))
if preload_sources:
    extensions.append(
        Extension(
            "vrift._libvrift",
            sources=preload_sources,
            include_dirs=[NATIVE, PRELOAD],
            depends=[f"{NATIVE}/vrift_vdir.h", *glob.glob(f"{PRELOAD}/*.h")],
            extra_compile_args=CFLAGS,
            extra_link_args=["-ldl"],
        )
    )

class PlainNames(build_ext):
    """vrift/_libvrift.so rather than the interpreter-specific extension name."""

    def get_ext_filename(self, fullname):
        return os.path.join(*fullname.split(".")) + ".so"


class AnyPython3Wheel(bdist_wheel):
    """Platform-specific (it holds .so files) but not tied to one Python version or ABI."""

    def finalize_options(self):
        super().finalize_options()
        self.root_is_pure = False

    def get_tag(self):
        _python, _abi, plat = super().get_tag()
        if not getattr(self, "plat_name_supplied", False):  # --plat-name wins
            plat = manylinux(plat)
        return "py3", "none", plat


def manylinux(plat: str) -> str:
    """linux_<arch> as manylinux_<glibc major>_<minor>_<arch> of this machine's glibc; as it is
    elsewhere (another platform, musl)."""
    try:
        libc = os.confstr("CS_GNU_LIBC_VERSION") or ""
    except (AttributeError, ValueError, OSError):
        libc = ""
    version = re.fullmatch(r"glibc (\d+)\.(\d+).*", libc)
    if not plat.startswith("linux_") or version is None:
        return plat
    return f"manylinux_{version[1]}_{version[2]}_{plat[len('linux_'):]}"


setup(ext_modules=extensions, cmdclass={"build_ext": PlainNames, "bdist_wheel": AnyPython3Wheel})
