"""Entry point.  `vrift wrap` is dispatched before click or YAML are imported: the wrap
path has to reach the build tool's exec quickly (SPEC §12)."""
from __future__ import annotations

import sys


def main() -> int:
    argv = sys.argv[1:]
    if argv[:1] == ["wrap"]:
        from .wrap.fastwrap import fast_wrap  # noqa: PLC0415 - deliberate late import

        code = fast_wrap(argv[1:])
        if code is not None:
            return code
    from .cli import main as cli_main

    return cli_main(argv)


if __name__ == "__main__":
    sys.exit(main())
