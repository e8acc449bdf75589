"""Where everything of one user lives: VRIFT_HOME (default ~/.vrift) and the shared-memory dir."""
from __future__ import annotations

import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

from . import locate
from .errors import VriftError


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
        root = Path(locate.home_root(env))
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
        return self.root / locate.USER_CONFIG_FILE

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
