"""A player's configuration file (TOML): who it is, where it listens, its store,
its lab CA, and the section of its role.

```toml
name = "pip-a"                 # player name = certificate CN
role = "pip"                   # pip | vnp | vno
listen = "127.0.0.1:0"         # port 0: pick a free port
store = "sqlite:////var/lib/vnet/players/pip-a/state.db"   # or postgresql+psycopg://...
pki = "/var/lib/vnet/creds/pip-a"  # its own: pip-a.pem/.key, ca.pem, crl.pem; never ca.key
[pip]
substrate = "/var/lib/vnet/substrates/labp1/substrate.xml"
inventory = "/var/lib/vnet/substrates/labp1/inventory.yml"
price_per_cpu = 1.0
price_per_mbps = 0.01
reservation_seconds = 60
pool_size = "2"                # optional: booted VMs kept ready per host ("2" or "h1=2,h2=1")
pool_vcpus = 1                 # ... each of this size (a VM node takes one of its size)
pool_memory_mb = 128
pool_nics = 4                  # NICs each pool VM boots with (a take hot-plugs only more)
geni_sp_access = false         # true: SPs may use the GENI AM API here directly (VNPs always)
[vnp]
upstreams = [ { name = "pip-a", url = "https://127.0.0.1:40001" } ]
timeout = 30.0                 # a provider's short calls (timeouts.VNP_SHORT_CALL)
disclose_pips = false
retry_seconds = 2.0            # reconciler: first retry of a failed release, then doubling
retry_max_seconds = 120.0      # ... up to this
[vno]
vnp = { name = "vnp", url = "https://127.0.0.1:40003" }
max_price = 1000.0
timeout = 840.0                # a whole instantiation at the VNP (timeouts.VNO_TO_VNP)
retry_seconds = 2.0            # reconciler: first retry (unknown VNets, deletions)
retry_max_seconds = 120.0
ssh_listen = "127.0.0.1:0"     # optional: SSH front door to consoles (vnetlib/console/sshd.py)
web_listen = "127.0.0.1:0"     # optional: web console, noVNC (vnetlib/console/webconsole.py)
[server]
check_source_address = false   # true: a client's source address must be one its certificate
                               # names (on with `vnet lab up --players-apart`)
[faults]                       # fault injection, for tests only
fail_at = ""                   # "" | "quote" | "allocate" | "provision" (the PIP) |
                               # "vno-before-vnp" | "vno-after-vnp" | "vnp-after-allocate" |
                               # "vnp-after-provision" | "vnp-before-release" |
                               # "pip-during-deploy" | "pip-during-remove" | "pip-before-stitch"
stall_at = ""                  # same set: wait stall_seconds, then fail, instead of answering
stall_seconds = 30.0
```
"""

from __future__ import annotations

import json
import tomllib
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from vnetlib.players import timeouts
from vnetlib.players.pki import Role

FAULT_POINTS = ("", "quote", "allocate", "provision",
                # VNO and VNP points, for crash tests (see vnetlib/players/faultpoints.py)
                "vno-before-vnp", "vno-after-vnp", "vnp-after-allocate", "vnp-after-provision",
                "vnp-before-release",
                # PIP points: after a plan was applied, before the core records it;
                # before the stitching of a sliver's boundary links starts
                "pip-during-deploy", "pip-during-remove", "pip-before-stitch")


class ConfigError(ValueError):
    """The configuration file is wrong; the message names the file and the key."""


@dataclass(frozen=True, slots=True)
class Upstream:
    """Another player this one calls: its certificate name and its URL."""

    name: str
    url: str


@dataclass(frozen=True, slots=True)
class PipSection:
    substrate: str = ""  # the substrate's description (RDL file)
    inventory: str = ""  # the Ansible inventory of its hosts
    price_per_cpu: float = 1.0
    price_per_mbps: float = 0.0
    reservation_seconds: float = 60.0
    # The pool of booted VMs (vnetlib/core/pool.py): "" = $VNET_POOL_SIZE or none.
    pool_size: str = ""
    pool_vcpus: int = 1
    pool_memory_mb: int = 128
    pool_nics: int = 4
    # The GENI AM API (vnetlib/geni/am.py) serves VNPs only, like the PIP's own
    # API; true lets SP certificates allocate on this PIP directly too.
    geni_sp_access: bool = False

    def __post_init__(self) -> None:
        if not isinstance(self.geni_sp_access, bool):  # "false" would open it
            raise ConfigError(f"[pip] geni_sp_access: true or false, not "
                              f"{self.geni_sp_access!r}")


@dataclass(frozen=True, slots=True)
class VnpSection:
    upstreams: tuple[Upstream, ...] = ()
    timeout: float = timeouts.VNP_SHORT_CALL
    disclose_pips: bool = False
    reservation_seconds: float = 60.0
    price_per_cpu: float = 0.0  # the VNP's own margin, added when it acts as a PIP
    # The reconciler: first retry of a failed release after retry_seconds, then
    # doubling up to retry_max_seconds; the same period for its other rounds.
    retry_seconds: float = 2.0
    retry_max_seconds: float = 120.0


@dataclass(frozen=True, slots=True)
class VnoSection:
    vnp: Upstream | None = None
    max_price: float | None = None
    timeout: float = timeouts.VNO_TO_VNP  # bounds a whole instantiation through the VNP
    retry_seconds: float = 2.0  # the reconciler's first retry; doubling up to the max
    retry_max_seconds: float = 120.0
    ssh_listen: str = ""  # "HOST:PORT": an SSH front door to consoles; "": none
    web_listen: str = ""  # "HOST:PORT": the web console (noVNC over HTTPS); "": none


