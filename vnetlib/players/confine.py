"""Commands of customers confined per tenant (per VNet) on a PIP host.

A command runs in a virtual node's network namespace and, for everything
else, in a small sandbox of its own:

- cgroups: the tenant's memory, pids and CPU limits (shared by its concurrent
  execs), one leaf cgroup per exec; the first process of the exec joins them
  before anything of the customer runs, so every descendant is counted;
- a PID namespace whose init (a root `sh`) starts the command and exits with
  it: the kernel then kills every other process of the namespace, so
  backgrounded and daemonized processes die with their exec, never outlive
  it; at a timeout, an output cap, `kill` or `remove`, the cgroup is killed
  whole (cgroup.kill, or freeze + SIGKILL + thaw on a v1-only host);
- a mount namespace: every writable mount of the host read-only, fresh
  tmpfs on /tmp, /var/tmp, /dev/shm, /dev/mqueue and /run/lock, the PIP's
  state ($VNET_HOME, /var/lib/vnet, /root, /home, /etc/ssl/private,
  /run/netns, the confinement's own directory) covered by an empty mode-000
  tmpfs, sysfs of the node's network, /proc of the new PID namespace showing
  only the tenant's own processes (hidepid=2: not even the root init); plus
  new IPC, UTS and cgroup namespaces;
- an unprivileged uid/gid per tenant (200000 + hash % 100000, collisions
  probed and recorded in `uids.json` under the confinement's directory), no
  capabilities, no supplementary groups, no_new_privs (set-uid bits and file
  capabilities are ignored; ping then uses an unprivileged ICMP socket, which
  net.ipv4.ping_group_range of the node's namespace allows);
- an empty environment but PATH, HOME=/tmp and LANG.

A node on a host reached over SSH (a `Reach`, the PIP's inventory: see
`vnetlib.hosts`) gets the same sandbox on that host: the command line is
built there by a small agent (this module's `command` and `writable_mounts`
with `cgroups`, sent as `python3 -c`, standard library only) that makes the
tenant's cgroups with their limits on the host, reads the host's mounts and
execs the same chain; killing and removing go to the host the same way.
Nothing enters the node's namespace from the player's own machine.

Output is read as it comes; at `output_bytes` (stdout and stderr together)
the exec is killed and its result marked truncated, so the caller's memory
stays bounded whatever the command prints.
"""

from __future__ import annotations

import contextlib
import fcntl
import functools
import hashlib
import inspect
import json
import os
import re
import secrets
import selectors
import subprocess
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from vnetlib import paths
from vnetlib.players import cgroups

UID_BASE = 200_000
UID_SPAN = 100_000
TENANT = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")
READ_CHUNK = 65536
DRAIN_WAIT = 2.0
TIMED_OUT_CODE = 124
REMOVE_ATTEMPTS = 3
ENV = {"PATH": "/usr/local/bin:/usr/bin:/bin:/usr/local/sbin:/usr/sbin:/sbin",
       "HOME": "/tmp", "LANG": "C.UTF-8"}
HIDDEN = (Path("/var/lib/vnet"), Path("/root"), Path("/home"), Path("/etc/ssl/private"),
          Path("/run/netns"))
PSEUDO_FS = frozenset({"proc", "sysfs", "cgroup", "cgroup2", "devpts", "devtmpfs",
                       "mqueue", "nsfs", "bpf", "tracefs", "debugfs", "securityfs",
                       "pstore", "configfs", "fusectl", "hugetlbfs", "autofs",
                       "binfmt_misc", "efivarfs"})
KERNEL_TREES = (Path("/proc"), Path("/sys"), Path("/dev"))
AGENT_REFUSED = 125
AGENT_MARK = b"vnet-confine: "
AGENT_TIMEOUT = 30.0
SSH_FAILED = 255

# Run by the exec's first process in the node's network namespace: join the
# exec's cgroups (arguments up to "--"), allow unprivileged ping, go on.
# Any failure stops the exec: a command never runs outside its cgroups.
JOIN = r"""
set -e
for f; do shift; [ "$f" = -- ] && break; echo $$ > "$f"; done
echo "0 2147483647" > /proc/sys/net/ipv4/ping_group_range
exec "$@"
"""

