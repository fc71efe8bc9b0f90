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
``mlp``): Llama, Vicuna (LLaVA-1.5), Mistral, Qwen2; and for what newer decoders add,
read from the layer itself: per-head query/key norms before the rotary embedding
(``self_attn.q_norm`` / ``k_norm``: Qwen3, Gemma 3), norms on both sides of the
attention and of the MLP (``pre_feedforward_layernorm`` / ``post_feedforward_layernorm``:
Gemma 2 and 3), sliding-window layers (Gemma 3's local layers), and Qwen3-VL's
DeepStack rows, which the LLM adds to the visual tokens' hidden states after each of
its first layers (``deepstack``). The text embeddings come scaled as the model scales
them (``observe``: the model's own ``embed_input_ids``).
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
    if hasattr(attn, "q_norm"):  # Qwen3, Gemma 3: each head's query and key normalised
        q = attn.q_norm(q.unflatten(-1, (-1, attn.head_dim))).flatten(-2)
        k = attn.k_norm(k.unflatten(-1, (-1, attn.head_dim))).flatten(-2)
    q, k = attn.rotary_emb(positions, q, k)
    length = normed.shape[0]
    q = q.view(length, attn.num_heads, attn.head_dim).transpose(0, 1)  # [H, L, d]
    k = k.view(length, attn.num_kv_heads, attn.head_dim).transpose(0, 1)
    v = v.view(length, attn.num_kv_heads, attn.head_dim).transpose(0, 1)
    groups = attn.num_heads // attn.num_kv_heads  # grouped-query attention
    return q, k.repeat_interleave(groups, 0), v.repeat_interleave(groups, 0)


def _masked(attn: nn.Module, rows: torch.Tensor, length: int) -> torch.Tensor:
    """[R, L]: True where row ``rows[r]`` must not attend token ``j`` (the future, and
    beyond the window of a sliding-window layer)."""
    keys = torch.arange(length, device=rows.device)[None, :]
    hidden = rows[:, None] < keys
    if getattr(attn, "is_sliding", False):  # Gemma 3's local layers
        hidden |= rows[:, None] - keys >= int(attn.config.sliding_window)
    return hidden


def _decoder_layer(layer: nn.Module, positions: torch.Tensor, hidden: torch.Tensor) -> torch.Tensor:
    attn = layer.self_attn
    q, k, v = _qkv(layer, positions, layer.input_layernorm(hidden))
    length = hidden.shape[0]
    if getattr(attn, "is_sliding", False):
        masked = _masked(attn, torch.arange(length, device=hidden.device), length)
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=~masked, scale=attn.scaling)
    else:
        out = F.scaled_dot_product_attention(q, k, v, is_causal=True, scale=attn.scaling)
    attended = attn.o_proj(out.transpose(0, 1).reshape(length, -1))[0]
    if hasattr(layer, "pre_feedforward_layernorm"):  # Gemma 2 / 3: norms on both sides
        hidden = hidden + layer.post_attention_layernorm(attended)
        mlp = layer.mlp(layer.pre_feedforward_layernorm(hidden))
        return hidden + layer.post_feedforward_layernorm(mlp)
    hidden = hidden + attended
    return hidden + layer.mlp(layer.post_attention_layernorm(hidden))


@torch.inference_mode()
def scout(
    layers: Sequence[nn.Module],
    visual: torch.Tensor,
    text: torch.Tensor,
    layer: int,
    positions: torch.Tensor | None = None,
    sum_over_ranks: SumOverRanks = one_rank,
    deepstack: Sequence[torch.Tensor] = (),
) -> ScoutResult:
    """Run layers 0 .. ``layer`` - 2 in full and read attention rows in layer ``layer`` - 1.

    ``visual`` [N, D] and ``text`` [T, D] are LLM input embeddings. T may be 0:
    the last visual token's row never sees the text (causal attention).
    ``positions``: rotary positions of the N + T tokens ([L], or [3, L] for
    M-RoPE); by default 0 .. L - 1. ``sum_over_ranks``: the sum over the
    tensor-parallel ranks that hold the other heads (``heads.mean_over_heads``).
    ``deepstack``: rows [N, D] the LLM adds to the visual tokens' hidden states after
    layer 0, 1, ... (Qwen3-VL).
    """
    n = visual.shape[0]
    hidden = torch.cat([visual, text.to(visual.dtype)])
    if positions is None:
        positions = torch.arange(hidden.shape[0], device=hidden.device)
    for index, decoder in enumerate(layers[: layer - 1]):
        hidden = _decoder_layer(decoder, positions, hidden)
        if index < len(deepstack):
            hidden[:n] += deepstack[index].to(hidden.dtype)
    target = layers[layer - 1]
    q, k, _ = _qkv(target, positions, target.input_layernorm(hidden))
    length = hidden.shape[0]
    # Rows read: every question token, then the last visual token.
    rows = torch.cat([torch.arange(n, length), torch.tensor([n - 1])]).to(hidden.device)
    logits = (q[:, rows].float() @ k.float().transpose(-1, -2)) * target.self_attn.scaling
    masked = _masked(target.self_attn, rows, length)
    per_head = logits.masked_fill(masked, float("-inf")).softmax(dim=-1)
    probabilities = mean_over_heads(per_head, 0, sum_over_ranks)
    asked = length > n
    return ScoutResult(
        question_attention=probabilities[:-1, :n],
        visual_attention=probabilities[-1, :n],
        visual_hidden=hidden[:n],
        text_attention=probabilities[-2, :n] if asked else None,
        last_hidden=hidden[-1] if asked else None,
    )
