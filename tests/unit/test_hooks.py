"""The plugin manager with real pluggy and real modules on sys.path: loading, isolation of
broken plugins, each hook's semantics, and the pluggy-free path of `vrift wrap`."""
from __future__ import annotations

import sys
import textwrap

import pluggy
import pytest

from vrift.hooks import hookimpl
from vrift.hooks.direct import BuiltinHooks
from vrift.hooks.entrypoints import BUILTIN_PLUGINS, installed_entry_points, only_builtins
from vrift.hooks.manager import load
from vrift.hooks.markers import IMPL_ATTR, marked_hooks


@pytest.fixture
def plugin_dir(tmp_path, monkeypatch):
    """A directory on sys.path where a test writes plugin modules; they are unloaded after."""
    d = tmp_path / "plugins"
    d.mkdir()
    monkeypatch.syspath_prepend(str(d))
    before = set(sys.modules)

    def write(name: str, source: str) -> str:
        (d / f"{name}.py").write_text(textwrap.dedent(source))
        return name

    yield write
    for name in set(sys.modules) - before:
        if name.startswith("tp_"):
            del sys.modules[name]


def manager_with(*modules, report=None):
    lines = []
    manager = load(modules, report=lines.append if report is None else report)
    return manager, lines


def test_marker_sets_exactly_what_pluggys_marker_sets():
    pluggy_marker = pluggy.HookimplMarker("vrift")
    for kwargs in ({}, {"tryfirst": True}, {"trylast": True, "specname": "vrift_pre_build"}, {"optionalhook": True}):
        def ours():
            pass

        def theirs():
            pass

        hookimpl(**kwargs)(ours)
        pluggy_marker(**kwargs)(theirs)
        assert getattr(ours, IMPL_ATTR) == getattr(theirs, IMPL_ATTR)
    bare = hookimpl(lambda: None)
    assert getattr(bare, IMPL_ATTR)["tryfirst"] is False


def test_builtin_adapters_are_registered_through_the_entry_point_group():
    listed = dict(installed_entry_points())
    for name, target in BUILTIN_PLUGINS.items():
        assert listed.get(name) == target, "pyproject.toml [project.entry-points.vrift] lists the built-ins"
    manager, lines = manager_with()
    assert lines == [] and manager.failures == []
    assert {p.name: p.source for p in manager.plugins.values()} == {n: "entry point" for n in BUILTIN_PLUGINS}
    assert sorted(a.name for a in manager.adapters()) == ["generic", "make", "ninja"]


def test_builtins_fall_back_to_the_package_when_metadata_lacks_them():
    manager, _ = manager_with()
    bare = load(entry_points=[], report=None)
    assert {p.name: p.source for p in bare.plugins.values()} == {n: "built-in" for n in BUILTIN_PLUGINS}
    assert [a.name for a in bare.adapters()] == [a.name for a in manager.adapters()]


def test_pluggy_free_path_gives_the_same_adapters_in_the_same_order():
    direct = BuiltinHooks()
    assert direct.usable(), "a built-in plugin implements a per-build hook: the wrap fast path would skip it"
    manager, _ = manager_with()
    assert [a.name for a in direct.adapters()] == [a.name for a in manager.adapters()]
    for target in BUILTIN_PLUGINS.values():
        assert set(marked_hooks(__import__(target, fromlist=["x"]))) == {"vrift_register_adapters"}
    assert only_builtins(installed_entry_points(), ())
    assert not only_builtins(installed_entry_points(), ["tp_x"])
    assert not only_builtins([*installed_entry_points(), ("x", "tp_x")], ())


def test_a_plugin_that_fails_to_import_is_reported_by_name_and_skipped(plugin_dir):
    plugin_dir("tp_broken", "raise RuntimeError('half-installed')\n")
    plugin_dir("tp_good", """
        from vrift.hooks import hookimpl
        @hookimpl
        def vrift_pre_build(argv):
            return "saw " + argv[0]
    """)
    manager, lines = manager_with("tp_broken", "tp_good", "tp_missing_module")
    assert "tp_good" in manager.plugins and "tp_broken" not in manager.plugins
    assert len(lines) == 2
    assert "'tp_broken' could not be loaded (config): RuntimeError: half-installed" in lines[0]
    assert "'tp_missing_module'" in lines[1] and "ModuleNotFoundError" in lines[1]
    assert manager.call("vrift_pre_build", project=None, config=None, argv=["ninja"]) == [("tp_good", "saw ninja")]


