"""Control groups for confined commands, on cgroup v1, v2 or both (hybrid).

Each tenant gets one cgroup per hierarchy used, below a parent directory
(`<the caller's own cgroup>/vnet-exec` unless told otherwise), holding its
limits; each exec runs in a leaf below it, so that a timeout kills one exec
and `kill` the whole tenant. Controllers come from cgroup v2 where it has
them, else from their v1 hierarchies. Killing uses v2's `cgroup.kill` when any
cgroup2 is mounted (the empty `unified` of a hybrid host has it too), else the
v1 freezer: freeze, SIGKILL every pid, thaw, so that nothing forks meanwhile.
"""

from __future__ import annotations

import contextlib
import errno
import os
import signal
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

CONTROLLERS = ("memory", "pids", "cpu")
NOT_CONTROLLERS = frozenset({"rw", "ro", "noprefix", "clone_children", "xattr", "cpuset_v2_mode"})
PARENT = "vnet-exec"
CPU_PERIOD_US = 100_000
EMPTY_WAIT = 5.0


class CgroupError(RuntimeError):
    """The cgroups this host offers cannot confine a command."""


@dataclass(frozen=True, slots=True)
class Mount:
    path: Path
    version: int
    controllers: frozenset[str]


@dataclass(frozen=True, slots=True)
class Layout:
    """Where tenants' cgroups go: the parent directory in each hierarchy used.

    `limits` maps each controller to the parent in the hierarchy providing it
    (and whether that hierarchy is v2); `killer` is a cgroup2 parent (or None),
    `freezer` a v1 freezer parent used when there is no cgroup2.
    """
    limits: Mapping[str, tuple[Path, bool]]
    killer: Path | None
    freezer: Path | None
    v2_root: Path | None

    @property
    def tracker(self) -> Path:
        """The parent whose cgroups list every process of a tenant."""
        found = self.killer or self.freezer
        assert found is not None
        return found

    def parents(self) -> list[Path]:
        found = {p for p, _ in self.limits.values()}
        found.update(p for p in (self.killer, self.freezer) if p is not None)
        return sorted(found)


def mounts(mountinfo: str) -> list[Mount]:
    """The cgroup hierarchies of /proc/self/mountinfo."""
    found = []
    for line in mountinfo.splitlines():
        head, _, tail = line.partition(" - ")
        fields, rest = head.split(), tail.split()
        if len(fields) < 5 or len(rest) < 3 or rest[0] not in ("cgroup", "cgroup2"):
            continue
        point = Path(fields[4].replace("\\040", " "))
        if rest[0] == "cgroup2":
            found.append(Mount(point, 2, frozenset()))
        else:
            options = set(rest[2].split(","))
            found.append(Mount(point, 1, frozenset(options - NOT_CONTROLLERS)))
    return found


def own_paths(proc_cgroup: str) -> dict[str, str]:
    """The caller's cgroup per v1 controller, and under "" its v2 cgroup."""
    paths: dict[str, str] = {}
    for line in proc_cgroup.splitlines():
        _, controllers, path = line.split(":", 2)
        for name in controllers.split(",") if controllers else [""]:
            paths[name] = path
    return paths


def detect(parent: str = PARENT) -> Layout:
    """The layout on this host. A relative `parent` goes below the caller's
    own cgroup in each hierarchy, which keeps tenants inside whatever confines
    the service itself (a systemd unit with Delegate=yes, say); an absolute
    one is relative to each hierarchy's root."""
    found = mounts(Path("/proc/self/mountinfo").read_text())
    own = own_paths(Path("/proc/self/cgroup").read_text())

    def under(mount: Mount, key: str) -> Path:
        rel = parent if parent.startswith("/") else f"{own.get(key, '/')}/{parent}"
        return mount.path / rel.strip("/")

    v2 = next((m for m in found if m.version == 2), None)
    v2_controllers: set[str] = set()
    if v2 is not None:
        v2_controllers = set((v2.path / "cgroup.controllers").read_text().split())
    limits: dict[str, tuple[Path, bool]] = {}
    freezer = None
    for name in CONTROLLERS:
        if v2 is not None and name in v2_controllers:
            limits[name] = (under(v2, ""), True)
            continue
        v1 = next((m for m in found if m.version == 1 and name in m.controllers), None)
        if v1 is None:
            raise CgroupError(f"no cgroup hierarchy has the {name} controller")
        limits[name] = (under(v1, name), False)
    if v2 is None:
        v1 = next((m for m in found if m.version == 1 and "freezer" in m.controllers), None)
        if v1 is None:
            raise CgroupError("neither cgroup2 nor the v1 freezer is mounted: "
                              "processes could escape a kill")
        freezer = under(v1, "freezer")
    if v2 is None:
        return Layout(limits, None, freezer, None)
    return Layout(limits, under(v2, ""), freezer, v2.path)