# Pid 1 of the exec's PID namespace, root in a private mount namespace.
# Arguments: tmpfs size, mounts to make read-only, "--", paths to hide, "--",
# the command (setpriv ...). Its exit kills whatever the command left behind.
INIT = r"""
set -e
size=$1; shift
while [ "$1" != -- ]; do mount -o remount,bind,ro "$1"; shift; done; shift
while [ "$1" != -- ]; do
    if [ -d "$1" ]; then mount -t tmpfs -o ro,mode=000,size=4k tmpfs "$1"
    elif [ -e "$1" ]; then mount --bind /dev/null "$1"; fi
    shift
done; shift
mount -o remount,hidepid=2 /proc
mount -t sysfs -o ro,nosuid,nodev,noexec sysfs /sys
for d in /tmp /var/tmp /dev/shm /dev/mqueue /run/lock; do
    if [ -d "$d" ]; then mount -t tmpfs -o "mode=1777,size=$size,nosuid,nodev" tmpfs "$d"; fi
done
cd /tmp
set +e
"$@" &
wait $!
"""


class ConfinementError(RuntimeError):
    """A command could not be confined (bad tenant, no such namespace, no cgroups)."""


@dataclass(frozen=True, slots=True)
class Limits:
    """Per tenant: memory (bytes, no swap), processes and threads, CPU (cores);
    per exec: output (stdout and stderr together, bytes) and time (seconds)."""
    memory_bytes: int = 256 * 2**20
    pids: int = 128
    cpu_quota: float = 1.0
    output_bytes: int = 1 * 2**20
    timeout: float = 30.0


@dataclass(frozen=True, slots=True)
class Spawned:
    """An interactive confined process on a pseudo-terminal (`Confinement.spawn`):
    read and write `master_fd` (non-blocking); end it with `Confinement.end`."""
    proc: subprocess.Popen[bytes]
    master_fd: int
    tenant: str
    leaf: str
    host: str | None = None


@dataclass(frozen=True, slots=True)
class ExecResult:
    """`exit_code` is the command's status (128+N when signal N killed it),
    124 when it timed out. `killed_reason` says who ended it early: "timeout",
    "output limit", "memory limit" (the kernel's OOM killer killed one of the
    exec's processes), "killed" (`Confinement.kill` or `remove`)."""
    exit_code: int
    stdout: str
    stderr: str
    truncated: bool
    timed_out: bool
    killed_reason: str | None


def check_tenant(tenant: str) -> str:
    if not TENANT.fullmatch(tenant):
        raise ConfinementError(f"bad tenant id {tenant!r}: letters, digits, '_.-', at most 64")
    return tenant


def netns_path(netns: str) -> Path:
    """A network namespace by name (in /run/netns) or by path."""
    return Path(netns) if netns.startswith("/") else Path("/run/netns") / netns


def writable_mounts(mountinfo: str) -> list[str]:
    """The read-write mounts of a mount table that a tenant must see read-only:
    every file system but the kernel's pseudo ones and those under /proc,
    /sys and /dev (replaced or harmless)."""
    found = []
    for line in mountinfo.splitlines():
        head, _, tail = line.partition(" - ")
        fields, rest = head.split(), tail.split()
        if len(fields) < 6 or not rest:
            continue
        point = re.sub(r"\\([0-7]{3})", lambda m: chr(int(m.group(1), 8)), fields[4])
        path = Path(point)
        if "rw" not in fields[5].split(",") or rest[0] in PSEUDO_FS:
            continue
        if any(path == t or t in path.parents for t in KERNEL_TREES):
            continue
        found.append(point)
    return found


def command(*, join: Sequence[Path], netns: Path, uid: int, tmp_bytes: int,
            read_only: Sequence[str], hidden: Sequence[Path],
            argv: Sequence[str]) -> list[str]:
    """The command line of one confined exec (pure; see the module's doc)."""
    return [
        "nsenter", f"--net={netns}", "--",
        "sh", "-c", JOIN, "sh", *map(str, join), "--",
        "unshare", "--pid", "--fork", "--kill-child", "--mount", "--propagation",
        "private", "--mount-proc", "--ipc", "--uts", "--cgroup", "--",
        "sh", "-c", INIT, "sh", str(tmp_bytes), *read_only, "--", *map(str, hidden), "--",
        "setpriv", f"--reuid={uid}", f"--regid={uid}", "--clear-groups",
        "--no-new-privs", "--inh-caps=-all", "--", *argv,
    ]


