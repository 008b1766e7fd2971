"""Running the collection's playbooks through ansible-runner.

One wrapper: a private data directory per run, JSON events turned into typed
failures that name the host and the virtual resource, a timeout, and an
environment that points Ansible at the vnet.infra collection.

Where the collection is looked for, first match wins (`search_order`):
$VNET_COLLECTIONS_PATH, $ANSIBLE_COLLECTIONS_PATH, `ansible_collections`
directories on the Python path (the wheel installs the collection there, in
site-packages), the source checkout vnetlib runs from (an editable install:
its root is the collection, linked into each run's private directory as
ansible_collections/vnet/infra), then <prefix>/share/ansible/collections
(where scripts/install.sh used to install it) and Ansible's default paths.
When none holds it, `run_playbook` fails before running anything.
"""

from __future__ import annotations

import atexit
import os
import shutil
import sys
import tempfile
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import ansible_runner

import vnetlib
from vnetlib.deploy import warm

COLLECTION = "vnet.infra"
DEPLOY_PLAYBOOK = "vnet.infra.deploy_vnet"
KEPT_ENV = ("PATH", "HOME", "LANG", "LC_ALL", "TMPDIR", "VIRTUAL_ENV")
PLAYBOOK_BINARY = "ansible-playbook"
# What Ansible needs of the collection's directory; a checkout's root holds more.
COLLECTION_PARTS = ("galaxy.yml", "MANIFEST.json", "meta", "plugins", "roles", "playbooks")
_MARKER = Path("playbooks") / "deploy_vnet.yml"

Progress = Callable[[str], None]


@dataclass(frozen=True, slots=True)
class TaskFailure:
    host: str
    task: str
    resource: str | None
    message: str

    def __str__(self) -> str:
        what = f" ({self.resource})" if self.resource else ""
        return f"{self.host}: {self.task}{what}: {self.message}"


class DeployError(RuntimeError):
    def __init__(self, status: str, failures: list[TaskFailure], stdout_tail: str) -> None:
        self.status = status
        self.failures = failures
        self.stdout_tail = stdout_tail
        lines = [str(f) for f in failures] or [stdout_tail.strip() or "no output"]
        super().__init__(f"ansible run {status}:\n  " + "\n  ".join(lines))


class AnsibleNotInstalled(DeployError):
    """Ansible or the vnet.infra collection is missing: raised before anything ran."""

    def __init__(self, message: str) -> None:
        self.status = "not-installed"
        self.failures = []
        self.stdout_tail = ""
        RuntimeError.__init__(self, message)


@dataclass(frozen=True, slots=True)
class CollectionLocation:
    """Where vnet.infra was found. `collection` is its directory; `root` the
    directory that holds ansible_collections/vnet/infra (what goes on
    ANSIBLE_COLLECTIONS_PATH), None for a source checkout, whose collection
    is laid out under ansible_collections/ in each run's private directory."""

    collection: Path
    root: Path | None
    source: str


def _env_roots(variable: str) -> list[Path]:
    """The directories of a colon-separated collections path; Ansible accepts
    an entry naming the `ansible_collections` directory itself too."""
    roots = []
    for entry in os.environ.get(variable, "").split(os.pathsep):
        if entry:
            path = Path(entry).expanduser()
            roots.append(path.parent if path.name == "ansible_collections" else path)
    return roots


def source_checkout() -> Path | None:
    """The repository vnetlib runs from (editable install or PYTHONPATH): its
    root is the collection. None for an installed vnetlib."""
    root = Path(vnetlib.__file__).resolve().parent.parent
    if (root / "galaxy.yml").is_file() and (root / _MARKER).is_file():
        return root
    return None


