"""The flash sales the suite rehearses, as plain data and arithmetic.

A scenario is written in *sale time*: seconds on the clock of the real event
(five minutes of orders are 300 s).  A :class:`Plan` binds a scenario to a
run's options — how many rooms and SKUs, how many units, how many viewers at
the peak, and a speed factor that compresses sale time into run time — and
answers every "how much, when" question the Locust users and the shape ask.

Nothing here imports Locust or touches the network, so the numbers in
``docs/loadtest.md`` can be checked by unit tests.

Quantities in a scenario are fractions of its planned stock: ``--stock``
scales the whole sale (orders, reserve, restock, batches) and keeps its story.
"""

from __future__ import annotations

import math
from bisect import bisect_right
from dataclasses import dataclass, field
from itertools import pairwise
from typing import Any


@dataclass(frozen=True, slots=True)
class Curve:
    """A piecewise-linear function of sale time, zero outside its points.

    Used for the audience (fraction of peak viewers) and for order demand
    (relative order rate); piecewise-linear keeps both readable in the docs
    and lets the number of orders due by any moment be computed exactly.
    """

    points: tuple[tuple[float, float], ...]

    def __post_init__(self) -> None:
        times = [t for t, _ in self.points]
        if len(times) < 2 or times != sorted(times):
            raise ValueError("a curve needs at least two points in time order")
        if any(v < 0 for _, v in self.points):
            raise ValueError("curve values must be >= 0")

    @property
    def start(self) -> float:
        return self.points[0][0]

    @property
    def end(self) -> float:
        return self.points[-1][0]

    def value(self, t: float) -> float:
        if t < self.start or t > self.end:
            return 0.0
        i = max(1, min(bisect_right([p[0] for p in self.points], t), len(self.points) - 1))
        (t0, v0), (t1, v1) = self.points[i - 1], self.points[i]
        if t1 == t0:
            return v1
        return v0 + (v1 - v0) * (t - t0) / (t1 - t0)

    def area(self, t: float) -> float:
        """The integral from the curve's start to ``t`` (the whole area after its end)."""
        total = 0.0
        for (t0, v0), (t1, v1) in pairwise(self.points):
            if t <= t0:
                break
            if t >= t1:
                total += (v0 + v1) * (t1 - t0) / 2
            else:
                vt = v0 + (v1 - v0) * (t - t0) / (t1 - t0)
                total += (v0 + vt) * (t - t0) / 2
                break
        return total

    @property
    def total_area(self) -> float:
        return self.area(self.end)


@dataclass(frozen=True, slots=True)
class OrderStream:
    """Orders of one unit each for every SKU, following ``demand``.

    ``orders`` is the stream's whole demand as a fraction of the planned stock
    (1.6 = 8,000 orders against 5,000 units); ``platform`` names the platform
    that sells (``adjust`` with ``platform=``), or None.
    """

    label: str
    demand: Curve
    orders: float
    platform: str | None = None

    def due(self, t: float, stock: int) -> float:
        """Orders of this stream due per SKU by sale time ``t``."""
        area = self.demand.total_area
        return 0.0 if area <= 0 else self.orders * stock * self.demand.area(t) / area

    def rate(self, t: float, stock: int) -> float:
        """Orders per sale-second per SKU at sale time ``t``."""
        area = self.demand.total_area
        return 0.0 if area <= 0 else self.orders * stock * self.demand.value(t) / area

    def peak_rate(self, stock: int) -> float:
        """Highest orders per sale-second per SKU."""
        return max(self.rate(t, stock) for t, _ in self.demand.points)


@dataclass(frozen=True, slots=True)
class Action:
    """Something the warehouse (the stock service's scheduler) does to every SKU.

    ``op`` is ``release`` (reserve into stock) or ``restock`` (``adjust`` by
    +units: goods arrived from the warehouse).  It happens at sale time
    ``at``, or ``after_sellout`` seconds after the SKU first reads 0.
    """

    label: str
    op: str
    units: float
    at: float | None = None
    after_sellout: float | None = None

    def __post_init__(self) -> None:
        if self.op not in ("release", "restock"):
            raise ValueError(f"unknown action op {self.op!r}")
        if (self.at is None) == (self.after_sellout is None):
            raise ValueError("an action has either a time or a delay after the sell-out")


@dataclass(frozen=True, slots=True)
class Scenario:
    name: str
    summary: str
    sku: str
    title: str
    stock: int
    peak_viewers: int
    audience: Curve
    streams: tuple[OrderStream, ...]
    end: float
    opening_qty: float = 1.0
    reserve: float = 0.0
    platforms: dict[str, float] = field(default_factory=dict)
    actions: tuple[Action, ...] = ()
    #: Declare the timed ``release`` actions as the record's ``batches`` so
    #: host screens show the next batch.
    declare_batches: bool = False
    #: The scenario's own promise on the slowest ``restock seen`` (ms; 0: none);
    #: ``--max-restock-seen-ms`` overrides it.
    max_restock_seen_ms: float = 0.0