@dataclass(frozen=True, slots=True)
class ServerSection:
    """How the player's HTTPS server treats its callers."""

    check_source_address: bool = False


@dataclass(frozen=True, slots=True)
class Faults:
    """Fault injection for tests: fail or stall at one negotiation step."""

    fail_at: str = ""
    stall_at: str = ""
    stall_seconds: float = 30.0


@dataclass(frozen=True, slots=True)
class PlayerConfig:
    name: str
    role: Role
    store: str
    pki: Path
    listen: str = "127.0.0.1:0"
    pip: PipSection = field(default_factory=PipSection)
    vnp: VnpSection = field(default_factory=VnpSection)
    vno: VnoSection = field(default_factory=VnoSection)
    faults: Faults = field(default_factory=Faults)
    server: ServerSection = field(default_factory=ServerSection)

    @property
    def host(self) -> str:
        return self.listen.rsplit(":", 1)[0]

    @property
    def port(self) -> int:
        return int(self.listen.rsplit(":", 1)[1])


def _section(cls: type[Any], data: Any, where: str) -> Any:
    if not isinstance(data, dict):
        raise ConfigError(f"{where}: expected a table")
    known = {f.name for f in fields(cls)}
    unknown = sorted(set(data) - known)
    if unknown:
        raise ConfigError(f"{where}: unknown keys {', '.join(unknown)}")
    return data


def _upstream(data: Any, where: str) -> Upstream:
    d = _section(Upstream, data, where)
    if "name" not in d or "url" not in d:
        raise ConfigError(f"{where}: an upstream needs name and url")
    return Upstream(str(d["name"]), str(d["url"]))


def from_dict(data: dict[str, Any], source: str = "<config>") -> PlayerConfig:
    """Build and check a configuration from parsed TOML."""
    top = {"name", "role", "store", "pki", "listen", "pip", "vnp", "vno", "faults", "server"}
    unknown = sorted(set(data) - top)
    if unknown:
        raise ConfigError(f"{source}: unknown keys {', '.join(unknown)}")
    for key in ("name", "role", "store", "pki"):
        if key not in data:
            raise ConfigError(f"{source}: `{key}` is required")
    try:
        role = Role(data["role"])
    except ValueError:
        raise ConfigError(f"{source}: role {data['role']!r} is not pip, vnp or vno") from None
    if role is Role.SP:
        raise ConfigError(f"{source}: an SP is a client, not a served player")
    pip = _section(PipSection, data.get("pip", {}), f"{source} [pip]")
    vnp = dict(_section(VnpSection, data.get("vnp", {}), f"{source} [vnp]"))
    vnp["upstreams"] = tuple(_upstream(u, f"{source} [vnp] upstreams")
                             for u in vnp.get("upstreams", ()))
    vno = dict(_section(VnoSection, data.get("vno", {}), f"{source} [vno]"))
    if "vnp" in vno:
        vno["vnp"] = _upstream(vno["vnp"], f"{source} [vno] vnp")
    faults = _section(Faults, data.get("faults", {}), f"{source} [faults]")
    for key in ("fail_at", "stall_at"):
        if faults.get(key, "") not in FAULT_POINTS:
            raise ConfigError(f"{source} [faults] {key}: one of {FAULT_POINTS}")
    server = _section(ServerSection, data.get("server", {}), f"{source} [server]")
    if not isinstance(server.get("check_source_address", False), bool):
        raise ConfigError(f"{source} [server] check_source_address: true or false")
    listen = str(data.get("listen", "127.0.0.1:0"))
    if ":" not in listen or not listen.rsplit(":", 1)[1].isdigit():
        raise ConfigError(f"{source}: listen {listen!r} must be HOST:PORT")
    config = PlayerConfig(
        name=str(data["name"]), role=role, store=str(data["store"]), pki=Path(data["pki"]),
        listen=listen, pip=PipSection(**pip), vnp=VnpSection(**vnp), vno=VnoSection(**vno),
        faults=Faults(**faults), server=ServerSection(**server),
    )
    if role is Role.PIP and not (config.pip.substrate and config.pip.inventory):
        raise ConfigError(f"{source} [pip] substrate (an RDL substrate file) and inventory "
                          "(an Ansible inventory) are required for a PIP")
    if role is Role.VNP and not config.vnp.upstreams:
        raise ConfigError(f"{source} [vnp] upstreams: a VNP needs at least one")
    if role is Role.VNO and config.vno.vnp is None:
        raise ConfigError(f"{source} [vno] vnp is required for a VNO")
    return config


def load(path: Path | str) -> PlayerConfig:
    path = Path(path)
    try:
        data = tomllib.loads(path.read_text())
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: {exc}") from exc
    return from_dict(data, str(path))


def _value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, Upstream):
        return f"{{ name = {_value(value.name)}, url = {_value(value.url)} }}"
    if isinstance(value, tuple | list):
        return "[" + ", ".join(_value(v) for v in value) + "]"
    return json.dumps(str(value))  # a JSON string is a valid TOML basic string


def dump(config: PlayerConfig) -> str:
    """The TOML text that `load` reads back to an equal configuration."""
    lines = [f"name = {_value(config.name)}", f"role = {_value(config.role.value)}",
             f"listen = {_value(config.listen)}", f"store = {_value(config.store)}",
             f"pki = {_value(str(config.pki))}"]
    for section in ("pip", "vnp", "vno", "faults", "server"):
        value = getattr(config, section)
        lines.append(f"\n[{section}]")
        for f in fields(value):
            item = getattr(value, f.name)
            if item is not None:
                lines.append(f"{f.name} = {_value(item)}")
    return "\n".join(lines) + "\n"
