"""Helpers for the end-to-end build tests: run `vrift wrap` and plain tools as real processes,
copy trees, compare build outputs byte for byte, list what a build rebuilt."""
from __future__ import annotations

import filecmp
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
EXAMPLES = REPO / "examples"
BENCHMARKS = REPO / "benchmarks"
VENV_BIN = str(Path(sys.executable).parent)

# not build outputs: logs with timestamps, and the tools' private state
NOT_OUTPUTS = {".ninja_log", ".ninja_deps"}

sys.path.insert(0, str(BENCHMARKS))
import gen_project  # noqa: E402


def require_tools(*tools: str) -> None:
    missing = [t for t in tools if shutil.which(t) is None]
    if missing:
        pytest.skip(f"not installed: {', '.join(missing)}")


def tool_env(base: dict | None = None, with_vrift_on_path: bool = True) -> dict:
    """The environment of a build: the test's (VRIFT_HOME…), `vrift` on PATH or not at all."""
    env = dict(os.environ if base is None else base)
    parts = [p for p in env.get("PATH", "").split(os.pathsep) if p and p != VENV_BIN]
    if with_vrift_on_path:
        parts.insert(0, VENV_BIN)
    env["PATH"] = os.pathsep.join(parts)
    env.pop("LD_PRELOAD", None)
    env.pop("MAKEFLAGS", None)
    env.pop("MFLAGS", None)
    return env


def vrift(*args, cwd, env=None, timeout=120, check=False) -> subprocess.CompletedProcess:
    proc = subprocess.run([sys.executable, "-m", "vrift", *map(str, args)], cwd=cwd, env=env or tool_env(),
                          capture_output=True, text=True, timeout=timeout)
    if check and proc.returncode != 0:
        raise AssertionError(f"vrift {' '.join(map(str, args))} failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}")
    return proc


def plain(*cmd, cwd, env=None, timeout=120) -> subprocess.CompletedProcess:
    proc = subprocess.run(list(map(str, cmd)), cwd=cwd, env=env or tool_env(with_vrift_on_path=False),
                          capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, f"{' '.join(map(str, cmd))} failed:\n{proc.stdout}\n{proc.stderr}"
    return proc


SUMMARY = re.compile(r"^vrift: (?:([\d,]+)/([\d,]+) cached \(([\d.]+) s saved\), )?([\d,]+) files? written, "
                     r"([\d,]+) of ([\d,]+) stats served from the index(?: \(([\d,]+) files\))?, (\d+\.\d\d) s"
                     r"(?: \((.*)\))?$")
CACHE_NOTE = re.compile(r"cache: ([\d,]+) missed, ([\d,]+) uncacheable")


def summary(stderr: str) -> str:
    lines = [line for line in stderr.splitlines() if line.startswith("vrift: ") and SUMMARY.match(line)]
    assert len(lines) == 1, f"expected one summary line in:\n{stderr}"
    return lines[0]


def _n(text: str | None) -> int:
    return int(text.replace(",", "")) if text else 0


def parse_summary(stderr: str) -> dict:
    """The summary line's numbers: committed (files written), served and passed (stats
    answered from the index or not), wall, notes, and cache (hits, misses, uncacheable)."""
    m = SUMMARY.match(summary(stderr))
    assert m, f"summary line not in the documented format: {summary(stderr)!r}"
    notes = m[9] or ""
    note = CACHE_NOTE.search(notes)
    return {"committed": _n(m[4]), "served": _n(m[5]), "passed": _n(m[6]) - _n(m[5]), "wall": float(m[8]),
            "notes": notes, "index_files": _n(m[7]) if m[7] else None, "lookups": _n(m[2]),
            "saved_s": float(m[3]) if m[3] else 0.0,
            "cache": (_n(m[1]), _n(note[1]) if note else 0, _n(note[2]) if note else 0)}


def copy_tree(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst, symlinks=True, ignore=shutil.ignore_patterns(".vrift", "build"))
    return dst


def output_files(root: Path, subdir: str = "build") -> dict[str, Path]:
    top = root / subdir
    found = {}
    for dirpath, _dirs, files in os.walk(top):
        for name in files:
            if name not in NOT_OUTPUTS:
                p = Path(dirpath) / name
                found[str(p.relative_to(root))] = p
    return found


def assert_same_outputs(a: Path, b: Path, subdir: str = "build") -> int:
    """Same set of output files, each byte-identical; returns how many were compared."""
    fa, fb = output_files(a, subdir), output_files(b, subdir)
    assert sorted(fa) == sorted(fb), f"different outputs: only in {a}: {sorted(set(fa) - set(fb))[:10]}, " \
                                     f"only in {b}: {sorted(set(fb) - set(fa))[:10]}"
    different = [rel for rel in fa if not filecmp.cmp(fa[rel], fb[rel], shallow=False)]
    assert not different, f"outputs differ: {different[:10]}"
    assert fa, f"no outputs under {a / subdir}"
    return len(fa)


NINJA_EDGE = re.compile(r"^\[\d+/\d+\] (.*)$")


def ninja_rebuilt(stdout: str) -> list[str]:
    """The edge descriptions ninja printed ("CC build/obj/x.o"), in order."""
    return sorted(m[1] for m in map(NINJA_EDGE.match, stdout.splitlines()) if m)


def make_rebuilt(stdout: str) -> list[str]:
    """The recipe lines make echoed (relative paths: comparable across two trees)."""
    return sorted(line for line in stdout.splitlines() if line.startswith(("cc ", "rm -f ", "ar ")))


def let_clock_tick() -> None:
    """File times come from the kernel's coarse clock (one tick, ≤ 10 ms): a change made in the
    same tick as an output's write would look older than it, for plain builds too."""
    time.sleep(0.03)


def generate(root: Path, units: int, headers: int = 12) -> Path:
    gen_project.generate(root, units, headers)
    (root / ".vrift.yaml").write_text("")
    return root


def run_in_a_terminal(argv, cwd, env) -> tuple[str, int]:
    """Run argv with stdout and stderr on one pseudo-terminal: (all it showed, raw with \\r;
    its exit status)."""
    import errno
    import pty
    import select

    master, slave = pty.openpty()
    try:
        proc = subprocess.Popen(argv, cwd=cwd, env=env, stdin=subprocess.DEVNULL, stdout=slave, stderr=slave)
    finally:
        os.close(slave)
    shown = b""
    try:
        while True:
            # a process left holding the terminal (a daemon it started) must not keep us reading
            # forever: once the command has exited, what is there is all there is
            ready, _, _ = select.select([master], [], [], 0.2)
            if not ready:
                if proc.poll() is not None:
                    break
                continue
            try:
                chunk = os.read(master, 65536)
            except OSError as e:  # EIO: every writer closed the terminal
                if e.errno != errno.EIO:
                    raise
                break
            if not chunk:
                break
            shown += chunk
    finally:
        os.close(master)
    return shown.decode(errors="replace"), proc.wait(timeout=120)
