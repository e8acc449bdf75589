"""The soundness suite's harness: one scenario played in two identical trees, one built by the
plain tool, one under `vrift wrap` with the cache on, and after every build the two compared:
exit status, what the tool printed (make echoes every recipe it runs, ninja every edge: the same
commands must be re-run), and every file of the tree (type, bytes, mode, link count, symlink
target).

The two roots have the same length (`<tmp>/p/proj`, `<tmp>/w/proj`): a path that a tool writes
into an output (CMake passes absolute source paths to the compiler) is replaced by a placeholder
of the same length before comparing, so binaries still compare byte for byte. The plain tree is
never built wrapped, so no cache entry can carry its path into the wrapped one."""
from __future__ import annotations

import os
import shutil
import stat
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

from support.build import let_clock_tick, require_tools, tool_env
from support.daemon import daemons  # noqa: F401
from test_cache_wrap import cache_counts, needs_c_side  # noqa: F401

# not part of a build's result: vrift's own state, git's, the tools' logs, CMake's configure cache
NOT_COMPARED = {".vrift", ".git", ".ninja_log", ".ninja_deps", "CMakeFiles", "CMakeCache.txt",
                "cmake_install.cmake"}


class Link(str):
    """A symlink to create in a tree: `files={"inc": Link("lib/inc")}`."""


@dataclass
class Built:
    plain: subprocess.CompletedProcess
    wrapped: subprocess.CompletedProcess

    @property
    def counts(self) -> tuple[int, int, int]:
        """(hits, misses, uncacheable) of the wrapped build's summary."""
        streams = self.wrapped.stderr if self.wrapped.stderr is not None else self.wrapped.stdout  # 2>&1
        return cache_counts(streams)


def write_tree(root: Path, files: dict, executable=()) -> None:
    for rel, content in files.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        if isinstance(content, Link):
            path.symlink_to(str(content))
        elif isinstance(content, bytes):
            path.write_bytes(content)
        else:
            path.write_text(content)
        if rel in executable:
            path.chmod(0o755)


def snapshot(root: Path, only=None) -> dict[str, tuple]:
    """Every entry of the tree below `root` (or only the listed relative paths), its root path
    in file contents replaced by a placeholder of the same length."""
    mark = b"@" * len(os.fsencode(root))

    def entry(path: Path) -> tuple:
        st = path.lstat()
        if stat.S_ISLNK(st.st_mode):
            return ("symlink", os.readlink(path))
        if stat.S_ISDIR(st.st_mode):
            return ("dir", oct(stat.S_IMODE(st.st_mode)))
        return ("file", oct(stat.S_IMODE(st.st_mode)), st.st_nlink,
                path.read_bytes().replace(os.fsencode(root), mark))

    if only is not None:
        return {rel: entry(root / rel) if os.path.lexists(root / rel) else ("absent",) for rel in only}
    found = {}
    for dirpath, dirs, files in os.walk(root):
        dirs[:] = [d for d in dirs if d not in NOT_COMPARED]
        for name in dirs + files:
            if name not in NOT_COMPARED:
                path = Path(dirpath) / name
                found[str(path.relative_to(root))] = entry(path)
    return found


def differences(a: dict, b: dict) -> list[str]:
    out = []
    for rel in sorted(set(a) | set(b)):
        if a.get(rel) != b.get(rel):
            show = lambda e: "absent" if e is None else (e[:3] + (e[3][:120],) if e[0] == "file" else e)  # noqa: E731
            out.append(f"{rel}: plain {show(a.get(rel))} / wrapped {show(b.get(rel))}")
    return out


def normalised(text: str, root: Path, ordered: bool) -> list[str]:
    lines = [line.replace(str(root), "@ROOT@") for line in text.splitlines() if not line.startswith("vrift: ")]
    return lines if ordered else sorted(lines)


