"""End-user attachment's pieces without a lab: the RDL's attachment points,
the FreeRADIUS configurations (checked by FreeRADIUS itself), the VNO's user
store, the proxy's decision log and the accounting view."""

from __future__ import annotations

import shutil
import stat
import subprocess
from pathlib import Path

import pytest

from vnetlib.aaa import radius
from vnetlib.aaa.access import last_decision
from vnetlib.aaa.api import attached, user_xml, users_from
from vnetlib.aaa.users import EndUser, UserError, UserStore
from vnetlib.players.pki import LabCA, Role
from vnetlib.spec import SpecErrors, dump_vnet, parse_vnet

DOC = """<?xml version="1.0"?>
<vnet xmlns="urn:vnet:rdl:1" version="1" name="att">
  <node id="e1"/>
  <node id="e2"/>
  <link id="l1">
    <endpoint node="e1" interface="eth1"/>
    <endpoint node="e2" interface="eth1"/>
  </link>
  {attach}
</vnet>
"""


def doc(attach: str) -> bytes:
    return DOC.replace("{attach}", attach).encode()


def test_attachment_points_parse_and_round_trip() -> None:
    spec = parse_vnet(doc('<attach node="e1" pool="198.19.8.0/24" realm="vno"/>'))
    assert [(a.node, a.pool, a.realm) for a in spec.attachments] == [
        ("e1", "198.19.8.0/24", "vno")]
    assert parse_vnet(dump_vnet(spec)).attachments == spec.attachments
    assert parse_vnet(doc("")).attachments == ()  # documents without them stay valid


@pytest.mark.parametrize(("attach", "message"), [
    ('<attach node="e9" pool="198.19.8.0/24" realm="vno"/>', "unknown node 'e9'"),
    ('<attach node="e1" pool="198.19.8.1/24" realm="vno"/>', "not an IPv4 network"),
    ('<attach node="e1" pool="198.19.8.0/31" realm="vno"/>', "not an IPv4 network"),
    ('<attach node="e1" pool="198.19.8.0/24" realm="vno"/>'
     '<attach node="e1" pool="198.19.9.0/24" realm="vno"/>', "second attachment point"),
    ('<attach node="e1" pool="198.19.8.0/24" realm="VNO!"/>', "realm"),
    ('<attach node="e1" realm="vno"/>', "pool"),
])
def test_bad_attachment_points_are_refused(attach: str, message: str) -> None:
    with pytest.raises(SpecErrors) as err:
        parse_vnet(doc(attach))
    assert message in str(err.value)


@pytest.fixture
def tls(tmp_path: Path) -> dict[str, radius.Tls]:
    ca = LabCA.create(tmp_path / "ca", "test CA")
    out = {}
    for name, role in (("vno", Role.VNO), ("pip1", Role.PIP)):
        creds = ca.export(name, role, tmp_path / "creds" / name)
        out[name] = radius.Tls(str(creds.key_path), str(creds.cert_path), str(creds.ca_path))
    return out


@pytest.mark.skipif(shutil.which("freeradius") is None, reason="scripts/install-aaa.sh")
def test_freeradius_accepts_both_configurations(tmp_path: Path,
                                                tls: dict[str, radius.Tls]) -> None:
    server = radius.ServerConfig(tmp_path / "vno", "127.0.0.1", 20830, tls["vno"])
    radius.write(server.directory, radius.server_conf(server), "vno-radius")
    (server.directory / "users.pl").write_text(radius.users_pl(server.directory / "u.json"))
    proxy = radius.ProxyConfig(tmp_path / "pip", 21812, "s3cret",
                               (radius.HomeServer("vno", "127.0.0.1", 20830),), tls["pip1"])
    radius.write(proxy.directory, radius.proxy_conf(proxy), "pip-radius")
    for d, name in ((server.directory, "vno-radius"), (proxy.directory, "pip-radius")):
        done = subprocess.run(["freeradius", "-XC", "-d", str(d), "-n", name],
                              capture_output=True, text=True, timeout=60)
        assert done.returncode == 0, done.stdout[-2000:]
        assert "Configuration appears to be OK" in done.stdout


def user(identity: str = "alice@vno", vnet: str = "v1") -> EndUser:
    return EndUser(identity, vnet, "e1", "n123/e1", "198.19.8.0/24")


def test_user_store(tmp_path: Path) -> None:
    store = UserStore(tmp_path, "vno")
    store.add(user(), "pw-1")
    store.add_many([(user("bob@vno", "v2"), "pw-2"), (user("carol@vno"), "pw-3")])
    assert [u.identity for u in store.all()] == ["alice@vno", "bob@vno", "carol@vno"]
    assert stat.S_IMODE(store.path.stat().st_mode) == 0o600
    with pytest.raises(UserError, match="exists"):
        store.add(user(), "pw")
    with pytest.raises(UserError, match="realm"):
        store.add(user("mallory@vno2"), "pw")
    with pytest.raises(UserError, match="password"):
        store.add(user("dave@vno"), 'has"quote')
    store.passwd("alice@vno", "new-pw")
    assert '"new-pw"' in store.path.read_text()
    assert store.remove_vnet("v1") == ["alice@vno", "carol@vno"]
    assert store.remove("bob@vno") and not store.remove("bob@vno")
    assert store.all() == []


def test_user_document_round_trip() -> None:
    body = user_xml("alice@vno", "pw", "v1", "e1", 30)
    assert users_from(body) == [{"identity": "alice@vno", "password": "pw", "vnet": "v1",
                                 "node": "e1", "session-timeout": "30"}]


def test_last_decision_of_a_port_and_device(tmp_path: Path) -> None:
    (tmp_path / radius.DECISIONS_LOG).write_text(
        "Access-Accept p-d1 AA-BB-CC-DD-EE-01 vno n1/e1 198.19.8.0/24 3600\n"
        "Access-Reject p-d2 AA-BB-CC-DD-EE-02 - - - 0\n"
        "Access-Reject p-d1 AA-BB-CC-DD-EE-01 vno - - 0\n")
    got = last_decision(tmp_path, "p-d1", "aa:bb:cc:dd:ee:01")
    assert got is not None and not got.accepted
    got = last_decision(tmp_path, "p-d2", "aa:bb:cc:dd:ee:02")
    assert got is not None and not got.accepted and got.realm == "-"
    assert last_decision(tmp_path, "p-d3", "aa:bb:cc:dd:ee:03") is None


def test_attached_means_started_and_not_stopped() -> None:
    records = [
        {"status": "Start", "identity": "a@vno", "port": "p-1", "session": "s1"},
        {"status": "Stop", "identity": "a@vno", "port": "p-1", "session": "s1"},
        {"status": "Start", "identity": "a@vno", "port": "p-1", "session": "s2"},
        {"status": "Start", "identity": "b@vno", "port": "p-2", "session": "s3"},
    ]
    assert [r["session"] for r in attached(records, {"a@vno"})] == ["s2"]
