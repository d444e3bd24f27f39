"""How much of the working set one large download evicts, per max-object-size.

Runs an injected pod for real (the e2e harness, newest daemons) with a 16Mi cache: stores a
working set of 40 objects of 256 KiB (10 MiB, 62 % of the cache), then downloads 3 distinct
objects just under the limit, and counts how many working-set objects are still HITs after
each. Prints one row per limit. Needs root (network namespaces), like the e2e tests.

    .venv/bin/python -m bench.objectsize
"""

from __future__ import annotations

from tests.e2e.client import download
from tests.e2e.harness import LISTEN_PORT, POD_IP, PodEnv, generation

MIB = 1024 * 1024
CACHE = 16 * MIB
WORKING_SET = [f"/big/{256 * 1024}/length/ws{i}" for i in range(40)]


def run(percent: int) -> list[int]:
    annotations = {
        "cache-injector.io/cache-size": "16Mi",
        "cache-injector.io/max-object-size": f"{percent}%",
    }
    with PodEnv(generation("newest"), annotations=annotations, backends=1, label="bench") as env:
        netns = env.netns
        assert netns is not None  # PodEnv.start() made it

        def hits() -> int:
            return sum(
                download(netns, POD_IP, LISTEN_PORT, path).cache == "HIT" for path in WORKING_SET
            )

        for path in WORKING_SET:
            download(netns, POD_IP, LISTEN_PORT, path)
        counts = [hits()]
        size = CACHE * percent // 100 - 4096  # just under the limit: stored
        for index in range(3):
            download(netns, POD_IP, LISTEN_PORT, f"/big/{size}/length/large{index}")
            counts.append(hits())
        return counts


def main() -> None:
    print(f"cache 16Mi, working set {len(WORKING_SET)} x 256 KiB; HITs after each large object")
    print(f"{'max-object-size':>16} {'before':>7} {'after 1':>8} {'after 2':>8} {'after 3':>8}")
    for percent in (5, 10, 25, 50):
        before, *after = run(percent)
        print(f"{percent:>15}% {before:>7} " + " ".join(f"{n:>8}" for n in after))


if __name__ == "__main__":
    main()
