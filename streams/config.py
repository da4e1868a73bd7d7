"""Typed platform settings, read from the environment in this module only.

Every process (gateway, worker, warehouse, CLI) resolves one frozen
:class:`Settings` from ``SLUICE_*`` variables. Paths default to locations
under ``SLUICE_HOME`` (``.sluice/`` in the working directory) so the embedded
mode needs no configuration at all.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

from pydantic import Field, SecretStr, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict


class Settings(BaseSettings):
    """Resolved configuration of one Sluice process."""

    model_config = SettingsConfigDict(env_prefix="SLUICE_", frozen=True, extra="ignore")

    home: Path = Field(default=Path(".sluice"), description="state root")

    # Kafka
    kafka_bootstrap: str = "127.0.0.1:9092"
    topic_prefix: str = "sluice"
    topic_partitions: int = Field(default=4, ge=1)
    replication_factor: int = Field(default=1, ge=1)

    # Chunking: bytes per chunk event, kept far below Kafka's 1 MiB default
    # message limit once Avro framing and headers are added.
    chunk_bytes: int = Field(default=512 * 1024, ge=1024, le=900 * 1024)
    max_upload_bytes: int = Field(default=8 * 1024**3, ge=1)

    # clamd
    clamd_host: str = "127.0.0.1"
    clamd_port: int = 3310
    clamd_timeout_s: float = Field(default=60.0, gt=0)
    # clamd's StreamMaxLength; files larger than this are held as suspicious.
    clamd_stream_max_bytes: int = Field(default=512 * 1024**2, ge=1)

    # Object storage (fsspec URL). Empty means a local directory under home.
    storage_url: str = ""

    # Warehouse: chdb under home unless a ClickHouse server URL is given.
    clickhouse_url: str = ""
    warehouse_listen: str = "127.0.0.1:8124"

    # Gateway
    gateway_listen: str = "127.0.0.1:8080"
    gateway_url: str = "http://127.0.0.1:8080"
    gateway_instance: str = "gw-1"
    # Unfinished uploads expire upload_expiry_s after their last write (tus
    # expiration, below); expired ones answer 410 and are marked EXPIRED.
    gateway_expiry_sweep_s: float = Field(default=60.0, gt=0)
    # A writer's lease on an upload; renewed while its request runs, so a
    # killed instance blocks others for at most this long.
    gateway_lease_s: float = Field(default=6.0, ge=1, le=120)
    # A request body that sends nothing for this long is ended (408); what
    # arrived before stays committed. Stalled clients would otherwise hold
    # their upload's lease and a share of the in-flight budget for ever.
    gateway_body_idle_s: float = Field(default=60.0, ge=1)
    # On SIGTERM, bodies still arriving after this long are cut off; what they
    # committed stays, and their clients resume from HEAD elsewhere.
    gateway_shutdown_grace_s: float = Field(default=30.0, ge=0)
    # Largest batch of a PATCH body per Kafka transaction (batches shrink
    # as more requests share the in-flight budget).
    gateway_batch_bytes: int = Field(default=8 * 1024**2, ge=1024, le=64 * 1024**2)
    # Budgets past which requests get 503 + Retry-After instead of queueing.
    gateway_max_inflight_bytes: int = Field(default=128 * 1024**2, ge=1024**2)
    gateway_max_rss_bytes: int = Field(default=600 * 1024**2, ge=64 * 1024**2)
    # Per-tenant request rate (token bucket): 429 + Retry-After past it.
    gateway_tenant_rate_per_s: float = Field(default=500.0, gt=0)
    gateway_tenant_burst: int = Field(default=1000, ge=1)
    # Per-tenant size limits in bytes (JSON object); others get max_upload_bytes.
    gateway_tenant_max_bytes: dict[str, int] = Field(default_factory=dict)
    # CORS: allowed origins (JSON list, e.g. ["https://app.example"]).
    gateway_cors_origins: list[str] = Field(default_factory=list)
    # TLS: both set means the gateway serves https.
    gateway_tls_cert: Path | None = None
    gateway_tls_key: Path | None = None
    # How far back the progress stream looks for an upload's latest stage.
    gateway_progress_lookback_s: float = Field(default=3600.0, ge=0)

    # Auth: development key pair under home unless a JWKS file is given.
    jwt_issuer: str = "sluice-dev"
    jwt_audience: str = "sluice"
    jwks_file: Path | None = None
    token: SecretStr | None = None  # the CLI's bearer token
    # An identity provider's JWKS endpoint (https; http only on loopback).
    # Empty means unset; it and jwks_file are mutually exclusive.
    jwks_url: str = ""
    # At most one fetch per interval, so unknown kids cannot flood the provider.
    jwks_refetch_interval_s: float = Field(default=30.0, ge=1, le=3600)
    jwks_max_age_s: float = Field(default=600.0, ge=10, le=86400)
    jwks_timeout_s: float = Field(default=5.0, gt=0, le=60)
    # Clock skew tolerated on exp/nbf/iat; auth.MAX_LEEWAY_S is the same bound.
    jwt_leeway_s: float = Field(default=30.0, ge=0, le=300)
    # HS256 is refused unless this shared secret (>= 32 bytes) is set.
    jwt_hs256_secret: SecretStr | None = None

    # Worker
    worker_name: str = "worker-1"  # one per worker process on a host
    # Faust table store: memory:// rebuilds tables from their changelog at
    # start-up; rocksdb:// (rocksdict) keeps them on disk under the worker's
    # data directory.
    worker_store: str = "memory://"
    dedupe_cache_size: int = Field(default=100_000, ge=1)
    # Files this large (or with metadata priority=bulk) take the bulk lane.
    bulk_threshold_bytes: int = Field(default=64 * 1024**2, ge=1)
    worker_web_port: int = 6066
    worker_metrics_port: int = 9101
    warehouse_metrics_port: int = 9102
    retry_attempts: int = Field(default=4, ge=1, le=20)
    retry_backoff_s: float = Field(default=0.5, ge=0)
    # How long an event may wait on an open circuit breaker before it is
    # dead-lettered, and how long a breaker stays open before a trial.
    retry_wait_max_s: float = Field(default=120.0, ge=0)
    clamd_breaker_reset_s: float = Field(default=5.0, gt=0)
    # Abandoned uploads: the gateway expires them this long after their last
    # write, and the leader worker removes staging idle this long.
    upload_expiry_s: float = Field(default=24 * 3600.0, gt=0)
    cleanup_interval_s: float = Field(default=300.0, gt=0)

    # Per-tenant policy for deep-check findings (streams.policy); built-in
    # default (quarantine every finding) when unset.
    policy_file: Path | None = None
    # Routing rules for clean files (streams.routing); defaults when unset.
    routes_file: Path | None = None

    # Quarantine: base64 of a 32-byte AES key; generated under keys/ if unset.
    quarantine_key: SecretStr | None = None

    log_level: str = "INFO"

    @model_validator(mode="after")
    def _resolve_home(self) -> Settings:
        # Anchor relative homes once so every child process agrees on paths.
        object.__setattr__(self, "home", self.home.expanduser().resolve())
        return self

    @model_validator(mode="after")
    def _check_tls(self) -> Settings:
        if (self.gateway_tls_cert is None) != (self.gateway_tls_key is None):
            raise ValueError("set both SLUICE_GATEWAY_TLS_CERT and _KEY, or neither")
        return self

    @property
    def storage_root(self) -> str:
        return self.storage_url or f"file://{self.home / 'storage'}"

    @property
    def chdb_path(self) -> Path:
        return self.home / "warehouse" / "chdb"

    @property
    def keys_dir(self) -> Path:
        return self.home / "keys"

    def topic(self, name: str) -> str:
        """Full Kafka topic name for a platform topic's short name."""
        return f"{self.topic_prefix}.{name}"


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    """Settings of this process, resolved once."""
    return Settings()