def _write(path: Path, value: str) -> None:
    path.write_text(value)


def _enable_v2(root: Path, tenant: Path, names: list[str]) -> None:
    """Enable the v2 controllers from the hierarchy's root down to a tenant,
    so that the tenant carries limits and its execs' leaves count events."""
    chain = [tenant, *tenant.parents]
    for directory in reversed(chain[: chain.index(root) + 1]):
        present = set((directory / "cgroup.subtree_control").read_text().split())
        missing = [n for n in names if n not in present]
        if not missing:
            continue
        try:
            _write(directory / "cgroup.subtree_control", " ".join(f"+{n}" for n in missing))
        except OSError as exc:
            raise CgroupError(
                f"cannot enable {', '.join(missing)} in {directory}: {exc.strerror} "
                "(on cgroup v2 delegate a cgroup to the service and keep its own "
                "processes in a leaf, or pass a parent outside it)") from exc


@dataclass(frozen=True, slots=True)
class Quota:
    memory_bytes: int
    pids: int
    cpu_cores: float


def create_tenant(layout: Layout, tenant: str, quota: Quota) -> None:
    """The tenant's cgroups with their limits; idempotent."""
    v2_names = [n for n, (_, v2) in layout.limits.items() if v2]
    for directory in layout.parents():
        directory.mkdir(parents=True, exist_ok=True)
    for directory in layout.parents():
        (directory / tenant).mkdir(parents=True, exist_ok=True)
    if v2_names and layout.killer is not None and layout.v2_root is not None:
        _enable_v2(layout.v2_root, layout.killer / tenant, v2_names)
    for name, (parent, v2) in layout.limits.items():
        directory = parent / tenant
        if name == "memory":
            if v2:
                _write(directory / "memory.max", str(quota.memory_bytes))
                if (directory / "memory.swap.max").exists():
                    _write(directory / "memory.swap.max", "0")
            else:
                files = [directory / "memory.limit_in_bytes"]
                if (directory / "memory.memsw.limit_in_bytes").exists():
                    files.append(directory / "memory.memsw.limit_in_bytes")
                try:
                    for file in files:
                        _write(file, str(quota.memory_bytes))
                except OSError:
                    for file in reversed(files):
                        _write(file, str(quota.memory_bytes))
        elif name == "pids":
            _write(directory / "pids.max", str(quota.pids))
        elif name == "cpu":
            us = max(1000, int(quota.cpu_cores * CPU_PERIOD_US))
            if v2:
                _write(directory / "cpu.max", f"{us} {CPU_PERIOD_US}")
            else:
                _write(directory / "cpu.cfs_period_us", str(CPU_PERIOD_US))
                _write(directory / "cpu.cfs_quota_us", str(us))


def exec_dirs(layout: Layout, tenant: str, leaf: str) -> list[Path]:
    """Create the cgroups of one exec; a process joins them all by writing
    its pid into each one's cgroup.procs."""
    dirs = [p / tenant / leaf for p in layout.parents()]
    for directory in dirs:
        directory.mkdir(parents=True, exist_ok=True)
    return dirs


def _walk(directory: Path) -> Iterator[Path]:
    try:
        subs = sorted(p for p in directory.iterdir() if p.is_dir())
    except (FileNotFoundError, NotADirectoryError):
        return
    for sub in subs:
        yield from _walk(sub)
    yield directory


