"""The idle footprint of the default injected pod, read as if it ran alone on the node.

    python -m bench.footprint [--generations newest,oldest] [--rounds 3] [--shared]

PSS divides a shared page among every process mapping it, so other haproxy/varnishd on the
machine (other e2e runs, a soak) make a pod's figure read low, while a node's first pod pays
the whole. Here each daemon runs from a private copy of its install tree, with its shared
libraries outside glibc copied beside it (LD_LIBRARY_PATH in the container's env): no other
process maps those file pages, so their whole cost lands in the pod, whatever else runs.
glibc (libc, libm, ld.so) stays shared, as it is with everything else on any node.
`--shared` runs the installed daemons instead (what tests/e2e/test_footprint.py measures).

Each round starts the default pod (tests/e2e harness: one backend pod, the highest open-files
limit, as test_footprint), sends a HIT, a MISS and a pass, idles --settle seconds and reads
each container's footprint (tests/e2e/footprint.py: PSS + Memory emptyDirs). It also lists
every other process on the machine that maps one of the pod daemons' files (glibc aside) -
with the private copies that list must be empty - and breaks each container's PSS down by
mapping (binary, each library, heap, anonymous, stacks). Prints a table and writes
bench/results/footprint-<UTC stamp>.json; asserts nothing.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import re
import resource
import shutil
import statistics
import subprocess
import time
from collections import defaultdict
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from bench.churn.__main__ import env_items
from bench.common import pod_bench, write_results
from tests import daemons
from tests.e2e.footprint import footprints, haproxy_info, process_tree
from tests.e2e.harness import Generation, PodEnv, generation

MIB = 2**20
SIDECARS = ("cache-haproxy", "cache-varnish")
# glibc's own objects: every process on a node maps them, so they stay shared here too.
GLIBC = re.compile(r"/(libc|libm|libpthread|libdl|librt|ld-linux[^/]*)\.so[^/]*$")


def shared_libraries(binary: str) -> list[str]:
    """The resolved paths of the libraries `binary` loads, glibc's excepted (ldd)."""
    out = subprocess.run(["ldd", binary], capture_output=True, text=True, check=True).stdout
    found = []
    for line in out.splitlines():
        match = re.search(r"=> (/\S+)", line)
        if match and not GLIBC.search(match.group(1)):
            found.append(str(Path(match.group(1)).resolve()))
    return found


def private_generation(gen: Generation, scratch: Path) -> tuple[Generation, Path]:
    """Copies of the generation's daemons (and the varnish tools the harness runs beside
    varnishd), and a directory holding copies of their non-glibc libraries."""
    root = scratch / gen.name
    lib = root / "lib"
    lib.mkdir(parents=True)
    haproxy = root / "haproxy" / "sbin" / "haproxy"
    haproxy.parent.mkdir(parents=True)
    shutil.copy2(gen.haproxy.path, haproxy)
    varnishd = Path(gen.varnish.path).resolve()
    tree = varnishd.parent.parent
    if tree == Path("/usr"):  # Debian's: varnishd and its tools only
        copy = root / "varnish"
        (copy / "sbin").mkdir(parents=True)
        (copy / "bin").mkdir()
        shutil.copy2(varnishd, copy / "sbin" / "varnishd")
        for tool in ("varnishstat", "varnishncsa", "varnishadm"):
            shutil.copy2(daemons.varnish_tool(str(varnishd), tool), copy / "bin" / tool)
    else:  # a whole install prefix (/opt/varnish-8.0): small, and its vmods come along
        copy = root / tree.name
        shutil.copytree(tree, copy, symlinks=True)
    for binary in (gen.haproxy.path, str(varnishd)):
        for library in shared_libraries(binary):
            target = lib / Path(library).name
            if not target.exists():
                shutil.copy2(library, target)
                # the name the binary asks for (its soname) must resolve in lib/ too
                soname = re.search(r"(lib[^/]*\.so\.\d+)", Path(library).name)
                if soname and soname.group(1) != target.name:
                    (lib / soname.group(1)).symlink_to(target.name)
    for path in [root, *root.rglob("*")]:
        if path.is_dir() and not path.is_symlink():
            path.chmod(0o755)  # the daemons run as uids 99/1000
    private = Generation(
        gen.name,
        daemons.Daemon(gen.haproxy.label, str(haproxy)),
        daemons.Daemon(gen.varnish.label, str(copy / "sbin" / "varnishd")),
    )
    return private, lib


