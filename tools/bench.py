"""Run the benchmark suite: `python tools/bench.py [--quick] [--json-out FILE]` (same as `jaxrnn bench`)."""

import sys

from jaxrnn.cli import main

if __name__ == "__main__":
    sys.exit(main(["bench", *sys.argv[1:]]))
