"""``python -m bench NAME [options]`` runs one benchmark; ``python -m bench all [DIR]`` runs
every one with its defaults, printing each table and writing each one's rows to DIR/NAME.json
(default ``bench-results``). See bench/README.md."""

from __future__ import annotations

import importlib
import sys
from pathlib import Path

BENCHMARKS = (
    "step_overhead",
    "fleet",
    "rate_limit",
    "streaming_parse",
    "validation",
    "long_search",
    "estimate_error",
    "durable_cost",
    "fleet_limit",
    "long_history",
    "soak",
    "layer",
)


def main() -> int:
    if len(sys.argv) >= 2 and sys.argv[1] == "all":
        out = Path(sys.argv[2] if len(sys.argv) > 2 else "bench-results")
        out.mkdir(parents=True, exist_ok=True)
        for name in BENCHMARKS:
            print(f"\n== {name} ==", flush=True)
            module = importlib.import_module(f"bench.{name}")
            module.main(["--json", str(out / f"{name}.json")])
        print(f"\nrows written to {out}/")
        return 0
    if len(sys.argv) < 2 or sys.argv[1] not in BENCHMARKS:
        print(f"usage: python -m bench {{all,{','.join(BENCHMARKS)}}} [options]", file=sys.stderr)
        return 2
    module = importlib.import_module(f"bench.{sys.argv[1]}")
    result: int = module.main(sys.argv[2:])
    return result


if __name__ == "__main__":
    raise SystemExit(main())
