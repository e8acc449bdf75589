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
