"""One Click process per substrate host (stdlib only): start, stop, and hot swap
through its control socket, and the veth pairs of its link segments.

State of an instance (one per host; a lab host is a network namespace) lives
in ``<rundir>/<instance>/``: ``click.pid``, ``click.sock`` (the control socket,
a Unix socket: reachable from any namespace), ``click.log``, and one JSON
file per VNet under ``owners/`` with that VNet's segments. The running
configuration is the merge of every owner's segments; a VNet's deployment
changes only its own file, then the process gets the merged configuration
by a hot swap (``hotconfig``), so other VNets' segments keep running.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # mypy checks vnetlib, which loads this file from the checkout
    from vnetlib.click._render import ClickLink, render
else:
    try:
        from ansible_collections.vnet.infra.plugins.module_utils._click_config import (
            ClickLink,
            render,
        )
    except ImportError:  # loaded by path from vnetlib's checkout
        from vnetlib.click._render import ClickLink, render

RUNDIR = Path("/run/vnet/click")
CACHE = Path("/var/cache/vnet/click")
STATE_NAME = re.compile(r"[A-Za-z0-9_-][A-Za-z0-9._-]*")
"""VNet and instance names: one path part each, under the run directory."""


class ClickError(RuntimeError):
    """Click is missing, does not start, or refused a configuration."""


def find_click(explicit: str | None = None) -> str:
    """The click binary: `explicit`, $VNET_CLICK, or the newest build in the cache
    (scripts/install-click.sh)."""
    for cand in (explicit, os.environ.get("VNET_CLICK")):
        if cand:
            if not os.access(cand, os.X_OK):
                raise ClickError(f"click binary not executable: {cand}")
            return cand
    builds = sorted(CACHE.glob("*/bin/click"), key=lambda p: p.stat().st_mtime, reverse=True)
    if not builds:
        raise ClickError(f"Click is not installed (no {CACHE}/*/bin/click): "
                         "run scripts/install-click.sh")
    return str(builds[0])


def check_name(kind: str, name: object) -> str:
    """`name` if it can be one file or directory name of the state, else ClickError
    (a slash or a leading dot would lead out of the run directory)."""
    if not isinstance(name, str) or not STATE_NAME.fullmatch(name):
        raise ClickError(f"{kind} {name!r} is not a name of A-Z a-z 0-9 . _ - "
                         "(not starting with a dot)")
    return name


class Control:
    """A client of Click's ControlSocket protocol (version 1.3)."""

    def __init__(self, path: str | Path, timeout: float = 10.0) -> None:
        self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self._sock.settimeout(timeout)
        self._sock.connect(str(path))
        self._buf = b""
        greeting = self._line()
        if not greeting.startswith("Click::ControlSocket/"):
            raise ClickError(f"not a Click control socket: {greeting!r}")

    def close(self) -> None:
        self._sock.close()

    def __enter__(self) -> Control:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _fill(self) -> None:
        chunk = self._sock.recv(65536)
        if not chunk:
            raise ClickError("Click closed the control connection")
        self._buf += chunk

    def _line(self) -> str:
        while b"\r\n" not in self._buf:
            self._fill()
        line, self._buf = self._buf.split(b"\r\n", 1)
        return line.decode(errors="replace")

    def _status(self) -> tuple[int, str]:
        messages = []
        while True:
            line = self._line()
            code, sep, text = line[:3], line[3:4], line[4:]
            messages.append(text)
            if sep != "-":
                return int(code), "\n".join(m for m in messages if m)

    def read(self, handler: str) -> str:
        self._sock.sendall(f"READ {handler}\r\n".encode())
        code, text = self._status()
        if code >= 300:
            raise ClickError(f"reading {handler}: {code} {text}")
        line = self._line()
        if not line.startswith("DATA "):
            raise ClickError(f"reading {handler}: unexpected {line!r}")
        size = int(line[5:])
        while len(self._buf) < size:
            self._fill()
        data, self._buf = self._buf[:size], self._buf[size:]
        return data.decode(errors="replace")

    def write(self, handler: str, data: str = "") -> str:
        raw = data.encode()
        self._sock.sendall(f"WRITEDATA {handler} {len(raw)}\r\n".encode() + raw)
        code, text = self._status()
        if code >= 300:
            raise ClickError(f"writing {handler}: {code} {text}")
        return text


