"""Open vSwitch for one lab: its own ovsdb-server and ovs-vswitchd, with a
private run/db directory, started as processes vnet owns and stopped by pid.

Debian's openvswitch-switch service is never used (scripts/install-ovs.sh
keeps it from starting): each lab has a directory with ``conf.db``, the
database socket ``db.sock``, both daemons' control sockets, logs and pid files;
``OVS_RUNDIR`` points there too, so the bridges' ``.mgmt``/``.snoop`` sockets
land there and not in /var/run/openvswitch. The kernel datapath module is
missing on these machines, hence ``datapath_type=netdev`` (see
:data:`DATAPATH`) on every bridge.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

SCHEMA = Path("/usr/share/openvswitch/vswitch.ovsschema")
DATAPATH = "netdev"
_SUN_PATH_MAX = 107


class OvsError(RuntimeError):
    """Open vSwitch is missing, does not start, or its directory is unusable."""


@dataclass(frozen=True, slots=True)
class OvsInstance:
    """One lab's Open vSwitch: where it lives and (if running) its two pids."""

    rundir: Path
    netns: str | None = None

    @property
    def db_sock(self) -> Path:
        return self.rundir / "db.sock"

    @property
    def remote(self) -> str:
        """The OVSDB connection string for ovsdbapp / ovs-vsctl --db."""
        return f"unix:{self.db_sock}"

    def pid(self, daemon: str) -> int | None:
        """The running pid of ``ovsdb-server`` or ``ovs-vswitchd``, else None."""
        try:
            pid = int((self.rundir / f"{daemon}.pid").read_text().split()[0])
        except (OSError, ValueError, IndexError):
            return None
        return pid if _alive(pid, daemon) else None

    def running(self) -> bool:
        return self.pid("ovsdb-server") is not None and self.pid("ovs-vswitchd") is not None


def _alive(pid: int, daemon: str) -> bool:
    try:
        comm = Path(f"/proc/{pid}/comm").read_text().strip()
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return comm == daemon[:15] and state != "Z"


def find_tools() -> dict[str, str]:
    """Paths of the OVS programs vnet runs; OvsError naming the missing ones."""
    tools = {t: shutil.which(t) or "" for t in
             ("ovsdb-tool", "ovsdb-server", "ovs-vswitchd", "ovs-vsctl")}
    missing = [t for t, p in tools.items() if not p]
    if missing or not SCHEMA.is_file():
        raise OvsError(f"Open vSwitch is not installed ({', '.join(missing) or SCHEMA}): "
                       "run scripts/install-ovs.sh")
    return tools


def _argv(inst: OvsInstance, argv: list[str]) -> list[str]:
    return ["ip", "netns", "exec", inst.netns, *argv] if inst.netns else argv


def _wait_for(path: Path, proc: subprocess.Popen[bytes], what: str, timeout: float) -> None:
    end = time.monotonic() + timeout
    while not path.exists():
        if proc.poll() is not None:
            raise OvsError(f"{what} exited with {proc.returncode}; see {path.parent}")
        if time.monotonic() > end:
            raise OvsError(f"{what} did not create {path} within {timeout:.0f} s")
        time.sleep(0.02)


def _spawn(inst: OvsInstance, name: str, argv: list[str], env: dict[str, str]) -> int:
    log = (inst.rundir / f"{name}.out").open("ab")
    try:
        proc = subprocess.Popen(_argv(inst, argv), stdin=subprocess.DEVNULL, stdout=log,
                                stderr=log, env=env, start_new_session=True)
    finally:
        log.close()
    (inst.rundir / f"{name}.pid").write_text(f"{proc.pid}\n")
    ctl = inst.rundir / f"{name}.ctl"
    try:
        _wait_for(inst.db_sock if name == "ovsdb-server" else ctl, proc, name, 15.0)
    except OvsError:
        _kill(proc.pid, name)
        raise
    return proc.pid


