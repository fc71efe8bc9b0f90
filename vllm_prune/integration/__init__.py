"""The vLLM glue: every module that imports vLLM lives here.

``plugin`` registers the family files (``llava``, ``qwen2_vl``, ``qwen3_vl``,
``qwen3_5``) and the generic adapter (``generic``, with ``families``' declarations) for
every other multimodal architecture; ``processing`` is what every family's processor does with the
prune spec, ``wire`` the per-image fields the processor sends the model, and
``compat`` the supported versions, the shims and the ledger of what we rely on.
"""