def edit_env(lib: Path | None, varnish_env: dict[str, str | None]) -> Any:
    """An edit_pod hook: both sidecars load their libraries from `lib` first (when given);
    cache-varnish gets the variant's variables (None: removes one the injector set)."""

    def edit(manifest: dict[str, Any]) -> None:
        for container in manifest["spec"]["initContainers"]:
            if container["name"] not in SIDECARS:
                continue
            env = container.setdefault("env", [])
            if lib is not None:
                env.append({"name": "LD_LIBRARY_PATH", "value": str(lib)})
            if container["name"] == "cache-varnish":
                env[:] = [e for e in env if e["name"] not in varnish_env]
                env += [{"name": k, "value": v} for k, v in varnish_env.items() if v is not None]

    return edit


def mapped_files(pid: int) -> dict[tuple[str, int], str]:
    """(device, inode) -> path of every file `pid` maps (glibc aside)."""
    files: dict[tuple[str, int], str] = {}
    with contextlib.suppress(OSError):
        for line in Path(f"/proc/{pid}/maps").read_text().splitlines():
            parts = line.split(maxsplit=5)
            if len(parts) < 6 or parts[4] == "0" or not parts[5].startswith("/"):
                continue
            if not GLIBC.search(parts[5]) and not parts[5].startswith("/dev/"):
                files[(parts[3], int(parts[4]))] = parts[5]
    return files


def other_mappers(pod_pids: set[int]) -> dict[str, list[str]]:
    """For each file the pod's processes map, the other processes on the machine mapping
    it too ("pid command"): they take a share of its pages' PSS."""
    ours: dict[tuple[str, int], str] = {}
    for pid in pod_pids:
        ours.update(mapped_files(pid))
    sharers: dict[str, list[str]] = defaultdict(list)
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) in pod_pids:
            continue
        theirs = mapped_files(int(entry.name))
        for key in ours.keys() & theirs.keys():
            with contextlib.suppress(OSError):
                command = (entry / "comm").read_text().strip()
                sharers[ours[key]].append(f"{entry.name} {command}")
    return dict(sharers)


def smaps_breakdown(pids: list[int]) -> dict[str, float]:
    """PSS (MiB) of the processes by what is mapped: a file's name, [heap], [stack],
    [anon] (anonymous memory: malloc arenas, thread stacks, pools), [shmem] and others."""
    kib: dict[str, int] = defaultdict(int)
    for pid in pids:
        name = "?"
        with contextlib.suppress(OSError):
            for line in Path(f"/proc/{pid}/smaps").read_text().splitlines():
                first = line.split(maxsplit=5)
                if re.match(r"^[0-9a-f]+-[0-9a-f]+ ", line):
                    path = first[5] if len(first) == 6 else ""
                    if path.startswith("/"):
                        name = Path(path.split(" (deleted)")[0]).name
                        if "(deleted)" in path or path.startswith("/dev/shm"):
                            name = f"[shmem] {name}"
                    else:
                        name = path or "[anon]"
                elif line.startswith("Pss:"):
                    kib[name] += int(first[1])
    return {k: round(v / 1024, 2) for k, v in sorted(kib.items(), key=lambda x: -x[1]) if v}


@dataclass
class Round:
    sizes: dict[str, float]
    sharers: dict[str, list[str]]
    breakdown: dict[str, dict[str, float]]
    processes: dict[str, int]
    haproxy: dict[str, str]


