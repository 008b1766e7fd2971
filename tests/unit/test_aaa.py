"""End-user attachment's pieces without a lab: the RDL's attachment points,
the FreeRADIUS configurations (checked by FreeRADIUS itself), the VNO's user
store, the proxy's decision log and the accounting view."""

from __future__ import annotations

import argparse
import io
import shutil
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from vnetlib.aaa import daemons, radius
from vnetlib.aaa.access import UnknownHandle, find_segment, last_decision
from vnetlib.aaa.api import attached, user_xml, users_from
from vnetlib.aaa.daemons import tail_lines
from vnetlib.aaa.users import EndUser, UserError, UserStore, accounting, free_port
from vnetlib.cli.users import add_password_options, password_of
from vnetlib.core.records import Embedding, Sliver, State
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
@pytest.mark.parametrize("methods", [radius.DEFAULT_METHODS, ("ttls",), ("md5",),
                                     ("ttls", "peap", "md5")])
def test_freeradius_accepts_both_configurations(tmp_path: Path, tls: dict[str, radius.Tls],
                                                methods: tuple[str, ...]) -> None:
    server = radius.ServerConfig(tmp_path / "vno", ("127.0.0.1",), 20830, tls["vno"],
                                 methods=methods)
    conf = radius.server_conf(server)
    assert ("md5 {" in conf) == ("md5" in methods)  # MD5 only when asked for
    assert ("ttls {" in conf) == ("ttls" in methods)
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


def test_unknown_eap_methods_are_refused(tls: dict[str, radius.Tls]) -> None:
    for methods in ((), ("leap",)):
        with pytest.raises(ValueError, match="EAP methods"):
            radius.ServerConfig(Path("/nonexistent"), ("127.0.0.1",), 1, tls["vno"],
                                methods=methods)


LINK_DOC = """<?xml version="1.0"?>
<vnet xmlns="urn:vnet:rdl:1" version="1" name="seg">
  <node id="e1"/>
  <node id="e2"/>
  <link id="l1">
    <endpoint node="e1" interface="eth1"><address>198.19.0.1/24</address></endpoint>
    <endpoint node="e2" interface="eth1"><address>198.19.0.2/24</address></endpoint>
  </link>
  {attach}
</vnet>
"""


def test_link_attachment_points_parse_and_round_trip() -> None:
    text = LINK_DOC.replace(
        "{attach}", '<attach node="e1" link="l1" pool="198.19.0.128/25" realm="vno"/>')
    spec = parse_vnet(text.encode())
    assert [(a.node, a.link, a.pool) for a in spec.attachments] == [
        ("e1", "l1", "198.19.0.128/25")]
    assert parse_vnet(dump_vnet(spec)).attachments == spec.attachments


@pytest.mark.parametrize(("attach", "message"), [
    ('<attach node="e1" link="l9" pool="198.19.0.128/25" realm="vno"/>', "unknown link 'l9'"),
    ('<attach node="e1" link="l1" pool="198.19.9.0/25" realm="vno"/>', "not inside the subnet"),
    ('<attach node="e1" link="l1" pool="198.19.0.0/25" realm="vno"/>', "holds e1's address"),
])
def test_bad_link_attachment_points_are_refused(attach: str, message: str) -> None:
    with pytest.raises(SpecErrors) as err:
        parse_vnet(LINK_DOC.replace("{attach}", attach).encode())
    assert message in str(err.value)


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


# -- where an accept may lead (the realm check) ----------------------------------------


def sliver(name: str, attach: str, sliver_id: str = "s1") -> Sliver:
    return Sliver(sliver_id, "lab1", "vnp", name, State.READY, doc(attach).decode(),
                  Embedding({"e1": "h1", "e2": "h2"}, {}))


POINT = '<attach node="e1" pool="198.19.8.0/24" realm="vno"/>'


def test_an_accept_leads_to_its_realms_attachment_point() -> None:
    seg = find_segment([sliver("n7.1", POINT)], "lab1", "n7/e1", "vno")
    assert (seg.sliver, seg.node, seg.host_ns) == ("s1", "e1", "vl-lab1-h1")
    assert find_segment([sliver("n7", POINT)], "lab1", "n7/e1", "vno").sliver == "s1"


