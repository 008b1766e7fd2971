"""Residual capacities, trial reservations and committed reservations.

Algorithms reserve into a :class:`Trial` while they search and roll it back
whatever the outcome; only :class:`Residual.commit` (called by the Embedder on
success) makes a reservation last, and :class:`Residual.release` gives exactly
the same amounts back. Keeping the journal per request is what makes a long
sequence of arrivals and departures leave no drift.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from vnetlib.embedding.graph import RequestView, SubstrateView

EPS = 1e-9


@dataclass(slots=True)
class Failure:
    """Why an algorithm could not embed a request (internal form)."""

    resource: str  # cpu | memory | bandwidth | latency | location | hosts | topology
    where: str
    message: str


@dataclass(slots=True)
class Placement:
    """An algorithm's answer: host per virtual node, flows per virtual link.

    ``flows[i]`` is a list of ``(substrate node path, bandwidth)`` for virtual
    link ``i``; a single entry unless the link was split.
    """

    hosts: list[int]
    flows: list[list[tuple[list[int], float]]]

    def cost(self, req: RequestView) -> float:
        """CPU plus bandwidth times path length (the literature's cost)."""
        total = sum(req.cpu)
        for flows in self.flows:
            for path, bw in flows:
                total += bw * (len(path) - 1)
        return total


@dataclass(slots=True)
class Reservation:
    cpu: list[tuple[int, float]] = field(default_factory=list)
    memory: list[tuple[int, float]] = field(default_factory=list)
    bw: list[tuple[int, float]] = field(default_factory=list)


class Residual:
    """Remaining capacities of a substrate."""

    __slots__ = ("bw", "bw_users", "cpu", "memory", "node_users", "sub")

    def __init__(self, sub: SubstrateView) -> None:
        self.sub = sub
        self.cpu = list(sub.cpu)
        self.memory = list(sub.memory)
        self.bw = list(sub.bw)
        # Active reservations per element: when the last one is released the
        # residual is reset to the capacity itself, so float rounding never
        # accumulates over a long run of arrivals and departures.
        self.node_users = [0] * sub.n
        self.bw_users = [0] * len(sub.edges)

    def reservation_for(self, req: RequestView, placement: Placement) -> Reservation:
        res = Reservation()
        for v, host in enumerate(placement.hosts):
            res.cpu.append((host, req.cpu[v]))
            res.memory.append((host, req.memory[v]))
        edge_index = self.sub.edge_index
        for flows in placement.flows:
            for path, amount in flows:
                for i in range(len(path) - 1):
                    res.bw.append((edge_index[(path[i], path[i + 1])], amount))
        return res

    def commit(self, res: Reservation) -> None:
        for node, amount in res.cpu:
            self.cpu[node] -= amount
            self.node_users[node] += 1
        for node, amount in res.memory:
            self.memory[node] -= amount
        for edge, amount in res.bw:
            self.bw[edge] -= amount
            self.bw_users[edge] += 1

    def release(self, res: Reservation) -> None:
        sub = self.sub
        for node, amount in res.memory:
            self.memory[node] += amount
        for node, amount in res.cpu:
            self.cpu[node] += amount
            self.node_users[node] -= 1
            if self.node_users[node] == 0:
                self.cpu[node] = sub.cpu[node]
                self.memory[node] = sub.memory[node]
        for edge, amount in res.bw:
            self.bw[edge] += amount
            self.bw_users[edge] -= 1
            if self.bw_users[edge] == 0:
                self.bw[edge] = sub.bw[edge]


class Trial:
    """Tentative reservations on a residual, undone by :meth:`rollback`.

    The journal keeps the previous values, so a rollback restores them
    bit for bit (subtracting then adding back a float does not).
    """

    __slots__ = ("journal", "res")

    def __init__(self, res: Residual) -> None:
        self.res = res
        self.journal: list[tuple[int, int, float]] = []  # (kind, index, old value)

    def mark(self) -> int:
        return len(self.journal)

    def take_node(self, node: int, cpu: float, memory: float) -> None:
        res = self.res
        self.journal.append((0, node, res.cpu[node]))
        self.journal.append((1, node, res.memory[node]))
        res.cpu[node] -= cpu
        res.memory[node] -= memory

    def take_path(self, path: list[int], amount: float) -> None:
        edge_index = self.res.sub.edge_index
        bw = self.res.bw
        journal = self.journal
        for i in range(len(path) - 1):
            e = edge_index[(path[i], path[i + 1])]
            journal.append((2, e, bw[e]))
            bw[e] -= amount

    def rollback(self, mark: int = 0) -> None:
        res = self.res
        journal = self.journal
        while len(journal) > mark:
            kind, idx, old = journal.pop()
            if kind == 0:
                res.cpu[idx] = old
            elif kind == 1:
                res.memory[idx] = old
            else:
                res.bw[idx] = old
