"""Every architecture vLLM registers that takes images, and what vllm-prune does with it.

Read from the installed vLLM's own model registry, so the list follows vLLM rather
than our memory: ``python -m devtools.model_list`` writes ``docs/model-support.md``
(``make model-list``), and ``--check`` fails when that page is stale (the docs test
runs it). Each architecture is classified from its vLLM classes and our declarations
(``integration.families``), without a checkpoint:

- "pruned": a family file, or the generic adapter with a declared token grid;
- "pruned without spatial methods": the generic adapter, grid not declared;
- "served unpruned": the reason (M-RoPE or separator rows not declared, an
  encoder-decoder model, ...).

The generic adapter's start-up check on the served checkpoint has the last word: a model
it does not hold for is served unpruned and ``GET /v1/prune/methods`` says why.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from vllm_prune.integration.families import Family

PAGE = Path(__file__).resolve().parent.parent / "docs" / "model-support.md"
PRUNED, NO_SPATIAL, UNPRUNED = (
    "pruned",
    "pruned without spatial methods",
    "served unpruned",
)


@dataclass(frozen=True)
class Entry:
    architecture: str
    vllm_class: str
    status: str
    note: str


def classify() -> tuple[str, list[Entry]]:
    """(vLLM version, one entry per image-taking multimodal architecture, by name)."""
    import vllm
    from vllm.model_executor.models.interfaces import supports_mrope
    from vllm.model_executor.models.registry import _MULTIMODAL_MODELS
    from vllm.multimodal.processing import EncDecMultiModalProcessor

    from vllm_prune.integration.families import MROPE, family_of
    from vllm_prune.integration.plugin import OVERRIDES

    entries = []
    for architecture, (module, name) in sorted(_MULTIMODAL_MODELS.items()):
        try:
            cls = getattr(importlib.import_module(f"vllm.model_executor.models.{module}"), name)
        except Exception as err:  # noqa: BLE001  an optional dependency missing on this build
            entries.append(
                Entry(
                    architecture,
                    name,
                    UNPRUNED,
                    f"its vLLM module does not import on this build ({type(err).__name__})",
                )
            )
            continue
        if not _takes_images(cls):
            continue
        family = family_of(architecture)
        processor = getattr(getattr(cls, "_processor_factory", None), "processor", None)
        if architecture in OVERRIDES:
            entry = Entry(architecture, name, PRUNED, "family file")
        elif family.unpruned is not None:
            entry = Entry(architecture, name, UNPRUNED, family.unpruned)
        elif processor is None:
            entry = Entry(architecture, name, UNPRUNED, "no multimodal processor of its own")
        elif isinstance(processor, type) and issubclass(processor, EncDecMultiModalProcessor):
            entry = Entry(architecture, name, UNPRUNED, "encoder-decoder: images go to the encoder")
        elif supports_mrope(cls) and not family.mrope:
            entry = Entry(architecture, name, UNPRUNED, MROPE)
        elif family.knows_grid:
            entry = Entry(architecture, name, PRUNED, "generic adapter, " + _declared(family))
        elif family.learned is not None:
            entry = Entry(
                architecture,
                name,
                NO_SPATIAL,
                f"generic adapter, if its start-up check holds; its learned rows "
                f"({family.learned}) found by the content check at start and dropped when "
                "an image is pruned (not served in tests)",
            )
        else:
            entry = Entry(
                architecture, name, NO_SPATIAL, "generic adapter, if its start-up check holds"
            )
        entries.append(entry)
    return str(vllm.__version__), entries


def _declared(family: Family) -> str:
    """What a pruned family declares, in words."""
    said = [f"grid: {family.grid}"] if family.grid else []
    if family.parts is not None:
        said.append(f"parts: `{family.parts.__name__}`")
    if family.mrope:
        said.append("M-RoPE positions")
    return ", ".join(said)


def _takes_images(cls: type) -> bool:
    """Its processing info lists images (most return a constant, read without a
    checkpoint); else its placeholder for an image (vLLM raises for a modality the
    model does not take)."""
    info = getattr(getattr(cls, "_processor_factory", None), "info", None)
    if isinstance(info, type):
        try:
            return "image" in info.get_supported_mm_limits(None)  # type: ignore[arg-type]
        except Exception:  # noqa: BLE001,S110  the limits depend on the checkpoint's config
            pass
    try:
        cls.get_placeholder_str("image", 0)  # type: ignore[attr-defined]
    except Exception:  # noqa: BLE001
        return False
    return True


def render(version: str, entries: list[Entry]) -> str:
    counts = {s: sum(e.status == s for e in entries) for s in (PRUNED, NO_SPATIAL, UNPRUNED)}
    lines = [
        "# Model support",
        "",
        "<!-- Generated by `make model-list` (python -m devtools.model_list); do not edit. -->",
        "",
        f"Every architecture that vLLM {version} registers as multimodal and that takes "
        f"images: {len(entries)} in all, {counts[PRUNED]} pruned, {counts[NO_SPATIAL]} pruned "
        f"without the spatial methods (their token grid is not declared), "
        f"{counts[UNPRUNED]} served unpruned.",
        "",
        "\"Pruned\" is read from vLLM's classes and vllm-prune's declarations "
        "(`vllm_prune/integration/families.py`). For a model without a family file the "
        "generic adapter checks, when the server starts, that the model's placeholder "
        "follows the mechanism it relies on (see [Models and families](models.md)); where "
        "it does not, the model is served unpruned and `GET /v1/prune/methods` says why. "
        "With the served weights it then checks which rows of an image's embedding are "
        "content: two different images share only learned rows (newlines, separators, "
        "indicators). A family whose declaration disagrees does not start; the learned "
        "rows of a family that declares none are dropped when an image is pruned.",
        "",
        "| architecture | vLLM class | vllm-prune | why / how |",
        "|---|---|---|---|",
    ]
    for e in entries:
        lines.append(f"| `{e.architecture}` | `{e.vllm_class}` | {e.status} | {e.note} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="fail if the page is stale")
    parser.add_argument("--out", type=Path, default=PAGE)
    args = parser.parse_args(argv)
    text = render(*classify())
    if args.check:
        if not args.out.exists() or args.out.read_text() != text:
            print(f"{args.out} is stale: run make model-list", file=sys.stderr)
            return 1
        return 0
    args.out.write_text(text)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
