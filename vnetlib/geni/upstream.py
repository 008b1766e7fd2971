"""A GENI aggregate (AM API v3) as one of a VNP's upstream providers.

A VNP talks to its providers with `PlayerClient` (get/post/put/delete of our
API's documents on `/v1/...`). `GeniUpstream` offers the same calls and
carries each out with AM API v3 calls on an aggregate, so the VNP's
negotiation, allocation, provisioning, control and release work unchanged:

| the VNP asks | the aggregate is asked |
| --- | --- |
| `GET /v1/advertisement` | ListResources: `<vnet:site>`s, or one site per available node |
| `POST /v1/quotes` | ListResources: a price from the advertised ones (GENI has none) |
| `PUT /v1/slivers/{name}` | Allocate (slice `{name}`, request RSpec, `geni_end_time`) |
| `POST .../renew` | Renew |
| `GET /v1/slivers/{name}[/status]` | Describe (the manifest's `<vnet:sliver>`) |
| `POST .../provision` | Provision (boundary links are refused: 409) |
| `POST .../action` `stop` (etc.) on a node | PerformOperationalAction on its sliver URN |
| `POST .../action` `start` of the sliver | nothing to join (no boundary links) |
| `DELETE /v1/slivers/{name}` | Delete |
| `GET /v1/slivers` | (no AM call lists a caller's slices: an empty list) |

An upstream is a GENI aggregate when its URL is `geni+https://HOST:PORT/PATH`
(`PATH` the AM's XML-RPC endpoint, e.g. `/v1/geni/am/3` on a vnet PIP). The
connection is the players' mutual TLS with the VNP's certificate; the GENI
credential sent is `credential` (default: a placeholder `signed-credential`
naming the VNP, which a vnet aggregate accepts since the certificate decides).
GENI error codes become our statuses (SEARCHFAILED 404, EXPIRED 410, REFUSED,
BUSY, ALREADYEXISTS 409, FORBIDDEN 403, BADARGS 422, others 502).
"""

from __future__ import annotations

import datetime as dt
import re
import time
import xmlrpc.client
from collections.abc import Callable, Mapping
from typing import Any
from urllib.parse import urlsplit

from lxml import etree

from vnetlib.geni import am, urns
from vnetlib.geni.rspec import g, request_rspec, v
from vnetlib.geni.schema import Kind, parse, validate
from vnetlib.players import messages as m
from vnetlib.players.client import DEFAULT_TIMEOUT, PlayerClient, RemoteError, Reply
from vnetlib.players.negotiation import decide_quote
from vnetlib.players.pki import Credentials
from vnetlib.players.server import error_document
from vnetlib.spec import SpecErrors

SCHEME = "geni+"
V3 = {"geni_rspec_version": {"type": "GENI", "version": "3"}}
STATUS: Mapping[int, tuple[int, str]] = {
    am.SEARCHFAILED: (404, "not-found"), am.EXPIRED: (410, "gone"),
    am.REFUSED: (409, "conflict"), am.BUSY: (409, "conflict"),
    am.ALREADYEXISTS: (409, "conflict"), am.FORBIDDEN: (403, "forbidden"),
    am.BADARGS: (422, "schema-invalid"), am.BADVERSION: (422, "schema-invalid"),
    am.UNSUPPORTED: (409, "conflict")}
_SLIVER = re.compile(r"^/v1/slivers/(?P<name>[A-Za-z0-9._~-]+)(?P<rest>/[a-z]+)?$")


def is_geni(url: str) -> bool:
    return url.startswith(SCHEME)


def placeholder_credential(holder: str) -> bytes:
    root = etree.Element("signed-credential")
    cred = etree.SubElement(root, "credential", id="vnet")
    etree.SubElement(cred, "type").text = "privilege"
    etree.SubElement(cred, "owner_urn").text = f"urn:publicid:IDN+vnet+user+{holder}"
    return etree.tostring(root)


def _remote(status: int, code: str, message: str) -> RemoteError:
    """An aggregate's refusal as a player's would be; the VNP relays 4xx messages to
    its customer, so they never name the aggregate."""
    return RemoteError(status, code, message, error_document(code, message))


