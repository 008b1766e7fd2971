"""Running the collection's playbooks through ansible-runner.

One wrapper: a private data directory per run, JSON events turned into typed
failures that name the host and the virtual resource, a timeout, and a
filtered environment that points Ansible at the vnet.infra collection.
"""

from __future__ import annotations

import os
import shutil
import sys
import tempfile
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import ansible_runner

from vnetlib.paths import collections_path

DEPLOY_PLAYBOOK = "vnet.infra.deploy_vnet"
KEPT_ENV = ("PATH", "HOME", "LANG", "LC_ALL", "TMPDIR", "VIRTUAL_ENV")

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


def _environment() -> dict[str, str]:
    env = {k: os.environ[k] for k in KEPT_ENV if k in os.environ}
    bindir = str(Path(sys.executable).parent)
    env["PATH"] = os.pathsep.join([bindir, env.get("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")])
    env["ANSIBLE_COLLECTIONS_PATH"] = collections_path()
    env["ANSIBLE_HOST_KEY_CHECKING"] = "False"
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
) -> RunResult:
    """Run `playbook` (a file or a collection FQCN) and raise DeployError on failure."""
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

    cmdline = ["--diff"]
    if check:
        cmdline.append("--check")
    if limit:
        cmdline += ["--limit", ",".join(limit)]
    workdir = Path(tempfile.mkdtemp(prefix="vnet-runner-"))
    try:
        runner = ansible_runner.run(
            private_data_dir=str(workdir),
            playbook=playbook,
            inventory=str(inventory),
            extravars=dict(extravars),
            envvars=_environment(),
            cmdline=" ".join(cmdline),
            event_handler=on_event,
            quiet=True,
            timeout=timeout,
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
