"""The full-size hostile-input runs of tests/integration/test_robust_fuzz.py (CI runs fewer).

    python benchmarks/fuzz_robust.py [--frames 100000] [--mutations 10000]

100,000 malformed frames against a real project daemon (every one answered with a reason, none
INTERNAL, the daemon alive and correct afterwards) and 10,000 random mutations of a VDir file
fed to a reader process through the native lookup (no crash, no wrong answer), with the tally.
"""
from __future__ import annotations

import argparse
import os
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--frames", type=int, default=100_000)
    ap.add_argument("--mutations", type=int, default=10_000)
    args = ap.parse_args()
    env = dict(os.environ, VRIFT_FUZZ_FRAMES=str(args.frames), VRIFT_FUZZ_VDIR=str(args.mutations))
    return subprocess.call([sys.executable, "-m", "pytest", "-q", "-s", "-p", "no:xdist", "-p", "no:cacheprovider",
                            str(HERE.parent / "tests" / "test_robust_fuzz.py")], env=env, cwd=HERE.parent)


if __name__ == "__main__":
    sys.exit(main())
