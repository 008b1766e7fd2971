"""Read RDL v1 documents into the model.

Reading runs three phases and stops at the first that finds errors, reporting
all of that phase's errors together (:class:`SpecErrors`):

1. XML syntax: lxml without network access, DTDs or entity expansion;
2. the document's shape (at most ``MAX_CHILDREN`` children per element), then
   the XML schema ``schema/vnet-rdl-1.xsd`` (loaded once);
3. the semantic rules of :mod:`vnetlib.spec.checks`.
"""

from __future__ import annotations

import functools
import os
import re
from collections.abc import Callable, Iterable, Iterator
from importlib import resources
from typing import Any, cast

from lxml import etree

from vnetlib.spec.build import substrate_from, vnet_from
from vnetlib.spec.checks import (
    Element,
    Findings,
    check_structure,
    check_substrate,
    check_vnet,
    element_path,
    line_of,
    local,
)
from vnetlib.spec.errors import MAX_REPORTED, SpecError, SpecErrors
from vnetlib.spec.model import RDL_NAMESPACE, Substrate, VNetSpec

SCHEMA_FILE = "vnet-rdl-1.xsd"
ROOTS = ("vnet", "substrate")

_Checker = Callable[[Element, str], Findings]
_CHECKS: dict[str, _Checker] = {"vnet": check_vnet, "substrate": check_substrate}


@functools.cache
def _schema_document() -> Element:
    text = resources.files("vnetlib.spec").joinpath("schema", SCHEMA_FILE).read_bytes()
    return etree.fromstring(text, _parser())


@functools.cache
def schema() -> etree.XMLSchema:
    """The RDL v1 schema, parsed once per process."""
    return etree.XMLSchema(_schema_document())


def _parser() -> etree.XMLParser:
    # A new parser per document: lxml parsers keep state and are not thread-safe.
    return etree.XMLParser(
        resolve_entities=False,
        no_network=True,
        load_dtd=False,
        dtd_validation=False,
        huge_tree=False,
        remove_blank_text=False,
    )


def parse_vnet(data: str | bytes, source: str = "<string>") -> VNetSpec:
    """Parse a VNet description; raises :class:`SpecErrors`."""
    return vnet_from(_document(data, source, "vnet"), source)


def parse_substrate(data: str | bytes, source: str = "<string>") -> Substrate:
    """Parse a substrate description; raises :class:`SpecErrors`."""
    return substrate_from(_document(data, source, "substrate"), source)


def parse(data: str | bytes, source: str = "<string>") -> VNetSpec | Substrate:
    """Parse either kind of document, chosen by its root element."""
    root = _document(data, source, None)
    return vnet_from(root, source) if local(root) == "vnet" else substrate_from(root, source)


def load_vnet(path: str | os.PathLike[str]) -> VNetSpec:
    return parse_vnet(_read(path), os.fspath(path))


def load_substrate(path: str | os.PathLike[str]) -> Substrate:
    return parse_substrate(_read(path), os.fspath(path))


def load(path: str | os.PathLike[str]) -> VNetSpec | Substrate:
    return parse(_read(path), os.fspath(path))


def _read(path: str | os.PathLike[str]) -> bytes:
    try:
        with open(path, "rb") as f:
            return f.read()
    except OSError as err:
        raise SpecErrors(
            [SpecError(os.fspath(path), None, "/", f"cannot read file: {err.strerror}")]
        ) from err


def _document(data: str | bytes, source: str, expected: str | None) -> Element:
    root = _syntax(data, source)
    _root_kind(root, source, expected)
    shape = check_structure(root, source)
    if shape.errors:
        raise SpecErrors(shape.errors, shape.omitted)
    _schema_valid(root, source)
    found = _CHECKS[local(root)](root, source)
    if found.errors:
        raise SpecErrors(found.errors, found.omitted)
    return root


def _syntax(data: str | bytes, source: str) -> Element:
    raw = data.encode("utf-8") if isinstance(data, str) else data
    # The thread's lxml error log keeps entries of earlier documents; a syntax
    # error would report them too.
    etree.clear_error_log()
    try:
        root = etree.fromstring(raw, _parser())
    except etree.XMLSyntaxError as err:
        entries: list[etree._LogEntry | None] = [*_entries(err.error_log)] or [None]
        raise SpecErrors(
            SpecError(
                source,
                e.line if e is not None else err.lineno,
                "/",
                f"XML syntax error: {e.message if e is not None else err.msg}",
                "the document must be well-formed XML",
            )
            for e in entries
        ) from None
    if _has_doctype(root):
        raise SpecErrors(
            [
                SpecError(
                    source,
                    1,
                    "/",
                    "document type declarations are not allowed",
                    "remove the <!DOCTYPE ...> declaration",
                )
            ]
        )
    return root