def search_order() -> list[CollectionLocation]:
    """Every place that may hold vnet.infra, in the order they are tried."""

    def under(source: str, roots: list[Path]) -> list[CollectionLocation]:
        return [CollectionLocation(r / "ansible_collections" / "vnet" / "infra", r, source)
                for r in roots]

    order = under("$VNET_COLLECTIONS_PATH", _env_roots("VNET_COLLECTIONS_PATH"))
    for variable in ("ANSIBLE_COLLECTIONS_PATH", "ANSIBLE_COLLECTIONS_PATHS"):
        order += under(f"${variable}", _env_roots(variable))
    order += under("the Python path", [Path(p) for p in sys.path if p])
    if (checkout := source_checkout()) is not None:
        order.append(CollectionLocation(checkout, None, "the source checkout"))
    order += under("the environment", [Path(sys.prefix) / "share" / "ansible" / "collections"])
    order += under("Ansible's defaults", [
        Path.home() / ".ansible" / "collections", Path("/usr/share/ansible/collections"),
    ])
    return order


def find_collection() -> CollectionLocation:
    """The vnet.infra collection that deployments use; AnsibleNotInstalled,
    naming what to install, when there is none."""
    order = search_order()
    for location in order:
        if (location.collection / _MARKER).is_file():
            return location
    looked = dict.fromkeys(str(o.root) for o in order if o.source != "the Python path")
    raise AnsibleNotInstalled(
        f"the Ansible collection {COLLECTION} is not installed: pip install vnetlib "
        "(it ships the collection), or in vnet's repository `ansible-galaxy collection build` "
        "and `ansible-galaxy collection install vnet-infra-*.tar.gz`, or set "
        "ANSIBLE_COLLECTIONS_PATH to a directory that holds ansible_collections/vnet/infra\n"
        f"(looked on the Python path of {sys.executable} and in {', '.join(looked)})"
    )


def playbook_binary() -> str:
    """ansible-playbook next to the running interpreter (a venv's `vnet` called
    by absolute path, the venv not activated), else the one on PATH."""
    beside = Path(sys.executable).parent / PLAYBOOK_BINARY
    if os.access(beside, os.X_OK):
        return str(beside)
    if found := shutil.which(PLAYBOOK_BINARY):
        return found
    raise AnsibleNotInstalled(
        f"{PLAYBOOK_BINARY} was found neither next to {sys.executable} nor on PATH: "
        "install ansible-core (a dependency of vnetlib: pip install vnetlib) in this environment"
    )


def check_installed() -> CollectionLocation:
    """Fail as run_playbook would, before anything is recorded or changed:
    ansible-playbook and the collection must be there. Returns the collection."""
    playbook_binary()
    return find_collection()


_roots: dict[Path, Path] = {}
_roots_lock = threading.Lock()


def _collection_root(location: CollectionLocation) -> Path:
    """The directory for ANSIBLE_COLLECTIONS_PATH; for a checkout, links to
    its collection parts under <dir>/ansible_collections/vnet/infra (links to
    the parts, not the root, so no directory loop), one directory per checkout
    for the life of this process: the same Ansible configuration for every
    run, which the warm controller needs."""
    if location.root is not None:
        return location.root
    with _roots_lock:
        root = _roots.get(location.collection)
        if root is not None and root.is_dir():
            return root
        root = Path(tempfile.mkdtemp(prefix="vnet-collections-"))
        target = root / "ansible_collections" / "vnet" / "infra"
        target.mkdir(parents=True)
        for part in COLLECTION_PARTS:
            if (location.collection / part).exists():
                (target / part).symlink_to(location.collection / part)
        _roots[location.collection] = root
        atexit.register(shutil.rmtree, root, True)
        return root


@dataclass(slots=True)
class RunResult:
    status: str
    rc: int
    changed: dict[str, int] = field(default_factory=dict)
    ok: dict[str, int] = field(default_factory=dict)
    failures: list[TaskFailure] = field(default_factory=list)


def _resource(result: Mapping[str, Any]) -> str | None:
    item = result.get("item")
    if isinstance(item, Mapping):
        for key in ("vnode", "link", "netns", "name", "bridge"):
            if key in item:
                return f"{key} {item[key]}"
    return None if item is None else str(item)


def _message(result: Mapping[str, Any]) -> str:
    parts = [str(result.get("msg", "")).strip()]
    stderr = str(result.get("stderr", "") or result.get("module_stderr", "")).strip()
    if stderr:
        parts.append(stderr.splitlines()[-1])
    return ": ".join(p for p in parts if p) or "failed"


