"""GENI RSpec v3 schemas (vendored in `schemas/`, see `schemas/SOURCE.md`) plus
our extension namespace, and validation of RSpec documents against them.

Each kind of RSpec (request, manifest, advertisement) is validated against
GENI's schema of that kind together with `vnet-geni-1.xsd`: GENI's schemas
admit foreign elements laxly, so elements of our namespace are checked
strictly because their declarations are in the same schema set.
"""

from __future__ import annotations

import functools
from collections.abc import Iterable
from importlib import resources
from pathlib import Path
from typing import Any, Literal, cast

from lxml import etree

from vnetlib.spec.checks import line_of
from vnetlib.spec.errors import SpecError, SpecErrors

GENI_NS = "http://www.geni.net/resources/rspec/3"
VNET_NS = "urn:vnet:geni:1"
XSI_NS = "http://www.w3.org/2001/XMLSchema-instance"
EXTENSION_XSD = "vnet-geni-1.xsd"

Kind = Literal["request", "manifest", "advertisement"]
KINDS: tuple[Kind, ...] = ("request", "manifest", "advertisement")
SCHEMA_FILES: dict[Kind, str] = {"request": "request.xsd", "manifest": "manifest.xsd",
                                 "advertisement": "ad.xsd"}
SCHEMA_URLS: dict[Kind, str] = {k: f"{GENI_NS}/{f}" for k, f in SCHEMA_FILES.items()}
MAX_ERRORS = 20


def schema_dir() -> Path:
    return Path(str(resources.files("vnetlib.geni").joinpath("schemas")))


def safe_parser() -> etree.XMLParser:
    """No entities, DTDs or network: RSpecs come from other domains."""
    return etree.XMLParser(resolve_entities=False, no_network=True, load_dtd=False,
                           huge_tree=False, remove_blank_text=True)


@functools.cache
def schema(kind: Kind) -> etree.XMLSchema:
    """GENI's schema of `kind` with our extension, loaded once per process."""
    directory = schema_dir()
    wrapper = (
        '<xs:schema xmlns:xs="http://www.w3.org/2001/XMLSchema">'
        f'<xs:import namespace="{GENI_NS}" schemaLocation="{SCHEMA_FILES[kind]}"/>'
        f'<xs:import namespace="{VNET_NS}" schemaLocation="{EXTENSION_XSD}"/>'
        "</xs:schema>"
    )
    doc = etree.fromstring(wrapper.encode(), etree.XMLParser(no_network=True),
                           base_url=str(directory / "wrapper.xsd"))
    return etree.XMLSchema(doc)


def parse(data: bytes, source: str = "<rspec>") -> etree._Element:
    """An RSpec document's root; SpecErrors naming line and column if not well-formed."""
    try:
        root = etree.fromstring(data, safe_parser())
    except etree.XMLSyntaxError as exc:
        line, column = exc.position
        raise SpecErrors([SpecError(source, line, "/", f"not well-formed XML (column "
                                                      f"{column}): {exc.msg}")]) from exc
    if getattr(root.getroottree().docinfo, "doctype", ""):
        raise SpecErrors([SpecError(source, 1, "/", "DOCTYPE declarations are not accepted")])
    return cast(etree._Element, root)


def kind_of(root: etree._Element, source: str = "<rspec>") -> Kind:
    if root.tag != f"{{{GENI_NS}}}rspec":
        raise SpecErrors([SpecError(source, line_of(root), "/", f"not a GENI RSpec v3: "
                                    f"the root is {root.tag}, not {{{GENI_NS}}}rspec")])
    kind = root.get("type")
    if kind not in KINDS:
        raise SpecErrors([SpecError(source, line_of(root), "/rspec",
                                    f"type {kind!r} is none of {', '.join(KINDS)}")])
    return cast(Kind, kind)


def validate(root: etree._Element, kind: Kind, source: str = "<rspec>") -> None:
    """SpecErrors listing every schema problem (line and element path)."""
    s = schema(kind)
    if s.validate(root):
        return
    entries = list(cast(Iterable[Any], s.error_log))
    errors = [SpecError(source, e.line, e.path or "/", e.message) for e in entries[:MAX_ERRORS]]
    raise SpecErrors(errors, omitted=max(0, len(entries) - MAX_ERRORS))


def validate_bytes(data: bytes, kind: Kind | None = None, source: str = "<rspec>") -> Kind:
    """Validate a document; returns its kind (checked against `kind` if given)."""
    root = parse(data, source)
    found = kind_of(root, source)
    if kind is not None and found != kind:
        raise SpecErrors([SpecError(source, line_of(root), "/rspec",
                                    f"a {found} RSpec, not a {kind} RSpec")])
    validate(root, found, source)
    return found
