"""Which rows of an image's embedding are learned structure, found by the model itself.

A model's embedding of an image may hold rows that are not image content: a newline
after each grid row, a separator between two views, begin and end indicators. They are
learned vectors, the same for every image. So two different images embedded by the
served weights, laid out alike, show them: a row that is the same in both is structure,
and a row that differs is content. ``integration.generic`` runs this at start
(``GenericPruneModel``): a family that declares its separators must declare exactly
these rows; a family that declares none keeps the vectors found and, when an image is
pruned, drops the rows that match one of them, as a declared family drops its
separators (``layout.kept_separators``).

Pure torch, no vLLM.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

# Two embeddings of the same learned vector agree to rounding (the same weights, the
# same shapes); two different images' content rows differ by far more. Relative to the
# row's norm.
TOLERANCE = 1e-4


class Disagreement(ValueError):
    """The model's structure rows are not its family's declared separators."""


def _close(rows: torch.Tensor, other: torch.Tensor) -> torch.Tensor:
    """Whether each row of ``rows`` is ``other``'s row (or vector) within the tolerance."""
    scale = rows.float().norm(dim=-1).clamp_min(torch.finfo(torch.float32).tiny)
    return (rows.float() - other.float()).norm(dim=-1) <= TOLERANCE * scale


def same_rows(first: torch.Tensor, second: torch.Tensor) -> list[int]:
    """The rows two different images' embeddings of the same layout share: structure."""
    if first.shape != second.shape:
        raise ValueError(
            f"the two images' embeddings differ in shape ({tuple(first.shape)} and "
            f"{tuple(second.shape)}), so their rows cannot be compared"
        )
    return _close(first, second).nonzero().flatten().tolist()


def distinct_vectors(embedding: torch.Tensor, rows: Sequence[int]) -> torch.Tensor:
    """The different vectors among ``rows`` of ``embedding`` ([K, D]; a newline repeated
    after every grid row is one vector)."""
    vectors: list[torch.Tensor] = []
    for row in rows:
        vector = embedding[row]
        if not any(bool(_close(vector[None], v[None])) for v in vectors):
            vectors.append(vector)
    return torch.stack(vectors) if vectors else embedding[:0]


def structure_mask(image: torch.Tensor, vectors: torch.Tensor) -> torch.Tensor:
    """Which rows of ``image`` [N, D] are one of the learned ``vectors`` [K, D]."""
    mask = torch.zeros(image.shape[0], dtype=torch.bool, device=image.device)
    for vector in vectors.to(image.device):
        mask |= _close(image, vector[None])
    return mask


def describe(rows: Sequence[int], limit: int = 12) -> str:
    """``rows`` in a message: their count and the first ``limit`` indices."""
    shown = ", ".join(str(r) for r in rows[:limit])
    more = f", ... ({len(rows)} in all)" if len(rows) > limit else ""
    return f"rows [{shown}{more}]" if rows else "no rows"


def disagreement(found: Sequence[int], declared: Sequence[int], architecture: str) -> str | None:
    """Why the rows the model shows as structure are not the ones its family declares,
    or None where they are."""
    if sorted(found) == sorted(declared):
        return None
    return (
        f"vllm-prune: {architecture}'s family declares its image's separator rows as "
        f"{describe(sorted(declared))} of the embedding, but two different images share "
        f"{describe(sorted(found))}: the declaration does not match the model, so pruning "
        "would drop content or keep separators. Correct its entry in "
        "vllm_prune/integration/families.py, or serve without pruning with VLLM_PLUGINS=''"
    )


def none_found(architecture: str, expected: str) -> str:
    """Why a family whose embedding should hold learned rows fails its check."""
    return (
        f"vllm-prune: {architecture}'s family says its image rows hold learned rows "
        f"({expected}), but two different images share no rows: the model is not what its "
        "entry in vllm_prune/integration/families.py says. Correct the entry, or serve "
        "without pruning with VLLM_PLUGINS=''"
    )
