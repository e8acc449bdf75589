"""Two trees of one small make project, built side by side: `ref` with plain make, `proj` with
`vrift wrap make`.  A test changes both the same way a person would (edit, rm, chmod, touch)
and checks after every build that the wrapped tree holds byte-identical outputs, and how many
actions were hits and misses (a miss is a command that really ran)."""
from __future__ import annotations

import filecmp
import os
import shutil
from pathlib import Path

from support.build import let_clock_tick, plain, tool_env, vrift
from test_cache_wrap import cache_counts

NOT_COMPARED = {".vrift", ".vrift.yaml"}


def tree_files(root: Path) -> dict[str, Path]:
    """Every file and symlink under root (its state directory left out), by relative path."""
    found = {}
    for dirpath, dirs, files in os.walk(root):
        dirs[:] = [d for d in dirs if d not in NOT_COMPARED]
        for name in files + [d for d in dirs if os.path.islink(os.path.join(dirpath, d))]:
            if name in NOT_COMPARED:
                continue
            p = Path(dirpath) / name
            found[str(p.relative_to(root))] = p
    return found


def tree_dirs(root: Path) -> set[str]:
    out = set()
    for dirpath, dirs, _ in os.walk(root):
        dirs[:] = [d for d in dirs if d not in NOT_COMPARED]
        out |= {str((Path(dirpath) / d).relative_to(root)) for d in dirs}
    return out


def assert_same_trees(a: Path, b: Path) -> None:
    fa, fb = tree_files(a), tree_files(b)
    assert sorted(fa) == sorted(fb), f"different files: only wrapped {sorted(set(fa) - set(fb))}, " \
                                     f"only plain {sorted(set(fb) - set(fa))}"
    for rel in fa:
        if fa[rel].is_symlink() or fb[rel].is_symlink():
            assert os.readlink(fa[rel]) == os.readlink(fb[rel]), rel
            continue
        assert filecmp.cmp(fa[rel], fb[rel], shallow=False), f"{rel} differs from the plain build"
        assert os.stat(fa[rel]).st_mode == os.stat(fb[rel]).st_mode, f"mode of {rel} differs"
    assert tree_dirs(a) == tree_dirs(b)


class Twin:
    """`files` written into both trees; `build()` runs plain make in ref, wrapped make in proj."""

    def __init__(self, base: Path, files: dict[str, str | bytes], make_args=(), env: dict | None = None):
        self.ref, self.proj = base / "plain", base / "wrapped"
        self.make_args = list(make_args)
        self.env = env
        for root in (self.ref, self.proj):
            root.mkdir(parents=True)
            (root / ".vrift.yaml").write_text("")
        for rel, data in files.items():
            self.write(rel, data, tick=False)

    def both(self, fn) -> None:
        """fn(root) for each tree (a change made as a person would)."""
        let_clock_tick()
        for root in (self.ref, self.proj):
            fn(root)

    def write(self, rel: str, data: str | bytes, tick: bool = True, mode: int | None = None) -> None:
        if tick:
            let_clock_tick()
        for root in (self.ref, self.proj):
            p = root / rel
            p.parent.mkdir(parents=True, exist_ok=True)
            p.write_bytes(data.encode() if isinstance(data, str) else data)
            if mode is not None:
                p.chmod(mode)

    def remove(self, rel: str) -> None:
        def rm(root):
            p = root / rel
            if p.is_dir() and not p.is_symlink():
                shutil.rmtree(p)
            else:
                p.unlink()
        self.both(rm)

    def build(self, *targets: str, explain: bool = True) -> tuple[tuple[int, int, int], str]:
        """Both builds; returns (hits, misses, uncacheable) of the wrapped one and its stderr."""
        env = tool_env(self.env)
        plain("make", "-s", *self.make_args, *targets, cwd=self.ref, env=tool_env(self.env, with_vrift_on_path=False))
        args = ["wrap", *(["--explain"] if explain else []), "make", "-s", *self.make_args, *targets]
        done = vrift(*args, cwd=self.proj, env=env, check=True)
        assert_same_trees(self.proj, self.ref)
        return cache_counts(done.stderr), done.stderr
