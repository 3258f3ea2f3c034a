"""Speed of the deterministic Raft simulation: seeds per second and events per second.

    .venv/bin/python benchmarks/raft_simulation.py [--seeds 2000] [--first 0]

Runs `mesh.simulation.simulate` over `--seeds` consecutive seeds from `--first`, each drawing
its cluster (3 or 5 nodes) and faults as the test suite's sweep does, on one core. An event is
one delivered, lost or duplicated message, timer, client request or fault. Wall time and
process CPU time are both given: on a shared machine the CPU time is the steadier figure.
Every seed must pass; a failing one is printed and the exit status is 1. The last line is
`key=value` pairs.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from mesh.simulation import simulate  # noqa: E402 - needs REPO on the path


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=2000, help="how many seeds (2000)")
    parser.add_argument("--first", type=int, default=0, help="the first seed (0)")
    args = parser.parse_args()

    events = failures = 0
    nodes = {3: 0, 5: 0}
    wall, cpu = time.perf_counter(), time.process_time()
    for seed in range(args.first, args.first + args.seeds):
        result = simulate(seed)
        events += result.events
        nodes[result.nodes] = nodes.get(result.nodes, 0) + 1
        if not result.ok:
            failures += 1
            print(result.report(), flush=True)
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu

    print(
        f"{args.seeds} seeds ({nodes[3]} of 3 nodes, {nodes[5]} of 5), {events} events, "
        f"{failures} failures in {wall:.2f} s ({cpu:.2f} s of CPU)"
    )
    print(
        f"seeds={args.seeds} failures={failures} events={events} wall_s={wall:.3f} "
        f"cpu_s={cpu:.3f} seeds_per_s={args.seeds / wall:.1f} "
        f"events_per_s={events / wall:.0f} ms_per_seed={1000 * wall / args.seeds:.3f}"
    )
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
