"""Real servers for the remote-cache tests: Redis (single, full, with a password), a 3-node Redis
Cluster, nginx with WebDAV, and a port that accepts connections and never answers.  Each runs on
free loopback ports in its own temporary directory and is stopped by its fixture."""
from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path

import pytest

REDIS = shutil.which("redis-server") or "/usr/bin/redis-server"
REDIS_CLI = shutil.which("redis-cli") or "/usr/bin/redis-cli"
NGINX = shutil.which("nginx") or "/usr/sbin/nginx"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def need(path: str, what: str) -> None:
    if not os.access(path, os.X_OK):
        pytest.skip(f"{what} is not installed ({path}); .ci/run installs it")


def _wait_port(port: int, proc: subprocess.Popen, what: str, timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{what} exited with {proc.returncode}: {_tail(proc)}")
        try:
            with socket.create_connection(("127.0.0.1", port), 0.2):
                return
        except OSError:
            time.sleep(0.02)
    raise RuntimeError(f"{what} did not listen on {port}")


def _tail(proc) -> str:
    return getattr(proc, "log_path", None) and Path(proc.log_path).read_text()[-2000:] or ""


def _stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)


class RedisServer:
    def __init__(self, base: Path, *args: str, password: str | None = None, cluster: bool = False,
                 port: int | None = None):
        self.port = port or free_port()
        self.dir = base / f"redis-{self.port}"
        self.dir.mkdir()
        self.password = password
        cmd = [REDIS, "--port", str(self.port), "--bind", "127.0.0.1", "--dir", str(self.dir), "--save", "",
               "--appendonly", "no", "--daemonize", "no", "--logfile", str(self.dir / "log"),
               "--unixsocket", str(self.dir / "sock"), "--unixsocketperm", "700"]
        if password:
            cmd += ["--requirepass", password]
        if cluster:
            cmd += ["--cluster-enabled", "yes", "--cluster-config-file", str(self.dir / "nodes.conf"),
                    "--cluster-node-timeout", "2000", "--cluster-port", str(free_port())]
        self.proc = subprocess.Popen(cmd + list(args), stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
        self.proc.log_path = self.dir / "log"
        _wait_port(self.port, self.proc, "redis-server")

    @property
    def url(self) -> str:
        auth = f":{self.password}@" if self.password else ""
        return f"redis://{auth}127.0.0.1:{self.port}/0"

    @property
    def socket_path(self) -> Path:
        return self.dir / "sock"

    def cli(self, *args: str) -> str:
        auth = ["-a", self.password, "--no-auth-warning"] if self.password else []
        return subprocess.run([REDIS_CLI, "-p", str(self.port), *auth, *args], capture_output=True, text=True,
                              timeout=20, check=True).stdout

    def client(self):
        import redis

        return redis.Redis(host="127.0.0.1", port=self.port, password=self.password)

    def keys(self, pattern: str = "vrift:*") -> list[str]:
        return [k for k in self.cli("--scan", "--pattern", pattern).split() if k]

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(5)

    def stop(self) -> None:
        _stop(self.proc)


@pytest.fixture
def server_dir():
    d = Path(tempfile.mkdtemp(prefix="vrs", dir="/tmp"))  # short: Unix socket paths
    yield d
    shutil.rmtree(d, ignore_errors=True)


@pytest.fixture
def redis_factory(server_dir):
    need(REDIS, "redis-server")
    started: list[RedisServer] = []

    def start(*args, **kw) -> RedisServer:
        s = RedisServer(server_dir, *args, **kw)
        started.append(s)
        return s

    yield start
    for s in started:
        s.stop()


@pytest.fixture
def redis_server(redis_factory) -> RedisServer:
    return redis_factory()


@pytest.fixture
def redis_cluster(redis_factory):
    """Three masters on loopback, slots spread by redis-cli --cluster create."""
    need(REDIS_CLI, "redis-cli")
    nodes = [redis_factory(cluster=True) for _ in range(3)]
    subprocess.run([REDIS_CLI, "--cluster", "create", *[f"127.0.0.1:{n.port}" for n in nodes], "--cluster-yes"],
                   capture_output=True, text=True, timeout=60, check=True)
    deadline = time.monotonic() + 30
    while "cluster_state:ok" not in nodes[0].cli("cluster", "info"):
        assert time.monotonic() < deadline, "the cluster did not become ready"
        time.sleep(0.1)
    return nodes


class Nginx:
    def __init__(self, base: Path, auth: str | None = None, bearer: str | None = None):
        self.port = free_port()
        self.dir = base / f"nginx-{self.port}"
        self.data = self.dir / "data"
        self.data.mkdir(parents=True)
        check = ""
        if auth:
            user, _, password = auth.partition(":")
            (self.dir / "htpasswd").write_text(f"{user}:{{PLAIN}}{password}\n")
            check = f'auth_basic "cache"; auth_basic_user_file {self.dir}/htpasswd;'
        if bearer:
            check = f'if ($http_authorization != "Bearer {bearer}") {{ return 401; }}'
        temp = "".join(f"{t}_temp_path {self.dir}/{t};" for t in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi"))
        # as root, nginx's workers would run as nobody, who cannot enter the private temp dir
        user = "user root;" if os.geteuid() == 0 else ""
        (self.dir / "nginx.conf").write_text(f"""
{user} worker_processes 1; daemon off; pid {self.dir}/nginx.pid; error_log {self.dir}/error.log;
events {{ worker_connections 64; }}
http {{
  access_log off; {temp}
  server {{
    listen 127.0.0.1:{self.port};
    location / {{
      root {self.data}; {check}
      dav_methods PUT; create_full_put_path on; dav_access user:rw;
      client_max_body_size 0;
    }}
  }}
}}
""")
        self.proc = subprocess.Popen([NGINX, "-p", str(self.dir), "-c", str(self.dir / "nginx.conf"),
                                      "-e", str(self.dir / "error.log")],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
        self.proc.log_path = self.dir / "error.log"
        _wait_port(self.port, self.proc, "nginx")

    def url(self, prefix: str = "/cache", auth: str | None = None) -> str:
        return f"http://{auth + '@' if auth else ''}127.0.0.1:{self.port}{prefix}"

    def files(self, prefix: str = "cache") -> list[Path]:
        return sorted(p for p in (self.data / prefix).rglob("*") if p.is_file())

    def stop(self) -> None:
        _stop(self.proc)


@pytest.fixture
def nginx_factory(server_dir):
    need(NGINX, "nginx")
    started: list[Nginx] = []

    def start(**kw) -> Nginx:
        n = Nginx(server_dir, **kw)
        started.append(n)
        return n

    yield start
    for n in started:
        n.stop()


@pytest.fixture
def nginx(nginx_factory) -> Nginx:
    return nginx_factory()


@pytest.fixture
def silent_port():
    """A port whose listen backlog accepts connections that nobody ever reads or answers."""
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    s.listen(64)
    yield s.getsockname()[1]
    s.close()