@dataclass(frozen=True, slots=True)
class Instance:
    """Where one host's Click process keeps its state."""

    name: str
    netns: str | None = None
    rundir: Path = RUNDIR

    def __post_init__(self) -> None:
        check_name("Click instance", self.name)

    @property
    def dir(self) -> Path:
        return self.rundir / self.name

    @property
    def sock(self) -> Path:
        return self.dir / "click.sock"

    @property
    def pidfile(self) -> Path:
        return self.dir / "click.pid"

    @property
    def log(self) -> Path:
        return self.dir / "click.log"

    @property
    def owners(self) -> Path:
        return self.dir / "owners"

    @contextmanager
    def locked(self) -> Iterator[None]:
        """Serializes changes of this instance (two VNets deployed at once).
        The directory of an instance left with no segment is removed under the
        lock (:meth:`remove`), so a lock taken on a file no longer linked there
        is taken again."""
        while True:
            self.owners.mkdir(parents=True, exist_ok=True)
            try:
                fh = open(self.dir / "lock", "a")  # noqa: SIM115 - held across the yield
            except FileNotFoundError:  # an empty run directory removed meanwhile
                continue
            try:
                fcntl.flock(fh, fcntl.LOCK_EX)
                try:
                    same = os.stat(self.dir / "lock").st_ino == os.fstat(fh.fileno()).st_ino
                except FileNotFoundError:
                    same = False
                if same:
                    try:
                        yield
                    finally:
                        fcntl.flock(fh, fcntl.LOCK_UN)
                    return
            finally:
                fh.close()

    def remove(self) -> None:
        """Removes the state directory of a stopped instance (under its lock),
        and the run directory when that leaves it empty (a host's directory
        of per-VNet instances)."""
        if self.pid() is None and not self.owner_links():
            shutil.rmtree(self.dir, ignore_errors=True)
            with contextlib.suppress(OSError):
                self.rundir.rmdir()

    def pid(self) -> int | None:
        """The running Click's pid, or None (a stale pid file is ignored)."""
        try:
            pid = int(self.pidfile.read_text().strip())
        except (OSError, ValueError):
            return None
        try:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        except OSError:
            return None
        return pid if str(self.sock).encode() in cmdline else None

    def running_config(self) -> str | None:
        """The configuration the running process holds (its ``config`` handler)."""
        if self.pid() is None:
            return None
        try:
            with Control(self.sock) as ctl:
                return ctl.read("config")
        except (OSError, ClickError):
            return None

    # owners: each VNet's segments
    def owner_links(self) -> dict[str, tuple[ClickLink, ...]]:
        out = {}
        if self.owners.is_dir():
            for f in sorted(self.owners.glob("*.json")):
                out[f.stem] = tuple(ClickLink(**d) for d in json.loads(f.read_text()))
        return out

    def set_owner(self, owner: str, links: Sequence[ClickLink]) -> None:
        check_name("VNet", owner)
        self.owners.mkdir(parents=True, exist_ok=True)
        path = self.owners / f"{owner}.json"
        if links:
            tmp = path.with_suffix(".tmp")
            tmp.write_text(json.dumps([asdict(lk) for lk in links], indent=1))
            tmp.replace(path)
        else:
            path.unlink(missing_ok=True)

    def start(self, config: str, click: str, timeout: float = 10.0) -> int:
        """Starts Click in the instance's namespace with `config`, hot swap allowed."""
        self.dir.mkdir(parents=True, exist_ok=True)
        self.sock.unlink(missing_ok=True)
        conf = self.dir / "initial.click"
        conf.write_text(config)
        argv = [click, "-R", "-u", str(self.sock), "-f", str(conf)]
        if self.netns:
            argv = ["ip", "netns", "exec", self.netns, *argv]
        with open(self.log, "ab") as log:
            proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=log, stderr=log,
                                    start_new_session=True, close_fds=True)
        self.pidfile.write_text(f"{proc.pid}\n")
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                raise ClickError(f"click exited with {proc.returncode}: {self._log_tail()}")
            if self.sock.exists():
                try:
                    Control(self.sock, timeout=2).close()
                    return proc.pid
                except OSError:
                    pass
            time.sleep(0.05)
        self.stop()
        raise ClickError(f"click did not open {self.sock} in {timeout:g} s: {self._log_tail()}")

    def _log_tail(self) -> str:
        try:
            return " | ".join(self.log.read_text(errors="replace").strip().splitlines()[-5:])
        except OSError:
            return ""

    def hotswap(self, config: str) -> None:
        """Installs `config` in the running process (Click keeps the old one if the
        new one does not initialize, and says why)."""
        with Control(self.sock) as ctl:
            ctl.write("hotconfig", config)
            now = ctl.read("config")
        if now.strip() != config.strip():
            raise ClickError(f"hot swap not applied: {self._log_tail()}")

    def stop(self, timeout: float = 5.0) -> bool:
        pid = self.pid()
        if pid is None:
            self.pidfile.unlink(missing_ok=True)
            return False
        os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and Path(f"/proc/{pid}").exists():
            if _reap(pid):
                break
            time.sleep(0.05)
        else:
            if Path(f"/proc/{pid}").exists():
                os.kill(pid, signal.SIGKILL)
                _reap(pid)
        self.pidfile.unlink(missing_ok=True)
        self.sock.unlink(missing_ok=True)
        return True


