"""The projects one user has: `VRIFT_HOME/registry`, a small JSON file."""
from __future__ import annotations

import fcntl
import json
import os
import time

from .errors import VriftError
from .home import Home
from .identity import Project

TOUCH_EVERY_S = 60.0  # Registry.touch rewrites a project's last_used at most this often


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