def start(rundir: Path, netns: str | None = None) -> OvsInstance:
    """Start (or find running) the lab's ovsdb-server and ovs-vswitchd in
    ``rundir`` (made if missing), in ``netns`` if given. Idempotent."""
    tools = find_tools()
    rundir = rundir.resolve()
    inst = OvsInstance(rundir=rundir, netns=netns)
    if len(str(rundir / "ovs-vswitchd.ctl")) > _SUN_PATH_MAX - 20:
        raise OvsError(f"{rundir} is too long for the OVS unix sockets (keep it under 80 chars)")
    rundir.mkdir(parents=True, exist_ok=True)
    if inst.running():
        return inst
    stop(inst)
    env = {**os.environ, "OVS_RUNDIR": str(rundir), "OVS_LOGDIR": str(rundir),
           "OVS_DBDIR": str(rundir)}
    db = rundir / "conf.db"
    if not db.exists():
        subprocess.run([tools["ovsdb-tool"], "create", str(db), str(SCHEMA)], check=True,
                       capture_output=True, env=env)
    _spawn(inst, "ovsdb-server", [
        tools["ovsdb-server"], str(db), f"--remote=punix:{inst.db_sock}",
        f"--unixctl={rundir / 'ovsdb-server.ctl'}", f"--log-file={rundir / 'ovsdb-server.log'}",
    ], env)
    try:
        subprocess.run([tools["ovs-vsctl"], f"--db={inst.remote}", "--no-wait", "init"],
                       check=True, capture_output=True, env=env, timeout=15)
        _spawn(inst, "ovs-vswitchd", [
            tools["ovs-vswitchd"], inst.remote, f"--unixctl={rundir / 'ovs-vswitchd.ctl'}",
            f"--log-file={rundir / 'ovs-vswitchd.log'}",
        ], env)
    except (OvsError, subprocess.SubprocessError) as exc:
        stop(inst)
        raise OvsError(f"ovs-vswitchd in {rundir}: {exc}") from exc
    return inst


def _kill(pid: int, daemon: str, timeout: float = 5.0) -> None:
    if not _alive(pid, daemon):
        return
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGTERM)
    end = time.monotonic() + timeout
    while _alive(pid, daemon) and time.monotonic() < end:
        with contextlib.suppress(ChildProcessError):
            os.waitpid(pid, os.WNOHANG)
        time.sleep(0.02)
    if _alive(pid, daemon):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    with contextlib.suppress(ChildProcessError):
        os.waitpid(pid, 0)


def _exit_cleanly(inst: OvsInstance, pid: int) -> None:
    """Ask ovs-vswitchd to exit with ``--cleanup``: the userspace datapath's
    ports are tap devices, and a vswitchd merely terminated leaves them behind."""
    appctl = shutil.which("ovs-appctl")
    ctl = inst.rundir / "ovs-vswitchd.ctl"
    if appctl is None or not ctl.exists():
        return
    with contextlib.suppress(subprocess.SubprocessError, OSError):
        subprocess.run(_argv(inst, [appctl, "-t", str(ctl), "exit", "--cleanup"]),
                       capture_output=True, timeout=5.0, check=False)
    end = time.monotonic() + 5.0
    while _alive(pid, "ovs-vswitchd") and time.monotonic() < end:
        with contextlib.suppress(ChildProcessError):
            os.waitpid(pid, os.WNOHANG)
        time.sleep(0.02)


def stop(inst: OvsInstance) -> bool:
    """Stop both daemons by their recorded pids (vswitchd first, asked to
    remove its datapath ports). True if one was running. Keeps the database."""
    stopped = False
    for daemon in ("ovs-vswitchd", "ovsdb-server"):
        pid = inst.pid(daemon)
        if pid is not None:
            if daemon == "ovs-vswitchd":
                _exit_cleanly(inst, pid)
            _kill(pid, daemon)
            stopped = True
        for suffix in ("pid", "ctl"):
            with contextlib.suppress(FileNotFoundError):
                (inst.rundir / f"{daemon}.{suffix}").unlink()
    with contextlib.suppress(FileNotFoundError):
        inst.db_sock.unlink()
    return stopped
