"""Rate and count limits with a clock passed in."""

from __future__ import annotations

from gateway.limits import ConnectionCounts, TokenBucket, origin_allowed


def test_token_bucket_allows_a_burst_then_the_rate() -> None:
    bucket = TokenBucket(rate=2.0, burst=3, now=0.0)
    assert [bucket.take(0.0) for _ in range(4)] == [True, True, True, False]
    assert bucket.wait_time() == 0.5
    assert not bucket.take(0.25)
    assert bucket.take(0.5)
    assert bucket.take(100.0)
    assert bucket.tokens == 2  # refills to the burst, never above


def test_connection_counts_per_address_and_total() -> None:
    counts = ConnectionCounts(per_address=2, total=3)
    counts.add("1.1.1.1")
    counts.add("1.1.1.1")
    assert counts.address_full("1.1.1.1")
    assert not counts.address_full("2.2.2.2")
    assert not counts.full()
    counts.add("2.2.2.2")
    assert counts.full()
    for address in ("1.1.1.1", "1.1.1.1", "2.2.2.2"):
        counts.remove(address)
    assert (counts.count, dict(counts.by_address)) == (0, {})


def test_origins() -> None:
    allowed = ("https://live.example.com", "https://*.shop.example")
    assert origin_allowed("https://live.example.com", allowed)
    assert origin_allowed("https://m.shop.example", allowed)
    assert not origin_allowed("https://shop.example.evil.com", allowed)
    assert not origin_allowed("http://m.shop.example", allowed)
    assert not origin_allowed("https://evil.com", allowed)
    assert origin_allowed(None, allowed)  # not a browser
    assert origin_allowed("https://anything", ())
