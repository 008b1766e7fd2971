"""`vnet pki list|revoke|renew` as a process, on a lab's CA under $VNET_HOME."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from vnetlib.lab.apart import AddressedCA, cert_addresses
from vnetlib.lab.players import credentials_dir, hand_out, pki_dir
from vnetlib.players.pki import LabCA, PkiError, Role, check_source

# `vnet pki` as vnetlib/cli/main.py will run it once the verb is registered there.
PKI = ("import argparse, sys\n"
       "from vnetlib.cli import pki\n"
       "parser = argparse.ArgumentParser(); pki.add_parser(parser.add_subparsers())\n"
       "args = parser.parse_args(sys.argv[1:]); sys.exit(args.func(args))\n")


def vnet_pki(home: Path, *args: str) -> Any:
    proc = subprocess.run([sys.executable, "-c", PKI, "pki", *args, "--lab", "t", "--json"],
                          capture_output=True, text=True, timeout=60, check=False,
                          env={**os.environ, "VNET_HOME": str(home)})
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout)


def test_list_revoke_renew(tmp_path: Path) -> None:
    lab = tmp_path / "labs" / "t"
    ca = LabCA.create(pki_dir(lab), "vnet lab t CA")
    for name, role in (("pip1", Role.PIP), ("vnp", Role.VNP)):
        hand_out(ca, credentials_dir(lab, name), name, role)

    listed = vnet_pki(tmp_path, "list")
    assert sorted((c["name"], c["revoked_at"]) for c in listed) == [("pip1", None),
                                                                    ("vnp", None)]
    pip1 = next(c["serial"] for c in listed if c["name"] == "pip1")

    assert vnet_pki(tmp_path, "revoke", "pip1", "--reason", "key_compromise") == {
        "revoked": [pip1]}
    for name in ("pip1", "vnp"):
        crl = x509.load_pem_x509_crl((credentials_dir(lab, name) / "crl.pem").read_bytes())
        entry = crl.get_revoked_certificate_by_serial_number(int(pip1, 16))
        assert entry is not None, name

    renewed = vnet_pki(tmp_path, "renew", "vnp")
    given = x509.load_pem_x509_certificate((credentials_dir(lab, "vnp") / "vnp.pem").read_bytes())
    assert renewed["serial"] == f"{given.serial_number:x}"
    assert len(vnet_pki(tmp_path, "list")) == 3


def test_renew_keeps_the_address_of_a_player_apart(tmp_path: Path) -> None:
    lab = tmp_path / "labs" / "t"
    address = "198.18.203.11"
    ca = AddressedCA.create(pki_dir(lab), "vnet lab t CA")
    assert isinstance(ca, AddressedCA)
    ca.with_addresses({"pip1": (address,)})
    for name, role in (("pip1", Role.PIP), ("vnp", Role.VNP)):
        hand_out(ca, credentials_dir(lab, name), name, role)
    given = credentials_dir(lab, "pip1") / "pip1.pem"
    before = x509.load_pem_x509_certificate(given.read_bytes()).serial_number
    assert address in cert_addresses(given)

    renewed = vnet_pki(tmp_path, "renew", "pip1")
    cert = x509.load_pem_x509_certificate(given.read_bytes())
    assert cert.serial_number != before
    assert renewed["serial"] == f"{cert.serial_number:x}"
    assert sorted(cert_addresses(given)) == sorted(["127.0.0.1", address])
    listed = {c["serial"]: c for c in vnet_pki(tmp_path, "list")}
    assert listed[renewed["serial"]]["addresses"] == [address]
    assert listed[f"{before:x}"]["addresses"] == [address]
    # A player on loopback stays on loopback.
    vnet_pki(tmp_path, "renew", "vnp")
    assert cert_addresses(credentials_dir(lab, "vnp") / "vnp.pem") == ["127.0.0.1"]


def test_check_source_accepts_only_the_addresses_a_certificate_names(tmp_path: Path) -> None:
    ca = AddressedCA.create(pki_dir(tmp_path / "lab"), "vnet lab t CA")
    assert isinstance(ca, AddressedCA)
    ca.with_addresses({"vnp": ("198.18.203.2",)})
    creds = ca.issue("vnp", Role.VNP)
    der = x509.load_pem_x509_certificate(creds.cert_path.read_bytes()).public_bytes(
        serialization.Encoding.DER)
    for source in ("198.18.203.2", "127.0.0.1", "::ffff:198.18.203.2"):
        check_source(der, source)
    with pytest.raises(PkiError, match=r"source address 198\.18\.203\.1 is not one the "
                                       r"certificate of vnp:vnp names \(127\.0\.0\.1, "
                                       r"198\.18\.203\.2\)"):
        check_source(der, "198.18.203.1")
