"""One wheel for every CPython 3 on the platform: the .so files are not Python extensions, so
they are named vrift/<name>.so and the wheel is tagged py3-none-<platform>, the platform being
manylinux_X_Y of the build machine's glibc (which `auditwheel show` confirms suffices)."""
from __future__ import annotations

import os
import re
import subprocess
import sys
import zipfile

import pytest

from support.build import REPO


@pytest.fixture(scope="module")
def wheel(tmp_path_factory):
    out = tmp_path_factory.mktemp("wheel")
    done = subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation",
                           "-w", str(out), str(REPO)], capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr
    (built,) = out.glob("vrift-*.whl")
    return built


def test_wheel_is_py3_none_with_plain_so_names(wheel):
    assert "-py3-none-" in wheel.name, wheel.name
    with zipfile.ZipFile(wheel) as z:
        names = set(z.namelist())
        meta = z.read(next(n for n in names if n.endswith(".dist-info/WHEEL"))).decode()
    assert {"vrift/_libvrift.so", "vrift/_vdir_native.so"} <= names
    assert not any("cpython" in n for n in names)
    assert "Root-Is-Purelib: false" in meta and "Tag: py3-none-" in meta


def _glibc() -> tuple[int, int] | None:
    found = re.fullmatch(r"glibc (\d+)\.(\d+).*", os.confstr("CS_GNU_LIBC_VERSION") or "")
    return (int(found[1]), int(found[2])) if found else None


def test_wheel_carries_the_manylinux_tag_of_the_build_glibc_and_auditwheel_agrees(wheel):
    glibc = _glibc()
    if glibc is None:
        pytest.skip("not a glibc system: the wheel keeps its linux_<arch> tag")
    tag = re.search(r"-py3-none-manylinux_(\d+)_(\d+)_(\w+)\.whl$", wheel.name)
    assert tag, wheel.name
    assert (int(tag[1]), int(tag[2])) == glibc and tag[3] == os.uname().machine, wheel.name
    with zipfile.ZipFile(wheel) as z:
        meta = z.read(next(n for n in z.namelist() if n.endswith(".dist-info/WHEEL"))).decode()
    assert f"Tag: py3-none-manylinux_{glibc[0]}_{glibc[1]}_{tag[3]}" in meta, meta

    pytest.importorskip("auditwheel")  # in the test extra
    shown = subprocess.run([sys.executable, "-m", "auditwheel", "show", str(wheel)],
                           capture_output=True, text=True, timeout=300)
    assert shown.returncode == 0, shown.stderr
    text = " ".join(shown.stdout.split())
    # nothing but versioned glibc symbols, and none newer than the tag says
    needed = re.search(r'constrains the platform tag to "manylinux_(\d+)_(\d+)_(\w+)"', text)
    assert needed, text
    assert (int(needed[1]), int(needed[2])) <= glibc and needed[3] == tag[3], text
