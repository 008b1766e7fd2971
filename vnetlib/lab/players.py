"""The lab's management nodes: credentials from the lab's CA, one config file
per player, and the `vnet serve` processes, started PIPs first so that the VNP
knows their URLs, then the VNP, then the VNO."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from vnetlib import paths
from vnetlib.lab import processes
from vnetlib.players import cgroups
from vnetlib.players import config as player_config
from vnetlib.players.config import (
    PipSection,
    PlayerConfig,
    ServerSection,
    Upstream,
    VnoSection,
    VnpSection,
)
from vnetlib.players.pki import Credentials, LabCA, Role, identity_of_file
from vnetlib.players.sp import ServiceProvider

if TYPE_CHECKING:
    from vnetlib.lab import apart
    from vnetlib.lab.testbed import LabSpec

VNP_NAME = "vnp"
VNO_NAME = "vno"
SP_NAME = "sp"
PLAYERS_FILE = "players.json"


@dataclass(slots=True)
class Player:
    name: str
    role: str
    config: str
    url: str | None = None
    substrate: str | None = None
    netns: str | None = None  # players apart: the namespace of its management host

    def pidfile(self, directory: Path) -> Path:
        return directory / "run" / f"{self.name}.pid"

    def running(self, directory: Path) -> bool:
        return processes.running(self.pidfile(directory), Path(self.config)) is not None


def load_players(directory: Path) -> dict[str, Player]:
    path = directory / PLAYERS_FILE
    if not path.exists():
        return {}
    return {k: Player(**v) for k, v in json.loads(path.read_text()).items()}


def save_players(directory: Path, players: dict[str, Player]) -> None:
    path = directory / PLAYERS_FILE
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps({k: asdict(v) for k, v in players.items()}, indent=2) + "\n")
    tmp.replace(path)


def stop_players(directory: Path) -> list[str]:
    """Stop every player of the lab in `directory` that still runs."""
    stopped = []
    for player in load_players(directory).values():
        if processes.stop(player.pidfile(directory), Path(player.config)):
            stopped.append(f"process {player.name}")
        if player.role == Role.PIP.value:
            stopped += [f"confined tenant {t} of {player.name}"
                        for t in cgroups.clear(cgroups.service_parent(player.name))]
    return stopped


def pip_name(index: int) -> str:
    return f"pip{index}"


def pki_dir(directory: Path) -> Path:
    return directory / "pki"


def sp_credentials(directory: Path) -> Credentials:
    """The lab's service provider: whoever runs `vnet up` on this machine."""
    return LabCA.load(pki_dir(directory)).issue(SP_NAME, Role.SP)


def _start(
    directory: Path, cfg: PlayerConfig, players: dict[str, Player], substrate: str | None,
    netns: str | None = None,
) -> str | None:
    """Write the player's config and start it unless it already runs; returns
    what was created, for the change report."""
    run = directory / "run"
    path = directory / "players" / f"{cfg.name}.toml"
    pidfile = run / f"{cfg.name}.pid"
    known = players.get(cfg.name)
    text = player_config.dump(cfg)
    if known is not None and known.url and known.running(directory):
        if path.exists() and path.read_text() == text:
            return None
        processes.stop(pidfile, path)  # its upstreams moved: restart with their new URLs
    path.write_text(text)
    url = processes.start(
        cfg.role.value,
        path,
        log=directory / "log" / f"{cfg.name}.log",
        pidfile=pidfile,
        ready=run / f"{cfg.name}.url",
        netns=netns,
    )
    players[cfg.name] = Player(cfg.name, cfg.role.value, str(path), url, substrate, netns)
    return f"process {cfg.name} ({cfg.role.value}) at {url}"


def credentials_dir(directory: Path, name: str) -> Path:
    """The one directory a player of the lab reads its credentials from."""
    return directory / "credentials" / name


def hand_out(ca: LabCA, target: Path, name: str, role: Role) -> Path:
    """Give a player only its own key and certificate, the CA certificate and
    the CA's CRL, not the CA's key: a player cannot issue certificates."""
    ca.export(name, role, target)
    return target


def publish_crl(ca: LabCA, directory: Path) -> list[Path]:
    """Copy the CA's current CRL into every player's credential directory;
    running players read it before their next connection."""
    root = directory / "credentials"
    dirs = sorted(p for p in root.iterdir() if p.is_dir()) if root.is_dir() else []
    return [ca.copy_crl(d) for d in dirs]


def revoke(directory: Path, who: str | int, reason: str = "unspecified") -> list[int]:
    """Revoke a player's certificates (or one serial) in the lab at
    `directory` and hand the new CRL to every player; returns the serials."""
    ca = LabCA.load(pki_dir(directory))
    serials = ca.revoke(who, reason)
    publish_crl(ca, directory)
    return serials


