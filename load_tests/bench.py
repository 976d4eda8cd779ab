"""`python load_tests/bench.py [FLAGS]` is `cnnserve bench [FLAGS]`; the code is the `cnnserve.bench` package.

python load_tests/bench.py            # mnist_net and catsdogs, the full sweep (a few minutes)
python load_tests/bench.py --quick    # mnist_net, three concurrencies (well under a minute)
"""

from __future__ import annotations

import sys

from cnnserve.cli import main

if __name__ == "__main__":
    raise SystemExit(main(["bench", *sys.argv[1:]]))