def pids(directory: Path) -> list[int]:
    """Every process in a cgroup and its descendants."""
    found: list[int] = []
    for sub in _walk(directory):
        try:
            found += [int(x) for x in (sub / "cgroup.procs").read_text().split()]
        except FileNotFoundError:
            continue
    return found


def oom_kills(layout: Layout, tenant: str, leaf: str) -> int:
    """How many processes of one exec the kernel's OOM killer has killed
    (counted in the victim's own cgroup on v1, hierarchically on v2)."""
    parent, v2 = layout.limits["memory"]
    name = "memory.events" if v2 else "memory.oom_control"
    try:
        text = (parent / tenant / leaf / name).read_text()
    except FileNotFoundError:
        return 0
    for line in text.splitlines():
        key, _, value = line.partition(" ")
        if key == "oom_kill":
            return int(value)
    return 0


def kill(layout: Layout, tenant: str, leaf: str | None = None) -> int:
    """SIGKILL every process of the tenant (or of one exec), wait until the
    cgroups are empty, and return how many there were."""
    target = layout.tracker / tenant
    if leaf is not None:
        target /= leaf
    if not target.is_dir():
        return 0
    victims = pids(target)
    if not victims:
        return 0
    try:
        if layout.killer is not None:
            _write(target / "cgroup.kill", "1")
        else:
            _freeze_kill(target)
    except FileNotFoundError:
        return len(victims)
    _wait_empty(target)
    return len(victims)


def _freeze_kill(target: Path) -> None:
    state = target / "freezer.state"
    _write(state, "FROZEN")
    deadline = time.monotonic() + EMPTY_WAIT
    while state.read_text().strip() != "FROZEN" and time.monotonic() < deadline:
        time.sleep(0.005)
    try:
        for pid in pids(target):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
    finally:
        _write(state, "THAWED")


def _wait_empty(target: Path) -> None:
    deadline = time.monotonic() + EMPTY_WAIT
    while pids(target):
        if time.monotonic() > deadline:
            raise CgroupError(f"processes left in {target} after SIGKILL")
        time.sleep(0.005)


def remove(layout: Layout, tenant: str, leaf: str | None = None) -> None:
    """Remove the tenant's (or one exec's) cgroups in every hierarchy; they
    must be empty. Idempotent."""
    for parent in layout.parents():
        top = parent / tenant / leaf if leaf is not None else parent / tenant
        for directory in _walk(top):
            try:
                directory.rmdir()
            except FileNotFoundError:
                pass
            except OSError as exc:
                if exc.errno != errno.EBUSY:
                    raise
                _wait_empty(directory)
                _rmdir_settled(directory)


def _rmdir_settled(directory: Path, budget: float = 1.0) -> None:
    """rmdir an emptied cgroup: on cgroup v1 the kernel may still answer
    EBUSY for a moment after its last task is gone."""
    deadline = time.monotonic() + budget
    while True:
        try:
            directory.rmdir()
            return
        except FileNotFoundError:
            return
        except OSError as exc:
            if exc.errno != errno.EBUSY or time.monotonic() > deadline:
                raise
            time.sleep(0.02)


def prune(layout: Layout) -> None:
    """Remove the layout's parent cgroups where no tenant is left (a stopped
    service's own parent); parents that still hold tenants stay."""
    for parent in layout.parents():
        with contextlib.suppress(FileNotFoundError):
            if not any(p.is_dir() for p in parent.iterdir()):
                with contextlib.suppress(FileNotFoundError, OSError):
                    parent.rmdir()


def clear(parent: str) -> list[str]:
    """End and remove every tenant under `parent` (a stopped PIP's, see
    `service_parent`) and the parent itself; returns the tenants removed."""
    layout = detect(parent)
    gone = tenants(layout)
    for tenant in gone:
        kill(layout, tenant)
        remove(layout, tenant)
    prune(layout)
    return gone


def service_parent(service: str) -> str:
    """The cgroup parent of one service's tenants: a PIP that starts forgets
    the tenants it does not know, which must never be another PIP's."""
    return f"{PARENT}/{service}"


def tenants(layout: Layout) -> list[str]:
    """The tenants that have cgroups on this host."""
    parent = layout.tracker
    if not parent.is_dir():
        return []
    return sorted(p.name for p in parent.iterdir() if p.is_dir())
