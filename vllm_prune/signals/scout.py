"""The scout pass: the first K LLM layers over the visual tokens and the question.

FastV and the methods built on it score visual tokens by attention inside the
LLM (layer K - 1, K = 2 by default). Here that happens before the prompt is
scheduled: inside ``embed_multimodal``, with the model's own decoder weights,
plain PyTorch attention and no KV cache. The sequence is the image's visual
tokens followed by the question's tokens, at positions 0 .. L-1 (the real
prompt also has the chat template's tokens around them). Only the rows that are
read (the question's tokens and the last visual token) are turned into
attention probabilities at layer K - 1; the earlier layers run in full.

Works for Llama-style decoder layers as vLLM builds them (``input_layernorm``,
``self_attn.qkv_proj`` / ``rotary_emb`` / ``o_proj``, ``post_attention_layernorm``,
``mlp``): Llama, Vicuna (LLaVA-1.5), Mistral, Qwen2.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from .heads import SumOverRanks, mean_over_heads, one_rank


@dataclass(frozen=True)
class ScoutResult:
    question_attention: torch.Tensor  # [T, N] every question token -> visual tokens
    visual_attention: torch.Tensor  # [N] last visual token -> visual tokens
    visual_hidden: torch.Tensor  # [N, D] visual hidden states entering layer K - 1
    # The question's last token: its attention row [N] and hidden state [D]
    # entering layer K - 1; None without a question.
    text_attention: torch.Tensor | None
    last_hidden: torch.Tensor | None


def _qkv(layer: nn.Module, positions: torch.Tensor, normed: torch.Tensor):
    attn = layer.self_attn
    qkv, _ = attn.qkv_proj(normed)
    q, k, v = qkv.split([attn.q_size, attn.kv_size, attn.kv_size], dim=-1)
    q, k = attn.rotary_emb(positions, q, k)
    length = normed.shape[0]
    q = q.view(length, attn.num_heads, attn.head_dim).transpose(0, 1)  # [H, L, d]
    k = k.view(length, attn.num_kv_heads, attn.head_dim).transpose(0, 1)
    v = v.view(length, attn.num_kv_heads, attn.head_dim).transpose(0, 1)
    groups = attn.num_heads // attn.num_kv_heads  # grouped-query attention
    return q, k.repeat_interleave(groups, 0), v.repeat_interleave(groups, 0)


def _decoder_layer(layer: nn.Module, positions: torch.Tensor, hidden: torch.Tensor) -> torch.Tensor:
    q, k, v = _qkv(layer, positions, layer.input_layernorm(hidden))
    out = F.scaled_dot_product_attention(q, k, v, is_causal=True, scale=layer.self_attn.scaling)
    out = out.transpose(0, 1).reshape(hidden.shape[0], -1)
    hidden = hidden + layer.self_attn.o_proj(out)[0]
    return hidden + layer.mlp(layer.post_attention_layernorm(hidden))


@torch.inference_mode()
def scout(
    layers: Sequence[nn.Module],
    visual: torch.Tensor,
    text: torch.Tensor,
    layer: int,
    positions: torch.Tensor | None = None,
    sum_over_ranks: SumOverRanks = one_rank,
) -> ScoutResult:
    """Run layers 0 .. ``layer`` - 2 in full and read attention rows in layer ``layer`` - 1.

    ``visual`` [N, D] and ``text`` [T, D] are LLM input embeddings. T may be 0:
    the last visual token's row never sees the text (causal attention).
    ``positions``: rotary positions of the N + T tokens ([L], or [3, L] for
    M-RoPE); by default 0 .. L - 1. ``sum_over_ranks``: the sum over the
    tensor-parallel ranks that hold the other heads (``heads.mean_over_heads``).
    """
    n = visual.shape[0]
    hidden = torch.cat([visual, text.to(visual.dtype)])
    if positions is None:
        positions = torch.arange(hidden.shape[0], device=hidden.device)
    for decoder in layers[: layer - 1]:
        hidden = _decoder_layer(decoder, positions, hidden)
    target = layers[layer - 1]
    q, k, _ = _qkv(target, positions, target.input_layernorm(hidden))
    length = hidden.shape[0]
    # Rows read: every question token, then the last visual token.
    rows = torch.cat([torch.arange(n, length), torch.tensor([n - 1])]).to(hidden.device)
    logits = (q[:, rows].float() @ k.float().transpose(-1, -2)) * target.self_attn.scaling
    causal = rows[:, None] < torch.arange(length, device=hidden.device)[None, :]
    per_head = logits.masked_fill(causal, float("-inf")).softmax(dim=-1)
    probabilities = mean_over_heads(per_head, 0, sum_over_ranks)
    asked = length > n
    return ScoutResult(
        question_attention=probabilities[:-1, :n],
        visual_attention=probabilities[-1, :n],
        visual_hidden=hidden[:n],
        text_attention=probabilities[-2, :n] if asked else None,
        last_hidden=hidden[-1] if asked else None,
    )
