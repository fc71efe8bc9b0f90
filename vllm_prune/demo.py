"""The demo model ``shapes-llava``, shipped as package data: where it is and how to serve it.

A small LLaVA-1.5 trained in this repository on the synthetic ``shapes`` benchmark
(its definition and training are development tools: ``devtools/shapes_llava.py``,
``devtools/train_shapes.py``). ``vllm-prune serve`` serves it when no model is named.
"""

from __future__ import annotations

from pathlib import Path

NAME = "shapes-llava"
FOLDER = Path(__file__).parent / "assets" / NAME
WEIGHTS = "model.safetensors"
# The embedded models are tiny: float32 and eager mode run anywhere, CPU included.
# fmt: off
SERVE_ARGS = [
    "--dtype", "float32",
    "--enforce-eager",
    "--max-model-len", "2048",
]
# fmt: on


def weights_folder() -> Path:
    """The shipped checkpoint, or a clear error where the package was installed without it."""
    if not (FOLDER / WEIGHTS).is_file():
        raise FileNotFoundError(
            f"{FOLDER / WEIGHTS} is missing: install vllm-prune with its package data "
            "(pip install .), or train it from a checkout with python -m devtools.train_shapes"
        )
    return FOLDER
