"""Configuration (SPEC §9): built-in defaults < user config < .vrift.yaml < VRIFT_* env < CLI.

Every key is declared once in KEYS with its type, range, environment variable and a one-line
explanation; validation, `vrift init`'s template, `vrift config show` and the documentation all
follow from that table.  YAML is imported only when a configuration file exists, because this
module sits on the start-up path of every command (`import yaml` alone costs ~16 ms).
"""
from __future__ import annotations

import os
import re
from pathlib import Path

from . import locate, onoff
from .defaults import WRAP_SETTINGS
from .onoff import BOOL_WORDS  # noqa: F401 - re-exported: the words every on/off setting accepts
from .errors import VriftError
from .home import Home

PROJECT_FILE = locate.PROJECT_FILE
_ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*\Z")
_SIZE = re.compile(r"\s*(\d+(?:\.\d+)?)\s*([kmgt]?)(?:i?b)?\s*\Z", re.IGNORECASE)
_SIZE_UNITS = {"": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30, "t": 1 << 40}


def parse_size(value) -> int:
    """Bytes from a size as ccache writes it: 5G, 500M, 1.5G, 64K, a plain number of bytes
    (binary units: 1G is 2^30).  ValueError when it is not one."""
    if isinstance(value, bool):
        raise ValueError(f"not a size: {value!r}")
    if isinstance(value, int):
        if value < 0:
            raise ValueError(f"not a size: {value!r}")
        return value
    m = _SIZE.match(value) if isinstance(value, str) else None
    if not m:
        raise ValueError(f"not a size (like 5G, 500M, 0 for no limit): {value!r}")
    return int(float(m.group(1)) * _SIZE_UNITS[m.group(2).lower()])


class Key:
    """One configuration key: what it accepts, its default and where else it may come from."""

    __slots__ = ("name", "kind", "default", "env", "help", "low", "low_inclusive", "choices",
                 "nullable", "item_pattern", "default_text")

    def __init__(self, name, kind, default, help, env=None, low=None, low_inclusive=False, choices=(),
                 nullable=False, item_pattern=None, default_text=None):
        self.name, self.kind, self.default, self.env, self.help = name, kind, default, env, help
        self.low, self.low_inclusive, self.choices, self.nullable = low, low_inclusive, tuple(choices), nullable
        self.item_pattern = item_pattern
        self.default_text = default_text  # for defaults that depend on the machine

    def describe(self) -> str:
        """What the key accepts, as an error message phrases it."""
        if self.kind == "enum":
            text = "one of " + ", ".join(self.choices)
        elif self.kind == "bool":
            text = "true or false"
        elif self.kind in ("int", "number"):
            text = "an integer" if self.kind == "int" else "a number"
            if self.low is not None:
                text += f" {'>=' if self.low_inclusive else '>'} {self.low}"
        elif self.kind == "size":
            text = "a size like 5G, 500M or 0 (no limit)"
        elif self.kind == "list":
            text = "a list of " + ("environment variable names" if self.item_pattern else "non-empty strings")
        elif self.kind == "urls":
            text = "a URL or a list of URLs"
        else:
            text = "a string"
        return text + (" or null" if self.nullable else "")

    def check(self, value):
        """The value if valid, else raise ValueError with the message tail."""
        kind = self.kind
        if value is None and self.nullable:
            return None
        if kind == "bool":
            ok = isinstance(value, bool)
        elif kind == "int":
            ok = isinstance(value, int) and not isinstance(value, bool)
        elif kind == "number":
            ok = isinstance(value, (int, float)) and not isinstance(value, bool) and value == value \
                and value not in (float("inf"), float("-inf"))
        elif kind == "enum":
            ok = isinstance(value, str) and value in self.choices
        elif kind == "str":
            ok = isinstance(value, str)
        elif kind == "size":
            try:
                parse_size(value)
                ok = True
            except ValueError:
                ok = False
        elif kind == "urls":
            return _check_urls(value, self)
        else:  # list
            ok = isinstance(value, list) and all(
                isinstance(v, str) and v.strip() and (self.item_pattern is None or self.item_pattern.match(v))
                for v in value)
        if ok and self.low is not None:
            ok = value >= self.low if self.low_inclusive else value > self.low
        if not ok:
            raise ValueError(f"expected {self.describe()}, got {_show(value)}")
        return list(value) if kind == "list" else value

    def parse_text(self, text: str):
        """A value given as text (environment, command line) converted to the key's type."""
        kind = self.kind
        if kind == "bool":
            value = onoff.parse(text)
            if value is None:
                raise ValueError(onoff.expected(text))
            return value
        if kind in ("int", "number"):
            try:
                return int(text.strip())
            except ValueError:
                if kind == "number":
                    try:
                        return float(text.strip())
                    except ValueError:
                        pass
            raise ValueError(f"expected {self.describe()}, got {text!r}")
        if kind == "list":
            return [part.strip() for part in text.split(",") if part.strip()]
        if kind == "size":
            return text.strip()
        if kind == "urls":  # VRIFT_CACHE_REMOTE: URLs separated by spaces
            return text.split()
        if self.nullable and text.strip().lower() in ("", "null", "none"):
            return None
        return text.strip() if kind == "enum" else text


