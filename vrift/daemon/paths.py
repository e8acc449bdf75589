"""Where the daemons keep their sockets, pid files, locks and logs (all under `run/`)."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from ..errors import VriftError
from ..home import Home

SUN_PATH_MAX = 107  # sizeof(sockaddr_un.sun_path) - 1 for the terminating NUL


@dataclass(frozen=True)
class RunFiles:
    """The files of one daemon process: <run>/<name>.{sock,pid,lock,log}."""

    run_dir: Path
    name: str

    @property
    def socket(self) -> Path:
        return self.run_dir / f"{self.name}.sock"

    @property
    def pid_file(self) -> Path:
        return self.run_dir / f"{self.name}.pid"

    @property
    def lock_file(self) -> Path:
        return self.run_dir / f"{self.name}.lock"

    @property
    def log_file(self) -> Path:
        return self.run_dir / f"{self.name}.log"

    @property
    def idle_file(self) -> Path:
        """Written by a project daemon that exits idle: when, so its VDir can be cleaned up later."""
        return self.run_dir / f"{self.name}.idle"

    def check_socket_length(self) -> None:
        n = len(str(self.socket).encode())
        if n > SUN_PATH_MAX:
            raise VriftError(f"socket path {self.socket} is {n} bytes, over the {SUN_PATH_MAX}-byte limit of "
                             f"Unix sockets: set VRIFT_HOME to a shorter directory")


def coordinator_files(home: Home) -> RunFiles:
    return RunFiles(home.run_dir, "coordinator")


def project_files(home: Home, project_id: str) -> RunFiles:
    return RunFiles(home.run_dir, f"p-{project_id[:16]}")