def _entries(log: object) -> Iterator[etree._LogEntry]:
    """The entries of an lxml error log (lxml-stubs omit its ``__iter__``)."""
    yield from cast(Iterable[etree._LogEntry], log)


def _has_doctype(root: Element) -> bool:
    docinfo: Any = root.getroottree().docinfo
    return bool(docinfo.doctype or docinfo.internalDTD is not None)


def _root_kind(root: Element, source: str, expected: str | None) -> None:
    qname = etree.QName(root)
    wanted = (expected,) if expected else ROOTS
    names = " or ".join(f"<{w}>" for w in wanted)
    if qname.namespace != RDL_NAMESPACE:
        found = f"{{{qname.namespace}}}{qname.localname}" if qname.namespace else qname.localname
        error = SpecError(
            source,
            line_of(root),
            f"/{qname.localname}",
            f"root element is {found!r}, not an RDL v1 {names}",
            f'declare the namespace: <{wanted[0]} xmlns="{RDL_NAMESPACE}" ...>',
        )
        raise SpecErrors([error])
    if qname.localname not in wanted:
        error = SpecError(
            source,
            line_of(root),
            f"/{qname.localname}",
            f"expected a {names} document, found <{qname.localname}>",
            "this reader takes "
            + (f"{expected} descriptions" if expected else "VNet or substrate descriptions"),
        )
        raise SpecErrors([error])


_NS_RE = re.compile(r"\{" + re.escape(RDL_NAMESPACE) + r"\}")
_PREFIX_RE = re.compile(r"^Element '[^']*'(, attribute '([^']*)')?: ")

_NAME_CHARS = "lower-case letters, digits, '_' or '-', starting with a letter"
_TYPE_HINTS = {
    "NodeId": f"use 1 to 15 characters: {_NAME_CHARS}",
    "Name": f"use 1 to 32 characters: {_NAME_CHARS}",
    "InterfaceName": "use at most 15 characters: lower-case letters, digits, '_', '.' or '-'",
    "Positive": "use a number greater than 0 (no units)",
    "NonNegative": "use a number of at least 0 (no units)",
    "Probability": "use a number between 0 and 1",
    "positiveInteger": "use a whole number greater than 0",
    "boolean": "use true or false",
    "IPPrefixed": "write an address with prefix length such as 198.19.0.1/30",
    "IPAddress": "write an IP address such as 198.18.0.11",
    "Label": "use up to 64 letters, digits, '_', '.', ':' or '-', starting with a letter or digit",
}


def _schema_valid(root: Element, source: str) -> None:
    validator = schema()
    if validator.validate(root.getroottree()):
        return
    # A document can break the schema hundreds of thousands of times; each
    # described error costs an XPath lookup, so only the first ones are described.
    entries = list(_entries(validator.error_log))
    raise SpecErrors(
        (_schema_error(root, source, e) for e in entries[:MAX_REPORTED]),
        max(0, len(entries) - MAX_REPORTED),
    )


def _schema_error(root: Element, source: str, entry: etree._LogEntry) -> SpecError:
    found = root.getroottree().xpath(entry.path) if entry.path else []
    el = found[0] if isinstance(found, list) and found else None
    path = element_path(el) if isinstance(el, etree._Element) else (entry.path or "/")
    message = _NS_RE.sub("", entry.message)
    match = _PREFIX_RE.match(message)
    if match:
        rest = message[match.end() :]
        message = f"attribute '{match.group(2)}': {rest}" if match.group(2) else rest
    return SpecError(source, entry.line, path, message, _schema_hint(message))


def _schema_hint(message: str) -> str:
    if message.startswith("attribute 'version'"):
        return 'this reader knows RDL version 1 only: version="1"'
    for type_name, pattern in _schema_patterns().items():
        if f"pattern '{pattern}'" in message:
            return _TYPE_HINTS[type_name]
    for type_name, hint in _TYPE_HINTS.items():
        if f"type '{type_name}'" in message or f"type 'xs:{type_name}'" in message:
            return hint
    if "[facet 'min" in message or "[facet 'max" in message:
        return "use a value in the allowed range; numbers carry no units"
    return "see docs/rdl.md for the element's syntax"


@functools.cache
def _schema_patterns() -> dict[str, str]:
    """Pattern of each named simple type of the schema, to explain pattern errors
    (libxml2 names the pattern, not the type)."""
    found = {}
    for simple in _schema_document().iterfind("{http://www.w3.org/2001/XMLSchema}simpleType"):
        pattern = simple.find(".//{http://www.w3.org/2001/XMLSchema}pattern")
        if pattern is not None and simple.get("name") in _TYPE_HINTS:
            found[simple.get("name", "")] = pattern.get("value", "")
    return found
