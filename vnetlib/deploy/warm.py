"""A warm Ansible controller: ansible-playbook runs forked from a process that
has Ansible imported already.

Every `run_playbook` used to pay for a new `ansible-playbook` process: about
0.5 s of imports and start-up before the first task, and an AnsiballZ
payload built anew for every module of every run. The warm controller is a
server process (one per vnet process that deploys, e.g. a PIP's `vnet
serve`) listening on a private Unix socket. ansible-runner still drives
every run: it spawns `ansible-playbook` from PATH, and the first one on PATH
is a shim (`python -IS`, a few milliseconds) that hands its argv, its
environment, its working directory and its standard fds (SCM_RIGHTS) to the
server. The server forks a child that adopts them and runs Ansible's
`PlaybookCLI` in-process; the child's exit status goes back to the shim,
which exits with it. So ansible-runner's events, stdout, artifacts, timeout
and status are unchanged, and so is what a PIP operator's `ansible-playbook`
does.

Ansible reads its configuration from the environment at import time, so the
server imports Ansible on its first request, with that request's
environment, and later serves only requests whose Ansible configuration
(every ANSIBLE_* variable but the per-run ones of `PER_RUN`) is the same;
any other request is answered "cold" and the shim execs the real
ansible-playbook. Children share the server's Ansible temporary directory,
hence its AnsiballZ cache: a module edited while the server lives is not
rebuilt (restart the process that deploys). The shim's end (a timeout
killing it) kills the child's process group; the server ends when the
process that started it does.

Nothing of a run outlives it. Ansible's workers each start a session of
their own (`setsid`), out of reach of the child's process group, and a hung
child used to leave them behind, blocked, after its socket was gone. So:
the server is a child subreaper (PR_SET_CHILD_SUBREAPER), so every orphaned
descendant of a run (a worker whose child died, a module whose worker died)
becomes the server's child instead of init's; whenever a run's child ends
the server kills the subtrees of its children that are not a running run
(`sweep`), and when it ends (its parent gone, even by SIGKILL, or stopped)
it kills all its descendants. A run's child and every Ansible worker also
die with their parent (PR_SET_PDEATHSIG), for a server killed itself.
Spared: daemons a task started on purpose (a Click process: a session
leader that is not a fork of the server), which outlive the run as before.
"""

from __future__ import annotations

import array
import atexit
import contextlib
import ctypes
import importlib
import json
import os
import selectors
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

SHIM_NAME = "ansible-playbook"
# Variables ansible-runner sets per run; the rest of ANSIBLE_* must match.
PER_RUN = frozenset({"ANSIBLE_CACHE_PLUGIN_CONNECTION"})
_MAX_REQUEST = 1 << 20
_PR_SET_PDEATHSIG = 1
_PR_SET_CHILD_SUBREAPER = 36
_REAP_INTERVAL = 1.0
WARM_IMPORTS = (
    "ansible.cli.playbook", "ansible.executor.module_common", "ansible.executor.playbook_executor",
    "ansible.executor.process.worker", "ansible.parsing.dataloader",
    "ansible.utils.collection_loader._collection_finder",
    "ansible.executor.task_executor", "ansible.plugins.action.normal",
    "ansible.plugins.connection.local", "ansible.plugins.strategy.free",
    "ansible.plugins.strategy.linear",
)

SHIM = '''#!{python} -IS
import array, json, os, socket, sys
real = {real!r}
try:
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.connect({socket!r})
    body = json.dumps({{"argv": sys.argv, "env": dict(os.environ), "cwd": os.getcwd()}}).encode()
    s.sendmsg([len(body).to_bytes(4, "big") + body],
              [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", [0, 1, 2]))])
    answer = s.makefile("rb").readline().strip()
except OSError:
    answer = b"cold"
if answer == b"cold":
    os.execv(real, [real] + sys.argv[1:])
sys.exit(int(answer) if answer.lstrip(b"-").isdigit() else 1)
'''


def ansible_config(env: dict[str, str]) -> dict[str, str]:
    """The part of an environment that fixes Ansible's imported configuration."""
    return {k: v for k, v in env.items()
            if (k.startswith("ANSIBLE_") or k in ("HOME", "PATH")) and k not in PER_RUN}


