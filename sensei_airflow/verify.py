"""Verification results, shared by every strategy: counts, samples and source comparison."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

Outcome = Literal["passed", "failed", "skipped"]


class TableCheck(BaseModel):
    """One table's check: what was expected, what was found."""

    model_config = ConfigDict(frozen=True)

    table: str
    check: str
    expected: Any = None
    actual: Any = None
    ok: bool


class Verification(BaseModel):
    """The verification block of the status document, with the evidence behind it."""

    model_config = ConfigDict(frozen=True)

    source_comparison: Outcome = "skipped"
    record_counts_match: bool | None = None
    sample_verification: Outcome = "skipped"
    checks: list[TableCheck] = Field(default_factory=list)

    @classmethod
    def skipped(cls) -> Verification:
        return cls()

    @property
    def passed(self) -> bool:
        return (
            self.record_counts_match is not False
            and self.source_comparison != "failed"
            and self.sample_verification != "failed"
        )

    @property
    def failures(self) -> list[TableCheck]:
        return [c for c in self.checks if not c.ok]

    def status_block(self) -> dict[str, Any]:
        return {
            "source_comparison": self.source_comparison,
            "record_counts_match": self.record_counts_match,
            "sample_verification": self.sample_verification,
        }


def count_checks(check: str, expected: dict[str, int], actual: dict[str, int]) -> list[TableCheck]:
    """Compare expected with actual row counts, table by table."""
    return [
        TableCheck(table=t, check=check, expected=n, actual=actual.get(t), ok=actual.get(t) == n)
        for t, n in expected.items()
    ]
