"""Configuration: files, environment, precedence, errors, `vrift init` and `vrift config show`."""
from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

from vrift import config
from vrift.commands.config_cmd import template
from vrift.errors import VriftError
from vrift.home import Home


@pytest.fixture
def env(vrift_env) -> dict:
    """vrift_env without any other VRIFT_* setting inherited from the caller's environment.
    Mutated in place, so run_vrift (which copies vrift_env per call) sees the same."""
    for name in [k for k in vrift_env if k.startswith("VRIFT_") and k not in ("VRIFT_HOME", "VRIFT_SHM_DIR")]:
        del vrift_env[name]
    return vrift_env


@pytest.fixture
def proj(tmp_path) -> Path:
    root = tmp_path / "proj"
    root.mkdir()
    return root


def user_config(env) -> Path:
    path = Home.from_env(env).user_config_path
    path.parent.mkdir(parents=True, exist_ok=True)
    return path


def load_error(proj, env, text: str) -> str:
    (proj / ".vrift.yaml").write_text(text)
    with pytest.raises(VriftError) as info:
        config.load(proj, env=env)
    return str(info.value)


def test_defaults_without_files(proj, env):
    cfg = config.load(proj, env=env)
    assert cfg["durability"] == "wal"
    assert cfg["enabled"] is True and cfg["fallback_mode"] is False
    assert cfg["sync_interval_ms"] == 100 and cfg["sync_batch_size"] == 1000 and cfg["lmdb_mapsize_gb"] == 10
    assert cfg["ignore"] == [] and cfg["plugins"] == [] and cfg["adapter"] is None
    assert 1 <= cfg["hash_workers"] <= 8
    assert cfg["daemon.socket_timeout_ms"] == 2000 and cfg["daemon.max_projects"] == 16
    assert "PATH" in cfg["cache.env"] and cfg["cache.cache_failures"] is False
    assert cfg.projects == [] and cfg.files == []
    assert all(cfg.source(k) == "default" for k in cfg.keys())
    assert set(cfg.as_dict()) == set(config.KEYS) | {"projects"}


def test_precedence_across_all_five_levels(proj, env):
    key = "sync_interval_ms"
    user_config(env).write_text("# user\nsync_interval_ms: 200\n")
    (proj / ".vrift.yaml").write_text("\n\nsync_interval_ms: 300\n")
    env = dict(env, VRIFT_LMDB_SYNC_INTERVAL_MS="400")
    layers = [
        ({key: 500}, env, 500, "--sync-interval-ms"),
        (None, env, 400, "env VRIFT_LMDB_SYNC_INTERVAL_MS"),
    ]
    for cli, e, value, source in layers:
        cfg = config.load(proj, cli=cli, env=e)
        assert (cfg[key], cfg.source(key)) == (value, source)
    del env["VRIFT_LMDB_SYNC_INTERVAL_MS"]
    cfg = config.load(proj, env=env)
    assert (cfg[key], cfg.source(key)) == (300, f"{proj / '.vrift.yaml'}:3")
    (proj / ".vrift.yaml").unlink()
    cfg = config.load(proj, env=env)
    assert (cfg[key], cfg.source(key)) == (200, f"{user_config(env)}:2")
    user_config(env).unlink()
    cfg = config.load(proj, env=env)
    assert (cfg[key], cfg.source(key)) == (100, "default")


def test_project_file_replaces_lists_and_keeps_other_user_values(proj, env):
    user_config(env).write_text("ignore: ['*.tmp']\nlink_strategy: copy\n")
    (proj / ".vrift.yaml").write_text("ignore:\n  - '*.o'\n  - build/**\n")
    cfg = config.load(proj, env=env)
    assert cfg["ignore"] == ["*.o", "build/**"]
    assert cfg["link_strategy"] == "copy"


@pytest.mark.parametrize("var,key,text,expected", [
    ("VRIFT_ENABLED", "enabled", "0", False),
    ("VRIFT_FALLBACK_MODE", "fallback_mode", "yes", True),
    ("VRIFT_DEBUG", "debug", "cache,ipc", "cache,ipc"),
    ("VRIFT_LMDB_DURABILITY", "durability", "async", "async"),
    ("VRIFT_LMDB_SYNC_INTERVAL_MS", "sync_interval_ms", "250", 250),
    ("VRIFT_LMDB_SYNC_BATCH_SIZE", "sync_batch_size", "64", 64),
    ("VRIFT_LMDB_MAPSIZE_GB", "lmdb_mapsize_gb", "0.5", 0.5),
    ("VRIFT_SOCKET_TIMEOUT_MS", "daemon.socket_timeout_ms", "5000", 5000),
])
def test_each_environment_variable(proj, env, var, key, text, expected):
    (proj / ".vrift.yaml").write_text("durability: sync\nenabled: true\n")
    cfg = config.load(proj, env=dict(env, **{var: text}))
    assert cfg[key] == expected
    assert cfg.source(key) == f"env {var}"


@pytest.mark.parametrize("word,value", [("1", True), ("TRUE", True), ("Yes", True), ("on", True),
                                        ("0", False), ("false", False), ("NO", False), ("Off", False)])
