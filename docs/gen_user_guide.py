#!/usr/bin/env python3
"""Regenerate the sample outputs of docs/user-guide.md so that they cannot drift.

Each block to generate is an HTML comment naming its commands, followed by a fenced block:

    <!-- run
    vrift wrap ninja
    -->
    ```
    (replaced by "$ vrift wrap ninja" and what it printed, stdout and stderr)
    ```

The commands run in order, each in `bash -c`, in a copy of examples/ninja-hello in /tmp/ug (which
must not exist: paths in tables are then the ones shown) with its own VRIFT_HOME and
VRIFT_SHM_DIR and COLUMNS=80.  Usage:

    python3 docs/gen_user_guide.py            # rewrite docs/user-guide.md
    python3 docs/gen_user_guide.py --check    # run everything, exit 1 if a command failed
    python3 docs/gen_user_guide.py --out F    # write the result to F instead
    python3 docs/gen_user_guide.py --base D   # work in D instead of /tmp/ug (shown as /tmp/ug)

A command that is expected to fail ends in `  # exit N`.  Daemons started by the run are stopped
and the temporary directory removed at the end.
"""
from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

DOCS = Path(__file__).resolve().parent
REPO = DOCS.parent
GUIDE = DOCS / "user-guide.md"
SHOWN_AS = "/tmp/ug"
BLOCK = re.compile(r"<!-- run\n(?P<cmds>.*?)\n-->\n```\n.*?```\n", re.DOTALL)
EXPECT = re.compile(r"\s+# exit (\d+)$")


def run_block(commands: list[str], cwd: Path, env: dict, base: Path) -> tuple[str, list[str]]:
    out, failures = [], []
    for line in commands:
        m = EXPECT.search(line)
        want = int(m.group(1)) if m else 0
        command = line[:m.start()] if m else line
        proc = subprocess.run(["bash", "-c", command], cwd=cwd, env=env, capture_output=True, text=True,
                              timeout=300)
        text = (proc.stdout + proc.stderr).replace(str(base), SHOWN_AS)
        text = text.replace(str(REPO), "…")
        out.append(f"$ {command}\n{text}".rstrip("\n"))
        if proc.returncode != want:
            failures.append(f"{command}: exit status {proc.returncode}, expected {want}\n{text}")
    return "\n".join(out) + "\n", failures


def generate(source: str, base: Path | None = None) -> tuple[str, list[str]]:
    if base is None:
        base = Path(SHOWN_AS)
        try:
            base.mkdir(mode=0o700)
        except FileExistsError:
            raise SystemExit(f"gen_user_guide: {base} exists (another run, or left over): remove it first") from None
    failures: list[str] = []
    try:
        project = base / "ninja-hello"
        shutil.copytree(REPO / "examples" / "ninja-hello", project,
                        ignore=shutil.ignore_patterns("build", ".vrift", ".ninja_*"))
        env = {k: v for k, v in os.environ.items() if not k.startswith(("VRIFT_", "LD_PRELOAD"))}
        env.update(VRIFT_HOME=str(base / "home"), VRIFT_SHM_DIR=str(base / "shm"), COLUMNS="80")
        env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")])
        (base / "shm").mkdir()

        def replace(m: re.Match) -> str:
            commands = [c for c in m.group("cmds").splitlines() if c.strip()]
            text, failed = run_block(commands, project, env, base)
            failures.extend(failed)
            return f"<!-- run\n{m.group('cmds')}\n-->\n```\n{text}```\n"

        result = BLOCK.sub(replace, source)
        subprocess.run([sys.executable, "-m", "vrift", "daemon", "stop"], cwd=project, env=env,
                       capture_output=True, timeout=120)
    finally:
        shutil.rmtree(base, ignore_errors=True)
    return result, failures


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--check", action="store_true", help="run the commands, write nothing")
    ap.add_argument("--out", type=Path, default=None, help="write here instead of docs/user-guide.md")
    ap.add_argument("--base", type=Path, default=None, help="an empty directory to work in (default /tmp/ug)")
    args = ap.parse_args(argv)
    base = None
    if args.base is not None:
        base = Path(tempfile.mkdtemp(prefix="ug", dir=args.base))
    result, failures = generate(GUIDE.read_text(), base)
    for f in failures:
        print(f"gen_user_guide: {f}", file=sys.stderr)
    if not args.check:
        (args.out or GUIDE).write_text(result)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
