"""Run the embedding benchmark: ``.venv/bin/python -m bench.embedding [--quick]``.

Every algorithm sees the same substrate and the same arrival sequence per
scenario and seed; every accepted mapping is checked by the independent
validator (alone on arrival, and with all live mappings every 20 arrivals
and at the end). ``--write`` replaces the "## Embedding" section of
docs/benchmarks.md with the result.
"""

from __future__ import annotations

import argparse
import heapq
import os
import platform
import statistics
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path

import networkx as nx

from bench.embedding.workload import Scenario, make_arrivals, make_substrate
from vnetlib.embedding import ALGORITHMS, BASELINES, DEFAULT, Embedder, Mapping, validate

ROOT = Path(__file__).resolve().parents[2]
DOC = ROOT / "docs" / "benchmarks.md"


@dataclass(frozen=True, slots=True)
class Result:
    scenario: str
    algorithm: str
    seed: int
    requests: int
    accepted: int
    revenue: float
    cost: float
    times_ms: tuple[float, ...]  # CPU time of the process
    wall_ms: tuple[float, ...]
    violations: int

    @property
    def acceptance(self) -> float:
        return self.accepted / self.requests

    @property
    def rc(self) -> float:
        return self.revenue / self.cost if self.cost else 0.0


def run_one(job: tuple[Scenario, str, int]) -> Result:
    sc, algorithm, seed = job
    g = make_substrate(sc, seed)
    arrivals = make_arrivals(sc, seed)
    emb = Embedder(g, algorithm=algorithm, seed=seed)
    live: dict[int, tuple[nx.Graph, Mapping]] = {}
    departures: list[tuple[float, int]] = []
    accepted = 0
    revenue = cost = 0.0
    times: list[float] = []
    walls: list[float] = []
    violations = 0
    for k, arr in enumerate(arrivals):
        while departures and departures[0][0] <= arr.time:
            _, rid = heapq.heappop(departures)
            emb.release(rid)
            del live[rid]
        c0, t0 = time.process_time(), time.perf_counter()
        got = emb.embed(arr.graph, arr.rid)
        walls.append((time.perf_counter() - t0) * 1000.0)
        times.append((time.process_time() - c0) * 1000.0)
        if isinstance(got, Mapping):
            accepted += 1
            revenue += got.revenue
            cost += got.cost
            live[arr.rid] = (arr.graph, got)
            heapq.heappush(departures, (arr.time + arr.lifetime, arr.rid))
            violations += len(validate(g, [(arr.graph, got)]))
        if k % 20 == 0 or k == len(arrivals) - 1:
            violations += len(validate(g, live.values()))
    return Result(
        sc.name,
        algorithm,
        seed,
        len(arrivals),
        accepted,
        revenue,
        cost,
        tuple(times),
        tuple(walls),
        violations,
    )


def p95(values: list[float]) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(0.95 * len(ordered)))]


def scenarios(quick: bool) -> list[Scenario]:
    n = 600 if quick else 2000
    base = [
        Scenario(f"rate {r:g}", rate=r, requests=n) for r in ((2, 4, 8) if quick else (2, 4, 6, 8))
    ]
    heavy = [
        Scenario(f"heavy rate {r:g}", rate=r, requests=n, min_nodes=8, max_nodes=8, cpu=(0.0, 50.0))
        for r in ((4,) if quick else (2, 4))
    ]
    # Same load per substrate node as "rate 6" on 100 nodes, long enough to
    # pass one mean lifetime (quick: shorter, below steady state).
    scale = [
        Scenario(
            "scale 500",
            substrate_nodes=500,
            substrate_links=2500,
            rate=30,
            requests=200 if quick else 800,
        ),
    ]
    if not quick:
        scale.append(
            Scenario(
                "scale 1000", substrate_nodes=1000, substrate_links=5000, rate=60, requests=1000
            )
        )
    return base + heavy + scale


def describe(sc: Scenario) -> str:
    return (
        f"{sc.substrate_nodes} nodes / {sc.substrate_links} links, {sc.requests} requests, "
        f"rate {sc.rate:g}/100, {sc.min_nodes}-{sc.max_nodes} vnodes, CPU U{list(sc.cpu)}, "
        f"bw U{list(sc.bw)}"
    )


