"""Resource discovery: a VNP asking 16 PIPs for their advertisements in parallel.

    .venv/bin/python -m bench.players.discovery [--pips 16] [--hosts 64] [--rounds 20]

Starts --pips real PIP processes (`vnet serve --role pip`, mutual TLS, their
own stores) whose substrates are description files only (--hosts hosts each,
no kernel objects: an advertisement reads the substrate and the ledger), and
one VNP process with all of them as upstreams. Then, as another VNP (the
role a VNP serves advertisements to), it times:

- the VNP's own advertisement, GET /v1/advertisement, which asks every PIP
  in parallel and aggregates (what a VNP does at the start of every
  negotiation), over --rounds rounds;
- the same fan-out from this process (one thread per PIP, as the VNP does),
  against one PIP, and 16 PIPs asked one after the other.

Prints medians in milliseconds. Removes everything it started.
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from bench.speed.substrate import big_substrate
from vnetlib.lab import processes
from vnetlib.lab.players import hand_out
from vnetlib.players import config as player_config
from vnetlib.players import messages as m
from vnetlib.players.client import PlayerClient
from vnetlib.players.config import PipSection, PlayerConfig, Upstream, VnpSection
from vnetlib.players.pki import LabCA, Role, player_credentials
from vnetlib.spec.serialize import dump_substrate


class Players:
    """The processes this bench started, stopped by their pid files."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.ca = LabCA.create(root / "pki", "bench discovery CA")
        self.started: list[tuple[Path, Path]] = []
        for folder in ("players", "run", "log", "stores", "substrates"):
            (root / folder).mkdir()

    def start(self, cfg: PlayerConfig) -> str:
        path = self.root / "players" / f"{cfg.name}.toml"
        path.write_text(player_config.dump(cfg))
        pidfile = self.root / "run" / f"{cfg.name}.pid"
        self.started.append((pidfile, path))
        return processes.start(cfg.role.value, path, log=self.root / "log" / f"{cfg.name}.log",
                               pidfile=pidfile, ready=self.root / "run" / f"{cfg.name}.url",
                               timeout=120.0)

    def config(self, name: str, role: Role, **section: object) -> PlayerConfig:
        return PlayerConfig(name=name, role=role,
                            store=f"sqlite:///{self.root / 'stores' / f'{name}.db'}",
                            pki=hand_out(self.ca, self.root / "credentials" / name, name, role),
                            **section)  # type: ignore[arg-type]

    def pip(self, name: str, hosts: int) -> str:
        files = self.root / "substrates" / name
        files.mkdir()
        (files / "substrate.xml").write_bytes(dump_substrate(big_substrate(hosts)))
        (files / "inventory.yml").write_text("all:\n  hosts: {}\n")
        return self.start(self.config(name, Role.PIP, pip=PipSection(
            substrate=str(files / "substrate.xml"), inventory=str(files / "inventory.yml"))))

    def stop(self) -> None:
        for pidfile, path in self.started:
            processes.stop(pidfile, path)


def _timed(rounds: int, work: object) -> list[float]:
    samples = []
    for _ in range(rounds):
        start = time.perf_counter()
        work()  # type: ignore[operator]
        samples.append(time.perf_counter() - start)
    return samples


def measure(pips: int = 16, hosts: int = 64, rounds: int = 20) -> list[tuple[str, float]]:
    """(what, median seconds) of each way of asking; see the module's doc."""
    root = Path(tempfile.mkdtemp(prefix="vnet-discovery-"))
    players = Players(root)
    try:
        start = time.perf_counter()
        with ThreadPoolExecutor(max_workers=pips) as pool:
            names = [f"pip{i}" for i in range(1, pips + 1)]
            urls = dict(zip(names, pool.map(lambda n: players.pip(n, hosts), names),
                            strict=True))
        vnp_url = players.start(players.config("vnp", Role.VNP, vnp=VnpSection(
            upstreams=tuple(Upstream(n, u) for n, u in urls.items()))))
        print(f"{pips} PIPs ({hosts} hosts each) and a VNP started in "
              f"{time.perf_counter() - start:.1f} s", flush=True)
        me = hand_out(players.ca, root / "credentials" / "asker", "asker", Role.VNP)
        creds = player_credentials(me, "asker", Role.VNP)
        vnp = PlayerClient(vnp_url, creds, 30.0, expect_name="vnp")
        clients = {n: PlayerClient(u, creds, 30.0, expect_name=n) for n, u in urls.items()}

        def ask(name: str) -> m.Advertisement:
            reply = clients[name].get("/v1/advertisement")
            return m.advertisement_from(m.parse_reply(reply.body, "advertisement"))

        def fan_out() -> list[m.Advertisement]:
            with ThreadPoolExecutor(max_workers=len(clients)) as pool:
                return list(pool.map(ask, clients))

        def through_vnp() -> m.Advertisement:
            reply = vnp.get("/v1/advertisement")
            return m.advertisement_from(m.parse_reply(reply.body, "advertisement"))

        ad = through_vnp()
        cpu = sum(site.cpu for site in ad.sites)
        assert cpu == pips * hosts * 16.0, (cpu, ad)
        rows = [
            (f"VNP's advertisement (asks {pips} PIPs in parallel)", _timed(rounds, through_vnp)),
            (f"{pips} PIPs asked in parallel from here", _timed(rounds, fan_out)),
            (f"{pips} PIPs asked one after the other",
             _timed(max(1, rounds // 4), lambda: [ask(n) for n in clients])),
            ("one PIP", _timed(rounds, lambda: ask(names[0]))),
        ]
    finally:
        players.stop()
        shutil.rmtree(root, ignore_errors=True)
    return [(what, statistics.median(samples)) for what, samples in rows]


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.players.discovery")
    parser.add_argument("--pips", type=int, default=16)
    parser.add_argument("--hosts", type=int, default=64, help="hosts per PIP substrate")
    parser.add_argument("--rounds", type=int, default=20)
    args = parser.parse_args()
    rows = measure(args.pips, args.hosts, args.rounds)
    print(f"load average: {Path('/proc/loadavg').read_text().split()[:3]}")
    for what, seconds in rows:
        print(f"{what:58s} {seconds * 1000:8.1f} ms")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
