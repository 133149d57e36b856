"""A rehearsal's key figures as a Markdown table, from Locust's CSV.

    python -m loadtest.summary results/kol-surge-20250101-120000

Locust's own table lists every entry; for a ticket or a go/no-go message the
operator needs a few lines: how many screens, how fresh they stayed, whether
the sell-out and the restock showed, and whether anything failed.  ``run.py``
prints this after every run.
"""

from __future__ import annotations

import csv
import sys
from collections.abc import Sequence
from pathlib import Path

from loadtest import report

COLUMNS = ("Request Count", "Failure Count", "50%", "95%", "99%", "Max Response Time")


def _ms(value: str) -> str:
    return "" if value in ("", "N/A") else f"{float(value):.0f}"


def summarize(folder: Path) -> str:
    with open(folder / "locust_stats.csv", newline="") as f:
        rows = [row for row in csv.DictReader(f) if row["Name"] != "Aggregated"]
    interesting = (report.UPDATE, report.SOLD_OUT_SEEN, report.RESTOCK_SEEN, report.CONNECT, report.SNAPSHOT,
                   report.PING)
    lines = ["| type | name | events | failures | p50 ms | p95 ms | p99 ms | max ms |",
             "|---|---|--:|--:|--:|--:|--:|--:|"]
    for row in rows:
        screen = row["Type"] in (report.VIEWER, report.HOST)
        wanted = (screen and (row["Name"] in interesting or row["Name"].startswith("alert "))) \
            or row["Type"] in (report.STOCK, report.CHECK) or int(row["Failure Count"])
        if not wanted:
            continue
        count, failures, p50, p95, p99, worst = (row[c] for c in COLUMNS)
        lines.append(f"| {row['Type']} | {row['Name']} | {count} | {failures} | {_ms(p50)} | {_ms(p95)} "
                     f"| {_ms(p99)} | {_ms(worst)} |")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if len(args) != 1:
        print("usage: python -m loadtest.summary RESULTS_FOLDER", file=sys.stderr)
        return 2
    print(summarize(Path(args[0])))
    return 0


if __name__ == "__main__":
    sys.exit(main())