def _check_urls(value, key: "Key") -> list[str]:
    """cache.remote: one spec or a list of them, each parsed (vrift/storage/spec.py; no backend
    is imported here)."""
    items = [value] if isinstance(value, str) else value
    if not isinstance(items, list) or not all(isinstance(v, str) and v.strip() for v in items):
        raise ValueError(f"expected {key.describe()}, got {_show(value)}")
    from .storage import spec

    for item in items:
        try:
            spec.parse(item)
        except VriftError as e:
            raise ValueError(str(e).removeprefix("cache.remote: ")) from None
    return [v.strip() for v in items]


def _hash_workers_default() -> int:
    return max(1, min(8, os.cpu_count() or 1))


KEYS: dict[str, Key] = {k.name: k for k in (
    Key("enabled", "bool", WRAP_SETTINGS["enabled"], "Use vrift for builds in this project; false runs tools plainly.",
        env="VRIFT_ENABLED"),
    Key("fallback_mode", "bool", WRAP_SETTINGS["fallback_mode"], "Run builds plainly (no daemon, no cache) but keep vrift installed.",
        env="VRIFT_FALLBACK_MODE"),
    Key("debug", "str", "", "Debug logging: a comma-separated list of areas, e.g. \"cache,ipc\".",
        env="VRIFT_DEBUG"),
    Key("durability", "enum", "wal", "How index changes are made durable: sync, wal or async.",
        env="VRIFT_LMDB_DURABILITY", choices=("sync", "wal", "async")),
    Key("sync_interval_ms", "int", 100, "Milliseconds between background LMDB flushes (wal, async).",
        env="VRIFT_LMDB_SYNC_INTERVAL_MS", low=0),
    Key("sync_batch_size", "int", 1000, "Changes per background LMDB batch (wal).",
        env="VRIFT_LMDB_SYNC_BATCH_SIZE", low=0),
    Key("lmdb_mapsize_gb", "number", 10, "Maximum size of the project's LMDB index in GiB.",
        env="VRIFT_LMDB_MAPSIZE_GB", low=0),
    Key("ignore", "list", [], "Extra globs the ingester skips (.git and .vrift always are)."),
    Key("link_strategy", "enum", "auto", "How files are materialised from the CAS: auto, reflink, copy, hardlink.",
        choices=("auto", "reflink", "copy", "hardlink")),
    Key("ingest_blobs", "enum", "lazy",
        "What ingest keeps of a source file: lazy (its digest only; blobs are stored when needed) or copy "
        "(a CAS blob per distinct content).", env="VRIFT_INGEST_BLOBS", choices=("lazy", "copy")),
    Key("hash_workers", "int", _hash_workers_default(), "Threads hashing files during ingest.",
        low=1, low_inclusive=True, default_text="min(8, CPU count)"),
    Key("adapter", "str", WRAP_SETTINGS["adapter"], "Force a build adapter by name (null: chosen from the command).",
        nullable=True),
    Key("plugins", "list", WRAP_SETTINGS["plugins"], "Plugin modules to import, in addition to installed entry points."),
    Key("daemon.socket_timeout_ms", "int", WRAP_SETTINGS["daemon.socket_timeout_ms"], "Milliseconds a client waits for a daemon reply.",
        env="VRIFT_SOCKET_TIMEOUT_MS", low=0),
    Key("daemon.idle_timeout_s", "number", 600, "Seconds without builds before a project daemon exits (status does not count; 0: never).",
        low=0, low_inclusive=True),
    Key("daemon.coordinator_idle_s", "number", 1800,
        "Seconds without project daemons or builds before the coordinator exits (0: never).", low=0,
        low_inclusive=True),
    Key("daemon.cleanup_after_s", "number", 3600, "Seconds after which state of vanished projects is removed.",
        low=0, low_inclusive=True),
    Key("daemon.health_interval_s", "number", 2, "Seconds between the coordinator's health checks.", low=0),
    Key("daemon.max_projects", "int", 16, "Project daemons the coordinator runs at once.",
        low=1, low_inclusive=True),
    Key("daemon.max_watches", "int", 0,
        "inotify watches a project daemon may use (0: as many as fs.inotify.max_user_watches allows); "
        "directories beyond are answered by the kernel and re-read at each sync.",
        env="VRIFT_MAX_WATCHES", low=0, low_inclusive=True),
    Key("daemon.max_shm_mb", "number", 1024, "Shared memory all project VDirs may use together, in MiB.", low=0),
    Key("cache.enabled", "bool", WRAP_SETTINGS["cache.enabled"], "Use the build cache for tool invocations (VRIFT_CACHE=0: off for one build).",
        env="VRIFT_CACHE"),
    Key("cache.scope", "enum", "all", "Which commands are cached: all, or compilers (plus the tools in cache.always).",
        choices=("all", "compilers")),
    Key("cache.env", "list", WRAP_SETTINGS["cache.env"],
        "Environment variables that are part of every action key.", item_pattern=_ENV_NAME),
    Key("cache.always", "list", [], "Tool globs always cached, even when not known to be deterministic."),
    Key("cache.never", "list", [], "Tool globs never cached."),
    Key("cache.tools", "list", WRAP_SETTINGS["cache.tools"],
        "Build tool globs: run inside a build, their commands are actions of their own."),
    Key("cache.max_entry_mb", "number", 64, "Largest action output (MiB) stored in the cache.", low=0),
    Key("cache.cache_failures", "bool", False, "Also cache actions that failed."),
    Key("cache.max_size", "size", "5G",
        "Disk space the action cache may use (entries and the blobs only they hold); "
        "least recently used entries are evicted beyond it. 0: no limit.", env="VRIFT_CACHE_MAX_SIZE"),
    Key("cache.remote", "urls", [], "Remote caches shared across machines, read in order (docs/remote.md).",
        env="VRIFT_CACHE_REMOTE"),
    Key("cache.remote_connect_timeout_ms", "int", 200, "Milliseconds to connect to a remote cache.", low=0),
    Key("cache.remote_timeout_ms", "int", 500, "Milliseconds a remote cache operation may take.", low=0),
    Key("cache.remote_skip_s", "number", 30, "Seconds a remote that failed is skipped.", low=0, low_inclusive=True),
    Key("cache.remote_flush_s", "number", 10, "Seconds a stopping daemon waits for pending uploads.",
        low=0, low_inclusive=True),
)}
SECTIONS = frozenset(name.split(".", 1)[0] for name in KEYS if "." in name)
PROJECTS = "projects"  # user config only: list of project roots


