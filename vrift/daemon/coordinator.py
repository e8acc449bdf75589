"""The coordinator (one per user, SPEC §5.1): starts project daemons on request, health-checks
them, restarts the ones that die, enforces the global limits, and finds running daemons again
after its own restart.  It is never in the data path: clients talk to project daemons directly.

    python -m vrift.daemon.coordinator
"""
from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field

from ..errors import VriftError
from ..home import Home
from ..identity import Project
from ..vdir import layout
from . import crashes, process
from .client import DaemonUnavailable, ProjectClient
from .listener import Connection, Listener, RequestError
from .paths import coordinator_files, project_files
from .protocol import Err, Frame, Msg, ShutdownFlag, Tag, reply

log = logging.getLogger("vrift.coordinator")

START_TIMEOUT_S = 60.0
PROBE_TIMEOUT_MS = 2000


@dataclass
class Slot:
    """One project daemon the coordinator keeps alive."""

    project: Project
    pid: int
    proc: subprocess.Popen | None = None  # None when adopted from a previous coordinator
    last_used: float = field(default_factory=time.time)
    restarts: int = 0
    start_lock: threading.Lock = field(default_factory=threading.Lock)

    def alive(self) -> bool:
        if self.proc is not None and self.proc.poll() is not None:
            return False
        return process.pid_alive(self.pid)


