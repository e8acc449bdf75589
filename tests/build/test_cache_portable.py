"""Keys that travel: the PATH string, VRIFT_HOME and the preload library's own install are not
in a key, so another PATH order, a copied cache under another VRIFT_HOME and another copy of the
library hit; but where a name looked up in PATH resolves is an input, so a different `cc` first
in PATH misses (real make, real sh, real gcc; outputs compared with a plain build)."""
from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from support.build import (assert_same_outputs, generate, plain, require_tools, tool_env, vrift)
from support.daemon import daemons  # noqa: F401
from support.observe import Twin
from test_cache_wrap import cache_counts, needs_c_side

pytestmark = needs_c_side
UNITS = 10
EDGES = UNITS + 1 + 1 + 1  # compiles, main.o, archive, link


@pytest.fixture
def tools(daemons):
    require_tools("ninja", "make", "cc", "ar")
    return daemons


def with_path(env: dict, *front: Path, reverse_rest: bool = False) -> dict:
    env = dict(env)
    rest = env["PATH"].split(os.pathsep)
    if reverse_rest:
        rest = rest[:1] + rest[1:][::-1]  # vrift's own bin stays first
    env["PATH"] = os.pathsep.join([*map(str, front), *rest])
    return env


def test_another_path_order_and_an_extra_entry_hit(tmp_path, tools):
    ref = generate(tmp_path / "plain", UNITS)
    plain("ninja", cwd=ref)
    proj = generate(tmp_path / "p", UNITS)
    assert cache_counts(vrift("wrap", "ninja", cwd=proj, check=True).stderr) == (0, EDGES, 0)
    plain("ninja", "-t", "clean", cwd=proj)
    extra = tmp_path / "extra-bin"  # another venv's bin: tools the build does not use
    extra.mkdir()
    (extra / "pip").write_text("#!/bin/sh\n")
    (extra / "pip").chmod(0o755)
    env = with_path(tool_env(), extra, reverse_rest=True)
    warm = vrift("wrap", "--explain", "ninja", cwd=proj, env=env, check=True)
    assert cache_counts(warm.stderr) == (EDGES, 0, 0), warm.stderr
    assert_same_outputs(proj, ref)


def test_another_cc_first_in_path_misses_where_a_shell_looks_it_up(tmp_path, tools):
    # make hands recipes with shell syntax to sh, which finds cc through PATH itself
    files = {"Makefile": "a.o: a.c\n\tcc -c a.c -o a.o && true\n",
             "a.c": "#ifndef V\n#define V 1\n#endif\nint v = V;\n"}
    wrapper = tmp_path / "wrapper-bin"
    wrapper.mkdir()
    (wrapper / "cc").write_text(f"#!/bin/sh\nexec {shutil.which('cc')} -DV=2 \"$@\"\n")
    (wrapper / "cc").chmod(0o755)
    t = Twin(tmp_path / "t", files, make_args=["-B"])
    assert t.build()[0] == (0, 1, 0)
    assert t.build()[0] == (1, 0, 0)
    t.env = with_path(tool_env(), wrapper)
    counts, err = t.build()  # the plain build uses the wrapper too: V is 2 in both objects
    assert counts == (0, 1, 0), err
    assert "cc resolves to" in err
    t.env = None
    assert t.build()[0] == (1, 0, 0)  # the first cc again: the first entry


def test_a_copied_cache_under_another_home_and_another_library_copy_hit(tmp_path, tools, vrift_env):
    ref = generate(tmp_path / "plain", UNITS)
    plain("ninja", cwd=ref)
    proj = generate(tmp_path / "p", UNITS)
    assert cache_counts(vrift("wrap", "ninja", cwd=proj, check=True).stderr) == (0, EDGES, 0)
    vrift("daemon", "stop", cwd=proj, check=True)
    home = Path(vrift_env["VRIFT_HOME"])
    other_home = Path(str(home) + "-2")  # short, like the fixture's (socket paths live under it)
    other_home.mkdir()
    try:
        shutil.copytree(home / "cache", other_home / "cache")
        shutil.copytree(home / "cas", other_home / "cas", symlinks=True)
        # another install of the library: another path, other bytes (a reinstall, another venv)
        from vrift import native
        lib = tmp_path / "other-venv" / "libvrift.so"
        lib.parent.mkdir()
        shutil.copy(native.preload_library(), lib)
        with open(lib, "ab") as f:
            f.write(b"\0reinstalled\0")
        env = tool_env({**os.environ, "VRIFT_HOME": str(other_home), "VRIFT_PRELOAD_LIB": str(lib)})
        plain("ninja", "-t", "clean", cwd=proj)
        other = generate(tmp_path / "checkout-2", UNITS)  # and the same sources at another path
        for root in (proj, other):
            warm = vrift("wrap", "--explain", "ninja", cwd=root, env=env, check=True)
            assert cache_counts(warm.stderr) == (EDGES, 0, 0), warm.stderr
            assert_same_outputs(root, ref)
        vrift("daemon", "stop", cwd=proj, env=env, check=True)
    finally:
        from conftest import stop_processes_of
        stop_processes_of(other_home)
        shutil.rmtree(other_home, ignore_errors=True)
