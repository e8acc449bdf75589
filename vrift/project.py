"""Project identity and the on-disk places vrift uses (SPEC §1, §4.1).

A project is a directory tree with a root; its id is the first 16 bytes of BLAKE3 over the
root's realpath.  `Home` knows where everything of one user lives.
"""
from __future__ import annotations

import fcntl
import json
import os
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import blake3

ROOT_MARKERS = (".vrift.yaml", ".git", "build.ninja", "Makefile")
STATE_DIR = ".vrift"  # inside a project: staging/ and nothing the user edits
TOUCH_EVERY_S = 60.0  # Registry.touch rewrites a project's last_used at most this often


class VriftError(Exception):
    """An error the user can act on: the CLI prints it as one line and exits non-zero."""


def project_id(root: os.PathLike | str) -> str:
    """32 hex chars: first 16 bytes of BLAKE3 of the root's realpath."""
    real = os.path.realpath(os.fsencode(root))
    return blake3.blake3(real).hexdigest()[:32]


def find_root(start: os.PathLike | str | None = None, explicit: os.PathLike | str | None = None,
              env: dict | None = None) -> Path:
    """Root discovery: explicit > VRIFT_PROJECT_ROOT > nearest .vrift.yaml > nearest
    .git/build.ninja/Makefile > the start directory."""
    env = os.environ if env is None else env
    for given, what in ((explicit, "--root"), (env.get("VRIFT_PROJECT_ROOT"), "VRIFT_PROJECT_ROOT")):
        if given:
            p = Path(os.path.realpath(given))
            if not p.is_dir():
                raise VriftError(f"{what}: not a directory: {given}")
            return p
    here = Path(os.path.realpath(start if start is not None else os.getcwd()))
    if not here.is_dir():
        here = here.parent
    chain = [here, *here.parents]
    for marker_set in ((".vrift.yaml",), ROOT_MARKERS[1:]):
        for d in chain:
            if any((d / m).exists() for m in marker_set):
                return d
    return here


def default_shm_dir(env: dict | None = None) -> Path:
    env = os.environ if env is None else env
    given = env.get("VRIFT_SHM_DIR")
    if given:
        return Path(given)
    if os.path.isdir("/dev/shm") and os.access("/dev/shm", os.W_OK):
        return Path("/dev/shm")
    xdg = env.get("XDG_RUNTIME_DIR")
    if xdg and os.path.isdir(xdg):
        return Path(xdg)
    return Path(tempfile.gettempdir()) / f"vrift-shm-{os.getuid()}"


@dataclass(frozen=True)
class Home:
    """Everything of one user: VRIFT_HOME (default ~/.vrift) and the shared-memory dir."""

    root: Path
    shm_dir: Path

    @classmethod
    def from_env(cls, env: dict | None = None) -> "Home":
        env = os.environ if env is None else env
        root = Path(env.get("VRIFT_HOME") or Path.home() / ".vrift")
        return cls(root=root, shm_dir=default_shm_dir(env))

    @property
    def cas_dir(self) -> Path:
        return self.root / "cas"

    @property
    def run_dir(self) -> Path:
        return self.root / "run"

    @property
    def registry_path(self) -> Path:
        return self.root / "registry"

    @property
    def user_config_path(self) -> Path:
        return self.root / "config.yaml"

    def db_dir(self, pid: str) -> Path:
        return self.root / "db" / pid

    def wal_path(self, pid: str) -> Path:
        return self.root / "wal" / f"{pid}.wal"

    @property
    def user_shm_dir(self) -> Path:
        """The user's private directory in the shared-memory directory (names: vrift_vdir.h)."""
        from .vdir import layout

        return self.shm_dir / f"{layout.SHM_USER_DIR_PREFIX}{os.geteuid()}"

    def vdir_path(self, pid: str) -> Path:
        from .vdir import layout

        return self.user_shm_dir / f"{layout.VDIR_NAME_PREFIX}{pid[:layout.VDIR_ID_CHARS]}"

    def ensure(self) -> "Home":
        """Create the directories, private to the user (0700)."""
        from .vdir.shm_files import ensure_private_dir

        for d in (self.root, self.cas_dir, self.run_dir, self.root / "db", self.root / "wal"):
            try:
                d.mkdir(parents=True, exist_ok=True, mode=0o700)
            except FileExistsError:
                raise VriftError(f"VRIFT_HOME: {d} exists and is not a directory") from None
            except OSError as exc:
                raise VriftError(f"VRIFT_HOME: cannot create {d} ({exc.strerror})") from None
        for d in (self.root, self.run_dir):
            os.chmod(d, 0o700)
        ensure_private_dir(self.user_shm_dir)
        return self


@dataclass(frozen=True)
class Project:
    root: Path
    id: str

    @classmethod
    def at(cls, root: os.PathLike | str) -> "Project":
        real = Path(os.path.realpath(root))
        return cls(root=real, id=project_id(real))

    @property
    def state_dir(self) -> Path:
        return self.root / STATE_DIR

    @property
    def staging_dir(self) -> Path:
        return self.state_dir / "staging"

    def relpath(self, path: os.PathLike | str) -> bytes:
        """Path relative to the root as bytes ("" for the root); raises when outside."""
        absolute = os.path.abspath(os.fsencode(path))
        root = os.fsencode(self.root)
        if absolute == root:
            return b""
        if not absolute.startswith(root + b"/"):
            raise VriftError(f"{os.fsdecode(absolute)}: outside the project root {self.root}")
        return absolute[len(root) + 1:]


class Registry:
    """Projects known to this user: a small JSON file, updated under a lock, replaced atomically."""

    def __init__(self, home: Home):
        self.path = home.registry_path
        self.lock_path = home.run_dir / "registry.lock"

    def load(self) -> dict[str, dict]:
        try:
            with open(self.path, "rb") as f:
                data = json.load(f)
        except FileNotFoundError:
            return {}
        except (OSError, ValueError) as e:
            raise VriftError(f"{self.path}: unreadable project registry ({e})") from None
        return data.get("projects", {}) if isinstance(data, dict) else {}

    def touch(self, project: Project) -> None:
        """Record (or refresh) a project; last_used drives idle eviction.  Every command calls
        this, so an entry used within the last minute is left as it is (no rewrite, no fsync)."""
        self.path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        self.lock_path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        with open(self.lock_path, "a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            projects = self.load()
            now = time.time()
            entry = projects.get(project.id)
            if entry and entry.get("root") == str(project.root) and now - entry.get("last_used", 0) < TOUCH_EVERY_S:
                return
            entry = projects.setdefault(project.id, {"root": str(project.root), "created": now})
            entry["root"] = str(project.root)
            entry["last_used"] = now
            self._save(projects)

    def forget(self, pid: str) -> None:
        with open(self.lock_path, "a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            projects = self.load()
            if projects.pop(pid, None) is not None:
                self._save(projects)

    def _save(self, projects: dict) -> None:
        """Replace the file atomically (the caller holds the lock)."""
        tmp = self.path.with_name(f".registry.{os.getpid()}.tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            json.dump({"version": 1, "projects": projects}, f, indent=1, sort_keys=True)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, self.path)
