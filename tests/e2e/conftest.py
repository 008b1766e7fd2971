"""Fixtures for end-to-end tests on real namespaces: a private state
directory, the working tree's collection built and installed into a
temporary path, and labs with unique names that are always torn down."""

from __future__ import annotations

import json
import os
import secrets
import select
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = ROOT / "examples"

pytestmark = pytest.mark.e2e


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if "tests/e2e" in str(item.fspath):
            item.add_marker(pytest.mark.e2e)


@pytest.fixture(scope="session", autouse=True)
def _root_only() -> None:
    if os.geteuid() != 0:
        pytest.skip("end-to-end tests create namespaces and need root")


@pytest.fixture(scope="session")
def vnet_env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, str]]:
    """Environment for `vnet` runs: private VNET_HOME and this tree's collection."""
    base = tmp_path_factory.mktemp("vnet")
    build = base / "build"
    collections = base / "collections"
    bindir = Path(sys.executable).parent
    galaxy = str(bindir / "ansible-galaxy")
    subprocess.run(
        [galaxy, "collection", "build", "--force", "--output-path", str(build), str(ROOT)],
        check=True,
        capture_output=True,
    )
    tarball = next(build.glob("vnet-infra-*.tar.gz"))
    subprocess.run(
        [galaxy, "collection", "install", "--force", "-p", str(collections), str(tarball)],
        check=True,
        capture_output=True,
    )
    env = dict(os.environ)
    env["VNET_HOME"] = str(base / "home")
    env["VNET_COLLECTIONS_PATH"] = str(collections)
    env["PATH"] = f"{bindir}{os.pathsep}{env.get('PATH', '')}"
    saved = {k: os.environ.get(k) for k in ("VNET_HOME", "VNET_COLLECTIONS_PATH")}
    os.environ.update({k: env[k] for k in saved})
    yield env
    for key, value in saved.items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value


class Vnet:
    """Runs the real `vnet` command line."""

    def __init__(self, env: dict[str, str]) -> None:
        self.env = env

    def run(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        done = subprocess.run(
            [sys.executable, "-m", "vnetlib.cli.main", *args],
            env=self.env,
            capture_output=True,
            text=True,
            timeout=600,
        )
        if check and done.returncode != 0:
            raise AssertionError(
                f"vnet {' '.join(args)} failed ({done.returncode}):\n{done.stdout}\n{done.stderr}"
            )
        return done

    def json(self, *args: str) -> Any:
        """Run with --json; `exec` takes its options before the node command."""
        if args[0] == "exec":
            return json.loads(self.run(args[0], "--json", *args[1:]).stdout)
        return json.loads(self.run(*args, "--json").stdout)


@pytest.fixture(scope="session")
def vnet(vnet_env: dict[str, str]) -> Vnet:
    return Vnet(vnet_env)


@dataclass(frozen=True)
class Lab:
    name: str

    @property
    def substrate(self) -> str:
        """The first PIP's substrate, where direct instantiation goes."""
        return f"{self.name}p1"


def new_lab(vnet: Vnet, *args: str) -> Lab:
    """A lab with a unique name and management networks of its own."""
    name = "t" + secrets.token_hex(1) + secrets.choice("abcdefghij")
    root = subprocess.run(["ip", "-o", "-4", "addr", "show"], capture_output=True, text=True,
                          check=True).stdout
    free = [k for k in range(4, 97, 4)
            if not any(f" 198.18.{129 + k + i}." in root for i in range(4))]
    offset = secrets.choice(free)  # management networks no other lab here uses
    try:
        vnet.run("lab", "up", "--name", name, "--mgmt-offset", str(offset), *args)
    except BaseException:
        vnet.run("lab", "down", "--name", name, check=False)  # a half-made lab too
        raise
    return Lab(name)


@pytest.fixture
def lab(vnet: Vnet) -> Iterator[Lab]:
    """A fresh lab of one PIP with three hosts and no players, removed after
    the test whatever happened."""
    made = new_lab(vnet, "--pips", "1", "--no-players")
    try:
        yield made
    finally:
        vnet.run("lab", "down", "--name", made.name, check=False)


def netns_list() -> set[str]:
    out = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True, check=True)
    return {line.split()[0] for line in out.stdout.splitlines() if line.strip()}


def links_in(netns: str) -> set[str]:
    out = subprocess.run(
        ["ip", "-n", netns, "-o", "link", "show"], capture_output=True, text=True, check=True
    )
    return {line.split(":")[1].strip().split("@")[0] for line in out.stdout.splitlines()}


def ping(netns: str, address: str, count: int = 1, wait: int = 2) -> bool:
    done = subprocess.run(
        [
            "ip",
            "netns",
            "exec",
            netns,
            "ping",
            "-c",
            str(count),
            "-W",
            str(wait),
            "-i",
            "0.2",
            address,
        ],
        capture_output=True,
        text=True,
    )
    return done.returncode == 0


def until_in(proc: subprocess.Popen[bytes], marker: bytes, timeout: float) -> bytes:
    """What `proc` wrote to stdout until `marker` (or its end, or the timeout)."""
    assert proc.stdout is not None
    fd = proc.stdout.fileno()
    got = b""
    deadline = time.monotonic() + timeout
    while marker not in got and time.monotonic() < deadline:
        ready, _, _ = select.select([fd], [], [], max(0.0, deadline - time.monotonic()))
        if not ready:
            break
        chunk = os.read(fd, 65536)
        if not chunk:
            break
        got += chunk
    return got


def ancestors(pid: int) -> list[int]:
    """The parent, grandparent, ... of process `pid` (up to init)."""
    chain = []
    while pid > 1:
        try:
            pid = int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])
        except OSError:
            break
        chain.append(pid)
    return chain