# -- the four rehearsals ---------------------------------------------------------------

KOL_SURGE = Scenario(
    name="kol-surge",
    summary=("A KOL's remark on air: 8,000 orders in 5 minutes against 5,000 planned units; "
             "the 800-unit reserve is released 10 s after the sell-out."),
    sku="serum-30ml", title="精华液 30ml Serum",
    stock=5000, reserve=0.16, peak_viewers=400,
    # 10% of the audience waits; the announcement at 10 s floods the room by 30 s;
    # after the sale ends, 40% leave.
    audience=Curve(((0, 0.1), (10, 0.1), (30, 1.0), (330, 1.0), (345, 0.6))),
    streams=(OrderStream("order", Curve(((30, 0.0), (45, 1.0), (105, 1.0), (210, 0.35), (330, 0.1))),
                         orders=1.6),),
    actions=(Action("release reserve", "release", 0.16, after_sellout=10.0),),
    end=345,
)

TSHIRT_SELLOUT = Scenario(
    name="tshirt-sellout",
    summary=("3,000 T-shirts gone in 5 minutes; 15 s after the sale window, 2,000 units "
             "arrive from the warehouse and sell on at a slower pace."),
    sku="tshirt-white-m", title="基础白T恤 Classic T-shirt",
    stock=3000, peak_viewers=300,
    audience=Curve(((0, 0.2), (10, 0.2), (30, 1.0), (400, 1.0), (420, 0.8))),
    streams=(
        OrderStream("order", Curve(((30, 0.6), (50, 1.0), (270, 1.0), (330, 0.7))), orders=1.1),
        OrderStream("order after restock", Curve(((350, 1.0), (410, 1.0))), orders=0.25),
    ),
    actions=(Action("restock", "restock", 2000 / 3000, at=345.0),),
    end=420,
    max_restock_seen_ms=1000.0,  # "the restock must show within a second"
)

BATCH_RELEASE = Scenario(
    name="batch-release",
    summary=("A flash sale released in five timed batches of 400 (one a minute) from a "
             "2,000-unit reserve, against steady demand of 2,400 orders: every batch sells out."),
    sku="sneaker-42", title="限量跑鞋 Limited Runner 42",
    stock=2000, opening_qty=0.0, reserve=1.0, peak_viewers=300,
    audience=Curve(((0, 0.3), (20, 1.0), (340, 1.0))),
    streams=(OrderStream("order", Curve(((30, 1.0), (330, 1.0))), orders=1.2),),
    actions=tuple(Action(f"release batch {i + 1}", "release", 0.2, at=30.0 + 60 * i) for i in range(5)),
    declare_batches=True,
    end=340,
)

MULTI_PLATFORM = Scenario(
    name="multi-platform",
    summary=("6,000 units split over douyin (3,000), kuaishou (2,000) and taobao (1,000), "
             "selling at 12, 7 and 5 orders/s: taobao sells out first, then douyin, then kuaishou."),
    sku="lipstick-520", title="丝绒口红 #520 Velvet Lipstick",
    stock=6000, peak_viewers=300,
    platforms={"douyin": 0.5, "kuaishou": 2000 / 6000, "taobao": 1000 / 6000},
    audience=Curve(((0, 0.3), (20, 1.0), (340, 1.0))),
    streams=(
        OrderStream("order douyin", Curve(((30, 1.0), (330, 1.0))), orders=0.6, platform="douyin"),
        OrderStream("order kuaishou", Curve(((30, 1.0), (330, 1.0))), orders=0.35, platform="kuaishou"),
        OrderStream("order taobao", Curve(((30, 1.0), (330, 1.0))), orders=0.25, platform="taobao"),
    ),
    end=340,
)

SCENARIOS: dict[str, Scenario] = {s.name: s for s in (KOL_SURGE, TSHIRT_SELLOUT, BATCH_RELEASE,
                                                      MULTI_PLATFORM)}