class Reach(Protocol):
    """How a player reaches its substrate's hosts (`vnetlib.hosts.Hosts`)."""

    def remote(self, host: str) -> bool: ...

    def argv(self, host: str, argv: Sequence[str], *, tty: bool = False) -> list[str]: ...


AGENT_MAIN = r'''
def _agent():
    req = json.loads(sys.argv[1])
    layout = detect(req["parent"])
    tenant, leaf = req["tenant"], req.get("leaf")
    op = req["op"]
    if op == "exec":
        netns = Path(req["netns"])
        if not netns.exists():
            sys.stderr.write("vnet-confine: no network namespace %s on this host\n" % netns.name)
            sys.exit(125)
        try:
            create_tenant(layout, tenant, Quota(*req["quota"]))
            join = [d / "cgroup.procs" for d in exec_dirs(layout, tenant, leaf)]
        except (OSError, CgroupError) as exc:
            sys.stderr.write("vnet-confine: cgroups on this host: %s\n" % exc)
            sys.exit(125)
        with open("/proc/self/mountinfo") as f:
            ro = writable_mounts(f.read())
        line = command(join=join, netns=netns, uid=req["uid"], tmp_bytes=req["tmp"],
                       read_only=ro, hidden=[Path(h) for h in req["hidden"]],
                       argv=req["argv"])
        os.execvpe(line[0], line, ENV)
    elif op == "end":
        kill(layout, tenant, leaf)
        print(oom_kills(layout, tenant, leaf))
        remove(layout, tenant, leaf)
    elif op == "kill":
        print(kill(layout, tenant, leaf))
    elif op == "remove":
        kill(layout, tenant)
        remove(layout, tenant)
        prune(layout)
    elif op == "tenants":
        print(json.dumps(tenants(layout)))
_agent()
'''


@functools.cache
def agent_source() -> str:
    """The host-side agent: `cgroups`, this module's `writable_mounts` and
    `command` with their constants, and a main taking one JSON request."""
    constants = {"JOIN": JOIN, "INIT": INIT, "PSEUDO_FS": PSEUDO_FS, "ENV": ENV}
    return "\n".join([
        inspect.getsource(cgroups),
        "import json\nimport re\nimport sys",
        *(f"{name} = {value!r}" for name, value in constants.items()),
        f"KERNEL_TREES = tuple(Path(p) for p in {[str(t) for t in KERNEL_TREES]!r})",
        inspect.getsource(writable_mounts),
        inspect.getsource(command),
        AGENT_MAIN,
    ])


def agent_argv(request: dict[str, object]) -> list[str]:
    """The command line, run on a substrate host, of one agent request."""
    return ["python3", "-c", agent_source(), json.dumps(request)]


class _TenantTable:
    """A table keyed by tenant in `<root>/<FILE>.json`, locked (`<FILE>.lock`)
    while read and changed, written only when changed."""

    FILE = ""

    def __init__(self, root: Path) -> None:
        self.file = root / f"{self.FILE}.json"
        self.lock = root / f"{self.FILE}.lock"

    @contextmanager
    def _locked(self) -> Iterator[dict[str, Any]]:
        with self.lock.open("a") as handle:
            fcntl.flock(handle, fcntl.LOCK_EX)
            table: dict[str, Any] = (json.loads(self.file.read_text())
                                     if self.file.exists() else {})
            before = json.dumps(table, sort_keys=True)
            yield table
            if json.dumps(table, sort_keys=True) != before:
                tmp = self.file.with_suffix(".tmp")
                tmp.write_text(json.dumps(table, indent=1, sort_keys=True))
                tmp.replace(self.file)

    def forget(self, tenant: str) -> None:
        with self._locked() as table:
            table.pop(tenant, None)

    def tenants(self) -> list[str]:
        with self._locked() as table:
            return sorted(table)


class HostMap(_TenantTable):
    """Tenant -> the substrate hosts where it had confined commands, so that
    `kill`, `remove` and `tenants` reach them also after a restart."""

    FILE = "hosts"

    def add(self, tenant: str, host: str) -> None:
        with self._locked() as table:
            if host not in table.get(tenant, []):
                table[tenant] = sorted({*table.get(tenant, []), host})

    def of(self, tenant: str) -> list[str]:
        with self._locked() as table:
            return list(table.get(tenant, []))


