"""Every time budget of the players, in one place, nested.

A caller always waits longer than the work it waits for, so an answer is never
lost to a timeout while the callee still works on it: each inner budget is
below its caller's (checked by `check_nesting`, run by the tests). The table
in docs/architecture.md is this module.

| who waits | for what | budget (s) |
| --- | --- | --- |
| SP client | the VNO (a whole instantiation or removal) | SP_REQUEST |
| VNO | the VNP (one call) | VNO_TO_VNP |
| PIP | its VNP taking a node away (an eviction: a move between providers) | PIP_TO_VNP |
| VNP | a provider's Provision, start (stitching) or Delete | VNP_DEPLOY_CALL |
| VNP | a provider's quote, allocate, renew, describe, list | VNP_SHORT_CALL |
| VNP | a relayed exec | VNP_EXEC_CALL |
| VNP | a release or orphan sweep: one Delete at a provider | VNP_DEPLOY_CALL |
| VNO | a look-up of an order at the VNP (reconciler) | VNP_SHORT_CALL |
| VNO, VNP | a reconciler's retry of a failed step | retry_seconds, doubled to retry_max_seconds |
| PIP | one playbook run (deploy or removal) | PLAYBOOK |
| PIP | a Provision: deploy, then roll back on failure | 2 x PLAYBOOK |
| PIP | a peer's answer to one stitching proposal | STITCH_CALL |
| PIP | a customer's exec | EXEC_DEFAULT, at most EXEC_MAX |
| PIP | a concurrent operation on the same sliver to end | SLIVER_WAIT |
| server | one request's headers and body | REQUEST_READ |
"""

from __future__ import annotations

SP_REQUEST = 900.0
VNO_TO_VNP = 840.0
PIP_TO_VNP = 840.0
VNP_DEPLOY_CALL = 300.0
VNP_SHORT_CALL = 30.0
VNP_EXEC_CALL = 90.0
PLAYBOOK = 120.0
STITCH_CALL = 120.0
EXEC_DEFAULT = 10.0
EXEC_MAX = 60.0
SLIVER_WAIT = 2 * PLAYBOOK + 10.0
REQUEST_READ = 30.0


def check_nesting() -> list[str]:
    """The pairs (inner, outer) where the inner budget is not below the outer one."""
    pairs = [
        ("VNO_TO_VNP", VNO_TO_VNP, "SP_REQUEST", SP_REQUEST),
        # A VNP's instantiation: provision, then start, both deploy-sized calls.
        ("2 x VNP_DEPLOY_CALL + 4 x VNP_SHORT_CALL",
         2 * VNP_DEPLOY_CALL + 4 * VNP_SHORT_CALL, "VNO_TO_VNP", VNO_TO_VNP),
        ("2 x PLAYBOOK", 2 * PLAYBOOK, "VNP_DEPLOY_CALL", VNP_DEPLOY_CALL),
        ("SLIVER_WAIT", SLIVER_WAIT, "VNP_DEPLOY_CALL", VNP_DEPLOY_CALL),
        ("STITCH_CALL", STITCH_CALL, "VNP_DEPLOY_CALL", VNP_DEPLOY_CALL),
        ("EXEC_MAX", EXEC_MAX, "VNP_EXEC_CALL", VNP_EXEC_CALL),
        ("VNP_EXEC_CALL", VNP_EXEC_CALL, "VNO_TO_VNP", VNO_TO_VNP),
        # An eviction: the VNP's move, a provision and a start at the target.
        ("2 x VNP_DEPLOY_CALL + 4 x VNP_SHORT_CALL",
         2 * VNP_DEPLOY_CALL + 4 * VNP_SHORT_CALL, "PIP_TO_VNP", PIP_TO_VNP),
    ]
    return [f"{a} ({x:g} s) is not below {b} ({y:g} s)" for a, x, b, y in pairs if x >= y]
