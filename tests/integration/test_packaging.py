"""The built wheel and sdist, installed into fresh virtual environments.

The sources are this work tree's (git ls-files, untracked files included),
copied out so the build writes nothing here. The wheels of the dependencies
come from a cache built once per pyproject.toml (under $VNET_TEST_CACHE, else
$XDG_CACHE_HOME/vnet/packaging, else ~/.cache/vnet/packaging), so a warm run
installs offline. Every command of the installed environment is called by
absolute path with a PATH that lacks the environment's bin directory and no
ANSIBLE_* variable: what a user gets from `pip install vnetlib`.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import re
import secrets
import shutil
import subprocess
import sys
import tarfile
import tomllib
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
FIGURE6 = ROOT / "examples" / "figure6.xml"
SYSTEM_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
NOT_INSTALLED = "the Ansible collection vnet.infra is not installed"
COLLECTION_FILES = (
    "galaxy.yml",
    "meta/runtime.yml",
    "playbooks/deploy_vnet.yml",
    "playbooks/ping_vnet.yml",
    "plugins/modules/vnet_node.py",
    "plugins/modules/vnet_link.py",
    "plugins/module_utils/_iproute.py",
    "plugins/connection/netns.py",
    "plugins/inventory/substrate.py",
    "plugins/doc_fragments/common.py",
    "roles/vnet_deploy/tasks/main.yml",
    "roles/vnet_deploy/meta/argument_specs.yml",
)
SOURCE_ONLY = ("tests/", ".venv/", ".git/", "bench/", "scripts/", "examples/", ".ci/")


def run(*argv: str | Path, env: dict[str, str] | None = None, cwd: Path | None = None,
        check: bool = True, timeout: float = 600) -> subprocess.CompletedProcess[str]:
    done = subprocess.run([str(a) for a in argv], env=env, cwd=cwd, capture_output=True,
                          text=True, timeout=timeout)
    if check and done.returncode != 0:
        raise AssertionError(
            f"{' '.join(map(str, argv))} exited {done.returncode}:\n{done.stdout}\n{done.stderr}"
        )
    return done


def cache_dir() -> Path:
    if explicit := os.environ.get("VNET_TEST_CACHE"):
        return Path(explicit)
    base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return base / "vnet" / "packaging"


@dataclass(frozen=True, slots=True)
class Cache:
    wheels: Path  # the dependencies' wheels, and setuptools and build
    tools: Path  # a virtual environment with `build`

    def pip_install(self, python: Path, *what: str | Path) -> None:
        """Offline, with this pip (the new environment has none of its own),
        and without compiling to bytecode, which takes most of the time."""
        run(sys.executable, "-m", "pip", "--python", python, "install", "--quiet",
            "--no-compile", "--no-index", "--find-links", self.wheels, *what)


def new_venv(where: Path) -> Path:
    """A virtual environment without system site-packages; its python."""
    run(sys.executable, "-m", "venv", "--without-pip", where)
    return where / "bin" / "python"


@pytest.fixture(scope="module")
def cache() -> Cache:
    """Wheels of every dependency (keyed by pyproject.toml) and a build tool,
    made once; a lock keeps two sessions from making them together."""
    pyproject = (ROOT / "pyproject.toml").read_bytes()
    project = tomllib.loads(pyproject.decode())
    requires = [*project["build-system"]["requires"], *project["project"]["dependencies"]]
    where = cache_dir() / hashlib.sha256(pyproject).hexdigest()[:16]
    where.mkdir(parents=True, exist_ok=True)
    made = Cache(where / "wheels", where / "tools")
    with (where / ".lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not (where / ".complete").exists():
            shutil.rmtree(made.wheels, ignore_errors=True)
            shutil.rmtree(made.tools, ignore_errors=True)
            run(sys.executable, "-m", "pip", "wheel", "--quiet", "--wheel-dir", made.wheels,
                "build", "wheel", *requires)
            made.pip_install(new_venv(made.tools), "build", *project["build-system"]["requires"])
            (where / ".complete").touch()
    return made


@pytest.fixture(scope="module")
def sources(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A copy of the work tree's files (tracked and untracked, not ignored)."""
    dest = tmp_path_factory.mktemp("src") / "vnet"
    listed = run("git", "-C", ROOT, "ls-files", "-z", "--cached", "--others",
                 "--exclude-standard").stdout
    for name in filter(None, listed.split("\0")):
        source = ROOT / name
        if source.is_file() and not source.is_symlink():
            (dest / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, dest / name)
    return dest


