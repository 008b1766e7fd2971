"""`vnet geni rspec|import|validate`: GENI RSpec v3 documents of vnet's descriptions."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from vnetlib.cli.output import emit_json
from vnetlib.geni import schema
from vnetlib.geni.documents import advertisement_rspec, sliver_manifest
from vnetlib.geni.rspec import checked, request_rspec, spec_from_root
from vnetlib.players.negotiation import advertise
from vnetlib.spec import dump_vnet, load_substrate, load_vnet
from vnetlib.spec.model import Substrate


def add_parser(sub: argparse._SubParsersAction) -> None:
    geni = sub.add_parser("geni", help="GENI RSpec v3 documents: export, import, validate")
    verbs = geni.add_subparsers(dest="geni_verb", required=True)
    rspec = verbs.add_parser(
        "rspec", help="write a GENI RSpec v3 document: a request from a VNet description, "
                      "an advertisement from a substrate, a manifest of a VNet made with "
                      "`vnet up --substrate`")
    rspec.add_argument("spec", help="request: a VNet description file; advertisement: a "
                                    "substrate description file or a substrate's name; "
                                    "manifest: a VNet's id or name")
    rspec.add_argument("--kind", choices=schema.KINDS, default="request")
    rspec.add_argument("--component-manager", metavar="URN",
                       help="request: bind every node to this aggregate")
    rspec.add_argument("--price-per-cpu", type=float, default=1.0,
                       help="advertisement: price of one CPU (default 1)")
    rspec.add_argument("--price-per-mbps", type=float, default=0.0,
                       help="advertisement: price of one Mbit/s (default 0)")
    rspec.set_defaults(func=run_rspec)
    imp = verbs.add_parser("import", help="read a request or manifest RSpec and write it "
                                          "as a VNet description (RDL)")
    imp.add_argument("rspec", type=Path, help="the RSpec file")
    imp.add_argument("--name", help="the VNet's name when the RSpec does not carry one "
                                    "(default: the file's name)")
    imp.set_defaults(func=run_import)
    val = verbs.add_parser("validate", help="check an RSpec against GENI's schemas and "
                                            "vnet's extension; prints its kind")
    val.add_argument("rspec", type=Path)
    val.set_defaults(func=run_validate)
    for p in (rspec, imp, val):
        p.add_argument("-o", "--output", type=Path, help="write to FILE instead of stdout")
        p.add_argument("--json", action="store_true", help="machine-readable output")


def _write(args: argparse.Namespace, data: bytes, summary: dict[str, object]) -> int:
    if args.output is not None:
        args.output.write_bytes(data)
    if args.json:
        emit_json({**summary, **({"file": str(args.output)} if args.output else
                                 {"document": data.decode()})})
    elif args.output is None:
        sys.stdout.write(data.decode())
    return 0


def _substrate(ref: str) -> tuple[str, Substrate]:
    """A substrate file as it is, or a substrate's name: what is free on it now."""
    if Path(ref).is_file():
        sub = load_substrate(Path(ref))
        return sub.name, sub
    from vnetlib.instantiate import local_core

    core = local_core(ref)
    try:
        return core.name, core.residual()
    finally:
        core.ledger.close()


def run_rspec(args: argparse.Namespace) -> int:
    if args.kind == "request":
        spec = load_vnet(Path(args.spec))
        data = request_rspec(spec, args.component_manager)
        return _write(args, data, {"kind": "request", "vnet": spec.name})
    if args.kind == "advertisement":
        name, sub = _substrate(args.spec)
        ad = advertise(name, sub, args.price_per_cpu, args.price_per_mbps)
        return _write(args, advertisement_rspec(ad), {"kind": "advertisement",
                                                      "provider": name})
    from vnetlib.instantiate import find

    substrate, sliver = find(args.spec)
    return _write(args, sliver_manifest(substrate, sliver),
                  {"kind": "manifest", "vnet": sliver.id, "substrate": substrate})


def run_import(args: argparse.Namespace) -> int:
    data = args.rspec.read_bytes()
    source = str(args.rspec)
    root = schema.parse(data, source)
    kind = schema.kind_of(root, source)
    if kind == "advertisement":
        raise ValueError(f"{source}: an advertisement describes an aggregate, not a VNet; "
                         "import a request or manifest RSpec")
    schema.validate(root, kind, source)
    spec = checked(spec_from_root(root, args.name or _name_of(args.rspec)), source)
    return _write(args, dump_vnet(spec), {"kind": kind, "vnet": spec.name,
                                          "nodes": len(spec.nodes), "links": len(spec.links)})


def _name_of(path: Path) -> str:
    """A valid VNet name from a file name: lower case, letters, digits and '-'."""
    stem = "".join(c if c.isalnum() or c == "-" else "-" for c in path.stem.lower())
    stem = stem.lstrip("-0123456789")[:32].rstrip("-")
    return stem or "imported"


def run_validate(args: argparse.Namespace) -> int:
    kind = schema.validate_bytes(args.rspec.read_bytes(), None, str(args.rspec))
    if args.json:
        emit_json({"file": str(args.rspec), "kind": kind, "valid": True})
    else:
        print(f"{args.rspec}: a valid {kind} RSpec")
    return 0
