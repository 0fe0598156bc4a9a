"""The goals ``make bench`` checks: each benchmark records a measured value beside its goal.

A benchmark calls :func:`check` where it prints a ratio; ``python -m benchmarks`` prints every
recorded goal in one table at the end, PASS or FAIL, across all the benchmarks it ran.
"""

from __future__ import annotations

import operator
from collections.abc import Callable
from dataclasses import dataclass

_OPS: dict[str, Callable[[float, float], bool]] = {
    ">=": operator.ge,
    ">": operator.gt,
    "<=": operator.le,
    "<": operator.lt,
}


@dataclass(frozen=True)
class Goal:
    """One measured value and its goal (``value <op> goal``)."""

    benchmark: str
    what: str
    value: float
    op: str
    goal: float
    unit: str = "x"

    @property
    def passed(self) -> bool:
        return _OPS[self.op](self.value, self.goal)

    def text(self) -> str:
        """``1.07x (goal <= 1.15x) PASS``."""
        return (
            f"{self.value:.2f}{self.unit} (goal {self.op} {self.goal:g}{self.unit}) "
            f"{'PASS' if self.passed else 'FAIL'}"
        )


#: every goal checked in this process, in order.
RECORDED: list[Goal] = []


def check(benchmark: str, what: str, value: float, op: str, goal: float, unit: str = "x") -> str:
    """Record a measured value against its goal; the text to print beside it.

    :param benchmark: the benchmark module's name.
    :param what: what was measured, e.g. ``reverse / GenericTransfer``.
    :param value: the measured value (a ratio, unless ``unit`` says otherwise).
    :param op: how it must compare with the goal: ``>=``, ``>``, ``<=`` or ``<``.
    :param goal: the goal.
    :param unit: printed after the numbers (``x`` for ratios, ``s``, ``MB``).
    """
    found = Goal(benchmark, what, value, op, goal, unit)
    RECORDED.append(found)
    return found.text()


def missing(benchmark: str, what: str, op: str, goal: float, reason: str) -> str:
    """Record a goal that could not be measured (a method failed): it counts as FAIL."""
    RECORDED.append(Goal(benchmark, f"{what} (not measured: {reason})", float("nan"), op, goal))
    return f"not measured ({reason}) FAIL"


def summary() -> list[str]:
    """The table of every recorded goal."""
    if not RECORDED:
        return []
    width = max(len(f"{g.benchmark}: {g.what}") for g in RECORDED)
    lines = ["== goals"]
    for g in RECORDED:
        lines.append(f"  {f'{g.benchmark}: {g.what}':<{width}}  {g.text()}")
    failed = sum(not g.passed for g in RECORDED)
    lines.append(
        f"  {len(RECORDED) - failed} of {len(RECORDED)} goals met" + (f", {failed} FAIL" if failed else "")
    )
    return lines
