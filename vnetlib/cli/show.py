"""`vnet show VNET|SPEC`: a picture of a VNet with Graphviz.

A description file (SPEC) is drawn before it is submitted: its nodes, its
links with their addresses and bandwidth, and the nodes that must be in one
location grouped together. A VNet is drawn as far as the caller may see it:
on the direct path the operator owns the substrate and sees the embedding
(each node inside the host that runs it; links between hosts drawn bold, as
they are tunnelled; links leaving the substrate to another PIP in red); a
VNet requested through the players shows the nodes the VNO discloses,
grouped by provider when the contract discloses providers.

The drawing is DOT text, made here; `dot -T svg|png` renders it (Debian's
`graphviz`), and `--format dot` needs no Graphviz at all.
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from vnetlib.cli import target
from vnetlib.cli.plan import NoHosts
from vnetlib.core.pip import spec_of
from vnetlib.instantiate import find, local_core
from vnetlib.players.config import load as load_config
from vnetlib.players.pip import build_core
from vnetlib.spec import Substrate, VNetSpec, load_vnet
from vnetlib.spec.model import NodeKind, VirtualNode
from vnetlib.spec.parse import parse_vnet

FORMATS = ("svg", "png", "dot")
TUNNEL_COLOR = "#1f5fa8"
INTER_PIP_COLOR = "#c62828"
VM_FILL = "#fff3d6"
NETNS_FILL = "#e8f0fe"


class GraphvizMissing(RuntimeError):
    """`dot` is not installed."""


@dataclass(frozen=True, slots=True)
class Picture:
    """What a drawing shows: a description, and where its parts are if known."""

    spec: VNetSpec
    title: str
    placement: Mapping[str, str] = field(default_factory=dict)  # node -> host or provider
    group: str = "host"  # what a placement names: host | provider | location
    substrate: Substrate | None = None  # for the hosts' locations
    note: str = ""
    peers: Mapping[str, str] = field(default_factory=dict)  # boundary peer_ref -> provider


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("show", help="draw a VNet, or a VNet description, with Graphviz")
    p.add_argument("what", help="a VNet id or name, or a description file (RDL XML)")
    p.add_argument("--format", choices=FORMATS, default="svg",
                   help="svg (default), png, or dot (the Graphviz source)")
    p.add_argument("-o", "--output", type=Path, help="write here instead of stdout")
    p.add_argument("--lab", default="lab",
                   help="lab whose VNO to ask for VNets made through the players")
    p.add_argument("--pip", type=Path, metavar="CONFIG",
                   help="as the operator of this PIP management node (its configuration "
                        "file): one of its slivers, by id or name, with its embedding and "
                        "its inter-PIP links")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    picture = pip_picture(args.pip, args.what) if args.pip else picture_of(args.what, args.lab)
    data = render(dot_source(picture), args.format)
    if args.output is not None:
        args.output.write_bytes(data)
        print(f"{args.output}: {picture.title}", file=sys.stderr)
    elif args.format == "png" and sys.stdout.isatty():
        raise ValueError("a PNG is not for a terminal: write it to a file with -o FILE")
    else:
        sys.stdout.buffer.write(data)
        sys.stdout.buffer.flush()
    return 0


# -- what to draw ----------------------------------------------------------------------


def picture_of(what: str, lab: str) -> Picture:
    """A description file if `what` is one, else a VNet the caller may see."""
    path = Path(what)
    if path.is_file():
        spec = load_vnet(path)
        located = {n.id: n.location for n in spec.nodes if n.location}
        return Picture(spec, f"{spec.name} (description {path.name})", located, "location")
    if target.local(what) is not None:
        substrate, sliver = find(what)
        core = local_core(substrate)
        try:
            return Picture(parse_vnet(sliver.spec_xml.encode()),
                           f"{sliver.id} on substrate {substrate}: {sliver.state.value}",
                           dict(sliver.embedding.node_map), "host", core.substrate)
        finally:
            core.ledger.close()
    view = target.remote(what, lab).status(what)
    nodes = tuple(VirtualNode(id=n, cpu=0, memory_mb=0) for n in view.nodes)
    return Picture(VNetSpec(view.name, nodes), f"{view.id} via lab {lab}: {view.status}",
                   dict(view.providers), "provider",
                   note="links are not disclosed to the service provider")


def pip_picture(config_path: Path, ref: str) -> Picture:
    """A sliver of a PIP as its operator sees it: its part of the VNet on its
    hosts, and the boundary links to the PIPs at their other ends."""
    config = load_config(config_path)
    core = build_core(config, NoHosts())
    try:
        found = [s for s in core.ledger.slivers() if ref in (s.id, s.name)]
    finally:
        core.ledger.close()
    if not found:
        raise LookupError(f"PIP {config.name} has no sliver with id or name {ref!r}")
    if len(found) > 1:
        raise LookupError(f"several slivers of PIP {config.name} are named {ref!r} "
                          f"({', '.join(s.id for s in found)}): give the id")
    s = found[0]
    return Picture(spec_of(s.spec_xml),
                   f"sliver {s.id} ({s.owner}/{s.name}) of PIP {config.name}: {s.state.value}",
                   dict(s.embedding.node_map), "host", core.substrate,
                   peers={p.ref: p.name for p in s.peers})


# -- DOT -------------------------------------------------------------------------------


def quote(text: str) -> str:
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n") + '"'


def _attrs(**attrs: str | float) -> str:
    return "[" + ", ".join(f"{k}={quote(str(v))}" for k, v in attrs.items()) + "]"


def _mbps(value: float) -> str:
    return f"{value:g} Mb/s" if value < 1000 else f"{value / 1000:g} Gb/s"


def _group_label(picture: Picture, name: str) -> str:
    if picture.group == "host" and picture.substrate is not None:
        hosts = {h.name: h for h in picture.substrate.hosts}
        if name in hosts and hosts[name].location:
            return f"host {name} ({hosts[name].location})"
    return f"{picture.group} {name}"


def _interfaces(spec: VNetSpec, node_id: str) -> list[str]:
    """`eth0 198.19.0.1/30` for each interface of the node, in link order."""
    ends = [e for link in spec.links for e in (link.a, link.b) if e.node == node_id]
    ends += [b.endpoint for b in spec.boundary if b.endpoint.node == node_id]
    return [" ".join([e.interface.name, *e.interface.addresses]) for e in ends]


def _node_line(picture: Picture, node_id: str) -> str:
    node = next((n for n in picture.spec.nodes if n.id == node_id), None)
    kind = node.kind if node is not None else NodeKind.NETNS
    vm = kind.is_vm
    lines = [node_id]
    if node is not None and (node.cpu or node.memory_mb):
        lines.append(f"{kind.value}, {node.cpu:g} cpu, {node.memory_mb} MB")
    lines += _interfaces(picture.spec, node_id)
    return f"    {quote(node_id)} " + _attrs(
        label="\n".join(lines), shape="box3d" if vm else "box", style="rounded,filled",
        fillcolor=VM_FILL if vm else NETNS_FILL)


def dot_source(picture: Picture) -> str:
    """The Graphviz (DOT) text of a picture."""
    spec, where = picture.spec, picture.placement
    lines = [f"graph {quote(spec.name)} {{",
             "  graph " + _attrs(label=picture.title + (f"\n({picture.note})" if picture.note
                                                         else ""),
                                 labelloc="t", fontname="Helvetica", fontsize=14,
                                 rankdir="LR", nodesep=0.4, ranksep=0.8),
             "  node " + _attrs(fontname="Helvetica", fontsize=11),
             "  edge " + _attrs(fontname="Helvetica", fontsize=9)]
    groups: dict[str, list[str]] = {}
    for node in spec.nodes:
        groups.setdefault(where.get(node.id, ""), []).append(node.id)
    for index, (group, members) in enumerate(sorted(groups.items())):
        if group:
            lines.append(f"  subgraph cluster_{index} {{")
            lines.append("    graph " + _attrs(label=_group_label(picture, group),
                                               style="rounded,dashed" if picture.group ==
                                               "location" else "rounded",
                                               color="#777777", fontsize=11))
        lines += [_node_line(picture, n) for n in members]
        if group:
            lines.append("  }")
    lines += _links(picture)
    lines.append("}")
    return "\n".join(lines) + "\n"


def _links(picture: Picture) -> Iterable[str]:
    spec, where = picture.spec, picture.placement
    for link in spec.links:
        a, b = link.nodes
        apart = where.get(a) != where.get(b) and a in where and b in where
        label = _mbps(link.bandwidth_mbps)
        if link.latency_ms is not None:
            label += f", {link.latency_ms:g} ms"
        name = link.id
        if apart:
            name += {"host": " (VXLAN)", "provider": " (inter-PIP)"}.get(picture.group,
                                                                         " (across locations)")
        attrs = {"label": f"{name}\n{label}"}
        if apart and picture.group == "host":
            attrs |= {"color": TUNNEL_COLOR, "penwidth": "2.2", "fontcolor": TUNNEL_COLOR}
        elif apart:  # between providers (or the locations that pick them): inter-PIP
            attrs |= {"color": INTER_PIP_COLOR, "penwidth": "2.5", "fontcolor": INTER_PIP_COLOR,
                      "style": "bold"}
        yield f"  {quote(a)} -- {quote(b)} " + _attrs(**attrs)
    drawn: set[str] = set()
    for index, boundary in enumerate(spec.boundary):
        provider = picture.peers.get(boundary.peer_ref)
        peer = f"peer {provider or boundary.peer_ref}"
        if peer not in drawn:
            drawn.add(peer)
            label = provider or f"another PIP\n({boundary.peer_ref})"
            yield f"  {quote(peer)} " + _attrs(label=label, shape="box", style="rounded,dashed",
                                               color=INTER_PIP_COLOR, fontcolor=INTER_PIP_COLOR)
        yield (f"  {quote(boundary.endpoint.node)} -- {quote(peer)} "
               + _attrs(label=f"{boundary.id} (inter-PIP)\n{_mbps(boundary.bandwidth_mbps)}",
                        color=INTER_PIP_COLOR, fontcolor=INTER_PIP_COLOR, penwidth="2.5",
                        style="dashed", id=f"boundary{index}"))


# -- rendering -------------------------------------------------------------------------


def render(source: str, fmt: str) -> bytes:
    """`source` in `fmt`: the DOT text itself, or what `dot` makes of it."""
    if fmt == "dot":
        return source.encode()
    dot = shutil.which("dot")
    if dot is None:
        raise GraphvizMissing("drawing needs Graphviz's `dot` (Debian: apt-get install "
                              "graphviz); `--format dot` gives the source without it")
    done = subprocess.run([dot, f"-T{fmt}"], input=source.encode(), capture_output=True,
                          timeout=60, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"dot -T{fmt} failed: {done.stderr.decode(errors='replace')}")
    return done.stdout
