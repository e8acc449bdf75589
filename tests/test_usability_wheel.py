"""One wheel for every CPython 3 on the platform: the .so files are not Python extensions, so
they are named vrift/<name>.so and the wheel is tagged py3-none-<platform>."""
from __future__ import annotations

import subprocess
import sys
import zipfile

from build_support import REPO


def test_wheel_is_py3_none_with_plain_so_names(tmp_path):
    done = subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation",
                           "-w", str(tmp_path), str(REPO)], capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr
    (wheel,) = tmp_path.glob("vrift-*.whl")
    assert "-py3-none-" in wheel.name, wheel.name
    with zipfile.ZipFile(wheel) as z:
        names = set(z.namelist())
        meta = z.read(next(n for n in names if n.endswith(".dist-info/WHEEL"))).decode()
    assert {"vrift/_libvrift.so", "vrift/_vdir_native.so"} <= names
    assert not any("cpython" in n for n in names)
    assert "Root-Is-Purelib: false" in meta and "Tag: py3-none-" in meta
