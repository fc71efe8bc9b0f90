"""The vLLM glue: every module that imports vLLM lives here.

``plugin`` registers one file per model family (``llava``, ``llava_next``,
``qwen2_vl``); ``processing`` is what every family's processor does with the
prune spec, ``wire`` the per-image fields the processor sends the model, and
``compat`` the supported versions, the shims and the ledger of what we rely on.
"""
