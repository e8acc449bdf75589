"""Facts kept for start-up speed in a cheap module have one definition there, and the richer
modules take them from it; where a copy must remain (the make fragment, the C library), the
copy is checked against the source here."""
from __future__ import annotations

import shutil
import subprocess

import pytest

from vrift import config, defaults, identity, locate
from vrift.wrap import cacheenv, environment, wrapcache
from vrift.wrap.adapters.make import hook


def test_wrap_settings_defaults_are_the_configuration_defaults(tmp_path):
    for name, value in defaults.WRAP_SETTINGS.items():
        assert name in config.KEYS, name
        assert config.KEYS[name].default == value, name
    assert wrapcache.SETTINGS_KEYS == tuple(defaults.WRAP_SETTINGS)
    loaded = config.load(tmp_path, env={"VRIFT_HOME": str(tmp_path / "home")})
    assert {k: loaded[k] for k in defaults.WRAP_SETTINGS} == defaults.WRAP_SETTINGS


def test_root_markers_have_one_definition():
    assert identity.ROOT_MARKERS is locate.ROOT_MARKERS
    assert identity.project_id is locate.project_id


@pytest.mark.skipif(shutil.which("make") is None, reason="make not installed")
@pytest.mark.parametrize("cache", [None, ["PATH", "CC"], ["CFLAGS"]])
def test_make_fragment_exports_the_wrapper_contract(tmp_path, cache):
    """A recipe of a make that read the fragment sees the variables `vrift wrap` would set
    (less the per-build counters file and socket timeout), and the cache variables of
    `cacheenv` with the role "each"."""
    info = {"root": "/p$x #1", "vdir": "/shm/v", "socket": "/h/s.sock", "staging_dir": "/p$x #1/.vrift/staging"}
    mk = tmp_path / "frag.mk"
    mk.write_text(hook.fragment(info["root"], "/lib/v.so", info, cache))
    (tmp_path / "Makefile").write_text(f"include {mk}\nall:\n\t@env\n")
    base = {"PATH": "/usr/bin:/bin", "LD_PRELOAD": "/other.so", "VRIFT_ACTION_ID": "7", "VRIFT_CACHE_EXPLAIN": "1"}
    seen = subprocess.run(["make", "-s", "-C", str(tmp_path)], env=base, capture_output=True, text=True, check=True)
    got = dict(line.split("=", 1) for line in seen.stdout.splitlines() if "=" in line)
    want = environment.vrift_env(base, "/lib/v.so", info, None, None)
    for var, _ in environment.CONTRACT:
        assert got[var] == want[var], var
    assert got["LD_PRELOAD"].split() == want["LD_PRELOAD"].split()
    if cache is None:
        assert "VRIFT_CACHE" not in got
        return
    wrapped = dict(base)
    assert cacheenv.cache_env(wrapped, True, cache, False)
    assert got["VRIFT_CACHE"] == wrapped["VRIFT_CACHE"]
    assert got["VRIFT_CACHE_ENV"] == wrapped["VRIFT_CACHE_ENV"]
    assert got["VRIFT_ACTION_ROLE"] == "each"
    leftover = {v for v in (*cacheenv.ACTION_VARS, "VRIFT_CACHE_EXPLAIN") if v != "VRIFT_ACTION_ROLE"}
    assert not leftover & set(got), leftover & set(got)


def test_the_wrappers_copies_of_daemon_constants_agree():
    from vrift.daemon import server
    from vrift.wrap import fastwrap

    assert fastwrap.FIRST_SYNC_TIMEOUT_S == server.REQUEST_TIMEOUT_S
    assert fastwrap.SHUTDOWN_IF_IDLE == server.SHUTDOWN_IF_IDLE


def test_the_old_adapter_import_path_is_the_same_class():
    """vrift.adapters.base is kept for third-party plugins written against it (docs/plugins.md)."""
    from vrift.adapters import base as old
    from vrift.wrap.adapters import base as new

    assert old.Adapter is new.Adapter and old.select is new.select
    assert set(old.__all__) == {n for n in dir(new) if not n.startswith("_") and callable(getattr(new, n))} - {
        "Sequence", "VriftError", "annotations"}
