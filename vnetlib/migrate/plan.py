"""What a move changes on each host: two deployment plans (as plain data,
`DeploymentPlan.to_dict()`), before and after, compared per host (pure).

Objects are keyed by name: nodes by namespace, link segments by bridge,
domains by name. A segment present in both plans whose tunnel disappears (its
other end came to this host) is removed whole and made again: the modules
converge what a plan lists and never delete a tunnel a plan leaves out.
"""

from __future__ import annotations

import copy
from collections.abc import Collection, Mapping
from typing import Any

Plan = Mapping[str, Any]


def _empty(plan: Plan) -> dict[str, Any]:
    return {k: v for k, v in plan.items() if k != "hosts"} | {"hosts": {}}


def _by(items: list[dict[str, Any]], key: str) -> dict[str, dict[str, Any]]:
    return {str(i[key]): i for i in items}


def _part(plan: Plan, host: str) -> dict[str, Any]:
    return dict(plan["hosts"].get(host) or {"host": host, "nodes": [], "links": [],
                                            "domains": []})


def changed_hosts(old: Plan, new: Plan) -> set[str]:
    """The hosts whose part differs between the two plans."""
    return {h for h in set(old["hosts"]) | set(new["hosts"]) if _part(old, h) != _part(new, h)}


def removal(old: Plan, new: Plan, *, skip_domains: Collection[str] = (),
            keep_segments: bool = False) -> dict[str, Any]:
    """The plan whose `absent` run removes what `old` has and `new` has not:
    nodes, segments, domains (except `skip_domains`), and tunnels that go
    (with their segment, which a later `present` run of `new` makes again;
    `keep_segments`: not those, the caller deletes their tunnels alone, see
    `dropped_tunnels`)."""
    out = _empty(old)
    for host in old["hosts"]:
        was, will = _part(old, host), _part(new, host)
        keep_nodes = _by(will.get("nodes", []), "netns")
        nodes = [n for n in was.get("nodes", []) if n["netns"] not in keep_nodes]
        keep_links = _by(will.get("links", []), "bridge")
        links = []
        for seg in was.get("links", []):
            after = keep_links.get(seg["bridge"])
            if after is None:
                links.append(seg)
            elif seg.get("tunnel") and not after.get("tunnel") and not keep_segments:
                links.append({**seg, "ports": []})
        keep_domains = _by(will.get("domains", []), "name")
        domains = [d for d in was.get("domains", [])
                   if d["name"] not in keep_domains and d["name"] not in skip_domains]
        if nodes or links or domains:
            out["hosts"][host] = {"host": host, "nodes": nodes, "links": links,
                                  "domains": domains}
    return out


def restrict(plan: Plan, hosts: Collection[str], *,
             skip_domains: Collection[str] = ()) -> dict[str, Any]:
    """`plan` on `hosts` only, without the domains named in `skip_domains`."""
    out = _empty(plan)
    for host, part in plan["hosts"].items():
        if host not in hosts:
            continue
        part = copy.deepcopy(dict(part))
        part["domains"] = [d for d in part.get("domains", []) if d["name"] not in skip_domains]
        out["hosts"][host] = part
    return out


def empty(plan: Plan) -> bool:
    return not plan["hosts"]


def domain_of(plan: Plan, host: str, vnode: str) -> dict[str, Any] | None:
    return next((d for d in _part(plan, host).get("domains", []) if d["vnode"] == vnode), None)


def repointed(old: Plan, new: Plan, skip_hosts: Collection[str]) -> list[tuple[str, str, str]]:
    """(host, tunnel device, new remote) of every tunnel outside `skip_hosts`
    whose remote the move changes: the peers' ends of the moved node's links."""
    out = []
    for host in new["hosts"]:
        if host in skip_hosts:
            continue
        before = _by(_part(old, host).get("links", []), "bridge")
        for seg in _part(new, host).get("links", []):
            was = before.get(seg["bridge"])
            t, w = seg.get("tunnel"), (was or {}).get("tunnel")
            if t and w and t["device"] == w["device"] and t["remote"] != w["remote"]:
                out.append((host, str(t["device"]), str(t["remote"])))
    return out


def dropped_tunnels(old: Plan, new: Plan) -> list[tuple[str, str]]:
    """(host, tunnel device) of segments that stay but lose their tunnel."""
    out = []
    for host in old["hosts"]:
        keep = _by(_part(new, host).get("links", []), "bridge")
        for seg in _part(old, host).get("links", []):
            after = keep.get(seg["bridge"])
            if after is not None and seg.get("tunnel") and not after.get("tunnel"):
                out.append((host, str(seg["tunnel"]["device"])))
    return out