class GeniUpstream:
    """The calls of `PlayerClient` a VNP makes, carried out on a GENI aggregate."""

    def __init__(self, url: str, credentials: Credentials, timeout: float = DEFAULT_TIMEOUT,
                 *, expect_name: str | None = None, credential: bytes | None = None) -> None:
        if not is_geni(url):
            raise ValueError(f"{url!r} is not a GENI aggregate URL ({SCHEME}https://...)")
        parts = urlsplit(url[len(SCHEME):])
        self.name = expect_name or parts.hostname or "geni"
        self.path = parts.path or am.ROUTE
        self.client = PlayerClient(f"{parts.scheme}://{parts.netloc}", credentials, timeout,
                                   expect_name=expect_name)
        self.credential = credential or placeholder_credential(
            credentials.cert_path.stem)

    # -- XML-RPC -------------------------------------------------------------------------

    def _creds(self) -> list[dict[str, Any]]:
        return [{"geni_type": "geni_sfa", "geni_version": "3",
                 "geni_value": self.credential.decode()}]

    def call(self, method: str, *args: Any) -> Any:
        """One AM API call; its value, or RemoteError with our status for its code."""
        body = xmlrpc.client.dumps(args, methodname=method, allow_none=True).encode()
        reply = self.client.post(self.path, body)
        try:
            (result,), _ = xmlrpc.client.loads(reply.body)
        except xmlrpc.client.Fault as exc:
            raise _remote(502, "upstream-failed", f"{method}: {exc.faultString}") from exc
        except Exception as exc:
            raise ValueError(f"{method}: not an XML-RPC answer: {exc}") from exc
        if not isinstance(result, dict):
            raise ValueError(f"{method}: the answer is not a GENI result struct")
        code = int(result.get("code", {}).get("geni_code", -1))
        if code != am.SUCCESS:
            status, kind = STATUS.get(code, (502, "upstream-failed"))
            raise _remote(status, kind, f"{method}: {result.get('output') or code}")
        return result.get("value")

    # -- PlayerClient's calls ------------------------------------------------------------------

    def get(self, path: str) -> Reply:
        return self.request("GET", path)

    def post(self, path: str, body: bytes) -> Reply:
        return self.request("POST", path, body)

    def put(self, path: str, body: bytes) -> Reply:
        return self.request("PUT", path, body)

    def delete(self, path: str) -> Reply:
        return self.request("DELETE", path)

    def request(self, method: str, path: str, body: bytes | None = None) -> Reply:
        if (method, path) == ("GET", "/v1/advertisement"):
            return Reply(200, m.advertisement_xml(self.advertisement()))
        if (method, path) == ("POST", "/v1/quotes"):
            req = m.quote_request_from(m.parse_reply(body or b"", "quote-request"))
            return Reply(200, m.quote_xml(self.quote(req)))
        if (method, path) == ("GET", "/v1/slivers"):
            return Reply(200, m.slivers_xml([]))
        match = _SLIVER.match(path)
        handler = self._routes().get((method, match["rest"] or "")) if match else None
        if match is None or handler is None:
            raise _remote(404, "not-found", f"{method} {path} has no GENI equivalent")
        return handler(match["name"], body or b"")

    def _routes(self) -> dict[tuple[str, str], Callable[[str, bytes], Reply]]:
        return {("PUT", ""): self._allocate, ("GET", ""): self._describe,
                ("GET", "/status"): self._describe, ("POST", "/renew"): self._renew,
                ("POST", "/provision"): self._provision, ("POST", "/action"): self._action,
                ("DELETE", ""): self._delete}

    # -- translations -----------------------------------------------------------------------------

    def _rspec(self, text: Any, kind: Kind) -> etree._Element:
        """An RSpec the aggregate answered, validated; a bad one is a ValueError
        (a bad answer, as a player's bad reply is)."""
        source = f"{kind} RSpec from {self.name}"
        if not isinstance(text, str):
            raise ValueError(f"{source}: not a string")
        try:
            root = parse(text.encode(), source)
            validate(root, kind, source)
        except SpecErrors as exc:
            raise ValueError(str(exc)) from exc
        return root

    def advertisement(self) -> m.Advertisement:
        text = self.call("ListResources", self._creds(), dict(V3, geni_available=True))
        root = self._rspec(text, "advertisement")
        sites = []
        for node in root.findall(g("node")):
            kinds = tuple(s.get("name", "") for s in node.findall(g("sliver_type")))
            site = node.find(v("site"))
            if site is not None:
                sites.append(m.Site(site.get("location", ""), float(site.get("cpu", "0")),
                                    float(site.get("memory", "0")),
                                    float(site.get("price-per-cpu", "0")),
                                    float(site.get("price-per-mbps", "0")), kinds or ("netns",)))
            else:  # another aggregate's node: one CPU where it is, if available
                available = node.find(g("available"))
                free = available is None or available.get("now") in ("true", "1")
                where = node.get("component_name") or self.name
                sites.append(m.Site(where, 1.0 if free else 0.0, 0.0, 1.0, 0.0, kinds))
        encaps = tuple(e.text or "" for e in root.iterfind(f"{v('provider')}/{v('encapsulation')}"))
        return m.Advertisement(self.name, tuple(sites), encaps or ("vxlan",))

    def quote(self, req: m.QuoteRequest) -> m.Quote:
        ad = self.advertisement()
        cpu = sum(n.cpu for n in req.spec.nodes)
        if cpu > sum(s.cpu for s in ad.sites) + 1e-9:
            return m.Quote("declined", reason="not enough cpu at the aggregate")
        per_cpu = max((s.price_per_cpu for s in ad.sites), default=0.0)
        per_mbps = max((s.price_per_mbps for s in ad.sites), default=0.0)
        mbps = sum(k.bandwidth_mbps for k in req.spec.links)
        return decide_quote(round(cpu * per_cpu + mbps * per_mbps, 6), req.bid)

    def _manifest(self, name: str) -> m.Manifest:
        value = self.call("Describe", [urns.slice_urn(name)], self._creds(), V3)
        root = self._rspec(value["geni_rspec"], "manifest")
        sliver = root.find(v("sliver"))
        nodes = tuple(n.get("client_id", "") for n in root.findall(g("node")))
        if sliver is not None:
            expires = sliver.get("expires")
            return m.Manifest(name, sliver.get("status", "ready"),  # type: ignore[arg-type]
                              float(sliver.get("price", "0")), nodes,
                              expires=None if expires is None else
                              dt.datetime.fromisoformat(expires).timestamp())
        states = {s.get("geni_allocation_status") for s in value.get("geni_slivers", [])}
        status = "allocated" if states == {"geni_allocated"} else "ready"
        return m.Manifest(name, status, 0.0, nodes)  # type: ignore[arg-type]

    def _node_urns(self, name: str) -> dict[str, str]:
        value = self.call("Describe", [urns.slice_urn(name)], self._creds(), V3)
        root = self._rspec(value["geni_rspec"], "manifest")
        return {n.get("client_id", ""): n.get("sliver_id", "") for n in root.findall(g("node"))}

    def _allocate(self, name: str, body: bytes) -> Reply:
        req = m.allocate_from(m.parse_reply(body, "allocate"))
        if req.spec.boundary:
            raise _remote(409, "conflict", "a GENI aggregate takes no links to other providers")
        options: dict[str, Any] = {}
        if req.expires_in is not None:
            end = dt.datetime.fromtimestamp(time.time() + req.expires_in, dt.UTC)
            options["geni_end_time"] = end.isoformat(timespec="seconds")
        self.call("Allocate", urns.slice_urn(name), self._creds(),
                  request_rspec(req.spec).decode(), options)
        return Reply(201, m.manifest_xml(self._manifest(name)))

    def _describe(self, name: str, body: bytes) -> Reply:
        return Reply(200, m.manifest_xml(self._manifest(name)))

    def _renew(self, name: str, body: bytes) -> Reply:
        seconds = m.renew_from(m.parse_reply(body, "renew"))
        end = dt.datetime.fromtimestamp(time.time() + seconds, dt.UTC)
        self.call("Renew", [urns.slice_urn(name)], self._creds(),
                  end.isoformat(timespec="seconds"), {})
        return self._describe(name, b"")

    def _provision(self, name: str, body: bytes) -> Reply:
        req = m.provision_from(m.parse_reply(body, "provision"))
        if req.peers:
            raise _remote(409, "conflict", "a GENI aggregate joins no links to other providers")
        self.call("Provision", [urns.slice_urn(name)], self._creds(), {})
        return self._describe(name, b"")

    def _action(self, name: str, body: bytes) -> Reply:
        act = m.action_from(m.parse_reply(body, "action"))
        if act.node is None:
            if act.name != "start":
                raise _remote(409, "conflict", f"{act.name} acts on a node: name one")
            return Reply(200, m.action_result_xml(m.ActionResult("start", 0)))
        geni = {a: g_ for g_, a in am.ACTIONS.items()}.get(act.name)
        if geni is None:
            raise _remote(409, "conflict", f"{act.name} is not offered by GENI aggregates")
        node_urn = self._node_urns(name).get(act.node)
        if not node_urn:
            raise _remote(404, "not-found", f"no node {act.node}")
        value = self.call("PerformOperationalAction", [node_urn], self._creds(), geni, {})
        state = next((s.get("vnet_state") for s in value if s.get("vnet_node") == act.node),
                     None) or ("stopped" if act.name == "stop" else "running")
        return Reply(200, m.action_result_xml(m.ActionResult(act.name, 0,
                                                             f"{act.node}: {state}\n")))

    def _delete(self, name: str, body: bytes) -> Reply:
        self.call("Delete", [urns.slice_urn(name)], self._creds(), {})
        return Reply(204, b"")


def client_for(url: str, credentials: Credentials, timeout: float,
               expect_name: str | None = None) -> PlayerClient | GeniUpstream:
    """The client of one upstream: a GENI aggregate (`geni+https://`) or a player."""
    if is_geni(url):
        return GeniUpstream(url, credentials, timeout, expect_name=expect_name)
    return PlayerClient(url, credentials, timeout, expect_name=expect_name)


__all__ = ["GeniUpstream", "client_for", "is_geni"]