@pytest.mark.parametrize(("slivers", "handle", "realm", "message"), [
    ([sliver("n7.1", POINT)], "n7/e1", "vno2", "no attachment point of realm 'vno2'"),
    ([sliver("n7.1", POINT)], "n7/e2", "vno", "no attachment point"),  # e2 is not one
    ([sliver("n7.1", "")], "n7/e1", "vno", "no attachment point"),     # the VNet has none
    ([sliver("n77.1", POINT)], "n7/e1", "vno", "no VNet"),             # a longer name
    ([sliver("n7.1.2", POINT)], "n7/e1", "vno", "no VNet"),            # not <order>.<index>
    ([sliver("n7.x", POINT)], "n7/e1", "vno", "no VNet"),
    ([sliver("n7.1", POINT)], "n7", "vno", "not <vnet>/<node>"),
])
def test_an_accept_leads_nowhere_else(slivers: list[Sliver], handle: str, realm: str,
                                       message: str) -> None:
    with pytest.raises(UnknownHandle, match=message):
        find_segment(slivers, "lab1", handle, realm)


# -- files ------------------------------------------------------------------------------


def test_secrets_are_private_from_the_first_byte(tmp_path: Path,
                                                 tls: dict[str, radius.Tls]) -> None:
    proxy = radius.ProxyConfig(tmp_path / "pip", 21812, "s3cret",
                               (radius.HomeServer("vno", "127.0.0.1", 20830),), tls["pip1"])
    conf = radius.write(proxy.directory, radius.proxy_conf(proxy), "pip-radius")
    assert stat.S_IMODE(conf.stat().st_mode) == 0o600
    for d in (proxy.directory, proxy.directory / "log", proxy.directory / "run"):
        assert stat.S_IMODE(d.stat().st_mode) == 0o700
    assert not list(proxy.directory.glob(".*.tmp"))
    with pytest.raises(ValueError, match="single quote"):
        radius.users_pl(tmp_path / "it's" / "users.json")


def test_the_decision_log_is_read_from_its_tail(tmp_path: Path) -> None:
    old = "Access-Accept p-d1 02-00-00-00-00-01 vno n1/e1 198.19.8.0/24 60\n"
    (tmp_path / radius.DECISIONS_LOG).write_text(
        old + "x" * 300_000 + "\n" + old.replace("n1/e1", "n2/e1"))
    got = last_decision(tmp_path, "p-d1", "02:00:00:00:00:01")
    assert got is not None and got.handle == "n2/e1"
    assert tail_lines(tmp_path / radius.DECISIONS_LOG, 100) == [old.replace("n1", "n2").strip()]


# -- only PIPs talk RadSec to a VNO's server --------------------------------------------


def _acct(port: int, user: str) -> None:
    subprocess.run(["radclient", "-t", "2", "-r", "1", f"127.0.0.1:{port}", "acct", "s3cret"],
                   input=f"User-Name = {user}@vno, Acct-Status-Type = Start, "
                         f"NAS-Identifier = p-{user}, Acct-Session-Id = {user}\n",
                   capture_output=True, text=True, timeout=20, check=False)


@pytest.mark.skipif(shutil.which("freeradius") is None or shutil.which("radclient") is None,
                    reason="scripts/install-aaa.sh")
