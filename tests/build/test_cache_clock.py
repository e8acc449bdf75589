"""The real-time clock in real builds (docs/cache.md, "The clock"): a command that reads it runs
in every build unless SOURCE_DATE_EPOCH is set; the usual compile, archive and shell steps, which
read it without putting it in their output, stay cacheable."""
from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from support.build import plain, require_tools, tool_env, vrift
from support.daemon import daemons  # noqa: F401
from test_cache_wrap import cache_counts, needs_c_side

pytestmark = needs_c_side

MAKEFILE = """\
all: stamp a.o d.o lib.a libu.a gen.txt secs.txt py.txt pytime.txt
stamp:
\tdate +%s%N > stamp
a.o: a.c
\tcc -O1 -c a.c -o a.o
d.o: d.c
\tcc -O1 -c d.c -o d.o
lib.a: a.o
\tar crs lib.a a.o
libu.a: a.o
\tar crsU libu.a a.o
gen.txt:
\tbash -c 'for i in 1 2 3; do echo "$$i"; done > gen.txt'
secs.txt:
\tbash -c 'echo "$$EPOCHSECONDS" > secs.txt'
py.txt:
\tPYTHONHASHSEED=0 {python} -c 'open("py.txt", "w").write("x\\n")'
pytime.txt:
\tPYTHONHASHSEED=0 {python} -c 'import time; open("pytime.txt", "w").write(str(time.time()))'
"""
OUTPUTS = ("stamp", "a.o", "d.o", "lib.a", "libu.a", "gen.txt", "secs.txt", "py.txt", "pytime.txt")
CLOCK_READERS = {"date +%s%N > stamp": "clock_gettime", "cc -O1 -c d.c -o d.o": "time() in ",
                 "ar crsU libu.a a.o": "time() in ", "echo \"$EPOCHSECONDS\"": "time() in ",
                 "import time": "clock_gettime() in "}


def project(root: Path) -> Path:
    root.mkdir()
    python = shutil.which("python3", path="/usr/bin:/bin") or "python3"
    (root / "Makefile").write_text(MAKEFILE.format(python=python))
    (root / "a.c").write_text("int f(int x) { return x * 2; }\n")
    (root / "d.c").write_text('const char *built = __DATE__ " " __TIME__;\n')
    (root / ".vrift.yaml").write_text("")
    return root


def clean(root: Path) -> None:
    for name in OUTPUTS:
        (root / name).unlink(missing_ok=True)


def uncacheable_lines(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if line.startswith("vrift: cache uncacheable: ")]


@pytest.fixture
def proj(tmp_path, daemons):
    require_tools("make", "cc", "ar", "bash", "date", "python3")
    return project(tmp_path / "p")


def test_clock_readers_run_every_build_and_the_rest_hits(proj, tmp_path):
    cold = vrift("wrap", "--explain", "make", cwd=proj, check=True)
    lines = uncacheable_lines(cold.stderr)
    assert len(lines) == len(CLOCK_READERS), cold.stderr
    for command, fn in CLOCK_READERS.items():
        assert any(command in line and f"reads the real-time clock: {fn}" in line for line in lines), (command, cold.stderr)
    assert cache_counts(cold.stderr) == (0, len(OUTPUTS), len(CLOCK_READERS))
    stamp = (proj / "stamp").read_text()

    clean(proj)
    warm = vrift("wrap", "--explain", "make", cwd=proj, check=True)
    cacheable = len(OUTPUTS) - len(CLOCK_READERS)
    assert cache_counts(warm.stderr) == (cacheable, len(CLOCK_READERS), len(CLOCK_READERS)), warm.stderr
    assert (proj / "stamp").read_text() != stamp  # `date` ran again
    # the replayed steps are byte-identical to a plain build's (cc, ar D, bash, python)
    ref = project(tmp_path / "plain")
    plain("make", cwd=ref)
    for name in ("a.o", "lib.a", "gen.txt", "py.txt"):
        assert (proj / name).read_bytes() == (ref / name).read_bytes(), name


def test_source_date_epoch_makes_the_time_reproducible_and_cacheable(proj, tmp_path):
    env = tool_env()
    env["SOURCE_DATE_EPOCH"] = "1700000000"
    vrift("wrap", "make", "d.o", cwd=proj, env=env, check=True)
    (proj / "d.o").unlink()
    warm = vrift("wrap", "--explain", "make", "d.o", cwd=proj, env=env, check=True)
    assert cache_counts(warm.stderr) == (1, 0, 0), warm.stderr
    ref = project(tmp_path / "plain")
    plain("make", "d.o", cwd=ref, env={**tool_env(with_vrift_on_path=False), "SOURCE_DATE_EPOCH": "1700000000"})
    assert (proj / "d.o").read_bytes() == (ref / "d.o").read_bytes()
    # without it, the same command reads the clock again: another key, and uncacheable
    (proj / "d.o").unlink()
    again = vrift("wrap", "--explain", "make", "d.o", cwd=proj, check=True)
    assert cache_counts(again.stderr) == (0, 1, 1), again.stderr

