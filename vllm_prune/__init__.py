"""vllm-prune: visual-token pruning for multimodal LLMs served by vLLM.

Importing the package is cheap and never imports vLLM. The layers, each importing
only those before it: ``methods`` (pure torch), ``spec`` and ``plan`` (a request's
prune spec, one image's plan), ``signals`` (what methods read from a model),
``integration`` (the vLLM glue: the plugin, one file per model family, ``compat``),
``server`` (``vllm-prune serve`` and its middleware); ``observability`` (metrics,
trace) beside them. ``eval`` is the accuracy harness, an extra that serving never
imports.
"""

__version__ = "0.1.0"
