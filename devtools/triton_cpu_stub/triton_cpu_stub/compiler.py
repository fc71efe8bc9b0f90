"""The stub's compiler: Triton's interpreter runs every kernel, so nothing reaches it."""

from triton.backends.compiler import BaseBackend, GPUTarget

NOT_COMPILED = "triton_cpu_stub compiles nothing; run under TRITON_INTERPRET=1"


class CPUStubBackend(BaseBackend):
    @staticmethod
    def supports_target(target: GPUTarget) -> bool:
        return target.backend == "cpu"

    def hash(self) -> str:
        return "triton-cpu-stub-0"

    def parse_options(self, options: dict) -> object:
        raise RuntimeError(NOT_COMPILED)

    def add_stages(self, stages: dict, options: object, language=None) -> None:
        raise RuntimeError(NOT_COMPILED)

    def load_dialects(self, context) -> None:
        return None

    def get_module_map(self) -> dict:
        return {}
