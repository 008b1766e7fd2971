"""Errors found in RDL documents.

Each phase of reading a document (XML syntax, schema, semantics) collects all
of its errors before it gives up, so a user fixes a document in one round
instead of one error at a time. A hostile or generated document can hold
hundreds of thousands of errors, so a phase keeps the first
:data:`MAX_REPORTED` in full and only counts the rest.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

MAX_REPORTED = 100
"""Errors of one phase reported in full; the rest are counted (``omitted``)."""


@dataclass(frozen=True, slots=True)
class SpecError:
    """One problem in a document.

    ``element`` is an XPath-like path without namespace prefixes that names the
    offending element by its id where it has one, e.g.
    ``/vnet/link[@id='l3']/endpoint[2]``. ``hint`` says what to do about it.
    """

    file: str
    line: int | None
    element: str
    message: str
    hint: str | None = None

    def __str__(self) -> str:
        where = f"{self.file}:{self.line}" if self.line is not None else self.file
        text = f"{where}: {self.element}: {self.message}"
        return f"{text} [hint: {self.hint}]" if self.hint else text


class SpecErrors(Exception):
    """All errors of the first phase that failed while reading a document:
    ``errors`` in full, and the number of further errors found but not kept."""

    def __init__(self, errors: Iterable[SpecError], omitted: int = 0) -> None:
        # Stable sort: errors on one line keep the order in which rules found them.
        self.errors: tuple[SpecError, ...] = tuple(
            sorted(errors, key=lambda e: e.line if e.line is not None else 0)
        )
        if not self.errors:
            raise ValueError("SpecErrors needs at least one error")
        self.omitted = omitted
        super().__init__(self.errors)

    @property
    def total(self) -> int:
        return len(self.errors) + self.omitted

    def __str__(self) -> str:
        count = self.total
        head = f"{count:,} error{'s' if count > 1 else ''} in {self.errors[0].file}"
        lines = [head, *(str(e) for e in self.errors)]
        if self.omitted:
            lines.append(more_errors(self.omitted))
        return "\n".join(lines)


def more_errors(omitted: int) -> str:
    """The line that stands for the errors not listed."""
    return f"… and {omitted:,} more error{'s' if omitted > 1 else ''}"
