"""Prometheus metrics, one registry per gateway so tests can run several.

Under ``--workers N`` the supervisor sets ``PROMETHEUS_MULTIPROC_DIR``: every
worker then writes its values there, and ``/metrics`` on any worker reports
all workers together (counters and histograms summed, gauges summed over live
workers), whichever worker the scrape lands on.
"""

from __future__ import annotations

import os

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    ProcessCollector,
    generate_latest,
)

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.15, 0.2, 0.25, 0.5, 1.0, 2.5, 5.0)
FLUSH_BUCKETS = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1)


class Metrics:
    def __init__(self, worker: int = 0) -> None:
        self.worker = worker
        self.registry = CollectorRegistry()
        r = self.registry
        # CPU seconds, RSS and open files of this process: "is it CPU-bound?"
        ProcessCollector(registry=r)
        self.refusals = Counter(
            "stockwire_handshake_refusals", "Handshakes refused, by reason", ["reason"], registry=r
        )
        self.loop_lag = Histogram(
            "stockwire_event_loop_lag_seconds",
            "How late a 100 ms timer fires: high values mean the process is CPU-saturated",
            buckets=(0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0), registry=r,
        )
        self.publish_to_receive = Histogram(
            "stockwire_publish_to_receive_seconds",
            "From the record's publish timestamp to the gateway receiving it: Redis lag",
            buckets=LATENCY_BUCKETS, registry=r,
        )
        self.connections = Gauge(
            "stockwire_connections", "Open client connections", ["audience"], registry=r,
            multiprocess_mode="livesum",
        )
        self.rooms = Gauge("stockwire_rooms", "Rooms with a live subscription", registry=r,
                           multiprocess_mode="livesum")
        self.frames_sent = Counter(
            "stockwire_frames_sent", "Frames written to clients", ["kind"], registry=r
        )
        self.bytes_sent = Counter(
            "stockwire_bytes_sent", "Bytes written to clients", ["kind"], registry=r
        )
        self.frames_encoded = Counter(
            "stockwire_frames_encoded", "Frames encoded (once per room, audience, flush)",
            ["kind"], registry=r,
        )
        self.updates_received = Counter(
            "stockwire_updates_received", "Valid publisher records received", registry=r
        )
        self.updates_merged = Counter(
            "stockwire_updates_merged",
            "Records superseded by a newer record of the same SKU before a flush",
            registry=r,
        )
        self.updates_discarded = Counter(
            "stockwire_updates_discarded", "Records with an old or duplicate version",
            registry=r,
        )
        self.messages_dropped = Counter(
            "stockwire_messages_dropped", "Malformed publisher messages, by reason",
            ["reason"], registry=r,
        )
        self.client_closes = Counter(
            "stockwire_client_closes", "Connections the gateway closed, by reason",
            ["reason"], registry=r,
        )
        self.slow_clients = Counter(
            "stockwire_slow_client_skips",
            "Times a client's send buffer was over the bound and increments were held back",
            registry=r,
        )
        self.lagging = Gauge(
            "stockwire_lagging_clients", "Clients currently held back as slow", registry=r,
            multiprocess_mode="livesum"
        )
        self.ingest_lag = Gauge(
            "stockwire_ingest_lag_seconds",
            "How far behind this process reads Redis: the freshest record's age in the last "
            "half second, above the lowest age of the last five minutes",
            registry=r, multiprocess_mode="livemax",
        )
        self.interval_stretch = Gauge(
            "stockwire_interval_stretch",
            "Factor on every room's interval while this process is behind on reading Redis",
            registry=r, multiprocess_mode="livemax",
        )
        self.interval_stretch.set(1)
        self.flush_seconds = Histogram(
            "stockwire_flush_seconds", "Time to merge, encode and write one room flush",
            buckets=FLUSH_BUCKETS, registry=r,
        )
        self.publish_to_send = Histogram(
            "stockwire_publish_to_send_seconds",
            "From the record's publish timestamp to the gateway writing it",
            buckets=LATENCY_BUCKETS, registry=r,
        )
        self.redis_reconnects = Counter(
            "stockwire_redis_reconnects", "Times the Redis subscription was re-established",
            registry=r,
        )
        self.load_failures = Counter(
            "stockwire_snapshot_load_failures",
            "Room snapshot loads (subscribe, then read) that failed and will be retried",
            registry=r,
        )
        self.broker_ready = Gauge(
            "stockwire_broker_ready", "1 while updates are flowing from the broker", registry=r,
            multiprocess_mode="livemin"
        )
        self.redis_shard_up = Gauge(
            "stockwire_redis_shard_up",
            "1 while this node's subscription to a Redis primary (a cluster shard) is up",
            ["shard"], registry=r, multiprocess_mode="livemin",
        )

    def shard_state(self, shard: str, up: bool | None) -> None:
        """A shard's health as the Redis broker reports it; ``None``: no longer a primary.

        Labels cannot be removed across worker processes (prometheus_client's
        multiprocess mode), so there a former primary reads NaN rather than 0,
        which would look like a dead shard forever.
        """
        if up is not None:
            self.redis_shard_up.labels(shard).set(1 if up else 0)
        elif os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
            self.redis_shard_up.labels(shard).set(float("nan"))
        else:
            self.redis_shard_up.remove(shard)

    def render(self) -> bytes:
        if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
            from prometheus_client import multiprocess

            merged = CollectorRegistry()
            multiprocess.MultiProcessCollector(merged)
            return generate_latest(merged)
        return generate_latest(self.registry)