class UidMap(_TenantTable):
    """Tenant -> uid in [UID_BASE, UID_BASE + UID_SPAN), deterministic from the
    tenant's id unless taken."""

    FILE = "uids"

    def get(self, tenant: str) -> int:
        with self._locked() as table:
            if tenant in table:
                return int(table[tenant])
            taken = set(table.values())
            start = int.from_bytes(hashlib.sha256(tenant.encode()).digest()[:8], "big")
            for probe in range(UID_SPAN):
                uid = UID_BASE + (start + probe) % UID_SPAN
                if uid not in taken:
                    table[tenant] = uid
                    return uid
        raise ConfinementError("no free tenant uid left")


class Confinement:
    """Runs, kills and removes the confined commands of tenants on this host
    and, given `hosts`, on the substrate hosts reached over SSH.

    `root` is a directory of the confinement's own (root-only; hidden from
    tenants); `hidden` adds paths to the defaults covered for tenants;
    `cgroup_parent` overrides where the tenants' cgroups go (see
    `cgroups.detect`). Thread-safe: execs of one or several tenants may run
    concurrently.
    """

    def __init__(self, root: Path, limits: Limits, *, hidden: Sequence[Path] = (),
                 cgroup_parent: str = cgroups.PARENT, hosts: Reach | None = None) -> None:
        self.root = root
        self.limits = limits
        self.root.mkdir(parents=True, exist_ok=True)
        self.root.chmod(0o700)
        self.uids = UidMap(root)
        self.hosts = hosts
        self.host_map = HostMap(root)
        # On a host reached over SSH the tenants' cgroups go below the same
        # parent from each hierarchy's root: the SSH session's own cgroup
        # (a login scope) changes with every connection.
        self.remote_parent = "/" + cgroup_parent.strip("/")
        self.layout = cgroups.detect(cgroup_parent)
        self.hidden = tuple(dict.fromkeys([paths.vnet_home(), *HIDDEN, root, *hidden]))
        self._kills: dict[str, int] = {}
        self._removing: set[str] = set()
        self._lock = threading.Lock()

    def remote_host(self, host: str | None) -> str | None:
        """`host` if it is reached over SSH, else None (the node is here)."""
        if host is None or self.hosts is None:
            return None
        return host if self.hosts.remote(host) else None

    def _quota(self) -> cgroups.Quota:
        return cgroups.Quota(self.limits.memory_bytes, self.limits.pids, self.limits.cpu_quota)

    def _local_line(self, tenant: str, netns: str, leaf: str,
                    argv: Sequence[str]) -> list[str]:
        ns = netns_path(netns)
        if not ns.exists():
            raise ConfinementError(f"no network namespace {netns}")
        uid = self.uids.get(tenant)
        cgroups.create_tenant(self.layout, tenant, self._quota())
        join = [d / "cgroup.procs" for d in cgroups.exec_dirs(self.layout, tenant, leaf)]
        return command(join=join, netns=ns, uid=uid, tmp_bytes=self.limits.memory_bytes,
                       read_only=writable_mounts(Path("/proc/self/mountinfo").read_text()),
                       hidden=self.hidden, argv=argv)

    def _remote_line(self, host: str, tenant: str, netns: str, leaf: str,
                     argv: Sequence[str], *, tty: bool = False) -> list[str]:
        assert self.hosts is not None
        self.host_map.add(tenant, host)
        q = self._quota()
        request = {"op": "exec", "parent": self.remote_parent, "tenant": tenant, "leaf": leaf,
                   "netns": str(netns_path(netns)), "uid": self.uids.get(tenant),
                   "quota": [q.memory_bytes, q.pids, q.cpu_cores],
                   "tmp": self.limits.memory_bytes, "hidden": [str(h) for h in self.hidden],
                   "argv": list(argv)}
        return self.hosts.argv(host, agent_argv(request), tty=tty)

    def _agent(self, host: str, op: str, tenant: str, leaf: str | None = None) -> str:
        """One request to the agent on `host`; its output."""
        assert self.hosts is not None
        line = self.hosts.argv(host, agent_argv(
            {"op": op, "parent": self.remote_parent, "tenant": tenant, "leaf": leaf}))
        try:
            done = subprocess.run(line, stdin=subprocess.DEVNULL, capture_output=True,
                                  timeout=AGENT_TIMEOUT, check=False)
        except subprocess.TimeoutExpired as exc:
            raise ConfinementError(f"host {host} did not answer within "
                                   f"{AGENT_TIMEOUT:.0f} s ({op} of {tenant})") from exc
        if done.returncode != 0:
            raise ConfinementError(f"{op} of {tenant} on host {host} failed: "
                                   + done.stderr.decode("utf-8", "replace").strip()[-500:])
        return done.stdout.decode()

    def _stopper(self, host: str | None, tenant: str, leaf: str) -> Callable[[], None]:
        def stop() -> None:
            if host is None:
                cgroups.kill(self.layout, tenant, leaf)
                return
            with contextlib.suppress(ConfinementError):  # the host is gone, and the exec
                self._agent(host, "kill", tenant, leaf)
        return stop

    def _finish(self, host: str | None, tenant: str, leaf: str) -> int:
        """Kill and remove one exec's cgroups; how many OOM kills it had."""
        if host is None:
            try:
                return cgroups.oom_kills(self.layout, tenant, leaf)
            finally:
                cgroups.kill(self.layout, tenant, leaf)
                cgroups.remove(self.layout, tenant, leaf)
        return int(self._agent(host, "end", tenant, leaf).strip() or 0)

    def run(self, tenant: str, netns: str, argv: Sequence[str], *,
            timeout: float | None = None, host: str | None = None) -> ExecResult:
        """Run `argv` confined for `tenant` in network namespace `netns` (on
        substrate host `host` when that is reached over SSH); return when it
        and every process it started have ended."""
        check_tenant(tenant)
        if not argv:
            raise ConfinementError("empty command")
        where = self.remote_host(host)
        leaf = f"x{secrets.token_hex(6)}"
        with self._lock:
            kills = self._kills.get(tenant, 0)
            removing = tenant in self._removing
        if removing:
            raise ConfinementError(f"tenant {tenant} is being removed")
        line = (self._local_line(tenant, netns, leaf, argv) if where is None
                else self._remote_line(where, tenant, netns, leaf, argv))
        ooms = 0
        try:
            code, out, err, reason = self._stream(
                line, self._stopper(where, tenant, leaf),
                timeout if timeout is not None else self.limits.timeout)
        finally:
            ooms = self._finish(where, tenant, leaf)
        if where is not None:
            _refused(where, code, err)
        if reason is None:
            with self._lock:
                if self._kills.get(tenant, 0) != kills:
                    reason = "killed"
        if reason is None and ooms:
            reason = "memory limit"
        timed_out = reason == "timeout"
        return ExecResult(TIMED_OUT_CODE if timed_out else code,
                          out.decode("utf-8", "replace"), err.decode("utf-8", "replace"),
                          reason == "output limit", timed_out, reason)

    def spawn(self, tenant: str, netns: str, argv: Sequence[str], *,
              host: str | None = None) -> Spawned:
        """Start `argv` confined as `run` does, on a new pseudo-terminal: its
        stdin, stdout, stderr and controlling terminal (on `host`, a terminal
        there: `ssh -tt`). The confinement's init starts the command in the
        background, which gives it /dev/null as stdin; the wrapper takes the
        terminal back from stderr."""
        check_tenant(tenant)
        if not argv:
            raise ConfinementError("empty command")
        with self._lock:
            if tenant in self._removing:
                raise ConfinementError(f"tenant {tenant} is being removed")
        where = self.remote_host(host)
        leaf = f"t{secrets.token_hex(6)}"
        wrapped = ["sh", "-c", 'exec "$@" <&2', "sh", *argv]
        line = (self._local_line(tenant, netns, leaf, wrapped) if where is None
                else self._remote_line(where, tenant, netns, leaf, wrapped, tty=True))
        master, slave = os.openpty()
        try:
            proc = subprocess.Popen(["setsid", "--ctty", *line], stdin=slave, stdout=slave,
                                    stderr=slave, env={**ENV, "TERM": "vt100"},
                                    close_fds=True)
        except BaseException:
            os.close(master)
            self._finish(where, tenant, leaf)
            raise
        finally:
            os.close(slave)
        os.set_blocking(master, False)
        return Spawned(proc, master, tenant, leaf, where)

    def end(self, spawned: Spawned) -> None:
        """Kill what `spawn` started (its whole cgroup), reap it, close the terminal."""
        try:
            self._stopper(spawned.host, spawned.tenant, spawned.leaf)()
            try:
                spawned.proc.wait(DRAIN_WAIT)
            except subprocess.TimeoutExpired:
                spawned.proc.kill()
                spawned.proc.wait()
            self._finish(spawned.host, spawned.tenant, spawned.leaf)
        finally:
            os.close(spawned.master_fd)

    def _stream(self, line: list[str], stop: Callable[[], None],
                timeout: float) -> tuple[int, bytearray, bytearray, str | None]:
        """Run the command line, keeping at most `output_bytes` of its output;
        `stop` the exec (kill its cgroup) at the cap or the deadline."""
        cap = self.limits.output_bytes
        bufs = {"out": bytearray(), "err": bytearray()}
        reason: str | None = None
        proc = subprocess.Popen(line, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, env=ENV,
                                start_new_session=True, close_fds=True)
        assert proc.stdout is not None and proc.stderr is not None
        deadline = time.monotonic() + timeout
        drain_until: float | None = None
        with selectors.DefaultSelector() as sel:
            sel.register(proc.stdout, selectors.EVENT_READ, "out")
            sel.register(proc.stderr, selectors.EVENT_READ, "err")
            while sel.get_map():
                now = time.monotonic()
                if reason is None and now >= deadline:
                    reason = "timeout"
                    stop()
                if drain_until is None and (reason is not None or proc.poll() is not None):
                    drain_until = now + DRAIN_WAIT
                if drain_until is not None and now >= drain_until:
                    stop()
                    break
                wait = min(deadline, drain_until or deadline) - now
                for key, _ in sel.select(max(0.0, min(wait, 0.5))):
                    chunk = os.read(key.fd, READ_CHUNK)
                    if not chunk:
                        sel.unregister(key.fileobj)
                        continue
                    room = cap - len(bufs["out"]) - len(bufs["err"])
                    bufs[key.data] += chunk[:max(0, room)]
                    if reason is None and len(chunk) > room:
                        reason = "output limit"
                        stop()
        proc.stdout.close()
        proc.stderr.close()
        try:
            code = proc.wait(DRAIN_WAIT if reason is not None else None)
        except subprocess.TimeoutExpired:  # an ssh client whose host went away
            proc.kill()
            code = proc.wait()
        return (128 - code if code < 0 else code), bufs["out"], bufs["err"], reason

    def kill(self, tenant: str) -> int:
        """SIGKILL every process of the tenant (here and on its hosts); how
        many there were."""
        check_tenant(tenant)
        with self._lock:
            self._kills[tenant] = self._kills.get(tenant, 0) + 1
        count = cgroups.kill(self.layout, tenant)
        for host in self.host_map.of(tenant):
            if self.remote_host(host) is not None:
                count += int(self._agent(host, "kill", tenant).strip() or 0)
        return count

    def close(self) -> None:
        """Forget this confinement's own parent cgroups if no tenant is left
        in them (tenants themselves stay: they outlive a restart)."""
        cgroups.prune(self.layout)

    def remove(self, tenant: str) -> None:
        """Kill the tenant's processes, remove its cgroups (here and on its
        hosts) and its uid; idempotent. Execs of the tenant starting
        meanwhile are refused or killed."""
        check_tenant(tenant)
        with self._lock:
            self._removing.add(tenant)
        try:
            for attempt in range(REMOVE_ATTEMPTS):
                self.kill(tenant)
                try:
                    cgroups.remove(self.layout, tenant)
                    break
                except cgroups.CgroupError:
                    if attempt == REMOVE_ATTEMPTS - 1:
                        raise
            for host in self.host_map.of(tenant):
                if self.remote_host(host) is not None:
                    self._agent(host, "remove", tenant)
            self.host_map.forget(tenant)
            self.uids.forget(tenant)
        finally:
            with self._lock:
                self._removing.discard(tenant)

    def tenants(self) -> list[str]:
        """Tenants with cgroups, a uid or a host on record (for reconciliation)."""
        return sorted(set(cgroups.tenants(self.layout)) | set(self.uids.tenants())
                      | set(self.host_map.tenants()))


def _refused(host: str, code: int, err: bytes | bytearray) -> None:
    """An exec the agent refused, or an SSH connection that failed, as the
    error it is (not a command's exit status)."""
    if code == AGENT_REFUSED and err.startswith(AGENT_MARK):
        raise ConfinementError(err[len(AGENT_MARK):].decode("utf-8", "replace").strip()
                               + f" (host {host})")
    if code == SSH_FAILED and err.startswith(b"ssh: "):
        raise ConfinementError(f"host {host} does not answer: "
                               + err.decode("utf-8", "replace").strip())