@dataclass(frozen=True, slots=True)
class Dists:
    sdist: Path
    wheel: Path


@pytest.fixture(scope="module")
def dists(sources: Path, cache: Cache, tmp_path_factory: pytest.TempPathFactory) -> Dists:
    """sdist, then the wheel built from the sdist (python -m build's way), with
    the build requirements of the tools' environment (the editable install
    below builds in isolation)."""
    out = tmp_path_factory.mktemp("dist")
    run(cache.tools / "bin" / "python", "-m", "build", "--no-isolation", "--outdir", out, sources)
    return Dists(next(out.glob("vnetlib-*.tar.gz")), next(out.glob("vnetlib-*.whl")))


def user_env(home: Path, **extra: str) -> dict[str, str]:
    """A login's environment: no venv on PATH, no ANSIBLE_* or VNET_COLLECTIONS_PATH."""
    home.mkdir(parents=True, exist_ok=True)
    return {"PATH": SYSTEM_PATH, "HOME": str(home), "LANG": "C.UTF-8", **extra}


@pytest.fixture(scope="module")
def venv(dists: Dists, cache: Cache, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A fresh virtual environment (no system site-packages) with the wheel."""
    where = tmp_path_factory.mktemp("venv") / "venv"
    cache.pip_install(new_venv(where), dists.wheel)
    return where


def site_packages(venv: Path) -> Path:
    return next((venv / "lib").glob("python3*/site-packages"))


@contextlib.contextmanager
def moved(path: Path, aside: Path) -> Iterator[Path]:
    """`path` moved to `aside` for the block; moved back whatever happens."""
    path.rename(aside)
    try:
        yield aside
    finally:
        aside.rename(path)


def located(venv: Path, env: dict[str, str], cwd: Path) -> list[str]:
    """[collection directory, source] as the environment's vnetlib finds it."""
    out = run(venv / "bin" / "python", "-c", "import json, vnetlib.deploy.ansible as a; "
              "c = a.check_installed(); print(json.dumps([str(c.collection), c.source]))",
              env=env, cwd=cwd)
    return list(json.loads(out.stdout))


def test_wheel_holds_vnetlib_and_the_collection_only(dists: Dists, sources: Path) -> None:
    names = zipfile.ZipFile(dists.wheel).namelist()
    tops = {n.split("/")[0] for n in names}
    assert tops == {"vnetlib", "ansible_collections", dists.wheel.name.split("-py")[0] +
                    ".dist-info"}, tops
    collection = {n.removeprefix("ansible_collections/vnet/infra/") for n in names
                  if n.startswith("ansible_collections/")}
    assert all(n.startswith("ansible_collections/vnet/infra/") for n in names
               if n.startswith("ansible_collections/"))
    assert set(COLLECTION_FILES) <= collection
    assert not {n for n in collection if n.split("/")[0] not in
                {"galaxy.yml", "docs", "meta", "plugins", "roles", "playbooks"}}, collection
    packages = {str(p.parent.relative_to(sources)) for p in sources.glob("vnetlib/**/__init__.py")}
    assert packages <= {n.rsplit("/", 1)[0] for n in names if n.endswith("/__init__.py")}
    assert "vnetlib/spec/schema/vnet-rdl-1.xsd" in names


def test_sdist_holds_the_sources_without_tests(dists: Dists) -> None:
    with tarfile.open(dists.sdist) as sdist:
        names = {m.name.split("/", 1)[1] for m in sdist.getmembers() if "/" in m.name}
    assert {"pyproject.toml", "setup.py", "README.md", "vnetlib/__init__.py",
            *COLLECTION_FILES} <= names
    assert not {n for n in names if n.startswith(SOURCE_ONLY)}


@pytest.mark.e2e
def test_installed_environment_finds_the_collection(venv: Path, tmp_path: Path) -> None:
    env = user_env(tmp_path / "home")
    bindir = venv / "bin"
    collection = site_packages(venv) / "ansible_collections" / "vnet" / "infra"
    assert located(venv, env, tmp_path) == [str(collection), "the Python path"]

    doc = run(bindir / "ansible-doc", "vnet.infra.vnet_node", env=env, cwd=tmp_path).stdout
    assert str(collection / "plugins" / "modules" / "vnet_node.py") in doc
    check = run(bindir / "ansible-playbook", "--syntax-check", "vnet.infra.deploy_vnet",
                env=env, cwd=tmp_path)
    assert f"playbook: {collection / 'playbooks' / 'deploy_vnet.yml'}" in check.stdout


@pytest.mark.e2e
def test_installed_vnetlib_click_uses_the_installed_collection(venv: Path,
                                                               tmp_path: Path) -> None:
    """vnetlib.click without a checkout: its stdlib half (the collection's
    module_utils _click_config and _click) comes from the collection the wheel
    installs beside vnetlib."""
    env = user_env(tmp_path / "home")
    out = run(venv / "bin" / "python", "-c",
              "import json, sys, vnetlib.click.config as c, vnetlib.click.process as p; "
              "lk = c.ClickLink('l1', 5001, 'vb1', 'vx1', 'ck1', '198.18.0.1', '198.18.0.2'); "
              "print(json.dumps([c.render([lk]), c.ClickLink.__module__, p.Instance.__module__, "
              "sys.modules[p.Instance.__module__].__file__]))", env=env, cwd=tmp_path)
    text, config_module, process_module, path = json.loads(out.stdout)
    utils = "ansible_collections.vnet.infra.plugins.module_utils"
    assert "from0 :: Classifier(0/08 4/001389, -);" in text
    assert (config_module, process_module) == (f"{utils}._click_config", f"{utils}._click")
    assert path == str(site_packages(venv) / utils.replace(".", "/") / "_click.py")


def free_mgmt_offset() -> int:
    """Management networks (198.18.129+offset.0/24 and up) no other lab here uses."""
    addrs = run("ip", "-o", "-4", "addr", "show").stdout
    free = [k for k in range(4, 97, 4)
            if not any(f" 198.18.{129 + k + i}." in addrs for i in range(2))]
    return secrets.choice(free)


@dataclass(frozen=True, slots=True)
class Installed:
    """`vnet` of the fresh environment, called by absolute path."""

    vnet: Path
    env: dict[str, str]

    def __call__(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        return run(self.vnet, *args, env=self.env, cwd=ROOT, check=check)


@pytest.fixture(scope="module")
def lab(venv: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Installed, str]]:
    """A lab of one PIP with two hosts, no players, made and removed by the
    installed `vnet`; yields it and the substrate's name."""
    if os.geteuid() != 0:
        pytest.skip("a lab needs root")
    base = tmp_path_factory.mktemp("lab")
    vnet = Installed(venv / "bin" / "vnet", user_env(base / "home", VNET_HOME=str(base / "vh")))
    name = "k" + secrets.token_hex(1) + secrets.choice("abcdefghij")
    try:
        vnet("lab", "up", "--name", name, "--pips", "1", "--hosts", "2", "--no-players",
             "--mgmt-offset", str(free_mgmt_offset()))
        yield vnet, f"{name}p1"
    finally:
        vnet("lab", "down", "--name", name, check=False)


def netns_with(prefix: str) -> list[str]:
    return [n for n in run("ip", "netns", "list").stdout.split() if n.startswith(prefix)]


@pytest.mark.e2e
def test_installed_vnet_deploys_without_its_bin_on_path(lab: tuple[Installed, str]) -> None:
    vnet, substrate = lab
    assert shutil.which("ansible-playbook", path=vnet.env["PATH"]) is None
    up = json.loads(vnet("up", str(FIGURE6), "--substrate", substrate, "--json").stdout)
    try:
        assert set(up["node_map"]) == {"e1", "r1", "r2", "r3", "r4", "e2"}
        assert len(netns_with(f"vn-{substrate}-{up['vnet']}-")) == 6
        ping = vnet("exec", "--json", up["vnet"], "e1", "--", "ping", "-c", "1", "-W", "2",
                    "198.19.0.2")
        assert json.loads(ping.stdout)["rc"] == 0
    finally:
        vnet("down", up["vnet"])
    assert netns_with(f"vn-{substrate}-{up['vnet']}-") == []


@pytest.mark.e2e
def test_search_order_and_what_is_missing(venv: Path, tmp_path: Path) -> None:
    env = user_env(tmp_path / "home")
    shipped = site_packages(venv) / "ansible_collections"
    mine = tmp_path / "mine"
    shutil.copytree(shipped, mine / "ansible_collections")
    user_set = {**env, "ANSIBLE_COLLECTIONS_PATH": f"/nonexistent:{mine}"}
    assert located(venv, user_set, tmp_path) == [
        str(mine / "ansible_collections" / "vnet" / "infra"), "$ANSIBLE_COLLECTIONS_PATH"]

    old = venv / "share" / "ansible" / "collections"  # where install.sh used to put it
    with moved(shipped, venv / "aside"):
        try:
            shutil.copytree(mine, old)
            assert located(venv, env, tmp_path) == [
                str(old / "ansible_collections" / "vnet" / "infra"), "the environment"]
        finally:
            shutil.rmtree(old.parent)
        missing = run(venv / "bin" / "python", "-c", "import vnetlib.deploy.ansible as a; "
                      "a.check_installed()", env=env, cwd=tmp_path, check=False)
    assert missing.returncode != 0 and NOT_INSTALLED in missing.stderr
    assert "pip install vnetlib" in missing.stderr and str(old) in missing.stderr

    binary = venv / "bin" / "ansible-playbook"
    with moved(binary, tmp_path / "ansible-playbook"):
        missing = run(venv / "bin" / "python", "-c", "import vnetlib.deploy.ansible as a; "
                      "a.check_installed()", env=env, cwd=tmp_path, check=False)
    assert "ansible-playbook was found neither next to" in missing.stderr


@pytest.mark.e2e
def test_missing_collection_fails_before_running(venv: Path, lab: tuple[Installed, str]) -> None:
    vnet, substrate = lab
    logged = Installed(vnet.vnet, {**vnet.env, "VNET_PROGRESS": "plain"})  # progress lines
    with moved(site_packages(venv) / "ansible_collections", venv / "aside"):
        failed = logged("up", str(FIGURE6), "--substrate", substrate, check=False)
    assert failed.returncode == 4, failed.stderr
    assert "s] parsing " in failed.stderr
    assert NOT_INSTALLED in failed.stderr
    assert "pip install vnetlib" in failed.stderr
    assert "could not be found" not in failed.stderr
    assert "task:" not in failed.stderr  # no playbook started
    assert netns_with(f"vn-{substrate}-") == []
    for record in json.loads(vnet("status", "--json").stdout):
        vnet("down", record["vnet"], check=False)  # what instantiate kept of the refusal


@pytest.mark.e2e
def test_editable_install_deploys_from_its_checkout(
    sources: Path, cache: Cache, lab: tuple[Installed, str], tmp_path: Path
) -> None:
    """`pip install -e`: Ansible cannot see the checkout on the Python path,
    so vnetlib links the checkout's collection into each run's directory."""
    installed, substrate = lab
    venv = tmp_path / "venv"
    cache.pip_install(new_venv(venv), "-e", sources)
    assert located(venv, installed.env, tmp_path) == [str(sources), "the source checkout"]
    vnet = Installed(venv / "bin" / "vnet", installed.env)
    up = json.loads(vnet("up", str(FIGURE6), "--substrate", substrate, "--check", "--json").stdout)
    assert up["check"] is True and len(up["plan"]["hosts"]) == 2
    assert netns_with(f"vn-{substrate}-") == []


def test_extras_are_optional(dists: Dists) -> None:
    """PostgreSQL's driver is the extra postgresql, not a dependency."""
    with zipfile.ZipFile(dists.wheel) as wheel:
        meta = wheel.read(next(n for n in wheel.namelist()
                               if n.endswith(".dist-info/METADATA"))).decode()
    requires = [line for line in meta.splitlines() if line.startswith("Requires-Dist:")]
    assert "Provides-Extra: postgresql" in meta
    psycopg = [r for r in requires if "psycopg" in r]
    assert psycopg and all('extra == "postgresql"' in r or 'extra == "test"' in r
                           for r in psycopg), psycopg


@pytest.mark.e2e
def test_installed_environment_has_the_inventory_plugin(venv: Path, tmp_path: Path) -> None:
    env = user_env(tmp_path / "home")
    doc = run(venv / "bin" / "ansible-doc", "-t", "inventory", "vnet.infra.substrate",
              env=env, cwd=tmp_path).stdout
    assert "substrate description" in doc
    config = tmp_path / "substrate.vnet.yml"
    config.write_text("plugin: vnet.infra.substrate\n"
                      f"substrate: {ROOT / 'examples' / 'lab-substrate.xml'}\n")
    listed = json.loads(run(venv / "bin" / "ansible-inventory", "-i", config, "--list",
                            env=env, cwd=tmp_path).stdout)
    assert listed["substrate"]["hosts"] == ["h1", "h2", "h3"]
    assert listed["location_paris"]["hosts"] == ["h3"]
    h1 = listed["_meta"]["hostvars"]["h1"]
    unwrap = {k: v["__ansible_unsafe"] if isinstance(v, dict) else v for k, v in h1.items()}
    assert unwrap["ansible_netns_name"] == "vl-lab-h1"
    assert unwrap["ansible_connection"] == "vnet.infra.netns"
    assert unwrap["vnet_mgmt_address"] == "198.18.128.11"
    missing = run(venv / "bin" / "python", "-c", "import psycopg", env=env, cwd=tmp_path,
                  check=False)
    assert missing.returncode != 0  # not without the extra


def test_galaxy_build_and_install(sources: Path, tmp_path: Path) -> None:
    """ansible-galaxy builds the collection from the sources and installs the
    tarball; the installed collection has the plugins and its playbook parses.
    (With the tools of the environment running the tests, whose Python path has
    no collection: the wheel's environment would find its own first.)"""
    env = user_env(tmp_path / "home")
    bindir = Path(sys.executable).parent
    galaxy = bindir / "ansible-galaxy"
    run(galaxy, "collection", "build", "--output-path", tmp_path / "built", sources, env=env,
        cwd=tmp_path)
    tarball = next((tmp_path / "built").glob("vnet-infra-*.tar.gz"))
    with tarfile.open(tarball) as tar:
        names = set(tar.getnames())
    assert set(COLLECTION_FILES) - {"galaxy.yml"} | {"MANIFEST.json"} <= names
    assert not {n for n in names if n.startswith(("vnetlib/", "tests/", "scripts/"))}
    run(galaxy, "collection", "install", "-p", tmp_path / "installed", tarball, env=env,
        cwd=tmp_path)
    installed = {**env, "ANSIBLE_COLLECTIONS_PATH": str(tmp_path / "installed")}
    collection = tmp_path / "installed" / "ansible_collections" / "vnet" / "infra"
    check = run(bindir / "ansible-playbook", "--syntax-check", "vnet.infra.deploy_vnet",
                env=installed, cwd=tmp_path)
    assert str(collection / "playbooks" / "deploy_vnet.yml") in check.stdout
    doc = run(bindir / "ansible-doc", "-t", "inventory", "vnet.infra.substrate", env=installed,
              cwd=tmp_path).stdout
    assert str(collection / "plugins" / "inventory" / "substrate.py") in doc
    listed = run(galaxy, "collection", "list", "vnet.infra", env=installed, cwd=tmp_path)
    assert str(tmp_path / "installed" / "ansible_collections") in listed.stdout


OPERATOR_SECTION = "### The PIP operator's Ansible path"


def readme_section() -> tuple[list[str], str]:
    """The shell commands (continuation lines joined) and the inventory
    plugin's configuration of the README's operator section."""
    text = (ROOT / "README.md").read_text()
    section = text.split(OPERATOR_SECTION, 1)[1].split("\n## ", 1)[0].split("\n### ", 1)[0]
    shell = "\n".join(re.findall(r"```sh\n(.*?)```", section, re.S))
    commands = [c.strip() for c in shell.replace("\\\n", " ").splitlines() if c.strip()]
    (plugin_config,) = re.findall(r"```yaml\n(.*?)```", section, re.S)
    return commands, plugin_config


@pytest.mark.e2e
def test_readme_operator_commands_as_printed(venv: Path, tmp_path: Path) -> None:
    """The README's operator commands, run one by one as printed, by bash,
    in the installed environment (its bin first on PATH, as when activated)
    with a private VNET_HOME and a copy of examples/ in the working directory."""
    if os.geteuid() != 0:
        pytest.skip("a lab needs root")
    commands, plugin_config = readme_section()
    assert any(c.startswith("vnet plan ") for c in commands)
    assert sum(c.startswith("ansible-playbook ") for c in commands) == 2
    assert any(c.startswith("vnet adopt ") for c in commands)
    lab = next(c for c in commands if c.startswith("vnet lab up")).split()
    name, offset = lab[lab.index("--name") + 1], int(lab[lab.index("--mgmt-offset") + 1])
    if netns_with(f"vl-{name}p1-") or f" 198.18.{129 + offset}." in run("ip", "-o", "-4",
                                                                         "addr").stdout:
        pytest.skip(f"a lab {name} (or its management network) is up on this machine")
    shutil.copytree(ROOT / "examples", tmp_path / "examples")
    home = tmp_path / "vh"
    env = user_env(tmp_path / "home", VNET_HOME=str(home),
                   PATH=f"{venv / 'bin'}:{SYSTEM_PATH}")
    outputs: dict[str, str] = {}
    try:
        for command in commands:
            done = run("bash", "-euc", command, env=env, cwd=tmp_path)
            outputs[command] = done.stdout
            if command.startswith("vnet adopt "):
                config = tmp_path / "substrate.vnet.yml"  # its path as this VNET_HOME has it
                config.write_text(plugin_config.replace("/var/lib/vnet", str(home)))
                listed = json.loads(run("bash", "-euc", f"ansible-inventory -i {config} --list",
                                        env=env, cwd=tmp_path).stdout)
                assert set(listed["substrate"]["hosts"]) == {"h1", "h2", "h3"}
    finally:
        run("bash", "-c", f"vnet lab down --name {name}", env=env, cwd=tmp_path, check=False)
    check = next(o for c, o in outputs.items() if c.endswith("--check --diff"))
    assert "changed=" in check and "failed=0" in check
    status = next(o for c, o in outputs.items() if c.startswith("vnet status"))
    assert "ready" in status and "e1" in status
    svg = (tmp_path / "figure6.svg").read_text()
    assert svg.lstrip().startswith("<?xml") and "<svg" in svg and "host h" in svg
    assert netns_with(f"vl-{name}p1-") == [] and netns_with(f"vn-{name}p1-") == []