@dataclass(slots=True)
class WarmController:
    """A running warm server and the directory holding its shim."""

    directory: Path
    process: subprocess.Popen[bytes]
    _parent_end: int

    @property
    def bindir(self) -> str:
        """Put first on the PATH of a run to send it to this server."""
        return str(self.directory / "bin")

    def alive(self) -> bool:
        return self.process.poll() is None

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(5)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        with contextlib.suppress(OSError):
            os.close(self._parent_end)
        _remove(self.directory)


def start(real_binary: str) -> WarmController:
    """Start a server for this process; `real_binary` is what cold runs exec."""
    directory = Path(tempfile.mkdtemp(prefix="vnet-warm-"))
    sock = directory / "sock"
    (directory / "bin").mkdir()
    shim = directory / "bin" / SHIM_NAME
    shim.write_text(SHIM.format(python=sys.executable, real=real_binary, socket=str(sock)))
    shim.chmod(0o700)
    # Bound and listening before the server starts: a shim never finds no socket.
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    old = os.umask(0o077)
    try:
        listener.bind(str(sock))
    finally:
        os.umask(old)
    listener.listen(16)
    read_end, write_end = os.pipe()
    try:
        process = subprocess.Popen(
            [sys.executable, "-m", "vnetlib.deploy.warm", str(sock), str(listener.fileno()),
             str(read_end)],
            pass_fds=(read_end, listener.fileno()), stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL, start_new_session=True,
        )
    finally:
        os.close(read_end)
        listener.close()
    os.set_inheritable(write_end, False)
    return WarmController(directory, process, write_end)


_lock = threading.Lock()
_current: WarmController | None = None


def controller(real_binary: str) -> WarmController | None:
    """This process's warm controller, started on first use; None when
    $VNET_WARM_CONTROLLER is 0 or it cannot start."""
    global _current
    if os.environ.get("VNET_WARM_CONTROLLER", "1") == "0":
        return None
    with _lock:
        if _current is not None and _current.alive():
            return _current
        if _current is not None:
            _current.stop()
        try:
            _current = start(real_binary)
        except OSError:
            _current = None
            return None
        atexit.register(_current.stop)
        return _current


# -- the server --------------------------------------------------------------


def _prctl(option: int, value: int) -> None:
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(option, ctypes.c_ulong(value), 0, 0, 0) != 0:
        code = ctypes.get_errno()
        raise OSError(code, os.strerror(code))


def die_with_parent(expected_parent: int | None = None) -> None:
    """SIGKILL this process when the thread that forked it ends; exit now if
    that parent is already gone (it died before the request was made)."""
    _prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)
    if expected_parent is not None and os.getppid() != expected_parent:
        os._exit(1)


def _parents() -> dict[int, int]:
    """pid -> ppid of every process."""
    table = {}
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            stat = Path(f"/proc/{name}/stat").read_text()
        except OSError:
            continue
        table[int(name)] = int(stat.rsplit(")", 1)[1].split()[1])
    return table


def descendants(roots: Iterable[int], table: dict[int, int] | None = None, *,
                spare: Callable[[int], bool] | None = None) -> list[int]:
    """The processes under `roots` (roots included), parents before children;
    a process `spare` picks is left out with its subtree."""
    table = _parents() if table is None else table
    children: dict[int, list[int]] = {}
    for pid, ppid in table.items():
        children.setdefault(ppid, []).append(pid)
    found: list[int] = []
    todo = [r for r in roots if r in table]
    while todo:
        pid = todo.pop()
        if spare is not None and spare(pid):
            continue
        found.append(pid)
        todo.extend(children.get(pid, ()))
    return found


def _cmdline(pid: int) -> bytes:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return b""


def _daemon(pid: int, server: bytes) -> bool:
    """A process a task started to outlive it on purpose (a Click process):
    a session leader that is not a fork of this server. Ansible's workers
    lead sessions too, but they are forks of the server (its command line);
    a module and what it runs stay in their worker's session."""
    try:
        leader = os.getsid(pid) == pid
    except OSError:
        return False
    return leader and _cmdline(pid) != server


def doomed(roots: Iterable[int], table: dict[int, int] | None = None) -> list[int]:
    """The processes under `roots` that belong to runs (runs, workers,
    modules and what they run), not entering daemons' subtrees."""
    server = _cmdline(os.getpid())
    return descendants(roots, table, spare=lambda pid: _daemon(pid, server))


def _kill(pids: Iterable[int]) -> None:
    for pid in pids:
        with contextlib.suppress(OSError):
            os.kill(pid, signal.SIGKILL)


