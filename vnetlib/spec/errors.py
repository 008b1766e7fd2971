"""Errors found in RDL documents.

Each phase of reading a document (XML syntax, schema, semantics) collects all
of its errors before it gives up, so a user fixes a document in one round
instead of one error at a time.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass


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
    """All errors of the first phase that failed while reading a document."""

    def __init__(self, errors: Iterable[SpecError]) -> None:
        # Stable sort: errors on one line keep the order in which rules found them.
        self.errors: tuple[SpecError, ...] = tuple(
            sorted(errors, key=lambda e: e.line if e.line is not None else 0)
        )
        if not self.errors:
            raise ValueError("SpecErrors needs at least one error")
        super().__init__(self.errors)

    def __str__(self) -> str:
        count = len(self.errors)
        head = f"{count} error{'s' if count > 1 else ''} in {self.errors[0].file}"
        return "\n".join([head, *(str(e) for e in self.errors)])
