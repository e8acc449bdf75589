"""stdin from a regular file in real builds (docs/cache.md, "stdin"): the file behind fd 0 is an
input by path and digest, read from its start; a replay leaves the shared offset where the
recorded run did, so the next reader sees what it would in a plain build."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from support.build import let_clock_tick, require_tools, tool_env, vrift
from support.daemon import daemons  # noqa: F401
from test_cache_wrap import cache_counts, needs_c_side

pytestmark = needs_c_side

MAKEFILE = """\
all: first.txt rest.txt up.txt
first.txt:
\tread line; echo "$$line" > first.txt
rest.txt: first.txt
\tcat > rest.txt
up.txt: in.txt
\ttr a-z A-Z < in.txt > up.txt
"""
OUTPUTS = ("first.txt", "rest.txt", "up.txt")


def project(root: Path) -> Path:
    root.mkdir()
    (root / "Makefile").write_text(MAKEFILE)
    (root / "in.txt").write_text("lower\n")
    (root / ".vrift.yaml").write_text("")
    return root


def build(root: Path, stdin: Path, wrapped: bool) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "vrift", "wrap", "--explain", "make"] if wrapped else ["make"]
    with open(stdin, "rb") as f:
        done = subprocess.run(cmd, cwd=root, stdin=f, capture_output=True, text=True, timeout=120,
                              env=tool_env(with_vrift_on_path=wrapped))
    assert done.returncode == 0, done.stdout + done.stderr
    return done


def outputs(root: Path) -> dict[str, str]:
    return {name: (root / name).read_text() for name in OUTPUTS}


def clean(root: Path) -> None:
    for name in OUTPUTS:
        (root / name).unlink(missing_ok=True)


@pytest.fixture
def trees(tmp_path, daemons):
    require_tools("make", "cat", "tr")
    feed = tmp_path / "feed.txt"
    feed.write_text("one\ntwo\nthree\n")
    return project(tmp_path / "plain"), project(tmp_path / "p"), feed


def test_stdin_file_is_an_input_and_its_offset_is_replayed(trees, tmp_path):
    ref, proj, feed = trees
    build(ref, feed, wrapped=False)
    assert outputs(ref) == {"first.txt": "one\n", "rest.txt": "two\nthree\n", "up.txt": "LOWER\n"}
    cold = build(proj, feed, wrapped=True)
    assert outputs(proj) == outputs(ref)
    # `cat` starts where `read` left the shared offset: what it reads depends on that reader
    assert "read from stdin (a file, not from its start)" in cold.stderr, cold.stderr
    assert cache_counts(cold.stderr) == (0, 3, 1), cold.stderr

    clean(proj)
    warm = build(proj, feed, wrapped=True)
    # `read` is replayed and leaves the offset after "one\n": `cat` (run) reads the rest
    assert cache_counts(warm.stderr) == (2, 1, 1), warm.stderr
    assert outputs(proj) == outputs(ref)

    # the same file with other content, another file: `read` runs again
    let_clock_tick()
    feed.write_text("uno\ndos\n")
    clean(ref)
    build(ref, feed, wrapped=False)
    clean(proj)
    changed = build(proj, feed, wrapped=True)
    assert outputs(proj) == outputs(ref) and outputs(ref)["first.txt"] == "uno\n"
    assert "feed.txt changed" in changed.stderr, changed.stderr
    other = tmp_path / "other.txt"
    other.write_text("uno\ndos\n")
    clean(proj)
    moved = build(proj, other, wrapped=True)
    assert outputs(proj) == outputs(ref)
    assert f"stdin is {other} (it was {feed})" in moved.stderr, moved.stderr


def test_redirect_inside_a_recipe_and_dev_null(trees):
    ref, proj, _ = trees
    null = Path("/dev/null")
    build(proj, null, wrapped=True)
    assert outputs(proj)["up.txt"] == "LOWER\n" and outputs(proj)["first.txt"] == "\n"
    let_clock_tick()
    (proj / "in.txt").write_text("edited\n")
    again = build(proj, null, wrapped=True)
    assert "cache miss: /bin/sh -c tr a-z A-Z < in.txt > up.txt: in.txt changed" in again.stderr, again.stderr
    assert outputs(proj)["up.txt"] == "EDITED\n"
    # stdin never read by the other steps: /dev/null is no input, they hit
    clean(proj)
    warm = build(proj, null, wrapped=True)
    assert cache_counts(warm.stderr) == (3, 0, 0), warm.stderr