def _show(value) -> str:
    if isinstance(value, dict):
        return "a mapping"
    if isinstance(value, list):
        odd = [v for v in value if not isinstance(v, (str, int, float))]
        if odd:
            return "a list containing " + ("a mapping" if isinstance(odd[0], dict) else
                                           "a list" if isinstance(odd[0], list) else "null")
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    return repr(value)


def flag_name(key: str) -> str:
    return "--" + key.replace(".", "-").replace("_", "-")


class Config:
    """The effective configuration: cfg["dotted.key"], cfg.source(key), cfg.items(), cfg.projects."""

    def __init__(self, values: dict, sources: dict, projects: list[Path], files: list[Path]):
        self._values = values
        self._sources = sources
        self.projects = projects
        self.files = files  # configuration files that were read, lowest precedence first

    def __getitem__(self, key: str):
        if key == PROJECTS:
            return list(self.projects)
        return self._values[key]

    def __contains__(self, key) -> bool:
        return key in self._values or key == PROJECTS

    def get(self, key: str, default=None):
        return self[key] if key in self else default

    def source(self, key: str) -> str:
        if key not in self:
            raise KeyError(key)
        return self._sources[key]

    def keys(self) -> list[str]:
        return [*self._values, PROJECTS]

    def items(self):
        """(key, value) of every key, in declaration order, `projects` last."""
        return [(k, self[k]) for k in self.keys()]

    def as_dict(self) -> dict:
        """Plain JSON-able values."""
        return {k: ([str(p) for p in v] if k == PROJECTS else (list(v) if isinstance(v, list) else v))
                for k, v in self.items()}

    def __repr__(self) -> str:
        return f"Config({self.as_dict()!r})"