def _reap(pid: int) -> bool:
    """Collects `pid` if it is our child; True once it is gone."""
    try:
        done = os.waitpid(pid, os.WNOHANG)[0]
        return done == pid
    except ChildProcessError:
        state = _proc_state(pid)
        return state in (None, "Z")


def _proc_state(pid: int) -> str | None:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return None


# devices: one veth pair per segment, the bridge end on the link's bridge

def _ip(netns: str | None, *args: str) -> list[str]:
    return ["ip", *(("-n", netns) if netns else ()), *args]


def read_links(netns: str | None) -> dict[str, dict[str, object]]:
    """Interfaces of the namespace by name (``ip -json -details link show``)."""
    out = subprocess.run(_ip(netns, "-json", "-details", "link", "show"), check=True,
                         capture_output=True, text=True).stdout
    return {d["ifname"]: d for d in json.loads(out or "[]")}


def make_commands(want: Sequence[ClickLink], have: dict[str, dict[str, object]],
                  netns: str | None, mtu: int = 1500) -> list[list[str]]:
    """The ``ip`` commands, in the order they must run, that make `want`'s veth
    pairs (and their bridges if missing); a pair with one end missing is
    deleted and made again (pure)."""
    cmds: list[list[str]] = []
    made: set[str] = set()
    for lk in want:
        if lk.bridge not in have and lk.bridge not in made:
            cmds.append(_ip(netns, "link", "add", lk.bridge, "type", "bridge"))
            cmds.append(_ip(netns, "link", "set", lk.bridge, "up"))
            made.add(lk.bridge)
        dev = have.get(lk.device)
        fresh = dev is None or lk.click_device not in have
        if fresh:
            for name in (lk.device, lk.click_device):
                if name in have:
                    cmds.append(_ip(netns, "link", "del", name))
            cmds.append(_ip(netns, "link", "add", lk.device, "mtu", str(mtu), "type", "veth",
                            "peer", "name", lk.click_device, "mtu", str(mtu)))
            dev = {}
        if dev is None or dev.get("master") != lk.bridge:
            cmds.append(_ip(netns, "link", "set", lk.device, "master", lk.bridge))
        for name in (lk.device, lk.click_device):
            flags = {} if fresh else have.get(name, {})
            up = flags.get("flags", [])
            if not isinstance(up, list) or "UP" not in up:
                cmds.append(_ip(netns, "link", "set", name, "up"))
    return cmds


def drop_commands(drop: Sequence[ClickLink], want: Sequence[ClickLink],
                  have: dict[str, dict[str, object]], netns: str | None) -> list[list[str]]:
    """The ``ip`` commands that delete `drop`'s veth pairs not in `want` (pure)."""
    keep = {lk.device for lk in want}
    return [_ip(netns, "link", "del", lk.device) for lk in drop
            if lk.device in have and lk.device not in keep]


def device_commands(want: Sequence[ClickLink], drop: Sequence[ClickLink],
                    have: dict[str, dict[str, object]], netns: str | None,
                    mtu: int = 1500) -> list[list[str]]:
    """Every device command of a change: making `want`, then deleting `drop`."""
    return make_commands(want, have, netns, mtu) + drop_commands(drop, want, have, netns)


def run_commands(cmds: Sequence[Sequence[str]]) -> None:
    for cmd in cmds:
        res = subprocess.run(list(cmd), capture_output=True, text=True, check=False)
        if res.returncode != 0:
            raise ClickError(f"{' '.join(cmd)}: {res.stderr.strip()}")