def test_a_plugin_that_raises_in_a_hook_is_reported_and_the_others_still_run(plugin_dir):
    plugin_dir("tp_raises", """
        from vrift.hooks import hookimpl
        @hookimpl
        def vrift_prepare_env(env):
            raise KeyError("PATH")
    """)
    plugin_dir("tp_sets", """
        from vrift.hooks import hookimpl
        @hookimpl
        def vrift_prepare_env(project, config, env):
            env["FROM_PLUGIN"] = "1"
    """)
    manager, lines = manager_with("tp_raises", "tp_sets")
    env = {}
    manager.prepare_env(None, None, env)
    assert env == {"FROM_PLUGIN": "1"}
    assert lines == ["plugin 'tp_raises' failed in vrift_prepare_env (config): KeyError: 'PATH'"]


def test_invalid_plugins_are_refused_at_registration(plugin_dir):
    plugin_dir("tp_typo", """
        from vrift.hooks import hookimpl
        @hookimpl
        def vrift_post_bulid(exit_code):
            pass
    """)
    plugin_dir("tp_badargs", """
        from vrift.hooks import hookimpl
        @hookimpl
        def vrift_pre_build(argv, colour):
            pass
    """)
    plugin_dir("tp_wrapper", """
        from vrift.hooks import hookimpl
        @hookimpl(wrapper=True)
        def vrift_pre_build(argv):
            return (yield)
    """)
    manager, lines = manager_with("tp_typo", "tp_badargs", "tp_wrapper", "tp_typo")
    assert not {"tp_typo", "tp_badargs", "tp_wrapper"} & set(manager.plugins)
    assert [f.name for f in manager.failures] == ["tp_typo", "tp_badargs", "tp_wrapper"]
    assert "vrift_post_bulid" in lines[0] and "colour" in lines[1] and "wrappers" in lines[2]
    assert manager.call("vrift_pre_build", project=None, config=None, argv=["x"]) == []


def test_post_build_receives_the_summary_and_call_order_follows_pluggy(plugin_dir):
    plugin_dir("tp_first", """
        from vrift.hooks import hookimpl
        seen = []
        @hookimpl(tryfirst=True)
        def vrift_post_build(exit_code, summary):
            seen.append(("first", exit_code, summary["committed"]))
    """)
    plugin_dir("tp_last", """
        from vrift.hooks import hookimpl
        import tp_first
        @hookimpl(trylast=True)
        def vrift_post_build(argv):
            tp_first.seen.append(("last", argv))
    """)
    manager, lines = manager_with("tp_last", "tp_first")
    manager.post_build(None, None, ["make"], 2, {"committed": 7})
    import tp_first

    assert tp_first.seen == [("first", 2, 7), ("last", ["make"])] and lines == []


def test_index_filter_excludes_on_any_false_and_is_free_without_plugins(plugin_dir):
    manager, _ = manager_with()
    assert manager.index_filter(project=None) is None
    plugin_dir("tp_no_logs", """
        from vrift.hooks import hookimpl
        @hookimpl
        def vrift_index_filter(relpath):
            return False if relpath.endswith(b".log") else None
    """)
    plugin_dir("tp_keep_all", """
        from vrift.hooks import hookimpl
        @hookimpl
        def vrift_index_filter(project, relpath):
            return True
    """)
    plugin_dir("tp_flaky", """
        from vrift.hooks import hookimpl
        calls = []
        @hookimpl
        def vrift_index_filter(relpath):
            calls.append(relpath)
            raise OSError("boom")
    """)
    manager, lines = manager_with("tp_no_logs", "tp_keep_all", "tp_flaky")
    keep = manager.index_filter(project="P")
    assert keep(b"src/a.c") is True
    assert keep(b"out/build.log") is False
    assert keep(b"src/b.c") is True
    import tp_flaky

    assert len(tp_flaky.calls) == 1, "a filter that raised is not asked again during the walk"
    assert len(lines) == 1 and "'tp_flaky' failed in vrift_index_filter" in lines[0]