def load(root, cli: dict | None = None, env: dict | None = None, home: Home | None = None) -> Config:
    """The effective configuration for the project at `root`."""
    env = os.environ if env is None else env
    home = Home.from_env(env) if home is None else home
    values = {name: (list(k.default) if k.kind in ("list", "urls") else k.default) for name, k in KEYS.items()}
    sources = dict.fromkeys(KEYS, "default")
    sources[PROJECTS] = "default"
    projects: list[Path] = []
    files = []

    user_path = Path(home.user_config_path)
    project_path = Path(root) / PROJECT_FILE
    for path in (user_path, project_path):
        found = _read_file(path, user_path)
        if found is None:
            continue
        files.append(path)
        for name, (value, line) in found.items():
            where = f"{path}:{line}"
            if name == PROJECTS:
                projects = [_project_path(p, path.parent) for p in value]
            else:
                values[name] = value
            sources[name] = where

    for name, key in KEYS.items():
        if key.env is None:
            continue
        text = env.get(key.env)
        if text is None or (text.strip() == "" and key.kind != "str"):
            continue
        try:
            value = key.parse_text(text)
        except ValueError as e:
            raise VriftError(f"environment variable {key.env}: {e}") from None
        try:
            values[name] = key.check(value)
        except ValueError as e:
            if key.kind == "urls":  # the spec's own complaint says more than the type
                raise VriftError(f"environment variable {key.env}: {e}") from None
            raise VriftError(f"environment variable {key.env}: expected {key.describe()}, got {text!r}") from None
        sources[name] = f"env {key.env}"

    for name, given in (cli or {}).items():
        if given is None:
            continue  # an option the user did not pass
        key = KEYS.get(name)
        if key is None:
            raise VriftError(f"{flag_name(name)}: unknown configuration key {name!r}{_suggest(name)}")
        try:
            value = key.parse_text(given) if isinstance(given, str) and key.kind != "str" else given
            if key.kind in ("list", "urls") and isinstance(value, tuple):
                value = list(value)
            values[name] = key.check(value)
        except ValueError as e:
            raise VriftError(f"{flag_name(name)}: {e}") from None
        sources[name] = flag_name(name)
    return Config(values, sources, projects, files)


def _project_path(given: str, base: Path) -> Path:
    return Path(os.path.normpath(os.path.join(base, os.path.expanduser(given))))


def _suggest(name: str) -> str:
    import difflib  # only on the error path

    nested = [key for key in KEYS if key.rpartition(".")[2] == name and key != name]
    if nested:  # a daemon or cache setting written at the top level
        section = nested[0].partition(".")[0]
        return f" (did you mean {nested[0]!r}? write it under '{section}:')"
    candidates = [*KEYS, *SECTIONS, PROJECTS]
    match = difflib.get_close_matches(name, candidates, n=1, cutoff=0.6)
    return f" (did you mean {match[0]!r}?)" if match else ""


