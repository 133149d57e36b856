"""Alert tiers: how far a product is from selling out, as hosts and viewers see it.

Hosts see four tiers (``ok``, ``low``, ``critical``, ``out``); viewers see three
statuses (``ok``, ``low``, ``out``), because "critical" is a pacing cue for the
host, not something a buyer needs.  A change of tier is what makes an update
urgent enough to skip the merge interval.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from gateway.protocol import StockRecord

Level = Literal["ok", "low", "critical", "out"]
Status = Literal["ok", "low", "out"]

#: Order of severity, for "did it get worse" questions.
SEVERITY: dict[str, int] = {"ok": 0, "low": 1, "critical": 2, "out": 3}


@dataclass(frozen=True, slots=True)
class Thresholds:
    """Fractions of the initial (planned) quantity.

    ``safety`` is the safety line (20% by default; a record's own ``safety``
    field overrides it per SKU).  ``critical`` is the last-call line; it never
    sits above the safety line.
    """

    safety: float = 0.2
    critical: float = 0.05

    def __post_init__(self) -> None:
        if not 0.0 <= self.critical <= self.safety < 1.0:
            raise ValueError("thresholds need 0 <= critical <= safety < 1")


def level(record: StockRecord, thresholds: Thresholds) -> Level:
    if record.qty == 0:
        return "out"
    if not record.initial:
        return "ok"
    safety = thresholds.safety if record.safety is None else record.safety
    critical = min(thresholds.critical, safety)
    left = record.qty / record.initial
    if left < critical:
        return "critical"
    if left < safety:
        return "low"
    return "ok"


def status(lvl: Level) -> Status:
    return "low" if lvl == "critical" else lvl