def test_env_bool_words(proj, env, word, value):
    assert config.load(proj, env=dict(env, VRIFT_ENABLED=word))["enabled"] is value


@pytest.mark.parametrize("var,text", [("VRIFT_ENABLED", "maybe"), ("VRIFT_LMDB_DURABILITY", "fast"),
                                      ("VRIFT_LMDB_SYNC_INTERVAL_MS", "0"), ("VRIFT_LMDB_MAPSIZE_GB", "big"),
                                      ("VRIFT_SOCKET_TIMEOUT_MS", "1.5")])
def test_bad_env_value_names_the_variable(proj, env, var, text):
    with pytest.raises(VriftError, match=f"^environment variable {var}: expected .*{re.escape(repr(text))}$"):
        config.load(proj, env=dict(env, **{var: text}))


def test_empty_env_value_is_unset(proj, env):
    cfg = config.load(proj, env=dict(env, VRIFT_ENABLED="", VRIFT_LMDB_DURABILITY=""))
    assert cfg.source("enabled") == cfg.source("durability") == "default"


def test_cli_values_typed_or_strings(proj, env):
    cfg = config.load(proj, cli={"durability": "sync", "hash_workers": "3", "ignore": "a,b", "enabled": "off",
                                 "adapter": None}, env=env)
    assert (cfg["durability"], cfg["hash_workers"], cfg["ignore"], cfg["enabled"]) == ("sync", 3, ["a", "b"], False)
    assert cfg.source("adapter") == "default"  # None means the flag was not given
    with pytest.raises(VriftError, match=r"^--durability: expected one of sync, wal, async, got 'fast'$"):
        config.load(proj, cli={"durability": "fast"}, env=env)
    with pytest.raises(VriftError, match=r"unknown configuration key 'durabilty' \(did you mean 'durability'\?\)"):
        config.load(proj, cli={"durabilty": "wal"}, env=env)


def test_unknown_key_names_file_line_and_suggestion(proj, env):
    path = proj / ".vrift.yaml"
    assert load_error(proj, env, "# c\ndurability: wal\ndurabilty: sync\n") == \
        f"{path}:3: unknown key 'durabilty' (did you mean 'durability'?)"
    assert load_error(proj, env, "daemon:\n  idle_timeout_s: 1\n  idle_timeout: 3\n") == \
        f"{path}:3: unknown key 'daemon.idle_timeout' (did you mean 'daemon.idle_timeout_s'?)"
    assert load_error(proj, env, "colour: blue\n") == f"{path}:1: unknown key 'colour'"
    assert load_error(proj, env, "idle_timeout_s: 5\n") == \
        f"{path}:1: unknown key 'idle_timeout_s' (did you mean 'daemon.idle_timeout_s'? write it under 'daemon:')"


def test_dotted_keys_must_be_nested(proj, env):
    message = load_error(proj, env, "daemon.idle_timeout_s: 5\n")
    assert message.startswith(f"{proj / '.vrift.yaml'}:1: unknown key 'daemon.idle_timeout_s' (write it nested")


@pytest.mark.parametrize("text,line,tail", [
    ("enabled: true\ndurability: fast\n", 2, "durability: expected one of sync, wal, async, got 'fast'"),
    ("link_strategy: symlink\n", 1, "link_strategy: expected one of auto, reflink, copy, hardlink, got 'symlink'"),
    ("enabled: maybe\n", 1, "enabled: expected true or false, got 'maybe'"),
    ("hash_workers: 0\n", 1, "hash_workers: expected an integer >= 1, got 0"),
    ("sync_batch_size: 2.5\n", 1, "sync_batch_size: expected an integer > 0, got 2.5"),
    ("lmdb_mapsize_gb: -1\n", 1, "lmdb_mapsize_gb: expected a number > 0, got -1"),
    ("daemon:\n  idle_timeout_s: -1\n", 2, "daemon.idle_timeout_s: expected a number >= 0, got -1"),
    ("ignore: '*.o'\n", 1, "ignore: expected a list of non-empty strings, got '*.o'"),
    ("cache:\n  env: [PATH, 'NOT A NAME']\n", 2,
     "cache.env: expected a list of environment variable names, got ['PATH', 'NOT A NAME']"),
    ("durability:\n", 1, "durability: expected one of sync, wal, async, got null"),
    ("daemon: 3\n", 1, "daemon: expected a mapping of keys to values, got 3"),
    ("- a\n- b\n", 1, "expected a mapping of keys to values, got a list"),
    ("enabled: true\nenabled: false\n", 2, "duplicate key 'enabled'"),
    ("enabled: [true\n", 2, "invalid YAML: while parsing a flow sequence: did not find expected ',' or ']'"),
    ("ignore:\n  - '*.o\n", 2, "invalid YAML: while scanning a quoted scalar: found unexpected end of stream"),
    ("a: 1\n---\nb: 2\n", 2, "invalid YAML: expected a single document, found another"),
])
def test_bad_values_name_file_key_and_line(proj, env, text, line, tail):
    assert load_error(proj, env, text) == f"{proj / '.vrift.yaml'}:{line}: {tail}"