def _read_file(path: Path, user_path: Path) -> dict | None:
    """{key: (validated value, 1-based line)} from one YAML file, or None when it does not exist."""
    try:
        with open(path, "rb") as f:
            raw = f.read()
    except FileNotFoundError:
        return None
    except IsADirectoryError:
        raise VriftError(f"{path}: is a directory, expected a YAML file") from None
    except OSError as e:
        raise VriftError(f"{path}: cannot read: {e.strerror}") from None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        line = raw[:e.start].count(b"\n") + 1
        raise VriftError(f"{path}:{line}: not valid UTF-8") from None
    if not text.strip():
        return {}

    import yaml  # only now: most projects have no configuration file at all

    loader_cls = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
    loader = loader_cls(text)
    try:
        try:
            node = loader.get_single_node()
        except yaml.YAMLError as e:
            mark = getattr(e, "problem_mark", None) or getattr(e, "context_mark", None)
            problem = getattr(e, "problem", None) or str(e).splitlines()[0]
            context = getattr(e, "context", None)
            if context and getattr(e, "context_mark", None) is not None and "end of stream" in problem:
                mark = e.context_mark  # the end of the file says less than where the construct began
            if context:
                problem = f"{context}: {problem}"
            if "another document" in problem:
                problem = "expected a single document, found another"
            raise VriftError(f"{path}:{_line(mark)}: invalid YAML: {problem}") from None
        if node is None or (isinstance(node, yaml.ScalarNode) and node.tag == "tag:yaml.org,2002:null"):
            return {}  # a lone "---" or "~" is an empty document too
        return _Reader(path, loader, yaml, user_path).mapping(node, prefix="")
    finally:
        loader.dispose()


def _line(mark) -> int:
    return mark.line + 1 if mark is not None else 1


class _Reader:
    """Walks the composed YAML nodes so that every error can name its line."""

    def __init__(self, path: Path, loader, yaml, user_path: Path):
        self.path, self.loader, self.yaml, self.user_path = path, loader, yaml, user_path
        self.out: dict = {}

    def fail(self, node, message: str):
        raise VriftError(f"{self.path}:{_line(node.start_mark)}: {message}")

    def value(self, node):
        try:
            return self.loader.construct_object(node, deep=True)
        except self.yaml.YAMLError as e:
            self.fail(node, f"invalid value: {getattr(e, 'problem', None) or e}")

    def mapping(self, node, prefix: str) -> dict:
        if not isinstance(node, self.yaml.MappingNode):
            what = "a list" if isinstance(node, self.yaml.SequenceNode) else _show(self.value(node))
            where = f"{prefix.rstrip('.')}: " if prefix else ""
            self.fail(node, f"{where}expected a mapping of keys to values, got {what}")
        seen: set = set()
        for key_node, value_node in node.value:
            name = self.value(key_node)
            if not isinstance(name, str):
                self.fail(key_node, f"keys must be strings, got {_show(name)}")
            full = prefix + name
            if full in seen:
                self.fail(key_node, f"duplicate key {full!r}")
            seen.add(full)
            self.entry(full, key_node, value_node)
        return self.out

    def entry(self, full: str, key_node, value_node) -> None:
        if full == PROJECTS:
            if self.user_path != self.path:
                self.fail(key_node, f"'projects' is only allowed in the user configuration ({self.user_path})")
            projects = self.value(value_node)
            projects = [] if projects is None else projects
            if not isinstance(projects, list) or not all(isinstance(p, str) and p.strip() for p in projects):
                self.fail(value_node, f"projects: expected a list of directory paths, got {_show(projects)}")
            self.out[PROJECTS] = (projects, _line(key_node.start_mark))
            return
        if full in SECTIONS:
            if isinstance(value_node, self.yaml.ScalarNode) and self.value(value_node) is None:
                return  # "daemon:" with every entry commented out
            self.mapping(value_node, prefix=full + ".")
            return
        key = KEYS.get(full)
        if key is None or "." in key_node.value:  # dotted names are written nested, never flat
            self.fail(key_node, self.unknown(full, key_node))
        value = self.value(value_node)
        if value is None and key.kind in ("list", "urls"):
            value = []  # "ignore:" with every item commented out
        try:
            self.out[full] = (key.check(value), _line(key_node.start_mark))
        except ValueError as e:
            self.fail(value_node if value_node.start_mark.line != key_node.start_mark.line else key_node,
                      f"{full}: {e}")

    def unknown(self, full: str, key_node) -> str:
        written = key_node.value
        if "." in written and written in KEYS:
            section, rest = written.split(".", 1)
            return f"unknown key {written!r} (write it nested: '{section}:' then '  {rest}:' on the next line)"
        return f"unknown key {full!r}{_suggest(full)}"
