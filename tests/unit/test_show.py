"""`vnet show SPEC`: Figure 6 drawn before submission, rendered by Graphviz.

The PNGs are kept as artifacts in $VNET_ARTIFACTS for a person to look at
(else in the test's own temporary directory); the test prints where.
"""

from __future__ import annotations

import os
import shutil
import struct
import subprocess
import sys
from pathlib import Path

import pytest
from lxml import etree

from vnetlib.cli import show

ROOT = Path(__file__).resolve().parents[2]
FIGURE6 = ROOT / "examples" / "figure6.xml"
FIGURE6_2PIP = ROOT / "examples" / "figure6-2pip.xml"
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"

needs_dot = pytest.mark.skipif(shutil.which("dot") is None, reason="Graphviz is not installed")


def artifacts(tmp_path: Path) -> Path:
    where = Path(os.environ.get("VNET_ARTIFACTS") or tmp_path)
    where.mkdir(parents=True, exist_ok=True)
    return where


def png_size(data: bytes) -> tuple[int, int]:
    """Width and height from the IHDR chunk, after checking the signature."""
    assert data[:8] == PNG_SIGNATURE
    length, kind = struct.unpack(">I4s", data[8:16])
    assert kind == b"IHDR" and length == 13
    width, height = struct.unpack(">II", data[16:24])
    return width, height


def vnet_cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run([sys.executable, "-m", "vnetlib.cli.main", *args], capture_output=True,
                          timeout=60, env=env, check=False)


def test_dot_of_figure6_has_its_nodes_links_and_addresses() -> None:
    source = show.dot_source(show.picture_of(str(FIGURE6), "nolab"))
    for node in ("e1", "r1", "r2", "r3", "r4", "e2"):
        assert f'"{node}" [label="{node}\\n' in source
    edges = [line for line in source.splitlines() if " -- " in line]
    assert len(edges) == 7
    assert '"e1" -- "r1"' in source and "l1\\n100 Mb/s, 5 ms" in source
    assert "eth0 198.19.0.1/30" in source and "eth2 198.19.0.25/30" in source
    assert "cluster" not in source  # no location asked: no groups
    assert show.INTER_PIP_COLOR not in source


def test_locations_group_nodes_and_inter_pip_links_stand_out() -> None:
    source = show.dot_source(show.picture_of(str(FIGURE6_2PIP), "nolab"))
    assert 'label="location berlin"' in source and 'label="location london"' in source
    red = {line.split("label=")[1].split(" ")[0].strip('"')
           for line in source.splitlines() if " -- " in line and show.INTER_PIP_COLOR in line}
    assert red == {"l3", "l4", "l5"}  # the links figure6-2pip.xml says cross the PIPs
    assert source.count("(across locations)") == 3


@needs_dot
def test_figure6_png_and_svg_are_rendered_and_kept(tmp_path: Path) -> None:
    kept = artifacts(tmp_path)
    for spec in (FIGURE6, FIGURE6_2PIP):
        out = kept / f"{spec.stem}.png"
        done = vnet_cli("show", str(spec), "--format", "png", "-o", str(out))
        assert done.returncode == 0, done.stderr
        width, height = png_size(out.read_bytes())
        assert 600 <= width <= 6000 and 150 <= height <= 4000, (width, height)
        assert out.stat().st_size > 10_000  # text and lines, not an empty canvas
        print(f"\nkept {out} ({width}x{height})")
    svg = vnet_cli("show", str(FIGURE6_2PIP), "--format", "svg")  # stdout
    assert svg.returncode == 0, svg.stderr
    root = etree.fromstring(svg.stdout)
    assert root.tag == "{http://www.w3.org/2000/svg}svg"
    titles = {t.text for t in root.iter("{http://www.w3.org/2000/svg}title")}
    assert {"e1", "r1", "r2", "r3", "r4", "e2", "r1--r3", "cluster_0", "cluster_1"} <= titles


def test_dot_needs_no_graphviz_and_svg_says_what_is_missing(tmp_path: Path) -> None:
    env = {**os.environ, "PATH": str(tmp_path)}  # no `dot` on it
    dot = vnet_cli("show", str(FIGURE6), "--format", "dot", env=env)
    assert dot.returncode == 0 and dot.stdout.startswith(b'graph "figure6" {')
    svg = vnet_cli("show", str(FIGURE6), env=env)
    assert svg.returncode == 9 and svg.stdout == b""
    assert b"apt-get install graphviz" in svg.stderr