def test_only_pip_certificates_reach_the_vno(tmp_path: Path) -> None:
    """Accounting records sent through proxies holding different certificates:
    only the valid PIP's arrive (an SP's, a revoked PIP's, and a PIP expecting
    another server name do not)."""
    ca = LabCA.create(tmp_path / "ca", "test CA")
    creds = {}
    for name, role in (("vno", Role.VNO), ("pip1", Role.PIP), ("sp1", Role.SP),
                       ("pip2", Role.PIP)):
        creds[name] = ca.export(name, role, tmp_path / "creds" / name)
    ca.revoke("pip2")
    for name in creds:
        ca.copy_crl(tmp_path / "creds" / name)

    def tls(name: str) -> radius.Tls:
        c = creds[name]
        return radius.Tls(str(c.key_path), str(c.cert_path), str(c.ca_path),
                          str(tmp_path / "creds" / name / "crl.pem"))

    started: list[tuple[Path, str]] = []
    try:
        port = free_port("127.0.0.1")
        server = radius.ServerConfig(tmp_path / "vno", ("127.0.0.1",), port, tls("vno"))
        radius.write(server.directory, radius.server_conf(server), "vno-radius", tls("vno"))
        (server.directory / "users.pl").write_text(radius.users_pl(server.directory / "u.json"))
        _start(started, server.directory, "vno-radius")
        proxies: dict[str, tuple[int, Path]] = {}
        for user, cert, cn in (("good", "pip1", "vno"), ("sp", "sp1", "vno"),
                               ("revoked", "pip2", "vno"), ("othercn", "pip1", "other")):
            pport = free_port("127.0.0.1")
            while pport + 1 in {p for p, _ in proxies.values()} or pport + 1 == port:
                pport = free_port("127.0.0.1")
            home = radius.HomeServer("vno", "127.0.0.1", port, name=cn)
            cfg = radius.ProxyConfig(tmp_path / user, pport, "s3cret", (home,), tls(cert), 2)
            radius.write(cfg.directory, radius.proxy_conf(cfg), "pip-radius", tls(cert))
            _start(started, cfg.directory, "pip-radius")
            proxies[user] = (pport, cfg.directory)
        for user, (pport, _) in proxies.items():
            _acct(pport + 1, user)
        log = server.directory / radius.ACCOUNTING_LOG
        got = {line.split()[1] for line in log.read_text().splitlines()} if log.exists() else set()
        assert got == {"good@vno"}
    finally:
        for directory, conf in started:
            daemons.stop(directory / "run" / f"{conf}.daemon.pid", str(directory))


def _start(started: list[tuple[Path, str]], d: Path, name: str) -> None:
    started.append((d, name))
    daemons.start(["freeradius", "-f", "-d", str(d), "-n", name],
                  pidfile=d / "run" / f"{name}.daemon.pid", log=d / "log" / "out",
                  marker=str(d), settle=0.5)


def test_accounting_reads_what_was_appended_and_follows_rotation(tmp_path: Path) -> None:
    log = tmp_path / radius.ACCOUNTING_LOG
    assert accounting(tmp_path) == []
    log.write_text("Start alice@vno p-d1 02-00-00-00-00-01 s1 0 100\nStop alice@vno p-")
    assert [r["status"] for r in accounting(tmp_path)] == ["Start"]  # the half line waits
    with open(log, "a") as f:
        f.write("d1 02-00-00-00-00-01 s1 5 105\n")
    got = accounting(tmp_path)
    assert [(r["status"], r["port"], r["seconds"]) for r in got] == [
        ("Start", "p-d1", "0"), ("Stop", "p-d1", "5")]
    log.rename(tmp_path / "old.log")
    log.write_text("Start bob@vno p-d2 02-00-00-00-00-02 s2 0 200\n")
    assert [r["identity"] for r in accounting(tmp_path)] == ["bob@vno"]


def test_passwords_from_a_file_stdin_or_the_command_line(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    parser = argparse.ArgumentParser()
    add_password_options(parser)
    secret = tmp_path / "pw"
    secret.write_text("from-file\nignored\n")
    assert password_of(parser.parse_args(["--password-file", str(secret)])) == "from-file"
    monkeypatch.setattr(sys, "stdin", io.StringIO("from-stdin\n"))
    assert password_of(parser.parse_args(["--password", "-"])) == "from-stdin"
    assert password_of(parser.parse_args(["--password", "literal"])) == "literal"
    secret.write_text("\n")
    with pytest.raises(ValueError, match="no password"):
        password_of(parser.parse_args(["--password-file", str(secret)]))
    with pytest.raises(SystemExit):  # exactly one of the two
        parser.parse_args(["--password", "a", "--password-file", str(secret)])
