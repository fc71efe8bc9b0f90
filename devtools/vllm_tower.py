"""vLLM's own CLIP vision tower, built in this process without an engine.

For the in-tower tests and ``loadtests/tower_time.py`` (``one_rank`` also serves the
scout test's decoder layers): the layers FlowCut's hooks
cut in the engine (``vllm.model_executor.models.clip``), on one rank, with the
weights of a seeded Hugging Face ``CLIPVisionModel`` (eager attention), which is
returned beside it as the reference.
"""

from __future__ import annotations

import socket
from collections.abc import Iterator
from contextlib import contextmanager

import torch
from transformers import CLIPVisionConfig, CLIPVisionModel


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextmanager
def one_rank(vllm_config: object = None) -> Iterator[None]:
    """vLLM's distributed state for one process and one rank, torn down after, with
    ``vllm_config`` (default: an empty one) as the current config meanwhile."""
    from vllm.config import VllmConfig, set_current_vllm_config
    from vllm.distributed import (
        destroy_distributed_environment,
        destroy_model_parallel,
        init_distributed_environment,
        initialize_model_parallel,
    )

    with set_current_vllm_config(vllm_config or VllmConfig()):
        init_distributed_environment(
            world_size=1,
            rank=0,
            local_rank=0,
            distributed_init_method=f"tcp://127.0.0.1:{_free_port()}",
            backend="gloo",
        )
        initialize_model_parallel(1, 1)
        try:
            yield
        finally:
            destroy_model_parallel()
            destroy_distributed_environment()


def build_towers(
    config: CLIPVisionConfig, layers: int, seed: int = 0, query_scale: float = 1.0
) -> tuple[torch.nn.Module, CLIPVisionModel]:
    """vLLM's tower built up to ``layers`` layers (as LLaVA builds it for its feature
    layer) and the Hugging Face model whose weights it got. Call inside ``one_rank``.

    ``query_scale`` multiplies the query weights: random weights attend almost
    uniformly, trained towers do not, and FlowCut cuts by how concentrated the [CLS]
    attention is.
    """
    from vllm.config import VllmConfig, set_current_vllm_config
    from vllm.model_executor.models.clip import CLIPVisionModel as VllmCLIPVisionModel

    torch.manual_seed(seed)
    config._attn_implementation = "eager"
    reference = CLIPVisionModel(config).eval()
    with torch.no_grad():
        for layer in reference.encoder.layers:
            layer.self_attn.q_proj.weight.mul_(query_scale)
    with set_current_vllm_config(VllmConfig()):
        ours = VllmCLIPVisionModel(config, num_hidden_layers_override=layers).eval()
    tower = ours.vision_model
    weights = (
        (name.removeprefix("vision_model."), tensor)
        for name, tensor in reference.state_dict().items()
        if tower.post_layernorm is not None or "post_layernorm" not in name
    )
    tower.load_weights(weights)
    finish_loading(ours)
    return ours, reference


def finish_loading(model: torch.nn.Module) -> None:
    """As vLLM's loader does after the weights: the linear layers' weights into the CPU
    kernels' format."""
    from vllm.config import VllmConfig, set_current_vllm_config

    with set_current_vllm_config(VllmConfig()):
        for module in model.modules():
            method = getattr(module, "quant_method", None)
            if method is not None:
                method.process_weights_after_loading(module)
