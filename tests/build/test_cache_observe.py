"""What an action observed, and what a replay installs, in real make builds compared with plain
make on a twin tree (tests/support/observe.py): damaged blobs, stat answers, symlinks and `..`,
directories created, keys that travel between checkouts."""
from __future__ import annotations

import json
import os
from pathlib import Path

import blake3
import pytest

from support.build import plain, require_tools, tool_env, vrift
from support.daemon import daemons  # noqa: F401
from support.observe import Twin
from test_cache_wrap import needs_c_side

pytestmark = needs_c_side

LIB_MAKEFILE = """\
all: app
a.o: a.c
\tcc -c a.c -o a.o
lib.a: a.o
\trm -f lib.a && ar crs lib.a a.o
app: lib.a main.c
\tcc main.c lib.a -o app
"""
LIB_FILES = {"Makefile": LIB_MAKEFILE, "a.c": "int a(void) { return 41; }\n",
             "main.c": "int a(void);\nint main(void) { return a() == 41 ? 0 : 1; }\n"}


@pytest.fixture
def tools(daemons):
    require_tools("make", "cc", "ar")
    return daemons


def blob_path(home, data: bytes) -> Path:
    h = blake3.blake3(data).hexdigest()
    return home.root / "cas" / "blake3" / h[:2] / h[2:4] / h


