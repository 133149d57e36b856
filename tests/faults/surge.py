"""A surge publisher, run as its own process so it does not share the measuring loop.

    python -m tests.faults.surge REDIS_URL ROOM --skus 50 --rate 500 --duration 10

Seeds the SKUs (no ``initial``, so every update stays in the ``ok`` tier and is
merged by the interval, the surge case) with heavy records (a 200-character
name, 16 platforms: ~800 bytes, what host screens receive), prints ``seeded``,
waits for a line on stdin, prints ``started <wall-clock ms>``, then sells one
unit at a time at ``--rate`` updates per second for ``--duration`` seconds and
prints ``done <updates> <errors>``.  The start time lets the measuring side cut
the surge into windows by the records' publish timestamps (the same clock).
"""

from __future__ import annotations

import argparse
import asyncio
import random
import sys
import time

from redis.exceptions import RedisError

from clients.publisher import Publisher, Status


async def surge(url: str, room: str, skus: list[str], rate: float, duration: float) -> tuple[int, int]:
    rng = random.Random(1)
    sent = errors = 0
    tick = 0.01
    per_tick = max(1, round(rate * tick))
    async with Publisher(url) as pub:
        for sku in skus:
            platforms = {f"platform-{p:02d}": 100_000 for p in range(16)}
            result = await pub.set(room, sku, 10_000_000, name="长" * 200, platforms=platforms)
            assert result.status is Status.OK
        print("seeded", flush=True)
        await asyncio.get_running_loop().run_in_executor(None, sys.stdin.readline)
        print(f"started {time.time_ns() // 1_000_000}", flush=True)
        start = time.monotonic()
        n = 0
        while time.monotonic() - start < duration:
            batch = [pub.adjust(room, rng.choice(skus), -1) for _ in range(per_tick)]
            for result in await asyncio.gather(*batch, return_exceptions=True):
                if isinstance(result, RedisError | OSError):
                    errors += 1
                else:
                    sent += 1
            n += 1
            await asyncio.sleep(max(0.0, start + n * tick - time.monotonic()))
    return sent, errors


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("redis_url")
    parser.add_argument("room")
    parser.add_argument("--skus", type=int, default=50)
    parser.add_argument("--rate", type=float, default=500.0)
    parser.add_argument("--duration", type=float, default=10.0)
    args = parser.parse_args()
    skus = [f"sku-{i:02d}" for i in range(args.skus)]
    sent, errors = asyncio.run(surge(args.redis_url, args.room, skus, args.rate, args.duration))
    print(f"done {sent} {errors}", flush=True)


if __name__ == "__main__":
    main()
