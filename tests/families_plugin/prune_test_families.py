"""A vLLM plugin for tests/test_generic.py only: LLaVA-NeXT's model under two more names.

LLaVA-NeXT's embedding holds a learned ``image_newline`` row after each row of its crop
grid, and its family declares them. Served under another name its rows are the same,
but the declaration is another: ``UNDECLARED`` has none (the generic adapter must find
the newline rows itself and drop them when an image is pruned); ``SQUARE`` claims a
square grid of content rows only, which the model contradicts (the server must not
start); ``UNPRUNED`` is declared unpruned (``REASON``), as a family whose layout the
adapter cannot prune is. A folder on ``PYTHONPATH`` with this module and its ``dist-info`` is all it takes.
"""

UNDECLARED = "UndeclaredLlavaNextForConditionalGeneration"
SQUARE = "SquareLlavaNextForConditionalGeneration"
UNPRUNED = "UnprunedLlavaNextForConditionalGeneration"
REASON = "tests/families_plugin declares this family unpruned"
TARGET = "vllm_prune.integration.generic:Prune__llava_next__LlavaNextForConditionalGeneration"


def register() -> None:
    from vllm import ModelRegistry

    from vllm_prune.integration.families import FAMILIES, Family

    for name in (UNDECLARED, SQUARE, UNPRUNED):
        if name not in ModelRegistry.get_supported_archs():
            ModelRegistry.register_model(name, TARGET)
    FAMILIES[SQUARE] = Family(grid="square")
    FAMILIES[UNPRUNED] = Family(unpruned=REASON)