def test_a_damaged_blob_is_quarantined_and_the_command_runs(tmp_path, tools, run_vrift):
    t = Twin(tmp_path, LIB_FILES)
    assert t.build()[0] == (0, 3, 0)
    blob = blob_path(tools, (t.proj / "a.o").read_bytes())
    assert blob.exists()
    # bit rot in the object's blob: same size, one byte flipped
    data = bytearray(blob.read_bytes())
    data[len(data) // 2] ^= 0xFF
    blob.chmod(0o644)
    blob.write_bytes(bytes(data))
    for name in ("a.o", "lib.a", "app"):
        t.remove(name)
    # the compile runs instead of installing the damaged bytes; the archive and the link,
    # recorded against the good object, then hit on the object the compile really made
    counts, err = t.build()
    assert counts == (2, 1, 0), err
    assert "a blob of the entry was damaged" in err
    assert not blob.exists() or blob.read_bytes() != bytes(data)
    quarantined = list((tools.root / "cas" / "quarantine").iterdir())
    assert len(quarantined) == 1 and quarantined[0].read_bytes() == bytes(data)
    run_vrift("daemon", "stop", check=True)
    stats = json.loads(run_vrift("cache", "stats", "--json", check=True).stdout)
    assert stats["counters"]["corrupt_blobs"] == 1
    # and the entry re-recorded by the run hits next time
    for name in ("a.o", "lib.a", "app"):
        t.remove(name)
    assert t.build()[0] == (3, 0, 0)


def recipe_makefile(*lines: str) -> str:
    """One phony target whose recipe lines are each an action (make runs them every time: the
    cache alone decides whether a line runs or is replayed)."""
    return ".PHONY: all\nall:\n" + "".join(f"\t{line}\n" for line in lines)


def test_existence_probe_rm_and_recreate(tmp_path, tools):
    t = Twin(tmp_path, {"Makefile": recipe_makefile("if [ -e opt.h ]; then echo yes > conf.txt; else echo no > conf.txt; fi"),
                        "opt.h": "#define OPT 1\n"})
    assert t.build()[0] == (0, 1, 0)
    assert t.build()[0] == (1, 0, 0)
    t.remove("opt.h")
    counts, err = t.build()
    assert counts == (0, 1, 0) and (t.proj / "conf.txt").read_text() == "no\n", err
    assert "opt.h is now absent" in err
    t.write("opt.h", "#define OPT 2\n")
    counts, err = t.build()
    assert counts[0] == 0 and (t.proj / "conf.txt").read_text() == "yes\n", err


def test_execute_bit_chmod(tmp_path, tools):
    t = Twin(tmp_path, {"Makefile": recipe_makefile("if [ -x tool ]; then echo run > how.txt; else echo skip > how.txt; fi"),
                        "tool": "#!/bin/sh\n"})
    assert t.build()[0] == (0, 1, 0)
    assert (t.proj / "how.txt").read_text() == "skip\n"
    t.both(lambda root: (root / "tool").chmod(0o755))
    counts, err = t.build()
    assert counts == (0, 1, 0) and (t.proj / "how.txt").read_text() == "run\n", err
    assert "mode of tool changed" in err
    assert t.build()[0] == (1, 0, 0)


def test_size_and_mtime_read_by_stat_alone(tmp_path, tools):
    # ls reads the clock (recent files print differently): SOURCE_DATE_EPOCH vouches for it
    t = Twin(tmp_path, {"Makefile": recipe_makefile("stat -c %s data > size.txt",
                                                    "SOURCE_DATE_EPOCH=0 ls -l --time-style=+%Y-%m-%d.%H:%M:%S.%N stamp | cut -d' ' -f6- > when.txt"),
                        "data": "12345\n", "stamp": ""})
    t.both(lambda root: os.utime(root / "stamp", ns=(900_000_000_000_000_000, 900_000_000_000_000_000)))
    assert t.build()[0] == (0, 2, 0)
    t.write("data", "1234567890\n")
    counts, err = t.build()
    assert counts == (1, 1, 0), err
    assert (t.proj / "size.txt").read_text() == "11\n" and "size of data changed" in err
    # a touch: the content is the same, but `ls -l` prints the time
    t.both(lambda root: os.utime(root / "stamp", ns=(1_000_000_000_000_000_000, 1_000_000_000_000_000_000)))
    counts, err = t.build()
    assert counts == (1, 1, 0) and "mtime of stamp changed" in err, err
    assert "2001-09-09" in (t.proj / "when.txt").read_text()


def test_mkdir_p_over_an_existing_directory_then_rm_rf(tmp_path, tools):
    # recorded while out/ existed, mkdir -p did nothing; after rm -rf out the replay must make
    # out/ (had it been absent, the command would have), or the next command fails
    t = Twin(tmp_path, {"Makefile": recipe_makefile("mkdir -p out", "ls out > listing.txt"), "out/keep": "k\n"})
    assert t.build()[0] == (0, 2, 0)
    assert t.build()[0] == (2, 0, 0)
    t.remove("out")
    counts, err = t.build()
    assert counts == (1, 1, 0), err  # mkdir replayed; ls sees another listing and runs
    assert (t.proj / "out").is_dir() and (t.proj / "listing.txt").read_text() == ""
    assert "the listing of out changed" in err
    t.remove("out")
    assert t.build()[0] == (2, 0, 0)  # and ls finds it as empty as it was recorded
    assert (t.proj / "out").is_dir()
    # a file where the directory was: the replay cannot make it, the command runs and fails
    t.remove("out")
    t.write("out", "not a directory\n")
    failed = vrift("wrap", "make", "-s", cwd=t.proj, env=tool_env())
    assert failed.returncode != 0 and "out" in failed.stderr, failed.stderr
    assert (t.proj / "out").read_text() == "not a directory\n"


def test_a_glob_that_gains_a_file(tmp_path, tools):
    t = Twin(tmp_path, {"Makefile": recipe_makefile("cat parts/*.in > all.txt"), "parts/a.in": "a\n", "parts/b.in": "b\n"})
    assert t.build()[0] == (0, 1, 0)
    assert t.build()[0] == (1, 0, 0)
    t.write("parts/c.in", "c\n")
    counts, err = t.build()
    assert counts == (0, 1, 0) and (t.proj / "all.txt").read_text() == "a\nb\nc\n", err


def test_readlink_target_retargeted(tmp_path, tools):
    t = Twin(tmp_path, {"Makefile": recipe_makefile("readlink cur > which.txt"), "v1/x": "1\n", "v2/x": "2\n"})
    t.both(lambda root: os.symlink("v1", root / "cur"))
    assert t.build()[0] == (0, 1, 0)
    assert t.build()[0] == (1, 0, 0)

    def retarget(root):
        os.unlink(root / "cur")
        os.symlink("v2", root / "cur")
    t.both(retarget)
    counts, err = t.build()
    assert counts == (0, 1, 0) and (t.proj / "which.txt").read_text() == "v2\n", err
    assert "symlink cur points elsewhere now" in err


def test_copy_keeps_the_mode_of_a_file_read_and_stated(tmp_path, tools):
    # cp --preserve=mode (cp -p also sets file times: uncacheable) gives the copy the mode it read
    t = Twin(tmp_path, {"Makefile": recipe_makefile("mkdir -p bin", "cp --preserve=mode tool bin/tool"), "tool": "#!/bin/sh\necho hi\n"})
    assert t.build()[0] == (0, 2, 0)
    t.both(lambda root: (root / "tool").chmod(0o755))
    counts, err = t.build()
    assert counts == (1, 1, 0), err
    assert os.access(t.proj / "bin/tool", os.X_OK)


def test_dotdot_after_a_symlinked_directory_is_the_file_the_kernel_opened(tmp_path, tools):
    # inc -> real/sub, so inc/../common/x.h is real/common/x.h; by text it would be common/x.h
    files = {"Makefile": "x.o: x.c\n\tcc -c x.c -o x.o\n",
             "x.c": '#include "inc/../common/x.h"\nint v = X;\n',
             "real/sub/.keep": "", "real/common/x.h": "#define X 1\n", "common/x.h": "#define X 100\n"}
    t = Twin(tmp_path, files, make_args=["-B"])
    t.both(lambda root: os.symlink("real/sub", root / "inc"))
    assert t.build()[0] == (0, 1, 0)
    assert t.build()[0] == (1, 0, 0)
    t.write("real/common/x.h", "#define X 2\n")
    counts, err = t.build()
    assert counts == (0, 1, 0), err
    assert "inc/../common/x.h changed" in err
    # the decoy the text names is not an input
    t.write("common/x.h", "#define X 200\n")
    assert t.build()[0] == (1, 0, 0)
    # retargeting the symlink changes what the same text opens
    def retarget(root):
        (root / "other/sub").mkdir(parents=True)
        (root / "other/common").mkdir()
        (root / "other/common/x.h").write_text("#define X 3\n")
        os.unlink(root / "inc")
        os.symlink("other/sub", root / "inc")
    t.both(retarget)
    counts, err = t.build()
    assert counts == (0, 1, 0), err


def test_realpath_through_a_retargeted_symlink(tmp_path, tools):
    # libc's realpath() walks the name with its own internal lstat/readlink
    helper = tmp_path / "tools/rp"
    helper.parent.mkdir()
    src = helper.with_suffix(".c")
    src.write_text("#include <stdio.h>\n#include <stdlib.h>\n#include <string.h>\n"
                   "int main(int c, char **v) {\n"
                   "    char *r = realpath(v[1], NULL);\n"
                   "    if (!r) return 1;\n"
                   "    puts(r + strlen(getenv(\"ROOT\")));\n"
                   "    return 0;\n"
                   "}\n")
    plain("cc", "-O0", "-o", helper, src, cwd=tmp_path)
    t = Twin(tmp_path / "t", {"Makefile": recipe_makefile(f"ROOT=$$(pwd) {helper} cur/x > which.txt"),
                              "v1/x": "1\n", "v2/x": "2\n"})
    t.both(lambda root: os.symlink("v1", root / "cur"))
    assert t.build()[0] == (0, 1, 0)
    assert (t.proj / "which.txt").read_text() == "/v1/x\n"
    assert t.build()[0] == (1, 0, 0)

    def retarget(root):
        os.unlink(root / "cur")
        os.symlink("v2", root / "cur")
    t.both(retarget)
    counts, err = t.build()
    assert counts == (0, 1, 0) and (t.proj / "which.txt").read_text() == "/v2/x\n", err
    assert "symlink cur points elsewhere now" in err


def test_an_archiver_puts_a_touched_file_s_mtime_into_its_output(tmp_path, tools):
    require_tools("tar")
    # tar reads the clock; SOURCE_DATE_EPOCH vouches that it does not reach this archive
    t = Twin(tmp_path, {"Makefile": recipe_makefile("SOURCE_DATE_EPOCH=0 tar --format=ustar --owner=0 --group=0 -cf out.tar src"),
                        "src/a.txt": "same bytes\n"})
    fixed = (1_500_000_000_000_000_000,) * 2
    t.both(lambda root: os.utime(root / "src/a.txt", ns=fixed))
    assert t.build()[0] == (0, 1, 0)
    assert t.build()[0] == (1, 0, 0)
    # a touch alone: the content is the same, the archive is not
    t.both(lambda root: os.utime(root / "src/a.txt", ns=(1_600_000_000_000_000_000,) * 2))
    counts, err = t.build()
    # the first observation that differs may be a directory above the tree that tar stat'ed
    # (its mtime moves as the test writes beside it): any mtime difference explains the miss
    assert counts == (0, 1, 0) and "mtime of " in err, err
    # the directory's own entry carries its mtime too
    t.both(lambda root: os.utime(root / "src", ns=(1_700_000_000_000_000_000,) * 2))
    counts, err = t.build()
    assert counts == (0, 1, 0) and "mtime of src changed" in err, err
