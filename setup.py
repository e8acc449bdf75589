"""Native parts of vrift, compiled by the package build so no compiler is needed at run time.

Both are plain shared objects that happen to be built as extensions: Python never imports
them; vrift.native locates them by file name.  `_vdir_native` holds the VDir atomics loaded
with ctypes; `_libvrift` is the LD_PRELOAD library.
"""
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

if os.path.exists("vrift/preload/libvrift.c"):
    extensions.append(
        Extension(
            "vrift._libvrift",
            sources=["vrift/preload/libvrift.c"],
            include_dirs=[NATIVE],
            depends=[f"{NATIVE}/vrift_vdir.h"],
            extra_compile_args=CFLAGS,
            extra_link_args=["-ldl"],
        )
    )

setup(ext_modules=extensions)