class Twin:
    """A scenario played in a plain tree and a wrapped tree. Changes go to both (`sh`, `edit`,
    `write`); `build` builds both and compares them."""

    def __init__(self, base: Path, files: dict, executable=(), git: bool = False):
        self.plain = base / "p" / "proj"
        self.wrapped = base / "w" / "proj"
        for root in self.roots:
            write_tree(root, {".vrift.yaml": "", **files}, executable)
            if git:
                self.git_init(root)

    @property
    def roots(self) -> tuple[Path, Path]:
        return (self.plain, self.wrapped)

    @staticmethod
    def git_init(root: Path) -> None:
        env = git_env()
        for cmd in (["git", "init", "-q", "-b", "main"], ["git", "add", "-A"], ["git", "commit", "-q", "-m", "one"]):
            subprocess.run(cmd, cwd=root, env=env, check=True, capture_output=True)

    def sh(self, script: str, env: dict | None = None) -> None:
        """Do what a person would in each tree (rm, chmod, git checkout…), after a clock tick
        so that make and ninja see the change as newer than what the last build wrote."""
        let_clock_tick()
        for root in self.roots:
            full = {**git_env(), **(env or {})}
            done = subprocess.run(["sh", "-ec", script], cwd=root, env=full, capture_output=True, text=True)
            assert done.returncode == 0, f"{script!r} in {root}: {done.stderr}"

    def write(self, rel: str, content) -> None:
        let_clock_tick()
        write_tree(self.plain, {rel: content})
        write_tree(self.wrapped, {rel: content})

    def edit(self, rel: str, old: str, new: str) -> None:
        let_clock_tick()
        for root in self.roots:
            text = (root / rel).read_text()
            assert old in text, f"{old!r} not in {root / rel}"
            (root / rel).write_text(text.replace(old, new))

    def run(self, root: Path, cmd, *, wrapped: bool, stdin=None, env=None, umask=None, stderr_to_stdout=False,
            wrap_args=(), piped: str | None = None):
        """`stdin`: a file of the tree on fd 0; `piped`: this text through a pipe on fd 0."""
        full = tool_env()  # the same PATH for both: the same make, ninja, cc
        for name, value in (env or {}).items():  # None: unset
            if value is None:
                full.pop(name, None)
            else:
                full[name] = value
        argv = [sys.executable, "-m", "vrift", "wrap", "--explain", *wrap_args, *cmd] if wrapped else list(cmd)
        stdin_file = open(root / stdin, "rb") if stdin else None if piped is not None else subprocess.DEVNULL
        try:
            return subprocess.run(argv, cwd=root, env=full, stdin=stdin_file, input=piped, stdout=subprocess.PIPE,
                                  stderr=subprocess.STDOUT if stderr_to_stdout else subprocess.PIPE,
                                  text=True, timeout=120,
                                  preexec_fn=(lambda: os.umask(umask)) if umask is not None else None)
        finally:
            if stdin:
                stdin_file.close()

    def build(self, *cmd, status: int = 0, ordered: bool = True, only=None, compare_stderr: bool = True,
              **kw) -> Built:
        """Build both trees with `cmd` (the wrapped one under `vrift wrap --explain`) and assert
        the same exit status (`status`), the same stdout (`ordered=False`: the same lines in any
        order, for -j), the same stderr apart from vrift's own lines, and the same files (all of
        the tree, or `only` those)."""
        plain = self.run(self.plain, cmd, wrapped=False, **kw)
        wrapped = self.run(self.wrapped, cmd, wrapped=True, **kw)
        shown = f"plain:\n{plain.stdout}{plain.stderr or ''}\nwrapped:\n{wrapped.stdout}{wrapped.stderr or ''}"
        assert plain.returncode == status, shown
        assert wrapped.returncode == status, shown
        assert normalised(wrapped.stdout, self.wrapped, ordered) == normalised(plain.stdout, self.plain, ordered), \
            f"the tool printed something else (other commands re-run?)\n{shown}"
        if compare_stderr and not kw.get("stderr_to_stdout"):
            assert normalised(wrapped.stderr or "", self.wrapped, ordered) == \
                normalised(plain.stderr or "", self.plain, ordered), f"other stderr\n{shown}"
        diff = differences(snapshot(self.plain, only), snapshot(self.wrapped, only))
        assert not diff, "trees differ after the build:\n" + "\n".join(diff[:20]) + f"\n{shown}"
        return Built(plain, wrapped)


def git_env() -> dict:
    env = dict(os.environ)
    env.update(GIT_AUTHOR_NAME="t", GIT_AUTHOR_EMAIL="t@example.com", GIT_COMMITTER_NAME="t",
               GIT_COMMITTER_EMAIL="t@example.com", GIT_CONFIG_NOSYSTEM="1", HOME=os.environ.get("HOME", "/tmp"))
    return env


@pytest.fixture
def twin(tmp_path, daemons):
    """A factory of Twin scenarios in this test's VRIFT_HOME (every daemon stopped afterwards)."""
    require_tools("make", "cc")
    return lambda files, **kw: Twin(tmp_path, files, **kw)


def xfail(reason: str):
    """A case the current code gets wrong: strict, so that the fix shows up as XPASS."""
    return pytest.mark.xfail(strict=True, reason=reason)


def has(tool: str) -> bool:
    return shutil.which(tool) is not None
