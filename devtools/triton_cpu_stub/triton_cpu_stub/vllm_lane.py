"""A vLLM plugin of the V2 lane only: vLLM's native kernels where Triton's interpreter is
slow or wrong, so the lane tests the runner, not the interpreter.

With Triton on, Qwen3-VL's vision tower (Qwen3.5's too) interpolates its position
embeddings with a Triton kernel (``qwen3_vl.triton_pos_embed_interpolate``), else with
``pos_embed_interpolate_native``. Under the interpreter the kernel takes about 3.4 s a
call, and in bfloat16 it gives NaN features (Qwen3.5 answers an image with NaN
log-probabilities, plain vLLM too). On a GPU the kernel is compiled; only the lane swaps
it back. It lives beside the stub, so only a process that runs the lane loads it.
"""

import logging

logger = logging.getLogger("vllm.prune")


def register() -> None:
    from vllm.model_executor.models import qwen3_vl

    qwen3_vl.triton_pos_embed_interpolate = qwen3_vl.pos_embed_interpolate_native
    logger.info("V2 lane: Qwen3-VL's native position-embedding interpolation (not Triton's)")
