"""The sliver state machine: which state may follow which.

```
            allocate
               │
               ▼
   ┌────── allocated ──────────────┐ expiry (reaper)
   │           │ provision         ▼
   │           ▼                 expired
   │      provisioning ──fail──► failed ◄──┐
   │           │ deployed          │       │
   │           ▼                   │ delete│ removal failed
   │ provisioned ──joined──► ready │       │
   │     │                    │    │       │
   └─────┴──── delete ────────┴────┴──► deleting ──► deleted
```

`provisioning` and `deleting` are held by one operation at a time (the
sliver's lock, a lease in the ledger); the other states are at rest.

Moving a node to another host (`PipCore.migrate`) adds no state: it is
ready -> ready (or provisioned -> provisioned) with a version bump. Under the
lock `migrate` the row first records the move (`Sliver.moving`: node, hosts,
the new embedding, and the tunnel ids it needs, in the same write); when the
hosts hold the new placement, one write puts the new embedding (and a moved
VM's domain) in place and clears the move. Readers of states never see one
they do not know; Delete and the reaper see the recorded move and remove or
undo both sides. A reshape (`PipCore.reshape`: its customer moved a node to or from another
provider) is the one way back from ready to provisioned: the sliver's
boundary links to the moved node wait for their stitching again; under the
lock `reshape` the row keeps the old description (`Sliver.previous`) until
the hosts hold the new one. A write
that loses a race to another writer fails (compare-and-swap on the row's
version) and is re-decided on what is now there, never replayed.
"""

from __future__ import annotations

from vnetlib.core.records import State

S = State
ALLOWED: dict[State, frozenset[State]] = {
    S.ALLOCATED: frozenset({S.ALLOCATED, S.PROVISIONING, S.EXPIRED, S.DELETING}),
    S.PROVISIONING: frozenset({S.PROVISIONED, S.READY, S.FAILED, S.PROVISIONING}),
    S.PROVISIONED: frozenset({S.PROVISIONED, S.READY, S.DELETING}),
    S.READY: frozenset({S.READY, S.PROVISIONED, S.DELETING}),
    S.FAILED: frozenset({S.FAILED, S.DELETING}),
    S.DELETING: frozenset({S.DELETING, S.DELETED, S.FAILED}),
    S.DELETED: frozenset(),
    S.EXPIRED: frozenset(),
}


class IllegalTransition(RuntimeError):
    def __init__(self, sliver: str, old: State, new: State) -> None:
        super().__init__(f"sliver {sliver}: {old.value} cannot become {new.value}")
        self.old, self.new = old, new


def check(sliver: str, old: State, new: State) -> None:
    if new not in ALLOWED[old]:
        raise IllegalTransition(sliver, old, new)
