"""vnetlib.lab.remote: the command that reaches a host as Ansible does, read
from the lab's inventories and from the hen template."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import yaml

from vnetlib.lab import remote, sshd
from vnetlib.lab.layout import LabConfig, inventory_of

ROOT = Path(__file__).resolve().parents[2]


def test_a_netns_host_is_entered_with_nsenter(tmp_path: Path) -> None:
    inventory = tmp_path / "inventory.yml"
    inventory.write_text(yaml.safe_dump(inventory_of(LabConfig(name="ra"))))
    assert remote.command(inventory, "h2", ["ip", "link"]) == [
        "nsenter", "--net=/run/netns/vl-ra-h2", "--", "ip", "link"]


def test_an_ssh_lab_host_gets_the_pinned_options(tmp_path: Path) -> None:
    files = sshd.SshFiles(tmp_path / "ssh")
    config = LabConfig(name="rb", connection="ssh")
    inventory = tmp_path / "inventory.yml"
    inventory.write_text(yaml.safe_dump(inventory_of(
        config, lambda address: sshd.host_vars(files, address))))
    argv = remote.command(inventory, "h1", ["ip", "netns", "exec", "vn x", "true"])
    assert argv[0] == "ssh"
    assert argv[-2:] == [f"root@{config.mgmt_address(1)}", "ip netns exec 'vn x' true"]
    assert ["-i", str(files.client_key)] == argv[argv.index("-i"):argv.index("-i") + 2]
    assert f"UserKnownHostsFile={files.known_hosts}" in argv
    assert "StrictHostKeyChecking=yes" in argv and "BatchMode=yes" in argv
    assert not any("StrictHostKeyChecking=no" in a for a in argv)


def test_the_hen_template_resolves_group_vars_and_inventory_dir(tmp_path: Path) -> None:
    copy = tmp_path / "hen"
    shutil.copytree(ROOT / "inventories" / "hen", copy)
    argv = remote.command(copy / "hosts.yml", "hen-xen-03", ["uptime"])
    assert argv[-2:] == ["root@198.18.100.13", "uptime"]
    assert f"UserKnownHostsFile={copy}/ssh/known_hosts" in argv
    assert ["-i", f"{copy}/ssh/id_ed25519"] == argv[argv.index("-i"):argv.index("-i") + 2]
    with pytest.raises(remote.UnknownHost):
        remote.command(copy / "hosts.yml", "hen-xen-09", ["uptime"])
