"""An OpenSSH server in each lab host, for `vnet lab up --connection ssh`.

Each substrate host's namespace runs its own `sshd` on the management
network, listening on the host's management address only. Everything it
needs is made by the lab under the substrate's directory (`ssh/`), 0600 where
secret: one host key per host, one client key for the whole substrate (root's
only authorized key), a known_hosts file that pins every host key to its
address. No password is accepted anywhere. The inventory then uses Ansible's
standard `ssh` connection with host-key checking on, as for real machines.

sshd runs in the foreground (`-D`) in its own session; its pid is kept in a
file and checked against its command line (its configuration's path) before
anything is signalled, so `stop` only ever hits the lab's own daemons and the
per-connection sshd processes they forked.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from vnetlib import naming
from vnetlib.lab.layout import LabConfig

SSHD = "/usr/sbin/sshd"
SFTP_SERVER = "/usr/lib/openssh/sftp-server"
SSH_PORT = 22
KEY_TYPE = "ed25519"
HOST_PYTHON = "/usr/bin/python3"
START_TIMEOUT = 15.0
# What every host's inventory entry passes to ssh: the pinned keys, no
# password prompts, and dead peers noticed within seconds, never waited on.
CONNECT_TIMEOUT = 5
SERVER_ALIVE = (3, 2)  # ServerAliveInterval (s), ServerAliveCountMax
# One connection per host kept for a minute, every task multiplexed on it;
# Ansible's default adds -C, compression, which only costs CPU on a LAN.
SSH_ARGS = "-o ControlMaster=auto -o ControlPersist=60s"


class SshdError(RuntimeError):
    pass


@dataclass(frozen=True, slots=True)
class SshFiles:
    """Where one substrate's SSH material lives (`<substrate dir>/ssh`)."""

    directory: Path

    @property
    def client_key(self) -> Path:
        return self.directory / f"id_{KEY_TYPE}"

    @property
    def authorized_keys(self) -> Path:
        return self.directory / "authorized_keys"

    @property
    def known_hosts(self) -> Path:
        return self.directory / "known_hosts"

    @property
    def control_dir(self) -> Path:
        """ControlMaster sockets of Ansible's ssh connections to these hosts."""
        return self.directory / "cp"

    def host_dir(self, host: str) -> Path:
        return self.directory / "hosts" / host

    def host_key(self, host: str) -> Path:
        return self.host_dir(host) / f"ssh_host_{KEY_TYPE}_key"

    def config(self, host: str) -> Path:
        return self.host_dir(host) / "sshd_config"

    def pidfile(self, host: str) -> Path:
        return self.host_dir(host) / "sshd.pid"

    def log(self, host: str) -> Path:
        return self.host_dir(host) / "sshd.log"

    def hosts(self) -> list[str]:
        root = self.directory / "hosts"
        return sorted(p.name for p in root.iterdir() if p.is_dir()) if root.is_dir() else []


def files_of(substrate_dir: Path) -> SshFiles:
    return SshFiles(substrate_dir / "ssh")


def _keygen(path: Path, comment: str) -> None:
    if path.exists() and path.with_suffix(".pub").exists():
        return
    path.unlink(missing_ok=True)
    subprocess.run(["ssh-keygen", "-q", "-t", KEY_TYPE, "-N", "", "-C", comment, "-f", str(path)],
                   check=True, capture_output=True)
    path.chmod(0o600)