def test_an_invalid_description_is_named() -> None:
    bad = vnet_cli("show", str(ROOT / "README.md"))
    assert bad.returncode == 2 and b"README.md" in bad.stderr


def test_pip_operator_sees_its_sliver_and_its_inter_pip_links(tmp_path: Path) -> None:
    """A PIP's sliver of figure6-2pip (its Berlin part), allocated and
    provisioned by the PIP core in a real SQLite store; `vnet show --pip`
    reads that store as the PIP's operator."""
    from vnetlib.core.deployer import RecordingDeployer
    from vnetlib.core.records import Peer, State
    from vnetlib.players.config import load as load_config
    from vnetlib.players.pip import build_core
    from vnetlib.spec import load_vnet
    from vnetlib.spec.model import BoundaryLink, VNetSpec

    whole = load_vnet(FIGURE6_2PIP)
    berlin = {"e1", "r1", "r2"}
    crossing = [k for k in whole.links if len(set(k.nodes) & berlin) == 1]
    part = VNetSpec(
        "figure6-2pip", tuple(n for n in whole.nodes if n.id in berlin),
        tuple(k for k in whole.links if set(k.nodes) <= berlin),
        boundary=tuple(BoundaryLink(k.id, k.a if k.a.node in berlin else k.b, f"ref-{k.id}",
                                    k.bandwidth_mbps) for k in crossing))
    config = tmp_path / "pip1.toml"
    config.write_text(f'name = "pip1"\nrole = "pip"\nstore = "sqlite:///{tmp_path}/pip1.db"\n'
                      f'pki = "{tmp_path}"\n[pip]\n'
                      f'substrate = "{ROOT / "examples" / "lab-substrate.xml"}"\n'
                      f'inventory = "{tmp_path / "inventory.yml"}"\n')
    core = build_core(load_config(config), RecordingDeployer())
    try:
        core.allocate("vnp", "order-1", part, sliver_id="s-berlin")
        done = core.provision("vnp", "order-1", [
            Peer(f"ref-{k.id}", "pip2", "https://127.0.0.1:9", "initiator") for k in crossing])
        assert done.state is State.PROVISIONED
        hosts = set(done.embedding.node_map.values())
    finally:
        core.ledger.close()

    dot = vnet_cli("show", "order-1", "--pip", str(config), "--format", "dot")
    assert dot.returncode == 0, dot.stderr
    source = dot.stdout.decode()
    assert "sliver s-berlin (vnp/order-1) of PIP pip1: provisioned" in source
    for host in hosts:
        assert f'label="host {host} (' in source
    inter_pip = [line for line in source.splitlines()
                 if " -- " in line and show.INTER_PIP_COLOR in line and "dashed" in line]
    assert [line.split('"')[3] for line in inter_pip] == ["peer pip2"] * 3
    assert sorted(line.split('label="')[1].split(" ")[0] for line in inter_pip) == [
        "l3", "l4", "l5"]
    assert source.count('"peer pip2" [label="pip2"') == 1
    if shutil.which("dot"):
        out = artifacts(tmp_path) / "figure6-2pip-pip1-sliver.png"
        png = vnet_cli("show", "s-berlin", "--pip", str(config), "--format", "png", "-o",
                       str(out))
        assert png.returncode == 0, png.stderr
        assert png_size(out.read_bytes())[0] > 300
        print(f"\nkept {out}")
    missing = vnet_cli("show", "nope", "--pip", str(config), "--format", "dot")
    assert missing.returncode == 5 and b"no sliver with id or name 'nope'" in missing.stderr


@needs_dot
def test_no_png_onto_a_terminal() -> None:
    reader, writer = os.openpty()
    try:
        done = subprocess.run([sys.executable, "-m", "vnetlib.cli.main", "show", str(FIGURE6),
                               "--format", "png"], stdout=writer, stderr=subprocess.PIPE,
                              timeout=60, check=False)
    finally:
        os.close(writer)
        os.close(reader)
    assert done.returncode == 2 and b"-o FILE" in done.stderr