# -- a scenario bound to a run ------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Plan:
    """One run: a scenario with its rooms, SKUs, units, audience and speed."""

    scenario: Scenario
    rooms: tuple[str, ...]
    skus: tuple[str, ...]
    stock: int
    peak_viewers: int
    hosts_per_room: int = 1
    speed: float = 1.0
    stock_users: int = 2

    def __post_init__(self) -> None:
        if not self.rooms or not self.skus:
            raise ValueError("a plan needs at least one room and one SKU")
        if self.stock < 1 or self.peak_viewers < 0 or self.hosts_per_room < 0:
            raise ValueError("stock must be >= 1; viewers and hosts >= 0")
        if self.speed <= 0 or self.stock_users < 1:
            raise ValueError("speed must be > 0 and stock users >= 1")

    @classmethod
    def build(cls, scenario: Scenario, *, run_id: str, prefix: str = "rehearsal", rooms: int = 1,
              skus: int = 1, stock: int | None = None, peak_viewers: int | None = None,
              hosts_per_room: int = 1, speed: float = 1.0, stock_users: int = 2) -> Plan:
        room_names = tuple(f"{prefix}-{run_id}-{i + 1}" for i in range(rooms))
        sku_names = (scenario.sku,) if skus == 1 else tuple(f"{scenario.sku}-{j + 1}" for j in range(skus))
        return cls(scenario, room_names, sku_names, stock or scenario.stock,
                   scenario.peak_viewers if peak_viewers is None else peak_viewers,
                   hosts_per_room, speed, stock_users)

    # -- time ---------------------------------------------------------------------------

    def sale_time(self, run_seconds: float) -> float:
        return run_seconds * self.speed

    def run_time(self, sale_seconds: float) -> float:
        return sale_seconds / self.speed

    @property
    def duration(self) -> float:
        """Run seconds from the start to the end of the sale."""
        return self.run_time(self.scenario.end)

    # -- people -------------------------------------------------------------------------

    @property
    def hosts(self) -> int:
        return self.hosts_per_room * len(self.rooms)

    def viewers_at(self, run_seconds: float) -> int:
        return round(self.peak_viewers * self.scenario.audience.value(self.sale_time(run_seconds)))

    def viewer_spawn_rate(self) -> float:
        """Viewers per run-second on the steepest slope of the audience curve."""
        points = self.scenario.audience.points
        steepest = max(
            (abs(v1 - v0) / (t1 - t0) for (t0, v0), (t1, v1) in pairwise(points)
             if t1 > t0),
            default=0.0,
        )
        return max(1.0, self.peak_viewers * steepest * self.speed)

    # -- stock --------------------------------------------------------------------------

    def units(self, fraction: float) -> int:
        return round(fraction * self.stock)

    def orders_due(self, stream: OrderStream, run_seconds: float) -> float:
        """Orders of ``stream`` due per SKU by ``run_seconds`` into the run."""
        return stream.due(self.sale_time(run_seconds), self.stock)

    def total_orders(self, stream: OrderStream) -> int:
        return math.floor(stream.due(math.inf, self.stock) + 1e-9)

    def order_window(self) -> tuple[float, float]:
        """Run seconds between the first and the last order of any stream."""
        start = min(s.demand.start for s in self.scenario.streams)
        end = max(s.demand.end for s in self.scenario.streams)
        return self.run_time(start), self.run_time(end)

    def peak_order_rate(self) -> float:
        """Highest orders per run-second over all rooms and SKUs (what Redis must take)."""
        streams = self.scenario.streams
        # Piecewise-linear rates peak at a breakpoint of one of the curves.
        times = {t for st in streams for t, _ in st.demand.points}
        per_sku = max(sum(st.rate(t, self.stock) for st in streams) for t in times)
        return per_sku * self.speed * len(self.rooms) * len(self.skus)

    def opening(self, start_ms: int) -> tuple[int, dict[str, Any]]:
        """The quantity and record fields each SKU opens with (the announcement)."""
        s = self.scenario
        qty = self.units(s.opening_qty)
        fields: dict[str, Any] = {"name": s.title, "initial": self.stock}
        if s.reserve:
            fields["reserve"] = self.units(s.reserve)
        if s.platforms:
            split = {name: self.units(share) for name, share in s.platforms.items()}
            first = next(iter(split))
            split[first] += qty - sum(split.values())  # rounding lands on the first platform
            fields["platforms"] = split
        if s.declare_batches:
            fields["batches"] = [
                {"at": start_ms + round(self.run_time(a.at) * 1000), "qty": self.units(a.units)}
                for a in s.actions if a.op == "release" and a.at is not None
            ]
        return qty, fields

    def describe(self) -> dict[str, Any]:
        """The resolved numbers, for the log and the results folder."""
        s = self.scenario
        return {
            "scenario": s.name, "rooms": list(self.rooms), "skus": list(self.skus),
            "stock_per_sku": self.stock, "peak_viewers": self.peak_viewers,
            "hosts": self.hosts, "speed": self.speed, "stock_users": self.stock_users,
            "run_seconds": round(self.duration, 1),
            "orders_per_sku": {st.label: self.total_orders(st) for st in s.streams},
            "peak_orders_per_second": round(self.peak_order_rate(), 1),
            "actions": [
                {"label": a.label, "units": self.units(a.units),
                 "at_s": None if a.at is None else round(self.run_time(a.at), 2),
                 "after_sellout_s": None if a.after_sellout is None
                 else round(self.run_time(a.after_sellout), 2)}
                for a in s.actions
            ],
        }