def test_cache_key_is_ordered_by_plugin_name_and_unambiguous(plugin_dir):
    plugin_dir("tp_b", """
        from vrift.hooks import hookimpl
        @hookimpl
        def vrift_cache_key(action):
            return "cc-" + action["tool"]
    """)
    plugin_dir("tp_a", """
        from vrift.hooks import hookimpl
        @hookimpl
        def vrift_cache_key(action):
            return b"\\x00abc"
    """)
    plugin_dir("tp_wrongtype", """
        from vrift.hooks import hookimpl
        @hookimpl
        def vrift_cache_key(action):
            return 42
    """)
    one, lines = manager_with("tp_b", "tp_a", "tp_wrongtype")
    other, _ = manager_with("tp_a", "tp_b")
    key = one.cache_key({"tool": "gcc"})
    assert key == other.cache_key({"tool": "gcc"})
    assert key.index(b"tp_a") < key.index(b"tp_b") and b"cc-gcc" in key
    assert key != one.cache_key({"tool": "clang"})
    assert len(lines) == 1 and "tp_wrongtype" in lines[0] and "int" in lines[0]
    assert manager_with()[0].cache_key({"tool": "gcc"}) == b""


def test_third_party_adapter_takes_precedence_and_can_be_forced(plugin_dir):
    from vrift.wrap.adapters.base import Adapter, select
    from vrift.errors import VriftError

    plugin_dir("tp_bazelish", """
        from vrift.hooks import hookimpl
        from vrift.wrap.adapters.base import Adapter
        class Samurai(Adapter):
            name = "samurai"
            tools = ("samu", "ninja")
        @hookimpl
        def vrift_register_adapters():
            return [Samurai()]
    """)
    manager, _ = manager_with("tp_bazelish")
    adapters = manager.adapters()
    assert select(adapters, "/usr/bin/ninja").name == "samurai"
    assert select(adapters, "ninja", forced="ninja").name == "ninja"
    assert select(adapters, "make").name == "make"
    assert select(adapters, "./build.sh").name == "generic"
    assert isinstance(select(adapters, "x"), Adapter)
    with pytest.raises(VriftError, match="unknown adapter 'scons'"):
        select(adapters, "scons", forced="scons")


def test_spec_marker_sets_exactly_what_pluggys_marker_sets():
    from vrift.hooks.markers import SPEC_ATTR, hookspec

    pluggy_marker = pluggy.HookspecMarker("vrift")
    for kwargs in ({}, {"firstresult": True}, {"historic": True}):
        def ours():
            pass

        def theirs():
            pass

        hookspec(**kwargs)(ours)
        pluggy_marker(**kwargs)(theirs)
        assert getattr(ours, SPEC_ATTR) == getattr(theirs, SPEC_ATTR)


def test_pluggy_sees_every_specification_with_its_arguments():
    from vrift.hooks.direct import SPECS

    manager, _ = manager_with()
    assert SPECS, "no hook specification found"
    for name, args in SPECS.items():
        caller = getattr(manager.pm.hook, name)
        assert caller.has_spec() and caller.spec.argnames == args, name


def test_both_dispatchers_agree_on_every_hook(plugin_dir):
    """A plugin implementing every specified hook (generated from the specifications, so a new
    hook is covered without editing this test), each taking only its last argument: the
    pluggy-free dispatcher and the manager call the same implementations in the same order with
    the same arguments and return the same results."""
    from vrift.hooks.direct import SPECS

    lines = ["from vrift.hooks import hookimpl"]
    for name, args in SPECS.items():
        last = args[-1] if args else ""
        lines += ["@hookimpl", f"def {name}({last}):",
                  f"    return [] if {name!r} == 'vrift_register_adapters' else ({name!r}, {last or None})"]
    plugin_dir("tp_all", "\n".join(lines) + "\n")
    direct = BuiltinHooks({**BUILTIN_PLUGINS, "tp_all": "tp_all"})
    assert direct.usable()
    manager, report = manager_with("tp_all")

    def plain(results):
        return [(plugin, [type(a).__name__ for a in r] if isinstance(r, list) else r) for plugin, r in results]

    for name, args in SPECS.items():
        kwargs = {a: f"<{a}>" for a in args}
        assert plain(direct.call(name, **kwargs)) == plain(manager.call(name, **kwargs)), name
    assert report == [] and direct.failures == []


def test_the_pluggy_free_dispatcher_refuses_what_it_cannot_reproduce(plugin_dir):
    plugin_dir("tp_early", """
        from vrift.hooks import hookimpl
        @hookimpl(tryfirst=True)
        def vrift_pre_build(argv):
            pass
    """)
    plugin_dir("tp_nospec", """
        from vrift.hooks import hookimpl
        @hookimpl
        def vrift_not_a_hook():
            pass
    """)
    assert not BuiltinHooks({"tp_early": "tp_early"}).usable()
    assert not BuiltinHooks({"tp_nospec": "tp_nospec"}).usable()