def _reap(runs: set[int]) -> bool:
    """Collect ended children (runs and adopted orphans); True if any ended."""
    ended = False
    while True:
        try:
            pid, _ = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return ended
        if pid == 0:
            return ended
        runs.discard(pid)
        ended = True


def sweep(runs: set[int]) -> None:
    """Kill what this server adopted from ended runs: its children that are
    not a running run, with what runs under them, daemons spared. Killed
    parents' children are adopted in turn, so the next sweep (their
    parents' end reaped) takes them."""
    table = _parents()
    me = os.getpid()
    orphans = [pid for pid, ppid in table.items() if ppid == me and pid not in runs]
    if orphans:
        _kill(doomed(orphans, table))


def _end_all(deadline: float = 5.0) -> None:
    """Kill every run of this process and what runs under it (daemons the
    runs started are spared: they go to init with this process's end)."""
    end = time.monotonic() + deadline
    me = os.getpid()
    while time.monotonic() < end:
        others = [p for p in doomed([me]) if p != me]
        if not others:
            return
        _kill(others)
        _reap(set())
        time.sleep(0.01)


def _patch_routing_metadata() -> None:
    """Parse ansible.builtin's routing metadata (a 376 KB YAML file every run
    used to parse: 0.12 to 0.3 s at a load of 10) once, here: the children
    find it parsed. Ansible invites caching `_meta_yml_to_dict` by content."""
    finder = importlib.import_module("ansible.utils.collection_loader._collection_finder")
    parse = finder._meta_yml_to_dict
    if parse is None or getattr(parse, "_vnet_cached", False):
        return
    cache: dict[tuple[Any, bytes | str], Any] = {}

    def cached(raw: bytes | str, content_id: Any) -> Any:
        key = (content_id, raw)
        if key not in cache:
            cache[key] = parse(raw, content_id)
        return cache[key]

    cached._vnet_cached = True  # type: ignore[attr-defined]
    setattr(finder, "_meta_yml_to_dict", cached)  # noqa: B010  (mypy: not in the stubs)
    builtin = Path(importlib.import_module("ansible").__file__ or "").parent
    with contextlib.suppress(OSError):
        cached((builtin / "config" / "ansible_builtin_runtime.yml").read_bytes(),
               ("ansible.builtin", "runtime.yml"))


def _patch_extravars() -> None:
    """ansible-runner's extra vars file (a VNet's whole plan) is read once
    per run and by nobody else: Ansible's deep copy of it, to protect its
    file cache, took longer than parsing it (0.3 s for a 100-node plan under
    load)."""
    loader = importlib.import_module("ansible.parsing.dataloader").DataLoader
    load = loader.load_from_file
    if getattr(load, "_vnet_uncopied", False):
        return

    def load_from_file(self: Any, file_name: str, *args: Any, **kwargs: Any) -> Any:
        path = Path(file_name)
        if (kwargs.get("trusted_as_template") and path.name == "extravars"
                and path.parent.name == "env" and not args):
            kwargs["unsafe"] = True
        return load(self, file_name, *args, **kwargs)

    load_from_file._vnet_uncopied = True  # type: ignore[attr-defined]
    loader.load_from_file = load_from_file


def _patch_workers() -> None:
    """Every Ansible worker forked by a run dies with the run (workers are
    sessions of their own: the run's process group does not hold them)."""
    worker = importlib.import_module("ansible.executor.process.worker").WorkerProcess
    if getattr(worker.run, "_vnet_dies_with_parent", False):
        return
    original = worker.run

    def run(self: Any) -> None:
        die_with_parent()
        original(self)

    run._vnet_dies_with_parent = True  # type: ignore[attr-defined]
    worker.run = run


def _receive(conn: socket.socket) -> tuple[dict[str, Any], list[int]]:
    fds = array.array("i")
    data, ancillary, _, _ = conn.recvmsg(_MAX_REQUEST, socket.CMSG_LEN(3 * fds.itemsize))
    for level, kind, payload in ancillary:
        if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
            fds.frombytes(payload[: len(payload) - len(payload) % fds.itemsize])
    size = int.from_bytes(data[:4], "big")
    body = data[4:]
    while len(body) < size:
        more = conn.recv(size - len(body))
        if not more:
            raise OSError("short request")
        body += more
    return json.loads(body), list(fds)


