"""The engine's load, as vLLM reports it to the API server, for ``prune: auto``.

vLLM loads stat-logger plugins (entry point group ``vllm.stat_logger_plugins``) into
every API-server process and calls ``record`` with each engine step's scheduler
statistics. This one keeps the KV-cache usage and the waiting requests in
``auto.LOAD``, where the middleware reads them when a request with ``prune: auto``
arrives: vLLM's own numbers, in the process that decides, without scraping
``/metrics``. vLLM sends each step's statistics to one API server (the first with
outputs in that step), so with ``--api-server-count`` > 1 each API server reads the
steps it is sent.
"""

from __future__ import annotations

from typing import Any

from vllm.v1.metrics.loggers import StatLoggerBase

from .. import auto


class LoadReader(StatLoggerBase):
    """A per-engine stat logger that only reads the load."""

    def __init__(self, vllm_config: Any, engine_index: int = 0) -> None:
        self.engine_index = engine_index

    def record(
        self,
        scheduler_stats: Any,
        iteration_stats: Any,
        mm_cache_stats: Any = None,
        engine_idx: int = 0,
    ) -> None:
        if scheduler_stats is None:
            return
        # Deferred waiting requests (no room in the KV cache) wait as much as the others.
        waiting = scheduler_stats.num_waiting_reqs + scheduler_stats.num_skipped_waiting_reqs
        auto.LOAD.record(
            engine_idx, scheduler_stats.kv_cache_usage, scheduler_stats.num_running_reqs, waiting
        )

    def log_engine_initialized(self) -> None:
        pass