_TX_CSUM_OFF = """
import ctypes, fcntl, socket, struct, sys
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
for name in sys.argv[1:]:
    val = ctypes.create_string_buffer(struct.pack("II", 0x17, 0))  # ETHTOOL_STXCSUM, off
    fcntl.ioctl(s.fileno(), 0x8946, struct.pack("16sP", name.encode(), ctypes.addressof(val)))
"""


def tx_checksum_off(netns: str | None, names: Sequence[str]) -> None:
    """Turns off transmit checksum offload on the bridge ends of the segments'
    veth pairs, so the kernel fills in checksums (and segments TSO/GSO
    packets) before frames reach Click's packet socket: Click forwards frames
    as it reads them, and a partial checksum would arrive broken."""
    argv = [sys.executable, "-c", _TX_CSUM_OFF, *names]
    if netns:
        argv = ["ip", "netns", "exec", netns, *argv]
    res = subprocess.run(argv, capture_output=True, text=True, check=False)
    if res.returncode != 0:
        raise ClickError(f"turning off tx checksum offload on {names}: {res.stderr.strip()}")


def quiet_ipv6(netns: str | None, names: Sequence[str]) -> None:
    """No IPv6 autoconfiguration traffic from the segment's own veth ends."""
    for name in names:
        argv = ["sysctl", "-q", "-w", f"net.ipv6.conf.{name}.disable_ipv6=1"]
        if netns:
            argv = ["ip", "netns", "exec", netns, *argv]
        subprocess.run(argv, capture_output=True, check=False)


@dataclass(frozen=True, slots=True)
class Outcome:
    changed: bool
    before: str
    after: str
    commands: tuple[tuple[str, ...], ...]
    action: str  # none | start | hotswap | stop


def apply(inst: Instance, owner: str, links: Sequence[ClickLink], *, present: bool,
          click: str | None, port: int, check_mode: bool) -> Outcome:
    """Makes `owner`'s segments on the instance `links` (or none when not
    `present`), with one configuration change of the running Click."""
    check_name("VNet", owner)
    if not present and not inst.dir.is_dir():
        # no state: no Click holds these segments (one that never started, as
        # in the rollback of a failed start); their veth pairs still go
        have = read_links(inst.netns)
        cmds = drop_commands(links, (), have, inst.netns)
        if not check_mode:
            run_commands(cmds)
        return Outcome(bool(cmds), "", "", tuple(tuple(c) for c in cmds), "none")
    with inst.locked():
        owners = inst.owner_links()
        old_mine = owners.get(owner, ())
        mine = tuple(links) if present else ()
        owners[owner] = mine
        every = [lk for o in sorted(owners) for lk in owners[o]]
        after = render(every, port=port) if every else ""
        running = inst.running_config()
        before = running or ""
        have = read_links(inst.netns)
        dropped = [lk for lk in old_mine if lk.device not in {m.device for m in mine}]
        add_cmds = make_commands(mine, have, inst.netns)
        del_cmds = drop_commands(dropped, mine, have, inst.netns)
        dev_cmds = add_cmds + del_cmds
        if not every:
            action = "stop" if running is not None else "none"
        elif running is None:
            action = "start"
        elif running.strip() != after.strip():
            action = "hotswap"
        else:
            action = "none"
        changed = action != "none" or bool(dev_cmds) or old_mine != mine
        if check_mode or not changed:
            return Outcome(changed, before, after, tuple(tuple(c) for c in dev_cmds), action)
        try:
            run_commands(add_cmds)
            quiet_ipv6(inst.netns, [n for lk in mine for n in (lk.device, lk.click_device)])
            if mine:
                tx_checksum_off(inst.netns, [lk.device for lk in mine])
            if action == "start":
                inst.start(after, find_click(click))
            elif action == "hotswap":
                inst.hotswap(after)
        except ClickError:
            new = {lk.device for lk in mine
                   if lk.device not in have or lk.click_device not in have}
            run_commands([_ip(inst.netns, "link", "del", d) for d in sorted(new)
                          if d in read_links(inst.netns)])
            raise
        if action == "stop":
            inst.stop()
        run_commands(del_cmds)
        inst.set_owner(owner, mine)
        if not every:
            inst.remove()
        return Outcome(True, before, after, tuple(tuple(c) for c in dev_cmds), action)
