"""Gateway configuration: ``STOCKWIRE_*`` environment variables or CLI flags.

Every field here becomes a ``stockwire serve`` flag (``--send-buffer-limit``
for ``send_buffer_limit``); a flag wins over the environment.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from gateway.auth import check_algorithms


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="STOCKWIRE_", extra="ignore")

    host: str = Field("127.0.0.1", description="Address to listen on")
    port: int = Field(8765, ge=0, le=65535, description="Port for WebSocket and HTTP")
    workers: int = Field(
        0, ge=0, description="Processes sharing the port (SO_REUSEPORT); 0: one per CPU core"
    )
    broker: Literal["redis", "memory"] = Field(
        "redis", description="Where stock comes from: redis, or memory (single process)"
    )
    redis_url: str = Field("redis://127.0.0.1:6379/0", description="Redis to subscribe to")
    redis_reconnect_max: float = Field(
        1.0, gt=0, description="Cap of the jittered backoff between Redis reconnect attempts (s)"
    )
    redis_cluster: bool = Field(
        False, description="redis_url points at a Redis Cluster (any node); rooms spread over shards"
    )
    interval: float = Field(
        0.1, ge=0, le=10, description="Seconds between a room's frames under a burst"
    )
    urgent_interval: float = Field(
        0.02, ge=0, description="Minimum seconds between urgent frames (sold out, back in stock, "
        "safety-line crossing) of one room"
    )
    max_interval_stretch: float = Field(
        1.0, ge=1, le=100, description="Most the intervals are stretched while a worker is behind on "
        "reading Redis (1: never)"
    )
    safety_line: float = Field(
        0.2, ge=0, lt=1, description="Default safety line, as a fraction of initial stock"
    )
    critical_line: float = Field(
        0.05, ge=0, lt=1, description="Last-call line, as a fraction of initial stock"
    )
    send_buffer_limit: int = Field(
        256 * 1024, ge=1024, description="Bytes queued for a client before it counts as slow"
    )
    slow_client_timeout: float = Field(
        10.0, gt=0, description="Seconds a slow client may stay undrained before it is closed"
    )
    room_grace: float = Field(
        5.0, ge=0, description="Seconds a room stays subscribed after its last client leaves"
    )
    max_record_bytes: int = Field(
        8 * 1024, ge=64, description="Largest publisher message accepted"
    )
    stats_interval: float = Field(
        1.0, gt=0, description="Seconds between stats frames (velocity, ETA, viewers) to hosts"
    )
    backlog: int = Field(
        4096, ge=16, description="Listen backlog: room for a reconnect burst's SYNs (kernel caps it)"
    )
    ping_interval: float = Field(20.0, gt=0, description="WebSocket keepalive ping interval")
    # -- access ----------------------------------------------------------------
    jwt_secret: str | None = Field(
        None, description="Shared secret for HS256 tokens (host connections need a token)"
    )
    jwt_public_key_file: str | None = Field(
        None, description="PEM public key file for RS256/ES256/EdDSA tokens instead of a secret"
    )
    jwt_algorithms: str = Field("HS256", description="Accepted token algorithms, comma-separated")
    jwt_issuer: str | None = Field(None, description="Required iss claim, if set")
    jwt_audience: str | None = Field(None, description="Required aud claim, if set")
    require_viewer_token: bool = Field(False, description="Refuse viewers without a token")
    # -- abuse limits --------------------------------------------------------------
    allowed_origins: str = Field(
        "", description="Browser origins allowed, comma-separated (https://*.shop.com); empty: any"
    )
    max_connections: int = Field(
        100_000, ge=1, description="Connections per node; over it handshakes get 503 + Retry-After"
    )
    max_connections_per_address: int = Field(
        200, ge=1, description="Connections per client address (carrier NAT shares addresses)"
    )
    handshake_rate: float = Field(2000.0, gt=0, description="New handshakes per second per node")
    handshake_burst: int = Field(4000, ge=1, description="Handshakes allowed in a burst")
    handshake_rate_per_address: float = Field(
        50.0, gt=0, description="New handshakes per second per client address (429 beyond)"
    )
    handshake_burst_per_address: int = Field(
        100, ge=1, description="Handshakes one client address may make in a burst"
    )
    client_message_rate: float = Field(
        2.0, gt=0, description="Messages per second a client may send (viewers send almost none)"
    )
    client_message_burst: int = Field(10, ge=1, description="Client messages allowed in a burst")
    proxy_headers: bool = Field(
        False, description="Take the client address from X-Forwarded-For (behind a trusted proxy)"
    )
    proxy_hops: int = Field(
        1, ge=1, description="Trusted proxies in front of the gateway: the client address is the "
        "X-Forwarded-For entry this far from the right"
    )
    drain_window: float = Field(
        10.0, ge=0, description="Seconds over which SIGTERM spreads reconnects (close 1012)"
    )
    log_level: Literal["debug", "info", "warning", "error"] = Field(
        "warning", description="Log level"
    )
    log_format: Literal["text", "json"] = Field("text", description="Log line format")

    @model_validator(mode="after")
    def _lines(self) -> Settings:
        if self.critical_line > self.safety_line:
            raise ValueError("critical_line must not be above safety_line")
        if self.jwt_secret is not None and self.jwt_public_key_file is not None:
            raise ValueError("set jwt_secret or jwt_public_key_file, not both")
        check_algorithms(self.algorithms(), secret=self.jwt_secret is not None,
                         public_key=self.jwt_public_key_file is not None)
        return self

    def algorithms(self) -> list[str]:
        return [a.strip() for a in self.jwt_algorithms.split(",") if a.strip()]

    def origins(self) -> tuple[str, ...]:
        return tuple(o.strip() for o in self.allowed_origins.split(",") if o.strip())
