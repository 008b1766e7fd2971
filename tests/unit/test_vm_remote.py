"""The PIP's side of a VM's serial line and display on a host reached over
SSH (vnetlib.vm.remote): what an agent's exit means, the agent's source,
and a session whose SSH connection drops (the real VM path is
tests/e2e/test_vm_ssh.py). A stand-in for ssh runs a shell command here."""

from __future__ import annotations

import asyncio
import shlex
import shutil
from collections.abc import Sequence
from pathlib import Path

import pytest
import yaml

from vnetlib import hosts
from vnetlib.lab import sshd
from vnetlib.lab.layout import LabConfig, inventory_of
from vnetlib.vm import remote, serial, vnc


class Shell:
    """Reaches every host by running `script` here (in place of ssh)."""

    def __init__(self, script: str) -> None:
        self.script = script

    def remote(self, host: str) -> bool:
        return True

    def argv(self, host: str, argv: Sequence[str], *, tty: bool = False) -> list[str]:
        return ["sh", "-c", self.script]


class Local:
    """Reaches every host by running the agent's own command line here."""

    def remote(self, host: str) -> bool:
        return True

    def argv(self, host: str, argv: Sequence[str], *, tty: bool = False) -> list[str]:
        return list(argv)


@pytest.mark.parametrize(("code", "stderr", "kind", "text"), [
    (125, b"vnet-vm: busy: the serial console of d is in use\n", serial.SerialBusy, "in use"),
    (125, b"vnet-vm: serial: domain d is paused, not running\n", serial.SerialError, "paused"),
    (125, b"vnet-vm: vnc: domain d has no VNC display\n", vnc.VncError, "no VNC display"),
    (255, b"ssh: connect to host 198.18.1.1 port 22: Connection refused\n",
     remote.HostUnreachable, "host h7 cannot be reached over SSH: ssh: connect"),
    (1, b"Traceback ...\nNameError: x\n", serial.SerialError, "agent on host h7 failed"),
])
def test_an_agents_exit_names_its_reason(code: int, stderr: bytes, kind: type[Exception],
                                         text: str) -> None:
    error = remote.refusal("h7", code, stderr)
    assert type(error) is kind
    assert text in str(error)


def test_the_agent_is_standard_library_python() -> None:
    source = remote.agent_source()
    compile(source, "agent", "exec")
    assert "vnetlib" not in source.replace("vnetlib.vm.remote", "")


def test_a_host_that_is_not_remote_is_served_here() -> None:
    class Here(Local):
        def remote(self, host: str) -> bool:
            return False

    assert remote.remote_host(Here(), "h1") is None
    assert remote.remote_host(None, "h1") is None
    assert remote.remote_host(Local(), None) is None
    assert remote.remote_host(Local(), "h1") == "h1"


async def _drain(stream: remote.HostStream) -> bytes:
    got = b""
    while chunk := await asyncio.wait_for(stream.read(), 10):
        got += chunk
    return got


def test_a_dropped_connection_ends_a_serial_session_with_a_notice() -> None:
    async def session() -> bytes:
        reach = Shell("printf 'vnet-vm: ok\\n'; printf 'vm1# '; exit 255")
        stream = await remote.open_session(reach, "h1", "serial", "d")
        try:
            return await _drain(stream)
        finally:
            stream.close()
            await stream.wait_closed()

    assert asyncio.run(session()) == b"vm1# " + remote.DROPPED


def test_a_vnc_session_ends_without_bytes_of_ours_and_a_normal_end_without_notice() -> None:
    async def session(op: str, code: int) -> bytes:
        reach = Shell(f"printf 'vnet-vm: ok\\n'; printf 'RFB 003.008\\n'; exit {code}")
        stream = await remote.open_session(reach, "h1", op, "d")
        try:
            return await _drain(stream)
        finally:
            stream.close()
            await stream.wait_closed()

    assert asyncio.run(session("vnc", 255)) == b"RFB 003.008\n"
    assert asyncio.run(session("serial", 0)) == b"RFB 003.008\n"


def test_closing_a_session_ends_its_process_and_calls_back() -> None:
    closed: list[bool] = []

    async def session() -> int | None:
        reach = Shell("printf 'vnet-vm: ok\\n'; exec cat")
        stream = await remote.open_session(reach, "h1", "serial", "d",
                                           on_close=lambda: closed.append(True))
        stream.write(b"echo\n")
        await stream.drain()
        assert await asyncio.wait_for(stream.read(), 10) == b"echo\n"
        stream.close()
        await stream.wait_closed()
        return stream.proc.returncode

    assert asyncio.run(session()) == 0
    assert closed == [True]


def test_a_refusal_before_the_session_is_raised() -> None:
    async def session(script: str) -> None:
        await remote.open_session(Shell(script), "h3", "serial", "d")

    with pytest.raises(serial.SerialBusy):
        asyncio.run(session("echo 'vnet-vm: busy: in use' >&2; exit 125"))
    with pytest.raises(remote.HostUnreachable, match="host h3"):
        asyncio.run(session("echo 'ssh: connect: No route to host' >&2; exit 255"))


@pytest.mark.skipif(not shutil.which("virsh"), reason="virsh is not installed")
def test_the_agent_refuses_a_domain_the_hosts_libvirt_does_not_know() -> None:
    with pytest.raises(serial.SerialError) as refused:
        remote.run(Local(), "h1", "vnet-no-such-domain", ["true"], 5, 100)
    assert type(refused.value) is serial.SerialError
    assert "vnet-no-such-domain" in str(refused.value)


def test_an_agent_runs_with_the_hosts_interpreter_as_ansible_modules_do(tmp_path: Path) -> None:
    files = sshd.SshFiles(tmp_path / "ssh")
    inventory = tmp_path / "inventory.yml"
    inventory.write_text(yaml.safe_dump(inventory_of(
        LabConfig(name="rc", connection="ssh"), lambda address: sshd.host_vars(files, address))))
    python = hosts.host_vars(inventory, "h1")["ansible_python_interpreter"]
    assert python.startswith("/")
    line = hosts.Hosts(inventory).argv("h1", remote.agent_argv({"op": "run"}))
    assert line[0] == "ssh"
    assert shlex.split(line[-1])[:2] == [python, "-c"]
    assert shlex.split(line[-1])[2] == remote.agent_source()
    assert hosts.command(inventory, "h1", ("python3x", "-c", "1"))[-1] == "python3x -c 1"


def test_a_changed_inventory_is_read_again(tmp_path: Path) -> None:
    """Host variables are cached per file state: every exec and console asks."""
    inventory = tmp_path / "inventory.yml"
    inventory.write_text(yaml.safe_dump(inventory_of(LabConfig(name="rd"))))
    assert not hosts.is_ssh(inventory, "h1")
    files = sshd.SshFiles(tmp_path / "ssh")
    inventory.write_text(yaml.safe_dump(inventory_of(
        LabConfig(name="rd", connection="ssh"), lambda address: sshd.host_vars(files, address))))
    assert hosts.is_ssh(inventory, "h1")
    (tmp_path / "group_vars").mkdir()
    (tmp_path / "group_vars" / "all.yml").write_text("vnet_extra: 1\n")
    assert hosts.host_vars(inventory, "h1")["vnet_extra"] == 1