@dataclass
class Result:
    generation: str
    private: bool
    varnish_env: dict[str, str | None]
    rounds: list[Round] = field(default_factory=list)

    def median(self, name: str) -> float:
        return round(statistics.median(r.sizes[name] for r in self.rounds), 1)


def one_round(gen: Generation, edit: Any, settle: float) -> Round:
    with PodEnv(gen, backends=1, label="footprint", edit_pod=edit) as env:
        for path in ("/static/a", "/static/a", "/nocache/b"):
            status = env.http.get(path).status
            if status != 200:
                raise SystemExit(f"{gen.label}: {path} answered {status}")
        time.sleep(settle)
        runner = env.runner
        pids = {
            name: process_tree(state.main_pid)
            for name, state in runner.states.items()
            if name in SIDECARS and state.main_pid is not None
        }
        sizes = footprints(runner, SIDECARS)
        everyone = {pid for group in pids.values() for pid in group}
        return Round(
            sizes=sizes,
            sharers=other_mappers(everyone),
            breakdown={name: smaps_breakdown(group) for name, group in pids.items()},
            processes={name: len(group) for name, group in pids.items()},
            haproxy=haproxy_info(runner),
        )


def measure(gen_name: str, rounds: int, settle: float, shared: bool, scratch: Path,
            varnish_env: dict[str, str | None]) -> Result:  # fmt: skip
    gen = generation(gen_name)
    lib = None
    if not shared:
        gen, lib = private_generation(gen, scratch)
    edit = edit_env(lib, varnish_env)
    result = Result(gen.label, not shared, varnish_env)
    for number in range(rounds):
        result.rounds.append(one_round(gen, edit, settle))
        sizes = result.rounds[-1].sizes
        print(f"{gen.label} round {number + 1}: {sizes}", flush=True)
    return result


def table(results: list[Result]) -> str:
    lines = [
        "generation               daemons   cache-haproxy  cache-varnish  total  (MiB, median)"
    ]
    for r in results:
        lines.append(
            f"{r.generation:24} {'private' if r.private else 'shared ':8} "
            f"{r.median('cache-haproxy'):13} {r.median('cache-varnish'):14} "
            f"{r.median('total'):6}   {r.varnish_env or ''} rounds: "
            + ", ".join(f"{x.sizes['total']}" for x in r.rounds)
        )
    for r in results:
        last = r.rounds[-1]
        sharers = {Path(k).name: len(v) for k, v in last.sharers.items()}
        lines.append(
            f"{r.generation}: other processes mapping the pod's files: {sharers or 'none'}"
        )
        for name, parts in last.breakdown.items():
            top = ", ".join(f"{k} {v}" for k, v in list(parts.items())[:8])
            lines.append(f"  {name} ({last.processes[name]} processes): {top}")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--generations", default="newest,oldest")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--settle", type=float, default=5.0, help="idle seconds before reading")
    parser.add_argument("--shared", action="store_true", help="the installed daemons, as e2e")
    parser.add_argument("--env", action="append", default=[], help="cache-varnish K=V, K= unsets")
    args = parser.parse_args()
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:  # as tests/e2e/test_footprint.py: the containers inherit it
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    results = []
    with pod_bench("footprint") as scratch:
        others = subprocess.run(
            ["pgrep", "-a", "-x", "haproxy|varnishd"], capture_output=True, text=True, check=False
        ).stdout.splitlines()
        load_before = os.getloadavg()
        for name in args.generations.split(","):
            results.append(
                measure(name, args.rounds, args.settle, args.shared, scratch, env_items(args.env))
            )
    print(f"{len(others)} other haproxy/varnishd processes on the machine at the start")
    print(table(results))
    write_results(
        "footprint",
        {
            "load_average_before": load_before,
            "other_daemons_at_start": others,
            "results": [asdict(r) for r in results],
        },
    )


if __name__ == "__main__":
    main()
