"""Hostile documents cost bounded time: 1 MiB bodies (the servers' limit) full
of errors are judged in well under a second of CPU, and their errors are
reported as a capped list with a count of the rest. Names that would reach
kernel names or store keys refuse whitespace and control characters."""

from __future__ import annotations

import time
from collections.abc import Callable

import pytest
from lxml import etree

from vnetlib.spec import SpecErrors, parse_substrate, parse_vnet
from vnetlib.spec.checks import MAX_CHILDREN, check_substrate, check_vnet
from vnetlib.spec.errors import MAX_REPORTED

MIB = 1 << 20
CPU_BOUND = 1.0  # seconds of CPU for one document, parse and checks included
HEAD = '<vnet xmlns="urn:vnet:rdl:1" version="1" name="big">'
SUB_HEAD = '<substrate xmlns="urn:vnet:rdl:1" version="1" name="big">'


def fill(head: str, item: Callable[[int], str], tail: str, *, limit: int = MIB,
         count: int | None = None) -> tuple[bytes, int]:
    """head + item(0) + item(1) + ... + tail, as many items as fit in `limit` bytes."""
    parts, size, i = [head], len(head) + len(tail), 0
    while count is None or i < count:
        text = item(i)
        if size + len(text) + 1 > limit:
            break
        parts.append(text)
        size += len(text) + 1
        i += 1
    parts.append(tail)
    return "\n".join(parts).encode(), i


def cpu(work: Callable[[], object]) -> tuple[float, object]:
    start = time.process_time()
    result = work()
    return time.process_time() - start, result


def refused(data: bytes, reader: Callable[[bytes, str], object] = parse_vnet) -> tuple[
        float, SpecErrors]:
    def attempt() -> SpecErrors:
        with pytest.raises(SpecErrors) as caught:
            reader(data, "big.xml")
        return caught.value
    seconds, errors = cpu(attempt)
    assert isinstance(errors, SpecErrors)
    return seconds, errors


def assert_capped(errors: SpecErrors, total: int) -> None:
    assert errors.total == total
    assert len(errors.errors) == min(total, MAX_REPORTED)
    assert errors.omitted == total - len(errors.errors)
    text = str(errors)
    assert text.startswith(f"{total:,} errors in big.xml")
    if errors.omitted:
        assert text.endswith(f"… and {errors.omitted:,} more errors")


# -- semantic checks: linear ----------------------------------------------------------


def unknown_endpoints(nodes: int) -> tuple[bytes, int]:
    """`nodes` nodes, then links to unknown nodes until the document is 1 MiB."""
    head = HEAD + "".join(f'<node id="n{i}"/>' for i in range(nodes))
    return fill(head, lambda i: f'<link id="l{i}" bandwidth="1000.5" latency="20.25">'
                               f'<endpoint node="u{i}" interface="e0"/>'
                               f'<endpoint node="n{i % nodes}" interface="e{i}"/></link>',
                "</vnet>", count=MAX_CHILDREN - nodes)


def test_a_mib_of_links_to_unknown_nodes_is_judged_in_well_under_a_second() -> None:
    data, links = unknown_endpoints(2000)
    assert len(data) > MIB * 0.9 and links > 7000
    seconds, errors = refused(data)
    assert seconds < CPU_BOUND, f"{seconds:.2f} s of CPU"
    assert_capped(errors, links)
    first = errors.errors[0]
    assert first.message == "endpoint refers to unknown node 'u0'"
    assert first.element == "/vnet/link[@id='l0']/endpoint[1]"
    assert first.line == 2


def test_the_check_alone_is_linear_in_unknown_endpoints_and_duplicates() -> None:
    """The semantic check on a schema-free tree: many duplicate nodes (beyond the
    structural limit), duplicate links, reused interfaces, unknown nodes."""
    head = HEAD + "".join(f'<node id="n{i % 3000}"/>' for i in range(20_000))
    data, links = fill(head, lambda i: f'<link id="l{i % 100}"><endpoint node="u{i}" '
                                       f'interface="e0"/><endpoint node="n{i % 50}" '
                                       f'interface="e0"/></link>', "</vnet>")
    root = etree.fromstring(data)
    seconds, found = cpu(lambda: check_vnet(root, "big.xml"))
    assert seconds < CPU_BOUND / 2, f"{seconds:.2f} s of CPU"
    duplicates = 17_000 + (links - 100) + (links - 50)  # nodes, link ids, interfaces
    assert found.total == duplicates + links  # type: ignore[attr-defined]
    assert len(found.errors) == MAX_REPORTED  # type: ignore[attr-defined]


