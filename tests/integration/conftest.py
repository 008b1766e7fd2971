"""Fixtures for the players' foundation: a lab CA with credentials for a few
players, a demo service served over real mutual TLS on 127.0.0.1, and a
private PostgreSQL started by scripts/postgres.sh for the session."""

from __future__ import annotations

import os
import secrets
import subprocess
import time
from collections.abc import Iterator, Mapping
from pathlib import Path

import pytest
from lxml import etree

from vnetlib.players.pki import Credentials, Identity, LabCA, Role
from vnetlib.players.server import (
    Conflict,
    Service,
    ServiceServer,
    parse_xml,
    require_owner,
    validate,
)

ROOT = Path(__file__).resolve().parents[2]
POSTGRES_SH = ROOT / "scripts" / "postgres.sh"
EXIT_CANNOT_INSTALL = 3

PLAYERS = {"pip1": Role.PIP, "vnp1": Role.VNP, "vno1": Role.VNO, "vno2": Role.VNO}

VNET_XSD = b"""<xs:schema xmlns:xs="http://www.w3.org/2001/XMLSchema"
    targetNamespace="urn:vnet:rdl:1" xmlns="urn:vnet:rdl:1" elementFormDefault="qualified">
  <xs:element name="vnet">
    <xs:complexType>
      <xs:sequence>
        <xs:element name="node" maxOccurs="unbounded">
          <xs:complexType><xs:attribute name="cpu" type="xs:positiveInteger" use="required"/>
          </xs:complexType>
        </xs:element>
      </xs:sequence>
      <xs:attribute name="id" type="xs:string" use="required"/>
    </xs:complexType>
  </xs:element>
</xs:schema>"""


@pytest.fixture(scope="session")
def lab_ca(tmp_path_factory: pytest.TempPathFactory) -> LabCA:
    return LabCA.create(tmp_path_factory.mktemp("pki") / "ca", "integration lab")


@pytest.fixture(scope="session")
def creds(lab_ca: LabCA) -> dict[str, Credentials]:
    return {name: lab_ca.issue(name, role) for name, role in PLAYERS.items()}


@pytest.fixture(scope="session")
def foreign_creds(tmp_path_factory: pytest.TempPathFactory) -> Credentials:
    other = LabCA.create(tmp_path_factory.mktemp("pki-other") / "ca", "another lab")
    return other.issue("vno1", Role.VNO)


class DemoService(Service):
    """A small PIP-like API: enough routes to exercise every error path."""

    def __init__(self) -> None:
        super().__init__("pip1")
        self.schema = etree.XMLSchema(etree.fromstring(VNET_XSD))
        self.owners = {"a": "vno1"}
        self.seen: list[Identity] = []
        self.add_route("GET", "/v1/vnets/{id}", self.get_vnet, roles={Role.VNO, Role.VNP})
        self.add_route("POST", "/v1/vnets", self.post_vnet, roles={Role.VNO})
        self.add_route("GET", "/v1/crash", self.crash)
        self.add_route("GET", "/v1/slow", self.slow)

    def get_vnet(self, caller: Identity, params: Mapping[str, str],
                 body: bytes) -> tuple[int, bytes]:
        self.seen.append(caller)
        require_owner(caller, self.owners.get(params["id"], ""), f"vnet {params['id']}")
        return 200, f'<vnet xmlns="urn:vnet:rdl:1" id="{params["id"]}"/>'.encode()

    def post_vnet(self, caller: Identity, params: Mapping[str, str],
                  body: bytes) -> tuple[int, bytes]:
        doc = parse_xml(body)
        validate(doc, self.schema)
        vnet_id = doc.get("id", "")
        if vnet_id in self.owners:
            raise Conflict(f"vnet {vnet_id} exists")
        self.owners[vnet_id] = caller.name
        return 201, body

    def crash(self, caller: Identity, params: Mapping[str, str],
              body: bytes) -> tuple[int, bytes]:
        raise RuntimeError("secret detail")

    def slow(self, caller: Identity, params: Mapping[str, str],
             body: bytes) -> tuple[int, bytes]:
        time.sleep(1.5)
        return 200, b"<ok/>"


@pytest.fixture
def server(creds: dict[str, Credentials]) -> Iterator[ServiceServer]:
    srv = ServiceServer(DemoService(), creds["pip1"], max_body=4096, timeout=3.0)
    with srv:
        yield srv


@pytest.fixture(scope="session")
def postgres_url() -> Iterator[str]:
    """A PostgreSQL URL: $VNET_TEST_POSTGRES_URL, or a private server started
    with scripts/postgres.sh for this session and purged at its end.

    Skips only if PostgreSQL is missing and cannot be installed here; on CI
    even that is a failure, since CI must test PostgreSQL.
    """
    if url := os.environ.get("VNET_TEST_POSTGRES_URL"):
        yield url
        return
    env = dict(os.environ, VNET_PG_DIR=f"/tmp/vnet-pg-{secrets.token_hex(4)}")
    run = subprocess.run([str(POSTGRES_SH), "start"], env=env, capture_output=True, text=True,
                         timeout=600, check=False)
    if run.returncode == EXIT_CANNOT_INSTALL and not os.environ.get("CI"):
        pytest.skip(f"PostgreSQL cannot be installed here: {run.stderr.strip()}")
    if run.returncode != 0:
        pytest.fail(f"scripts/postgres.sh start failed ({run.returncode}): {run.stderr}")
    try:
        yield run.stdout.strip().splitlines()[-1]
    finally:
        subprocess.run([str(POSTGRES_SH), "purge"], env=env, capture_output=True, timeout=120,
                       check=False)


from tests.integration.players_fixtures import players, substrates, vnet_home  # noqa: E402, F401
