"""Players over real lab substrates: two PIP substrates (namespaces), and
helpers that run PIPs, VNPs and a VNO in-process on real mutual TLS."""

from __future__ import annotations

import os
import secrets
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path

import pytest

from vnetlib import paths
from vnetlib.core.deployer import Deployer
from vnetlib.lab import exchange, kernel, manage
from vnetlib.lab.layout import LabConfig
from vnetlib.players import cgroups
from vnetlib.players.config import (
    Faults,
    PipSection,
    PlayerConfig,
    Upstream,
    VnoSection,
    VnpSection,
)
from vnetlib.players.node import ManagementNode
from vnetlib.players.pki import Credentials, LabCA, Role
from vnetlib.players.sp import ServiceProvider


@dataclass(frozen=True, slots=True)
class Substrates:
    a: str
    b: str


def namespaces(prefix: str) -> list[str]:
    out = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True, check=True)
    return sorted(line.split()[0] for line in out.stdout.splitlines()
                  if line.startswith(prefix))


@pytest.fixture(scope="session")
def vnet_home(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    home = tmp_path_factory.mktemp("vnet-home")
    old = os.environ.get("VNET_HOME")
    os.environ["VNET_HOME"] = str(home)
    try:
        yield home
    finally:
        if old is None:
            os.environ.pop("VNET_HOME", None)
        else:
            os.environ["VNET_HOME"] = old


@pytest.fixture(scope="session")
def substrates(vnet_home: Path) -> Iterator[Substrates]:
    """Two PIP substrates of 2 hosts, A at berlin/london and B at paris/madrid,
    joined by an exchange with border routing (so tunnels between them work)."""
    if os.geteuid() != 0:
        pytest.skip("lab substrates need root")
    tag = secrets.token_hex(2)
    k = 20 + secrets.randbelow(50)
    a, b, ix = f"p{tag}a", f"p{tag}b", f"p{tag}x"
    configs = [LabConfig(name=name, hosts=2, data_network=f"198.18.{net}.0/24",
                         mgmt_network=f"198.19.{net}.0/24", locations=locations)
               for name, net, locations in ((a, k, ("berlin", "london")),
                                            (b, k + 50, ("paris", "madrid")))]
    made: list[str] = []
    try:
        for config in configs:
            made.append(config.name)
            manage.up(config)
        exchange.up(ix, configs)
        yield Substrates(a, b)
    finally:
        for name in made:
            manage.down(name)
        kernel.down(ix)


@dataclass
class Players:
    """Management nodes started for one test; stopped (and checked) at its end."""

    ca: LabCA
    root: Path
    nodes: dict[str, ManagementNode] = field(default_factory=dict)
    store_url: str | None = None  # a PostgreSQL URL prefix, or SQLite files under root

    def creds(self, name: str, role: Role) -> Credentials:
        return self.ca.issue(name, role)

    def _store(self, name: str) -> str:
        if self.store_url is None:
            return f"sqlite:///{self.root / name / 'state.db'}"
        return self.store_url

    def config(self, name: str, role: Role, **sections: object) -> PlayerConfig:
        base = PlayerConfig(name=name, role=role, store=self._store(name), pki=self.ca.directory)
        return replace(base, **sections)  # type: ignore[arg-type]

    def start(self, config: PlayerConfig, deployer: Deployer | None = None) -> ManagementNode:
        node = ManagementNode(config, self.creds(config.name, config.role),
                              deployer=deployer).start()
        self.nodes[config.name] = node
        return node

    def pip(self, name: str, substrate: str, price: float = 1.0, mbps: float = 0.0,
            seconds: float = 60.0, faults: Faults | None = None,
            deployer: Deployer | None = None) -> ManagementNode:
        section = PipSection(substrate=str(paths.substrate_dir(substrate) / "substrate.xml"),
                             inventory=str(manage.inventory_path(substrate)),
                             price_per_cpu=price, price_per_mbps=mbps,
                             reservation_seconds=seconds)
        return self.start(self.config(name, Role.PIP, pip=section, faults=faults or Faults()),
                          deployer)

    def vnp(self, name: str, upstreams: list[str], timeout: float = 10.0,
            disclose: bool = False) -> ManagementNode:
        ups = tuple(Upstream(u, self.nodes[u].url) for u in upstreams)
        return self.start(self.config(name, Role.VNP, vnp=VnpSection(ups, timeout, disclose)))

    def vno(self, name: str, vnp: str, max_price: float | None = None) -> ManagementNode:
        up = Upstream(vnp, self.nodes[vnp].url)
        return self.start(self.config(name, Role.VNO, vno=VnoSection(up, max_price)))

    def sp(self, name: str, vno: str) -> ServiceProvider:
        return ServiceProvider(self.nodes[vno].url, self.creds(name, Role.SP), 300.0)

    def stop(self, name: str) -> None:
        self.nodes.pop(name).stop()

    def stop_all(self) -> None:
        for name in list(self.nodes)[::-1]:
            is_pip = self.nodes[name].config.role is Role.PIP
            self.stop(name)
            if is_pip:  # the confined processes of VNets a test left
                cgroups.clear(cgroups.service_parent(name))


@pytest.fixture
def players(lab_ca: LabCA, tmp_path: Path, substrates: Substrates) -> Iterator[Players]:
    p = Players(lab_ca, tmp_path)
    try:
        yield p
    finally:
        p.stop_all()
        for name in (substrates.a, substrates.b):
            # anything a test left behind on the substrates is removed, then reported
            left = namespaces(f"vn-{name}-")
            for ns in left:
                subprocess.run(["ip", "netns", "delete", ns], check=False)