def _environment(collections_root: Path, binary: str,
                 shim_dir: str | None = None) -> dict[str, str]:
    env = {k: os.environ[k] for k in KEPT_ENV if k in os.environ}
    bindirs = [str(Path(binary).parent)]
    if shim_dir is not None:
        bindirs.insert(0, shim_dir)
    env["PATH"] = os.pathsep.join([*bindirs, env.get("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")])
    # Ansible scans the Python path itself; the other places stay after ours.
    others = [o.root for o in search_order() if o.root is not None and o.root.is_dir()
              and o.source != "the Python path"]
    env["ANSIBLE_COLLECTIONS_PATH"] = os.pathsep.join(
        dict.fromkeys(str(r) for r in [collections_root, *others]))
    # Hosts over SSH are checked against their pinned keys (the netns
    # connection has none); an inventory must not get StrictHostKeyChecking=no.
    env["ANSIBLE_HOST_KEY_CHECKING"] = "True"
    env["ANSIBLE_PIPELINING"] = "True"
    env["ANSIBLE_FORKS"] = "20"
    env["ANSIBLE_NOCOLOR"] = "1"
    return env


def run_playbook(
    playbook: str,
    inventory: Path,
    extravars: Mapping[str, Any],
    *,
    check: bool = False,
    limit: list[str] | None = None,
    progress: Progress | None = None,
    timeout: int = 600,
    warm_controller: bool = True,
) -> RunResult:
    """Run `playbook` (a file or a collection FQCN) and raise DeployError on
    failure; AnsibleNotInstalled, before anything ran, when ansible-playbook
    or the vnet.infra collection cannot be found.

    With `warm_controller` (and $VNET_WARM_CONTROLLER not 0) ansible-runner's
    ansible-playbook is forked from this process's warm controller
    (`vnetlib.deploy.warm`) instead of started from scratch."""
    location = find_collection()
    binary = playbook_binary()
    server = warm.controller(binary) if warm_controller else None
    failures: list[TaskFailure] = []
    announced: set[str] = set()

    def on_event(event: dict[str, Any]) -> bool:
        kind = event.get("event", "")
        data = event.get("event_data", {})
        if kind == "playbook_on_task_start" and progress is not None:
            task = str(data.get("task", ""))
            if task not in announced:
                announced.add(task)
                progress(f"task: {task}")
        elif kind in ("runner_on_failed", "runner_item_on_failed", "runner_on_unreachable"):
            if data.get("ignore_errors"):
                return True
            result = data.get("res", {})
            if kind == "runner_on_failed" and result.get("results"):
                return True  # per-item failures were reported already
            failures.append(
                TaskFailure(
                    host=str(data.get("host", "?")),
                    task=str(data.get("task", "?")),
                    resource=_resource(result),
                    message=_message(result),
                )
            )
        return True

    # The diff shows what a check would change; an applying run's diffs (its
    # whole plan, for a large VNet) are rendered by the stdout callback for
    # no reader, about 0.1 s of CPU for 100 nodes.
    cmdline = ["--diff", "--check"] if check else []
    if limit:
        cmdline += ["--limit", ",".join(limit)]
    workdir = Path(tempfile.mkdtemp(prefix="vnet-runner-"))
    try:
        envvars = _environment(_collection_root(location), binary,
                               server.bindir if server is not None else None)
        runner = ansible_runner.run(
            private_data_dir=str(workdir),
            playbook=playbook,
            inventory=str(inventory),
            extravars=dict(extravars),
            envvars=envvars,
            cmdline=" ".join(cmdline),
            event_handler=on_event,
            quiet=True,
            timeout=timeout,
            fact_cache_type="memory",  # no per-run cache directory in Ansible's configuration
        )
        stats = runner.stats or {}
        result = RunResult(
            status=str(runner.status),
            rc=int(runner.rc if runner.rc is not None else -1),
            changed=dict(stats.get("changed", {})),
            ok=dict(stats.get("ok", {})),
            failures=failures,
        )
        if runner.status != "successful":
            tail = runner.stdout.read()[-2000:] if runner.stdout else ""
            raise DeployError(str(runner.status), failures, tail)
        return result
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
