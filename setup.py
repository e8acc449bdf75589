"""Native parts of vrift, compiled by the package build so no compiler is needed at run time.

Both are plain shared objects that happen to be built as extensions: Python never imports
them; vrift.native locates them by file name.  `_vdir_native` holds the VDir atomics loaded
with ctypes; `_libvrift` is the LD_PRELOAD library.
"""
import glob
import os

from setuptools import Extension, setup

CFLAGS = ["-O2", "-Wall", "-Wextra", "-fvisibility=hidden", "-std=gnu11"]
NATIVE = "vrift/native"

extensions = [
    Extension(
        "vrift._vdir_native",
        sources=[f"{NATIVE}/vdir_native.c"],
        include_dirs=[NATIVE],
        depends=[f"{NATIVE}/vrift_vdir.h"],
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

setup(ext_modules=extensions)