def test_many_addresses_on_one_link_are_checked_in_linear_time() -> None:
    head = HEAD + '<node id="a"/><node id="b"/><link id="l"><endpoint node="a" interface="e0">'
    tail = ('</endpoint><endpoint node="b" interface="e0"><address>10.0.0.1/32</address>'
            '<address>10.0.0.2/32</address></endpoint></link></vnet>')
    data, addresses = fill(head, lambda i: f"<address>10.0.{i % 100}.9/32</address>", tail,
                           count=MAX_CHILDREN)
    assert addresses == MAX_CHILDREN
    seconds, errors = refused(data)
    assert seconds < CPU_BOUND, f"{seconds:.2f} s of CPU"
    # both addresses of the second end are outside the first end's subnets, and
    # every address of the first end after the 100th repeats an earlier one
    assert_capped(errors, 2 + addresses - 100)
    by_line = {e.message for e in errors.errors if e.line == addresses + 2}
    assert len(by_line) == 2 and all("not in the subnet of the other end" in m for m in by_line)
    # the list of the other end's subnets in such a message is bounded too
    assert max(len(m) for m in by_line) < 400
    assert any(m.startswith("address 10.0.0.9 is already used at line 2 ")
               for m in (e.message for e in errors.errors))


def test_a_mib_of_schema_errors_is_judged_in_well_under_a_second() -> None:
    data, nodes = fill(HEAD, lambda i: f'<node id="n{i}" cpu="-1"/>', "</vnet>",
                       count=MAX_CHILDREN)
    seconds, errors = refused(data)
    assert seconds < CPU_BOUND, f"{seconds:.2f} s of CPU"
    assert_capped(errors, nodes)
    assert "attribute 'cpu'" in errors.errors[0].message


def test_more_children_than_the_limit_is_one_error_naming_the_element() -> None:
    data, nodes = fill(HEAD, lambda i: f'<node id="n{i}" cpu="-1"/>', "</vnet>")
    assert nodes > MAX_CHILDREN
    seconds, errors = refused(data)
    assert seconds < CPU_BOUND / 10
    (error,) = errors.errors
    assert error.element == "/vnet" and error.line == 1
    assert error.message == f"<vnet> has {nodes:,} child elements, more than {MAX_CHILDREN:,}"


def test_a_mib_of_locations_not_allowed_is_linear() -> None:
    head = HEAD + "<constraints>" + "".join(
        f"<location>l{i}</location>" for i in range(5000)) + "</constraints>"
    data, nodes = fill(head, lambda i: f'<node id="n{i}" location="x{i}"/>', "</vnet>",
                       count=MAX_CHILDREN - 1)
    seconds, errors = refused(data)
    assert seconds < CPU_BOUND, f"{seconds:.2f} s of CPU"
    assert_capped(errors, nodes)


def test_a_substrate_with_many_unknown_ports_and_ends_is_linear() -> None:
    head = SUB_HEAD + '<switch name="sw">' + "".join(
        f'<port host="x{i}"/>' for i in range(MAX_CHILDREN)) + "</switch>" + "".join(
        f'<host name="h{i}" cpu="1" memory="1"/>' for i in range(3000))
    data, links = fill(head, lambda i: f'<link a="h{i % 3000}" b="y{i}" bandwidth="1"/>',
                       "</substrate>", count=MAX_CHILDREN - 3001)
    root = etree.fromstring(data)
    seconds, found = cpu(lambda: check_substrate(root, "big.xml"))
    assert seconds < CPU_BOUND / 2, f"{seconds:.2f} s of CPU"
    assert found.total == MAX_CHILDREN + links  # type: ignore[attr-defined]
    seconds, errors = refused(data, parse_substrate)
    assert seconds < CPU_BOUND
    assert_capped(errors, MAX_CHILDREN + links)
    # the first unknown names still get a suggestion
    assert errors.errors[0].hint is not None


