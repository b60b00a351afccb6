"""The fused step on CPU: ``csrc/fused_cpu.cpp``, built on first use with ``torch.utils.cpp_extension.load_inline``.

The kernel is torch's own fused-AdamW pattern (ATen ``Vectorized`` loops over chunks, run with ``at::parallel_for``)
with AdaOpt's statistics summed in the same loop. It is compiled at run time, like ``torch.compile``'s own C++, by
the system's C++ compiler with the vector instructions torch itself picked for this CPU
(``torch.backends.cpu.get_cpu_capability()``), and cached by torch under ``~/.cache/torch_extensions`` (the first
build takes 30-60 s on two cores; later processes load it in well under a second). Nothing is built at install time:
without a compiler (or ``ninja``), the build fails and AdaOpt falls back to the foreach step, saying so once.
"""

from __future__ import annotations

from importlib import resources

import torch
from torch import Tensor

__all__ = ["extension", "cpu_apply"]

# torch's CPU capability -> (macros, compiler flags): the same as inductor's for its generated C++
_ISA_FLAGS = {
    "AVX512": (["-DCPU_CAPABILITY_AVX512"], ["-mavx512f", "-mavx512dq", "-mavx512vl", "-mavx512bw", "-mfma"]),
    "AVX2": (["-DCPU_CAPABILITY_AVX2"], ["-mavx2", "-mfma", "-mf16c"]),
}

_extension = None


def extension():
    """The compiled module (``apply``), built on the first call; raises RuntimeError/OSError if it cannot."""
    global _extension
    if _extension is None:
        from torch.utils.cpp_extension import load_inline

        source = resources.files("hf_adaopt.core").joinpath("csrc", "fused_cpu.cpp").read_text()
        capability = torch.backends.cpu.get_cpu_capability()
        macros, flags = _ISA_FLAGS.get(capability, ([], []))  # otherwise ATen's portable Vectorized
        _extension = load_inline(
            name=f"hf_adaopt_fused_cpu_{capability.lower()}",
            cpp_sources=source,
            functions=["apply"],
            # -fopenmp: at::parallel_for is inline, and runs its chunks on torch's OpenMP threads only if the
            # extension itself is compiled with OpenMP (without it, one thread whatever torch.get_num_threads says)
            extra_cflags=["-O3", "-fopenmp", *macros, *flags],
            extra_ldflags=["-fopenmp"],
            verbose=False,
        )
    return _extension


def cpu_apply(tensors: dict, scalars: Tensor) -> Tensor:
    """The update, in place; writes each tensor's reading and ``pre``, and returns the subsample's sums of m^2, v,
    p^2 and d^2 after it ((4, n) float64)."""
    params = [p.detach() for p in tensors["params"]]
    return extension().apply(params, [g.contiguous() for g in tensors["grads"]], tensors["exp_avgs"], tensors["exp_avg_sqs"],
                             tensors["directions"], tensors["pre"], tensors["readings"], scalars)
