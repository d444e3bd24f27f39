"""The webhook's Prometheus metrics, correct with one process or several workers.

Owns: metric names, labels and buckets, and their exposition. With several workers each
process writes its samples to PROMETHEUS_MULTIPROC_DIR (runner.py sets it before the workers
start) and a scrape, answered by any worker, adds them up.
Does not: decide what to count (server.py does).
"""

from __future__ import annotations

import os
from typing import Any

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    REGISTRY,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
    multiprocess,
)

MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"

ADMISSIONS = Counter(
    "cache_injector_admissions",
    "AdmissionReviews answered, by result (injected, skipped, denied, error) and reason code.",
    ["result", "reason"],
)
ADMISSION_DURATION = Histogram(
    "cache_injector_admission_duration_seconds",
    "Time from a /mutate request's start to its encoded AdmissionReview answer.",
    buckets=(0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5),
)
REJECTED_REQUESTS = Counter(
    "cache_injector_rejected_requests",
    "Requests to /mutate answered without a review: malformed (400), body too slow (408), "
    "body too large (413).",
    ["code"],
)
CERTIFICATE_EXPIRY = Gauge(
    "cache_injector_certificate_expiry_timestamp_seconds",
    "notAfter of the serving certificate new handshakes get, as a Unix timestamp.",
    multiprocess_mode="mostrecent",
)
CERTIFICATE_RELOADS = Counter(
    "cache_injector_certificate_reloads",
    "Reloads of the serving certificate after its files changed, by result.",
    ["result"],
)
POLICY_RELOADS = Counter(
    "cache_injector_policy_reloads",
    "Reloads of the --policy file after it changed, by result; on error the last good "
    "policy stays in force.",
    ["result"],
)


_ADMISSION_CHILDREN: dict[tuple[str, str], Any] = {}


def count_admission(result: str, reason: str, seconds: float) -> None:
    """One answered review. Label children are looked up once per (result, reason): both
    come from fixed tables, and `labels()` takes a lock on every call."""
    child = _ADMISSION_CHILDREN.get((result, reason))
    if child is None:
        child = ADMISSIONS.labels(result=result, reason=reason)
        _ADMISSION_CHILDREN[(result, reason)] = child
    child.inc()
    ADMISSION_DURATION.observe(seconds)


_REJECTED_CHILDREN: dict[str, Any] = {}


def count_rejected(code: int) -> None:
    """One /mutate request answered without a review (400, 408, 413)."""
    child = _REJECTED_CHILDREN.get(str(code))
    if child is None:
        child = _REJECTED_CHILDREN[str(code)] = REJECTED_REQUESTS.labels(code=str(code))
    child.inc()


def initialise() -> None:
    """Show the reload counters at 0 before the first reload, so alerts have a series."""
    for counter in (CERTIFICATE_RELOADS, POLICY_RELOADS):
        for result in ("success", "error"):
            counter.labels(result=result)


def is_multiprocess() -> bool:
    return bool(os.environ.get(MULTIPROC_ENV))


def exposition() -> tuple[bytes, str]:
    """The text a scrape gets: this process's metrics, or every worker's added up."""
    if is_multiprocess():
        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry)  # type: ignore[no-untyped-call]
        return generate_latest(registry), CONTENT_TYPE_LATEST
    return generate_latest(REGISTRY), CONTENT_TYPE_LATEST


def process_exited(pid: int) -> None:
    """Drop a stopped worker's live gauges (counters keep counting across workers)."""
    if is_multiprocess():
        multiprocess.mark_process_dead(pid)  # type: ignore[no-untyped-call]
