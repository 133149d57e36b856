"""Rate and count limits with a clock passed in."""

from __future__ import annotations

from gateway.limits import AddressBuckets, ConnectionCounts, TokenBucket, forwarded_client, origin_allowed


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


def test_each_address_has_its_own_handshake_budget() -> None:
    buckets = AddressBuckets(rate=1.0, burst=2)
    assert [buckets.take("1.1.1.1", 0.0) for _ in range(3)] == [True, True, False]
    assert buckets.take("2.2.2.2", 0.0)  # another address is not affected
    assert buckets.wait_time("1.1.1.1") == 1.0
    assert buckets.take("1.1.1.1", 1.0)
    assert buckets.wait_time("9.9.9.9") == 0.0


def test_address_buckets_forget_idle_addresses_and_stay_bounded() -> None:
    buckets = AddressBuckets(rate=10.0, burst=5, max_entries=3)
    for i in range(3):
        buckets.take(f"10.0.0.{i}", 0.0)
    assert len(buckets) == 3
    buckets.take("10.0.0.9", 0.1)  # over the bound: the least recently seen goes
    assert set(buckets.buckets) == {"10.0.0.1", "10.0.0.2", "10.0.0.9"}
    buckets.take("10.0.0.9", 0.3)
    # 0.5 s refills a burst of 5 at 10/s: idle buckets are dropped, not kept forever.
    buckets.take("10.0.0.9", 0.65)
    assert set(buckets.buckets) == {"10.0.0.9"}


def test_an_evicted_address_starts_again_from_a_full_burst_only() -> None:
    buckets = AddressBuckets(rate=1.0, burst=1, max_entries=1)
    assert buckets.take("a", 0.0)
    assert not buckets.take("a", 0.0)
    assert buckets.take("b", 0.0)
    assert buckets.take("a", 0.0)  # "a" was evicted by "b": a fresh bucket, never more than burst
    assert not buckets.take("a", 0.0)


def test_the_client_address_is_the_entry_the_trusted_proxies_appended() -> None:
    # The client wrote "6.6.6.6"; the one trusted proxy appended the peer it saw.
    assert forwarded_client(["6.6.6.6, 203.0.113.7"], hops=1) == "203.0.113.7"
    # CDN then balancer: the CDN appended the client, the balancer the CDN.
    assert forwarded_client(["6.6.6.6, 203.0.113.7, 198.51.100.2"], hops=2) == "203.0.113.7"
    # HAProxy adds its own header line after the client's.
    assert forwarded_client(["6.6.6.6", "203.0.113.7"], hops=1) == "203.0.113.7"
    assert forwarded_client([" 203.0.113.7 ,, "], hops=1) == "203.0.113.7"
    # Fewer entries than hops: all were written by proxies; the leftmost is furthest out.
    assert forwarded_client(["203.0.113.7"], hops=3) == "203.0.113.7"
    assert forwarded_client([], hops=1) is None
    assert forwarded_client([" , "], hops=1) is None
