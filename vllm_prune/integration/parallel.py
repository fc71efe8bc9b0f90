"""The tensor-parallel group, as the signals and the trace need it.

Under ``--tensor-parallel-size N`` the scout pass and the [CLS] hook see only
their rank's attention heads. ``sum_over_tensor_parallel`` is the one collective
that makes their head means global (``signals.heads``): vLLM's own all-reduce over
the tensor-parallel group, which every rank calls in the same order because every
rank runs ``embed_multimodal`` on the same images. Outside a group (one rank, a
test, a tool) both functions are the one-rank answer.
"""

from __future__ import annotations

import torch


def _world_size() -> int:
    from vllm.distributed import get_tensor_model_parallel_world_size

    try:
        return get_tensor_model_parallel_world_size()
    except (AssertionError, RuntimeError):  # no group set up
        return 1


def sum_over_tensor_parallel(tensor: torch.Tensor) -> torch.Tensor:
    """``tensor`` summed over the tensor-parallel ranks (itself on one rank)."""
    if _world_size() == 1:
        return tensor
    from vllm.distributed import tensor_model_parallel_all_reduce

    return tensor_model_parallel_all_reduce(tensor.contiguous())


def tensor_parallel_rank() -> int | None:
    """This process's tensor-parallel rank, or None without tensor parallelism."""
    if _world_size() == 1:
        return None
    from vllm.distributed import get_tensor_model_parallel_rank

    return get_tensor_model_parallel_rank()


def refuse_pipeline_parallel(pipeline_parallel_size: int) -> None:
    """Pruning's layouts: any tensor or data parallelism, no pipeline stages.

    vLLM runs the vision tower and ``embed_multimodal`` on the first pipeline stage
    only. The scout pass needs LLM layers that may live on a later stage, and
    Qwen's pruned positions are added on the first stage's ``forward`` alone; the
    API-server process, where a request could be refused, does not know the stages.
    Raised from every family's model constructor, so the server does not start.
    """
    if pipeline_parallel_size > 1:
        raise ValueError(
            "vllm-prune: pruning does not run with --pipeline-parallel-size > 1 (the "
            "vision tower, the scout pass's layers and Qwen's pruned positions would be "
            "split over stages); use --tensor-parallel-size instead (across nodes with "
            "--distributed-executor-backend ray), or serve without pruning with "
            "VLLM_PLUGINS=''"
        )