def _write_private(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as out:
        out.write(text)
    tmp.replace(path)


def sshd_config(files: SshFiles, host: str, address: str) -> str:
    """The host's sshd_config: its own key, key-only root login, nothing else."""
    lines = [
        f"ListenAddress {address}:{SSH_PORT}",
        f"HostKey {files.host_key(host)}",
        f"AuthorizedKeysFile {files.authorized_keys}",
        "PidFile none",
        "PermitRootLogin prohibit-password",
        "AllowUsers root",
        "PubkeyAuthentication yes",
        "PasswordAuthentication no",
        "KbdInteractiveAuthentication no",
        "HostbasedAuthentication no",
        "UsePAM no",
        # The lab's files live under $VNET_HOME, wherever that is (/tmp in
        # tests): the 0600 modes are set here, not checked along the path.
        "StrictModes no",
        "UseDNS no",
        "PrintMotd no",
        "MaxStartups 200:30:400",
        "MaxSessions 100",
        "LogLevel ERROR",
        f"Subsystem sftp {SFTP_SERVER}",
    ]
    return "\n".join(lines) + "\n"


@dataclass(frozen=True, slots=True)
class SshHost:
    """Where one sshd runs: the host's name, its network namespace and the
    management address it listens on."""

    name: str
    netns: str
    address: str


def lab_hosts(config: LabConfig) -> list[SshHost]:
    """The lab's substrate hosts, each in its namespace at its management address."""
    return [SshHost(host, naming.host_netns(config.name, host), config.mgmt_address(i))
            for i, host in enumerate(config.host_names, start=1)]


def prepare(lab: str, hosts: Sequence[SshHost], files: SshFiles) -> list[str]:
    """Keys, known_hosts and each host's sshd_config; idempotent."""
    created: list[str] = []
    files.host_dir("x").parent.mkdir(parents=True, exist_ok=True)
    files.directory.chmod(0o700)
    files.control_dir.mkdir(mode=0o700, exist_ok=True)
    if not files.client_key.exists():
        created.append(f"ssh client key {files.client_key}")
    _keygen(files.client_key, f"vnet lab {lab} operator")
    _write_private(files.authorized_keys, files.client_key.with_suffix(".pub").read_text())
    known = []
    for h in hosts:
        files.host_dir(h.name).mkdir(mode=0o700, exist_ok=True)
        if not files.host_key(h.name).exists():
            created.append(f"ssh host key of {lab}/{h.name}")
        _keygen(files.host_key(h.name), f"{lab}/{h.name}")
        kind, key = files.host_key(h.name).with_suffix(".pub").read_text().split()[:2]
        known.append(f"{h.address} {kind} {key}\n")
        _write_private(files.config(h.name), sshd_config(files, h.name, h.address))
    _write_private(files.known_hosts, "".join(known))
    return created


def _cmdline(pid: int) -> bytes:
    """The command line, NULs as spaces (sshd rewrites its own title)."""
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ")
    except OSError:
        return b""


def running(files: SshFiles, host: str) -> int | None:
    """The pid of the host's listening sshd, if it is ours and alive."""
    try:
        pid = int(files.pidfile(host).read_text().strip())
    except (OSError, ValueError):
        return None
    if f" {files.config(host)} ".encode() not in _cmdline(pid) + b" " or _state(pid) == "Z":
        return None
    return pid


def _state(pid: int) -> str:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return ""
    return stat.rsplit(")", 1)[1].split()[0]


def _children() -> dict[int, list[int]]:
    tree: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        tree.setdefault(ppid, []).append(int(entry.name))
    return tree


def _is_sshd(pid: int) -> bool:
    try:
        return os.readlink(f"/proc/{pid}/exe") == SSHD
    except OSError:
        return False


def daemon_pids(files: SshFiles, host: str) -> list[int]:
    """The host's sshd: the listener, then every sshd it forked (one per
    connection, and their privilege-separated children)."""
    top = running(files, host)
    if top is None:
        return []
    tree = _children()
    found, todo = [top], [top]
    while todo:
        for child in tree.get(todo.pop(), []):
            if _is_sshd(child):
                found.append(child)
                todo.append(child)
    return found


def _reap(pid: int) -> None:
    with contextlib.suppress(ChildProcessError):
        os.waitpid(pid, os.WNOHANG)


def _wait_gone(pids: Iterable[int], timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    left = set(pids)
    while left and time.monotonic() < deadline:
        for pid in list(left):
            _reap(pid)
            if _state(pid) in ("", "Z"):
                left.discard(pid)
        if left:
            time.sleep(0.02)
    return not left


def signal_host(files: SshFiles, host: str, signum: int) -> list[int]:
    """Send `signum` to the host's sshd processes (listener and connections);
    how a test freezes (SIGSTOP) or cuts off (SIGKILL) one host."""
    pids = daemon_pids(files, host)
    for pid in reversed(pids):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signum)
    return pids


def stop_host(files: SshFiles, host: str) -> bool:
    """Stop the host's sshd and its open connections; True if it ran."""
    pids = signal_host(files, host, signal.SIGKILL)
    files.pidfile(host).unlink(missing_ok=True)
    if pids:
        _wait_gone(pids, 5.0)
    return bool(pids)


def stop(files: SshFiles) -> list[str]:
    """Stop every sshd of the substrate (by pid)."""
    return [f"sshd of {files.directory.parent.name}/{h}" for h in files.hosts()
            if stop_host(files, h)]


def _listening(address: str) -> bool:
    with contextlib.suppress(OSError), socket.create_connection((address, SSH_PORT), 0.5) as s:
        s.settimeout(0.5)
        return s.recv(4).startswith(b"SSH-")
    return False


def start(config: LabConfig, files: SshFiles, timeout: float = START_TIMEOUT) -> list[str]:
    """Start the sshd of every lab host that does not run one (`start_hosts`)."""
    return start_hosts(config.name, lab_hosts(config), files, timeout)


def start_hosts(lab: str, hosts: Sequence[SshHost], files: SshFiles,
                timeout: float = START_TIMEOUT) -> list[str]:
    """Start the sshd of every host that does not run one, in its namespace;
    wait until each answers with its banner at its address. Idempotent."""
    if not os.access(SSHD, os.X_OK):
        raise SshdError(f"{SSHD} is missing: install openssh-server (scripts/install-ovs.sh)")
    created = prepare(lab, hosts, files)
    Path("/run/sshd").mkdir(mode=0o755, exist_ok=True)  # sshd's privilege-separation dir
    waiting: dict[str, tuple[str, subprocess.Popen[bytes]]] = {}
    for h in hosts:
        if running(files, h.name) is not None:
            continue
        with open(files.log(h.name), "ab") as log:
            proc = subprocess.Popen(
                ["nsenter", f"--net={Path('/run/netns') / h.netns}", "--",
                 SSHD, "-D", "-e", "-f", str(files.config(h.name))],
                stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        files.pidfile(h.name).write_text(f"{proc.pid}\n")
        waiting[h.name] = (h.address, proc)
    deadline = time.monotonic() + timeout
    while waiting:
        for host, (address, proc) in list(waiting.items()):
            if proc.poll() is not None:
                tail = files.log(host).read_text(errors="replace")[-1000:]
                raise SshdError(f"sshd of {lab}/{host} exited with {proc.returncode}: "
                                f"{tail.strip()}")
            if _listening(address):
                del waiting[host]
                created.append(f"sshd of {lab}/{host} at {address}")
        if waiting and time.monotonic() > deadline:
            raise SshdError(f"sshd did not answer within {timeout:.0f} s on: "
                            + ", ".join(f"{lab}/{h}" for h in sorted(waiting)))
        if waiting:
            time.sleep(0.02)
    return created


def host_vars(files: SshFiles, address: str) -> dict[str, Any]:
    """What a host's inventory entry needs to be reached over SSH."""
    return {
        "ansible_connection": "ansible.builtin.ssh",
        "ansible_host": address,
        "ansible_port": SSH_PORT,
        "ansible_user": "root",
        "ansible_ssh_private_key_file": str(files.client_key),
        "ansible_ssh_host_key_checking": True,
        "ansible_ssh_common_args": " ".join([
            f"-o UserKnownHostsFile={files.known_hosts}",
            "-o StrictHostKeyChecking=yes",
            "-o GlobalKnownHostsFile=/dev/null",
            "-o PasswordAuthentication=no",
            "-o KbdInteractiveAuthentication=no",
            "-o BatchMode=yes",
            "-o IdentitiesOnly=yes",
            f"-o ConnectTimeout={CONNECT_TIMEOUT}",
            f"-o ServerAliveInterval={SERVER_ALIVE[0]}",
            f"-o ServerAliveCountMax={SERVER_ALIVE[1]}",
        ]),
        "ansible_ssh_timeout": CONNECT_TIMEOUT,
        "ansible_ssh_args": SSH_ARGS,
        "ansible_control_path_dir": str(files.control_dir),
        "ansible_ssh_pipelining": True,
        "ansible_python_interpreter": HOST_PYTHON,
    }