def _warm_up(env: dict[str, str]) -> None:
    """Import Ansible under the first request's configuration."""
    shortcuts = os.environ.get("VNET_WARM_SHORTCUTS", "1") != "0"  # 0: to measure them
    os.environ.clear()
    os.environ.update(env)
    for module in WARM_IMPORTS:
        importlib.import_module(module)
    _patch_workers()
    if shortcuts:
        _patch_routing_metadata()
        _patch_extravars()
    constants = importlib.import_module("ansible.constants")
    getattr(constants, "DEFAULT_LOCAL_TMP")  # noqa: B009  created now, shared by the children
    sys.stdout.flush()
    sys.stderr.flush()


def _child(conn: socket.socket, request: dict[str, Any], fds: list[int], server: int) -> None:
    """In the forked child: become the shim's ansible-playbook and run it."""
    die_with_parent(server)
    os.setpgid(0, 0)
    signal.signal(signal.SIGCHLD, signal.SIG_DFL)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    for target, fd in enumerate(fds[:3]):
        os.dup2(fd, target)
        os.close(fd)
    os.chdir(request["cwd"])
    os.environ.clear()
    os.environ.update(request["env"])

    def watch() -> None:
        # The shim gone (ansible-runner's timeout): end the whole run.
        with contextlib.suppress(OSError):
            conn.recv(1)
        os.killpg(0, signal.SIGKILL)

    threading.Thread(target=watch, daemon=True).start()
    code = 1
    try:
        cli = importlib.import_module("ansible.cli.playbook").PlaybookCLI
        sys.argv = list(request["argv"])
        cli.cli_executor(sys.argv)
        code = 0
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
    except BaseException as exc:
        print(f"ERROR! warm controller: {exc!r}", file=sys.stderr)
    finally:
        for stream in (sys.stdout, sys.stderr):
            with contextlib.suppress(Exception):
                stream.flush()
        with contextlib.suppress(OSError):
            conn.sendall(f"{code}\n".encode())
        os._exit(code)


def _remove(directory: Path) -> None:
    for path in (directory / "bin" / SHIM_NAME, directory / "sock"):
        path.unlink(missing_ok=True)
    for path in (directory / "bin", directory):
        with contextlib.suppress(OSError):
            path.rmdir()


def serve(path: str, listen_fd: int, parent_fd: int) -> None:
    """Accept shims on `listen_fd` until the parent's pipe closes, then remove
    the server's directory (its parent may have died without stopping it)."""
    with contextlib.suppress(OSError):
        _prctl(_PR_SET_CHILD_SUBREAPER, 1)
    try:
        _serve(socket.socket(fileno=listen_fd), parent_fd)
    finally:
        _remove(Path(path).parent)
        _end_all()


def _serve(server: socket.socket, parent_fd: int) -> None:
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    selector = selectors.DefaultSelector()
    selector.register(server, selectors.EVENT_READ)
    selector.register(parent_fd, selectors.EVENT_READ)
    config: dict[str, str] | None = None
    runs: set[int] = set()
    me = os.getpid()
    while True:
        ready = selector.select(_REAP_INTERVAL)
        if _reap(runs):
            sweep(runs)
        for key, _ in ready:
            if key.fileobj == parent_fd:
                return
            conn, _ = server.accept()
            fds: list[int] = []
            try:
                request, fds = _receive(conn)
                env = dict(request["env"])
                if config is None:
                    try:
                        _warm_up(env)
                    except Exception as exc:
                        print(f"vnet warm controller: no Ansible: {exc!r}", file=sys.stderr)
                        config = {"": "cold"}
                    else:
                        config = ansible_config(env)
                if ansible_config(env) != config or len(fds) != 3:
                    conn.sendall(b"cold\n")
                    continue
                pid = os.fork()
                if pid == 0:
                    server.close()
                    _child(conn, request, fds, me)
                runs.add(pid)
            except (OSError, ValueError, KeyError) as exc:
                print(f"vnet warm controller: {exc!r}", file=sys.stderr)
                with contextlib.suppress(OSError):
                    conn.sendall(b"cold\n")
            finally:
                conn.close()
                for fd in fds:
                    with contextlib.suppress(OSError):
                        os.close(fd)


if __name__ == "__main__":
    serve(sys.argv[1], int(sys.argv[2]), int(sys.argv[3]))