def test_projects_only_in_user_config(proj, env, tmp_path):
    message = load_error(proj, env, "durability: wal\nprojects:\n  - /a\n")
    assert message == (f"{proj / '.vrift.yaml'}:2: 'projects' is only allowed in the user configuration "
                       f"({Home.from_env(env).user_config_path})")
    (proj / ".vrift.yaml").unlink()
    path = user_config(env)
    path.write_text(f"projects:\n  - {proj}\n  - sub/other\n  - ~/elsewhere\n")
    cfg = config.load(proj, env=env)
    assert cfg.projects == [proj, path.parent / "sub/other", Path.home() / "elsewhere"]
    assert all(p.is_absolute() for p in cfg.projects)
    assert cfg.source("projects") == f"{path}:1"


def test_empty_and_comment_only_files(proj, env):
    for text in ("", "\n\n", "# nothing here\n", "---\n", "daemon:\nignore:\n"):
        (proj / ".vrift.yaml").write_text(text)
        cfg = config.load(proj, env=env)
        assert cfg["ignore"] == [] and cfg["daemon.idle_timeout_s"] == 600


def test_yaml_is_imported_only_when_a_file_exists(proj, env):
    code = ("import sys, vrift.config as c; assert 'yaml' not in sys.modules; c.load(sys.argv[1]);"
            "print('yaml' in sys.modules)")
    run = lambda: subprocess.run([sys.executable, "-c", code, str(proj)], env=env, capture_output=True,  # noqa: E731
                                 text=True, check=True).stdout.strip()
    assert run() == "False"
    (proj / ".vrift.yaml").write_text("durability: sync\n")
    assert run() == "True"


def test_template_lists_every_key_with_its_default(proj, env):
    """Uncommenting every setting of the `vrift init` template gives exactly the defaults."""
    text = template()
    for name in config.KEYS:
        assert re.search(rf"^#\s+{re.escape(name.rpartition('.')[2])}: ", text, re.M), name
    uncommented = re.sub(r"^# ( *[a-z_]+:.*)$", r"\1", text, flags=re.M)
    (proj / ".vrift.yaml").write_text(uncommented)
    cfg = config.load(proj, env=env)
    defaults = config.load(proj / "nowhere", env=env)
    for name in config.KEYS:
        assert cfg[name] == defaults[name], name
        assert cfg.source(name).startswith(f"{proj / '.vrift.yaml'}:"), name


def test_init_then_config_show(run_vrift, proj, env):
    done = run_vrift("init", "--root", proj, check=True)
    path = proj / ".vrift.yaml"
    assert done.stdout.strip() == f"wrote {path}"
    assert path.read_text() == template()
    assert oct(path.stat().st_mode & 0o077) != "0o0"  # a normal project file, not mkstemp's 0600
    assert [p.name for p in proj.iterdir()] == [".vrift.yaml"]  # no temporary file left behind

    shown = json.loads(run_vrift("config", "show", "--root", proj, "--json", check=True).stdout)
    assert set(shown) == set(config.KEYS) | {"projects"}
    assert shown["durability"] == {"value": "wal", "source": "default"}

    path.write_text(path.read_text() + "durability: sync\n")
    line = len(path.read_text().splitlines())
    shown = json.loads(run_vrift("config", "show", "--root", proj, "--json", check=True,
                                 env={"VRIFT_LMDB_SYNC_BATCH_SIZE": "7"}).stdout)
    assert shown["durability"] == {"value": "sync", "source": f"{path}:{line}"}
    assert shown["sync_batch_size"] == {"value": 7, "source": "env VRIFT_LMDB_SYNC_BATCH_SIZE"}

    table = run_vrift("config", "show", "--root", proj, check=True).stdout.splitlines()
    assert table[0].split() == ["key", "value", "source"]
    assert any(row.split() == ["durability", "sync", f"{path}:{line}"] for row in table)


def test_init_refuses_to_overwrite(run_vrift, proj, env):
    path = proj / ".vrift.yaml"
    path.write_text("durability: sync\n")
    done = run_vrift("init", "--root", proj)
    assert done.returncode == 1
    assert done.stderr.strip() == f"vrift: error: {path}: already exists (use --force to overwrite it)"
    assert path.read_text() == "durability: sync\n"
    run_vrift("init", "--root", proj, "--force", check=True)
    assert path.read_text() == template()


def test_config_show_reports_errors_in_one_line(run_vrift, proj, env):
    (proj / ".vrift.yaml").write_text("enabled: true\n\ndurabilty: wal\n")
    done = run_vrift("config", "show", "--root", proj)
    assert done.returncode == 1
    assert done.stderr.strip() == (f"vrift: error: {proj / '.vrift.yaml'}:3: unknown key 'durabilty' "
                                   "(did you mean 'durability'?)")
    (proj / ".vrift.yaml").unlink()
    done = run_vrift("config", "show", "--root", proj, env={"VRIFT_ENABLED": "perhaps"})
    assert done.returncode == 1 and "VRIFT_ENABLED" in done.stderr and len(done.stderr.splitlines()) == 1