def test_did_you_mean_still_helps_in_small_documents() -> None:
    doc = (HEAD + '<node id="alpha"/><node id="beta"/><link id="l"><endpoint node="alpah" '
           'interface="e0"/><endpoint node="beta" interface="e0"/></link></vnet>').encode()
    _, errors = refused(doc)
    assert errors.errors[0].hint == "did you mean 'alpha'?"
    assert errors.omitted == 0 and str(errors).startswith("1 error in big.xml")


# -- names: no whitespace, no control characters -------------------------------------


def one_node(attrs: str, body: str = "") -> bytes:
    return (f'{HEAD}\n<node {attrs}/>\n<node id="b"/>\n{body}</vnet>').encode()


@pytest.mark.parametrize("value", ["web ", " web", "web&#10;", "w eb", "web&#9;", "web&#13;",
                                   "web&#xA0;", "&#10;web"])
def test_a_node_id_with_whitespace_is_refused_by_the_schema(value: str) -> None:
    _, errors = refused(one_node(f'id="{value}"'))
    (error,) = errors.errors
    assert error.file == "big.xml" and error.line == 2
    assert error.element.startswith("/vnet/node")
    assert "attribute 'id'" in error.message
    assert error.hint is not None and "1 to 15 characters" in error.hint


@pytest.mark.parametrize("attrs, attribute", [
    ('id="a" kind=" netns"', "kind"),
    ('id="a" location="berlin "', "location"),
    ('id="a" image="debian&#10;"', "image"),
])
def test_other_node_attributes_with_whitespace_are_refused(attrs: str, attribute: str) -> None:
    _, errors = refused(one_node(attrs))
    assert f"attribute '{attribute}'" in errors.errors[0].message
    assert errors.errors[0].line == 2


@pytest.mark.parametrize("link", [
    '<link id="l "><endpoint node="a" interface="e0"/><endpoint node="b" interface="e0"/></link>',
    '<link id="l"><endpoint node="a " interface="e0"/><endpoint node="b" interface="e0"/></link>',
    '<link id="l"><endpoint node="a" interface="e0&#10;"/><endpoint node="b" interface="e0"/>'
    "</link>",
    '<boundary-link id="l"><endpoint node="a" interface="e0"/><peer ref="x &#10;"/>'
    "</boundary-link>",
])
def test_link_names_with_whitespace_are_refused(link: str) -> None:
    _, errors = refused(one_node('id="a"', link + "\n"))
    assert errors.errors[0].line == 4
    assert errors.errors[0].element.startswith(("/vnet/link", "/vnet/boundary-link"))


def test_a_vnet_name_with_whitespace_is_refused() -> None:
    doc = b'<vnet xmlns="urn:vnet:rdl:1" version="1" name="t&#10;"><node id="a"/></vnet>'
    _, errors = refused(doc)
    assert "attribute 'name'" in errors.errors[0].message


def test_names_that_differed_only_by_whitespace_no_longer_pass_as_two_nodes() -> None:
    _, errors = refused(one_node('id="b "'))
    assert "attribute 'id'" in errors.errors[0].message


def test_substrate_names_with_whitespace_are_refused() -> None:
    doc = (SUB_HEAD + '\n<host name="h1 " cpu="1" memory="1"/></substrate>').encode()
    _, errors = refused(doc, parse_substrate)
    assert errors.errors[0].line == 2 and "attribute 'name'" in errors.errors[0].message


@pytest.mark.parametrize("attrs, message", [
    (f'id="a" cpu="{"9" * 400}"', "attribute 'cpu': '9999"),
    (f'id="a" memory="{"9" * 30}"', "is larger than 1e+15"),
    (f'id="a" cpu="0.{"0" * 400}1"', "too small to be told from 0"),
])
def test_amounts_that_read_as_infinity_or_zero_are_refused(attrs: str, message: str) -> None:
    _, errors = refused(one_node(attrs))
    (error,) = errors.errors
    assert message in error.message and error.line == 2