def table(results: list[Result], scs: list[Scenario]) -> str:
    order = [DEFAULT, *BASELINES]
    order += [a for a in ALGORITHMS if a not in order]
    lines = [
        "| scenario | algorithm | acceptance | revenue/cost | CPU ms mean | CPU ms p95 "
        "| wall ms p95 | violations |",
        "|---|---|---:|---:|---:|---:|---:|---:|",
    ]
    for sc in scs:
        for algo in order:
            rs = [r for r in results if r.scenario == sc.name and r.algorithm == algo]
            if not rs:
                continue
            times = [t for r in rs for t in r.times_ms]
            walls = [t for r in rs for t in r.wall_ms]
            acc = sum(r.accepted for r in rs) / sum(r.requests for r in rs)
            rc = sum(r.revenue for r in rs) / max(1e-9, sum(r.cost for r in rs))
            name = f"**{algo}**" if algo == DEFAULT else algo
            lines.append(
                f"| {sc.name} | {name} | {acc:.3f} | {rc:.3f} | {statistics.fmean(times):.2f} "
                f"| {p95(times):.2f} | {p95(walls):.2f} | {sum(r.violations for r in rs)} |"
            )
    return "\n".join(lines)


def verdict(results: list[Result], scs: list[Scenario]) -> list[str]:
    out = []
    for sc in scs:

        def agg(algo: str, sc: Scenario = sc) -> tuple[float, float]:
            rs = [r for r in results if r.scenario == sc.name and r.algorithm == algo]
            return (
                sum(r.accepted for r in rs) / sum(r.requests for r in rs),
                sum(r.revenue for r in rs) / max(1e-9, sum(r.cost for r in rs)),
            )

        ours = agg(DEFAULT)
        mine = [r for r in results if r.scenario == sc.name and r.algorithm == DEFAULT]
        cpu95 = p95([t for r in mine for t in r.times_ms])
        wall95 = p95([t for r in mine for t in r.wall_ms])
        best_acc = max(agg(b)[0] for b in BASELINES)
        best_rc = max(agg(b)[1] for b in BASELINES)

        def cmp(a: float, b: float) -> str:
            return "higher" if a > b + 1e-12 else ("equal" if abs(a - b) <= 1e-12 else "LOWER")

        out.append(
            f"- {sc.name}: acceptance {ours[0]:.4f} vs best baseline {best_acc:.4f} "
            f"({cmp(ours[0], best_acc)}); revenue/cost {ours[1]:.3f} vs {best_rc:.3f} "
            f"({cmp(ours[1], best_rc)}); p95 time {cpu95:.1f} ms CPU, {wall95:.1f} ms wall"
        )
    return out


