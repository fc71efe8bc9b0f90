"""The stub's driver: the CPU as Triton's target and torch device (for the interpreter)."""

import torch
from triton.backends.compiler import GPUTarget
from triton.backends.driver import DriverBase


class CPUStubDriver(DriverBase):
    @classmethod
    def is_active(cls) -> bool:
        return True

    def map_python_to_cpp_type(self, ty: str) -> str:
        raise RuntimeError("triton_cpu_stub compiles nothing; run under TRITON_INTERPRET=1")

    def get_current_target(self) -> GPUTarget:
        return GPUTarget("cpu", "x86_64", 1)

    def get_active_torch_device(self) -> torch.device:
        return torch.device("cpu")

    def get_benchmarker(self):
        from triton.testing import do_bench

        return do_bench
