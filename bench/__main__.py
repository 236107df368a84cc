"""``python -m bench NAME [options]``: run one benchmark (see bench/README.md)."""

from __future__ import annotations

import importlib
import sys

BENCHMARKS = (
    "step_overhead",
    "fleet",
    "rate_limit",
    "streaming_parse",
    "validation",
    "long_search",
)


def main() -> int:
    if len(sys.argv) < 2 or sys.argv[1] not in BENCHMARKS:
        print(f"usage: python -m bench {{{','.join(BENCHMARKS)}}} [options]", file=sys.stderr)
        return 2
    module = importlib.import_module(f"bench.{sys.argv[1]}")
    result: int = module.main(sys.argv[2:])
    return result


if __name__ == "__main__":
    raise SystemExit(main())
