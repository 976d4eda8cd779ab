"""`python -m load_tests.bench [FLAGS]` is `cnnserve bench [FLAGS]`."""

from __future__ import annotations

import sys

from cnnserve.cli import main

if __name__ == "__main__":
    raise SystemExit(main(["bench", *sys.argv[1:]]))
