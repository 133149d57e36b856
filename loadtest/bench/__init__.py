"""Benchmark harness: measured fan-out, latency, staleness, memory and ingest of one gateway worker.

    .venv/bin/python -m loadtest.bench fanout --pin          # or latency, surge, idle, join, ingest, all
    .venv/bin/python -m loadtest.bench all --quick           # everything, scaled down (the smoke test)

Why a harness of its own rather than Locust: one Locust user per connection
costs far more CPU than the gateway spends on that connection, so Locust
measures itself long before it measures the gateway.  Here a load generator
holds thousands of connections in one process on plain asyncio Protocols
(:mod:`loadtest.bench.wsclient`), a publisher pipelines the real Lua script
over raw RESP (:mod:`loadtest.bench.publisher`), and a reference server that
does nothing but ``transport.write`` (:mod:`loadtest.bench.raw`) runs the same
scenario back to back, so every fan-out figure comes with the ceiling this
machine allows.  See docs/benchmarks.md for the method and the figures.
"""