def write_doc(section: str) -> None:
    text = DOC.read_text() if DOC.exists() else "# Benchmarks\n"
    start = text.find("\n## Embedding\n")
    if start < 0:
        text = text.rstrip("\n") + "\n\n" + section
    else:
        end = text.find("\n## ", start + 1)
        text = text[: start + 1] + section + ("" if end < 0 else "\n" + text[end + 1 :])
    DOC.parent.mkdir(parents=True, exist_ok=True)
    DOC.write_text(text)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--quick", action="store_true", help="fewer requests and scenarios")
    ap.add_argument("--seeds", type=int, default=1, help="independent seeds per scenario")
    ap.add_argument("--jobs", type=int, default=min(2, os.cpu_count() or 1))
    ap.add_argument("--only", help="comma-separated scenario names")
    ap.add_argument("--algorithms", help="comma-separated algorithm names")
    ap.add_argument("--write", action="store_true", help="update docs/benchmarks.md")
    args = ap.parse_args(argv)
    scs = scenarios(args.quick)
    if args.only:
        keep = {s.strip() for s in args.only.split(",")}
        scs = [s for s in scs if s.name in keep]
    algos = args.algorithms.split(",") if args.algorithms else [DEFAULT, *BASELINES]
    jobs = [(sc, a, seed) for sc in scs for seed in range(1, args.seeds + 1) for a in algos]
    # Longest jobs first so two workers finish together.
    jobs.sort(key=lambda j: -(j[0].substrate_nodes * j[0].requests))
    t0 = time.time()
    with ProcessPoolExecutor(max_workers=args.jobs) as pool:
        results = list(pool.map(run_one, jobs))
    wall = time.time() - t0
    tab = table(results, scs)
    lines = verdict(results, scs) if set(BASELINES) <= set(algos) and DEFAULT in algos else []
    print(tab)
    print("\n".join(lines))
    print(f"\nwall time {wall:.0f} s", file=sys.stderr)
    if args.write:
        params = "\n".join(f"- **{sc.name}**: {describe(sc)}" for sc in scs)
        cmd = (
            ".venv/bin/python -m bench.embedding"
            + (" --quick" if args.quick else "")
            + (f" --seeds {args.seeds}" if args.seeds != 1 else "")
            + (f" --jobs {args.jobs}" if args.jobs != 2 else "")
            + " --write"
        )
        section = SECTION.format(
            cmd=cmd,
            seeds=args.seeds,
            params=params,
            table=tab,
            verdict="\n".join(lines),
            machine=f"{platform.python_implementation()} {platform.python_version()}, "
            f"{os.cpu_count()} cores, {args.jobs} worker process(es), "
            f"5-minute load average at the end {os.getloadavg()[1]:.1f}",
            wall=f"{wall:.0f}",
            lifetime=asdict(scs[0])["lifetime"],
        )
        write_doc(section)
    return 0


SECTION = """## Embedding

Online virtual network embedding (`vnetlib.embedding`): our default
`coordinated` against three baselines implemented from their papers
(`greedy-ksp`: Yu et al. 2008; `grc`: Gong et al. 2014; `rw-bfs`: Cheng et
al. 2011), all in the same run, on the same substrates and arrival
sequences. See docs/embedding.md for the algorithms.

Command (from the repository root): `.venv/bin/python -m bench.embedding
--write` (add `--quick` for a short run; `--jobs 1` for cleaner wall
times). This table: `{cmd}`, seeds 1..{seeds}; {machine}; wall time
{wall} s.

Workload: random G(n, m) substrate (made connected), CPU and bandwidth
capacities uniform in [50, 100]; Poisson arrivals (rate per 100 time
units), exponential lifetimes (mean {lifetime:g}), each pair of virtual nodes
linked with probability 0.5 (components joined, so requests are connected),
unsplittable paths, at most one virtual node of a request per substrate
node. Revenue = CPU + bandwidth demanded by accepted requests; cost = CPU +
bandwidth x path length; revenue/cost is summed over all accepted requests.
Time is per `Embedder.embed` call (accepted or not), as CPU time of the
process (`time.process_time`, robust to other load on the shared 2-core
machine the benchmark runs on) and as wall time (`time.perf_counter`,
which includes any time the process waited for a core: it depends on
whatever else the machine runs, hence the load average below; CPU time is
the measure of the algorithm).
Violations: problems the independent validator (`vnetlib.embedding.validate`)
found, checking each accepted mapping and, every 20 arrivals, all live
mappings together (capacities, paths, endpoints).

{params}

{table}

Ours against the best baseline in each scenario (targets: higher
acceptance and revenue/cost than every baseline; p95 embedding time under
10 ms at 100 substrate nodes and under 200 ms at 1000):

{verdict}

Reading the table: at light load (rate 2) every algorithm accepts nearly
everything, so acceptance cannot separate them (ours cannot exceed 1, and a
difference of a request or two is a tie in practice); revenue/cost does,
at every load, because ours keeps most virtual links on one hop while the
baselines place nodes for their own resources and pay for long paths.
The extra bandwidth they burn is what drops their acceptance as the load
grows. The scale scenarios keep the load per
substrate node of "rate 6"; there the baselines also pay in time for
ranking the whole substrate per request (GRC, NodeRank) or for
backtracking over it (RW-BFS), ours scores only a neighbourhood.
"""


if __name__ == "__main__":
    raise SystemExit(main())
