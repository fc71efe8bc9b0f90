"""vllm-prune: visual-token pruning for multimodal LLMs served by vLLM.

Importing the package is cheap and never imports vLLM; the vLLM glue lives in
``vllm_prune.plugin`` and ``vllm_prune.models``.
"""

__version__ = "0.1.0"
