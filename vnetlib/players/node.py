"""A player's management node from its configuration: the service of its role,
its credentials from the lab CA, and the HTTPS server it listens on."""

from __future__ import annotations

import contextlib
import os
import tempfile
import threading
from pathlib import Path
from typing import Protocol

from vnetlib.console.broker import ConsoleHub, attach_console
from vnetlib.console.sshd import SshFrontDoor, front_door
from vnetlib.console.webconsole import WebConsole, attach_web
from vnetlib.core.deployer import Deployer
from vnetlib.players.config import PlayerConfig
from vnetlib.players.pip import PipService
from vnetlib.players.pki import Credentials, Role, player_credentials
from vnetlib.players.server import Service, ServiceServer
from vnetlib.players.vno import VnoService
from vnetlib.players.vnp import VnpService


class PlayerService(Protocol):
    closing: threading.Event

    def close(self) -> None: ...


def credentials_for(config: PlayerConfig) -> Credentials:
    """The player's credentials from `pki`, a directory of its own holding
    `NAME.pem`, `NAME.key`, `ca.pem` and `crl.pem` (as `vnet lab up` and
    `LabCA.export` hand them out). A directory holding the CA key, or any
    other private key, is refused with an error naming the file."""
    return player_credentials(config.pki, config.name, config.role)


def build_service(config: PlayerConfig, credentials: Credentials, *,
                  deployer: Deployer | None = None) -> PipService | VnpService | VnoService:
    if config.role is Role.PIP:
        return PipService(config, credentials, deployer=deployer)
    if config.role is Role.VNP:
        return VnpService(config, credentials)
    return VnoService(config, credentials)


class ManagementNode:
    """A player's service listening with mutual TLS; `with` or start()/stop()."""

    def __init__(self, config: PlayerConfig, credentials: Credentials | None = None, *,
                 deployer: Deployer | None = None) -> None:
        self.config = config
        self.credentials = credentials or credentials_for(config)
        self.service: PipService | VnpService | VnoService = build_service(
            config, self.credentials, deployer=deployer)
        try:
            self.server = ServiceServer(self._as_service(), self.credentials,
                                        host=config.host, port=config.port, timeout=600.0,
                                        check_source=config.server.check_source_address)
            # Started here, since `vnet serve` runs the server without start();
            # stopped by interrupt() (which `vnet serve` calls at a signal) or stop().
            self.console: ConsoleHub = attach_console(self.service, self.credentials,
                                                      config).start()
            self.ssh: SshFrontDoor | None = None
            if isinstance(self.service, VnoService) and config.vno.ssh_listen:
                self.ssh = front_door(self.service, self.console, config).start()
            self.web: WebConsole | None = None
            if isinstance(self.service, VnoService) and config.vno.web_listen:
                self.web = attach_web(self.service, self.console, config,
                                      self.credentials).start()
        except BaseException:
            with contextlib.suppress(AttributeError):
                if self.ssh is not None:
                    self.ssh.stop()
            with contextlib.suppress(AttributeError):
                self.console.stop()
            self.service.close()
            raise
        if isinstance(self.service, VnpService):
            self.service.url = self.server.url
        if isinstance(self.service, PipService):
            self.service.geni.url = self.server.url + "/v1/geni/am/3"

    def _as_service(self) -> Service:
        return self.service

    @property
    def url(self) -> str:
        return self.server.url

    def start(self) -> ManagementNode:
        self.server.start()
        return self

    def interrupt(self) -> None:
        """Tell long handlers (injected stalls) to give up, so the server can stop;
        end the console sessions (each gets a notice)."""
        self.service.closing.set()
        if self.ssh is not None:
            self.ssh.stop()
        if self.web is not None:
            self.web.stop()
        self.console.stop()

    def stop(self) -> None:
        self.interrupt()
        self.server.stop()
        self.service.close()

    def __enter__(self) -> ManagementNode:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def write_ready_file(path: Path, url: str) -> None:
    """Write `url` to `path` atomically (a reader never sees half of it)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    with os.fdopen(fd, "w") as f:
        f.write(url + "\n")
    os.replace(tmp, path)