def renew(directory: Path, name: str) -> Credentials:
    """A new key and certificate for a player of the lab at `directory`,
    handed to it at once (a running management node serves it from its next
    connection on; what it presents as a client changes on restart)."""
    ca = LabCA.load(pki_dir(directory))
    creds = ca.renew(name)
    target = credentials_dir(directory, name)
    if target.is_dir():
        ca.export(name, identity_of_file(creds.cert_path).role, target)
    return creds


def player_hosts(spec: LabSpec) -> dict[str, apart.PlayerHost]:
    """Where each player runs when the players are apart (`--players-apart`)."""
    from vnetlib.lab import apart  # the lab's kernel side: not for `vnet up`'s client
    net = apart.players_network(spec.name, spec.mgmt_offset, spec.pips)
    hosts = {pip_name(i): net.host(pip_name(i), sub, i)
             for i, sub in enumerate(spec.substrates(), start=1)}
    return {**hosts, VNP_NAME: net.host(VNP_NAME), VNO_NAME: net.host(VNO_NAME)}


def start_players(spec: LabSpec, directory: Path) -> list[str]:
    from vnetlib.lab import apart, manage
    for folder in ("players", "run", "log", "stores"):
        (directory / folder).mkdir(parents=True, exist_ok=True)
    created: list[str] = []
    hosts: dict[str, apart.PlayerHost] = {}
    if spec.players_apart:
        hosts = player_hosts(spec)
        net = apart.players_network(spec.name, spec.mgmt_offset, spec.pips)
        created += apart.up(net, list(hosts.values())).created
        ca = apart.AddressedCA.create(pki_dir(directory), f"vnet lab {spec.name} CA")
        if isinstance(ca, apart.AddressedCA):
            # The SP calls from the root namespace's address on the players network.
            ca.with_addresses({**{n: (h.address,) for n, h in hosts.items()},
                               SP_NAME: (net.gateway,)})
    else:
        ca = LabCA.create(pki_dir(directory), f"vnet lab {spec.name} CA")
    players = load_players(directory)

    def listen(name: str) -> str:
        return f"{hosts[name].address}:0" if name in hosts else "127.0.0.1:0"

    def netns(name: str) -> str | None:
        return hosts[name].netns if name in hosts else None

    def config(name: str, role: Role, **section: object) -> PlayerConfig:
        return PlayerConfig(
            name=name,
            role=role,
            store=f"sqlite:///{directory / 'stores' / f'{name}.db'}",
            pki=hand_out(ca, credentials_dir(directory, name), name, role),
            listen=listen(name),
            server=ServerSection(check_source_address=spec.players_apart),
            **section,  # type: ignore[arg-type]
        )

    def url(name: str) -> str:
        return str(players[name].url)

    try:
        for i, substrate in enumerate(spec.substrates(), start=1):
            files = paths.substrate_dir(substrate.name)
            pip = PipSection(substrate=str(files / manage.SUBSTRATE_FILE),
                             inventory=str(files / manage.INVENTORY_FILE), price_per_cpu=float(i))
            manage.set_manager(substrate.name, f"{pip_name(i)} of lab {spec.name}")
            if note := _start(directory, config(pip_name(i), Role.PIP, pip=pip), players,
                              substrate.name, netns(pip_name(i))):
                created.append(note)
        upstreams = tuple(Upstream(pip_name(i), url(pip_name(i))) for i in range(1, spec.pips + 1))
        vnp = config(VNP_NAME, Role.VNP, vnp=VnpSection(upstreams=upstreams))
        if note := _start(directory, vnp, players, None, netns(VNP_NAME)):
            created.append(note)
        vno = config(VNO_NAME, Role.VNO, vno=VnoSection(vnp=Upstream(VNP_NAME, url(VNP_NAME)),
                                                        web_listen=listen(VNO_NAME)))
        if note := _start(directory, vno, players, None, netns(VNO_NAME)):
            created.append(note)
        ca.issue(SP_NAME, Role.SP)
        publish_crl(ca, directory)
    finally:
        save_players(directory, players)
    return created


def service_provider(lab: str, timeout: float = 600.0) -> ServiceProvider:
    """The lab's SP, talking to the lab's VNO: how `vnet up` enters the chain."""
    directory = paths.lab_dir(lab)
    vno = load_players(directory).get(VNO_NAME)
    if vno is None or vno.url is None or not vno.running(directory):
        raise LookupError(
            f"lab {lab!r} runs no VNO; bring it up with players (`vnet lab up --name {lab}`)"
        )
    return ServiceProvider(vno.url, sp_credentials(directory), timeout, vno_name=VNO_NAME)
