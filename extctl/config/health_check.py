"""How Envoy health-checks the processor's workers: ``grpc.health.v1`` on each worker's socket or
address, with one set of timings for the standalone config (the ext_proc cluster's
``health_checks``) and for Envoy Gateway (extProc ``backendSettings.healthCheck.active``).

A worker answers SERVING for :data:`SERVICE` while it serves and NOT_SERVING while it drains
(``extproc`` and its pyvoy transport both do); a grpcio worker also stops accepting connections
as soon as it drains, which Envoy sees as a refused connection. What Envoy 1.40 does with the
timings (``health_checker_base_impl.cc``, ``upstream_impl.cc``, ``load_balancer_impl.cc``):

- a static cluster finishes initializing, and the listeners start, only after one check of
  every host, and a first success marks a host healthy at once: the first request after start
  finds healthy the workers that were up;
- a NOT_SERVING answer ejects a host at once; network failures (refused, timed out) after
  ``unhealthy_threshold`` in a row, so one check lost to a busy event loop does not;
- ``no_traffic_interval`` (Envoy's default: 60 s) replaces ``interval`` until the cluster has
  carried a request (its own health-check connections do not count);
- with fewer than half the hosts healthy (the default panic threshold) Envoy balances across all
  of them: with one worker, or when most fail, a check never stops requests a live worker could
  still serve.
"""

from __future__ import annotations

from dataclasses import dataclass

from extproc import SERVICE_NAME

SERVICE = SERVICE_NAME
"""The service the checks ask about."""


@dataclass(frozen=True)
class HealthCheck:
    """Timings in seconds. Measured through Envoy 1.40 (tests/extproc/test_health_checks.py): a
    draining worker is out of rotation within ``unhealthy_threshold`` intervals (about 1 s);
    a dead processor, with no traffic yet, within ``unhealthy_threshold`` no-traffic
    intervals (about 2 s), plus ``timeout`` per check when it hangs instead of refusing."""

    timeout: float = 1.0
    interval: float = 0.5
    no_traffic_interval: float = 1.0
    unhealthy_threshold: int = 2
    healthy_threshold: int = 1
    """A restarted worker is back on its first SERVING answer."""


PROCESSOR = HealthCheck()
"""What both generators configure for the ext_proc cluster."""