class Coordinator:
    def __init__(self, home: Home, cfg):
        self.home = home
        self.files = coordinator_files(home)
        self.health_interval = float(cfg["daemon.health_interval_s"])
        self.cleanup_after = float(cfg["daemon.cleanup_after_s"])
        self.idle_limit = float(cfg.get("daemon.coordinator_idle_s", 0) or 0)
        self.last_activity = time.monotonic()
        self.max_projects = int(cfg["daemon.max_projects"])
        self.max_shm_bytes = int(float(cfg["daemon.max_shm_mb"]) * 1024 * 1024)
        self.slots: dict[str, Slot] = {}
        self.lock = threading.RLock()
        self.stop_event = threading.Event()
        self.started = time.time()
        self.listener = Listener(self.files.socket, self.handle)

    # -- lifecycle ------------------------------------------------------------------------------
    def start(self) -> None:
        self.rediscover()
        self.listener.start()

    def serve_forever(self) -> None:
        while not self.stop_event.wait(self.health_interval):
            try:
                self.health_check()
            except Exception:
                log.exception("health check failed")
            if self.idle():
                log.info("no project daemon and no request for %.0f s: exiting", self.idle_limit)
                break
        self.listener.stop()

    def idle(self) -> bool:
        """Nothing to look after (no project daemon) and nobody asked for one for idle_limit s."""
        with self.lock:
            if self.slots:
                self.last_activity = time.monotonic()
                return False
        return self.idle_limit > 0 and time.monotonic() - self.last_activity > self.idle_limit

    def rediscover(self) -> None:
        """Adopt project daemons that outlived a previous coordinator (pid file + live socket)."""
        for pid_file in sorted(self.home.run_dir.glob("p-*.pid")):
            pid = process.read_pid(pid_file)
            sock = pid_file.with_suffix(".sock")
            if not process.pid_alive(pid):
                continue
            try:
                with ProjectClient(sock, PROBE_TIMEOUT_MS) as c:
                    info = c.hello(os.getpid())
            except VriftError:
                continue
            project = Project.at(info["root"])
            self.slots[project.id] = Slot(project, info["pid"])
            log.info("adopted project daemon %d for %s", info["pid"], project.root)

    # -- health -----------------------------------------------------------------------------------
    def health_check(self) -> None:
        with self.lock:
            slots = list(self.slots.values())
        for slot in slots:
            if not slot.start_lock.acquire(blocking=False):
                continue  # being started right now
            try:
                self._check_slot(slot)
            finally:
                slot.start_lock.release()
        self._cleanup_idle_vdirs()

    def _check_slot(self, slot: Slot) -> None:
        if slot.alive():
            return
        files = project_files(self.home, slot.project.id)
        recorded = process.read_pid(files.pid_file)
        if recorded and recorded != slot.pid and process.pid_alive(recorded):
            slot.pid, slot.proc = recorded, None  # replaced by another start: adopt it
            return
        crashed = recorded is not None or (slot.proc is not None and slot.proc.returncode not in (0, None))
        if not crashed:  # exited on its own (idle, or asked to): forget it
            with self.lock:
                if self.slots.get(slot.project.id) is slot:
                    del self.slots[slot.project.id]
            return
        crashes.record(files, slot.pid)
        try:
            os.unlink(files.pid_file)
        except FileNotFoundError:
            pass
        if crashes.looping(files):  # no restart loop: the next build that asks starts one
            n = len(crashes.recent(files))
            with self.lock:
                if self.slots.get(slot.project.id) is slot:
                    del self.slots[slot.project.id]
            log.error("project daemon for %s died %d times in %.0f s: not restarting it by itself (%s)",
                      slot.project.root, n, crashes.CRASH_WINDOW_S, process.log_tail(files.log_file))
            return
        log.warning("project daemon %d for %s died: restarting", slot.pid, slot.project.root)
        try:
            self._start_daemon(slot.project, slot)
            slot.restarts += 1
        except VriftError as e:
            log.error("restart of %s failed: %s", slot.project.root, e)

    def _cleanup_idle_vdirs(self) -> None:
        """Remove the VDir of projects whose daemon exited idle longer than cleanup_after_s ago."""
        now = time.time()
        for idle in self.home.run_dir.glob("p-*.idle"):
            try:
                since = float(idle.read_text().strip())
            except (OSError, ValueError):
                since = 0.0
            if now - since < self.cleanup_after:
                continue
            name = idle.stem  # p-<id16>
            if process.lock_held(idle.with_suffix(".lock")):
                continue  # it was started again
            vdir = self.home.user_shm_dir / f"{layout.VDIR_NAME_PREFIX}{name[2:]}"
            for path in (vdir, idle):
                try:
                    os.unlink(path)
                except FileNotFoundError:
                    pass
            log.info("removed the VDir of idle project %s", name)

    # -- starting and limits ------------------------------------------------------------------------
    def ensure(self, project: Project) -> Slot:
        with self.lock:
            slot = self.slots.get(project.id)
            if slot is None:
                slot = Slot(project, 0)
                self.slots[project.id] = slot
                fresh = True
            else:
                fresh = False
            slot.last_used = time.time()
        with slot.start_lock:
            if slot.alive():
                if process.can_connect(project_files(self.home, project.id).socket):
                    return slot
                # still alive without its socket: shutting down (idle, a config change);
                # wait for it to go and start a new one
                deadline = time.monotonic() + 30
                while slot.alive() and time.monotonic() < deadline:
                    time.sleep(0.02)
                if slot.alive():
                    raise VriftError(f"the daemon of {project.root} (pid {slot.pid}) is shutting down; try again")
            files = project_files(self.home, project.id)
            dead = process.read_pid(files.pid_file)
            if dead and not process.pid_alive(dead):  # killed or crashed, before the health check saw it
                crashes.record(files, dead)
                try:
                    os.unlink(files.pid_file)
                except FileNotFoundError:
                    pass
            try:
                if fresh:
                    self._make_room(project.id)
                self._start_daemon(project, slot)
            except VriftError:
                with self.lock:
                    if self.slots.get(project.id) is slot and not slot.alive():
                        del self.slots[project.id]
                raise
        return slot

    def _start_daemon(self, project: Project, slot: Slot) -> None:
        files = project_files(self.home, project.id)
        files.check_socket_length()
        running = process.read_pid(files.pid_file)
        if not (process.pid_alive(running) and process.can_connect(files.socket)):
            slot.proc = process.spawn("vrift.daemon.server", ["--root", str(project.root)], files.log_file)
            process.wait_ready(files.socket, slot.proc, files.log_file, START_TIMEOUT_S,
                               f"the project daemon for {project.root}", lock_file=files.lock_file)
        with ProjectClient(files.socket, PROBE_TIMEOUT_MS * 5) as c:
            slot.pid = c.hello(os.getpid())["pid"]

    def _running(self, exclude: str) -> list[Slot]:
        with self.lock:
            return [s for pid, s in self.slots.items() if pid != exclude and s.alive()]

    def _shm_bytes(self, slots: list[Slot]) -> int:
        total = 0
        for s in slots:
            try:
                total += os.stat(self.home.vdir_path(s.project.id)).st_size
            except OSError:
                pass
        return total

    def _make_room(self, new_id: str) -> None:
        """Evict idle projects, least recently used first, until the new one fits the limits."""
        while True:
            running = self._running(new_id)
            over_count = len(running) >= self.max_projects
            over_shm = self.max_shm_bytes > 0 and self._shm_bytes(running) >= self.max_shm_bytes
            if not over_count and not over_shm:
                return
            what = (f"daemon.max_projects={self.max_projects}" if over_count
                    else f"daemon.max_shm_mb={self.max_shm_bytes // (1024 * 1024)}")
            for victim in sorted(running, key=lambda s: s.last_used):
                if self._clients(victim) == 0:
                    log.info("evicting idle project %s (%s)", victim.project.root, what)
                    self.stop_project(victim)
                    break
            else:
                raise RequestError(Err.LIMIT, f"{what} reached and every running project has clients")

    def _clients(self, slot: Slot) -> int:
        try:
            with ProjectClient(project_files(self.home, slot.project.id).socket, PROBE_TIMEOUT_MS) as c:
                return int(c.stats().get("clients", 0)) - 1  # minus this probe
        except VriftError:
            return 0

    def stop_project(self, slot: Slot, wait_s: float = 30.0) -> None:
        with self.lock:
            if self.slots.get(slot.project.id) is slot:
                del self.slots[slot.project.id]
        try:
            with ProjectClient(project_files(self.home, slot.project.id).socket, PROBE_TIMEOUT_MS) as c:
                c.shutdown()
        except VriftError:
            pass
        deadline = time.monotonic() + wait_s
        while slot.alive() and time.monotonic() < deadline:
            time.sleep(0.02)

    # -- requests --------------------------------------------------------------------------------------
    def handle(self, conn: Connection, req: Frame) -> Frame:
        if req.type not in (Msg.PING, Msg.LIST, Msg.HELLO):  # looking (status, doctor) is not use
            self.last_activity = time.monotonic()
        if req.type == Msg.PING:
            return reply(req)
        if req.type == Msg.HELLO:
            return reply(req).add(Tag.PID, os.getpid()).add(Tag.SOCKET, os.fsencode(self.files.socket))
        if req.type == Msg.ENSURE_PROJECT:
            project = self._project_of(req)
            slot = self.ensure(project)
            files = project_files(self.home, project.id)
            return (reply(req).add(Tag.SOCKET, os.fsencode(files.socket)).add(Tag.PID, slot.pid)
                    .add(Tag.VDIR, os.fsencode(self.home.vdir_path(project.id))).add(Tag.PROJECT_ID, project.id)
                    .add(Tag.STAGING_DIR, os.fsencode(project.staging_dir)))
        if req.type == Msg.LIST:
            return reply(req).add_json(self.status())
        if req.type == Msg.STOP_PROJECT:
            project = self._project_of(req)
            with self.lock:
                slot = self.slots.get(project.id)
            if slot is None:
                raise RequestError(Err.NOT_FOUND, f"{project.root}: no project daemon runs")
            self.stop_project(slot)
            return reply(req)
        if req.type == Msg.SHUTDOWN:
            if (req.int(Tag.FLAGS, 0) or 0) & ShutdownFlag.ALL:
                with self.lock:
                    slots = list(self.slots.values())
                for slot in slots:
                    self.stop_project(slot)
            self.stop_event.set()
            return reply(req)
        raise RequestError(Err.BAD_REQUEST, f"the coordinator does not serve request type 0x{req.type:04x}")

    @staticmethod
    def _project_of(req: Frame) -> Project:
        root = req.get(Tag.ROOT)
        if not root or b"\0" in root or not root.startswith(b"/"):
            raise RequestError(Err.BAD_REQUEST, "ROOT must be an absolute path")
        if not os.path.isdir(root):
            raise RequestError(Err.NOT_FOUND, f"{os.fsdecode(root)}: not a directory")
        return Project.at(os.fsdecode(root))

    def status(self) -> dict:
        with self.lock:
            slots = list(self.slots.values())
        projects = []
        for slot in slots:
            row = {"root": str(slot.project.root), "pid": slot.pid, "alive": slot.alive(),
                   "restarts": slot.restarts, "last_used": slot.last_used,
                   "recent_crashes": len(crashes.recent(project_files(self.home, slot.project.id)))}
            try:
                with ProjectClient(project_files(self.home, slot.project.id).socket, PROBE_TIMEOUT_MS) as c:
                    s = c.stats()
                row.update({k: s.get(k) for k in ("generation", "entries", "durability", "socket", "vdir")})
                row["clients"] = max(0, int(s.get("clients", 1)) - 1)
                row["watcher"] = s.get("watcher")
            except VriftError as e:
                row["error"] = str(e)
            projects.append(row)
        return {"coordinator": {"pid": os.getpid(), "uptime_s": round(time.time() - self.started, 3),
                                "socket": str(self.files.socket)},
                "projects": projects}


def main(argv: list[str] | None = None) -> int:
    from .. import config as config_mod

    home = Home.from_env().ensure()
    files = coordinator_files(home)
    process.setup_logging("coordinator")
    try:
        files.check_socket_length()
    except VriftError as e:
        print(f"vrift coordinator: error: {e}", file=sys.stderr)
        return 1
    lock = process.acquire_lock(files.lock_file)
    if lock is None:
        log.info("a coordinator already runs")
        return 0
    cfg = config_mod.load(home.root, home=home)
    coordinator = Coordinator(home, cfg)
    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(sig, lambda *_: coordinator.stop_event.set())
    coordinator.start()
    process.write_private(files.pid_file, f"{os.getpid()}\n")
    log.info("serving on %s", files.socket)
    try:
        coordinator.serve_forever()
    finally:
        process.remove_if_ours(files.pid_file)
    return 0


if __name__ == "__main__":
    sys.exit(main())
