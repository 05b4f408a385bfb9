"""Where the Triton kernels can run: whether triton and its interpreter are there, and the backend decision.

Nothing here imports triton at module import: the package works without it, and the kernel modules (which do) load
only when a kernel is asked for. Triton decides at ``@triton.jit`` time whether a kernel is compiled for the GPU or
run by its CPU interpreter, from the environment variable ``TRITON_INTERPRET``; so for ``backend="triton"`` on CPU
tensors, ``TRITON_INTERPRET=1`` must be set before the first kernel call of the process (tests do it at the top of
their module). Set later, the kernels are already compiled-mode functions and a CPU launch cannot work: that case is
refused with the reason instead of Triton's ``0 active drivers``.
"""

from __future__ import annotations

import importlib
import importlib.util
import os

import torch

BACKENDS = ("auto", "torch", "triton")


class TritonUnavailable(RuntimeError):
    """``backend="triton"`` was asked for where the kernel cannot run (no triton, CPU without the interpreter)."""


def triton_installed() -> bool:
    return importlib.util.find_spec("triton") is not None


def interpreter_requested() -> bool:
    """What Triton will read from the environment at ``@triton.jit`` time (the same parsing as its knobs)."""
    return os.environ.get("TRITON_INTERPRET", "0").strip().lower() in ("1", "true", "on", "yes")


def load(module: str):
    """Import ``retrieve_generate_model.kernels.<module>`` (a kernel module), or say why it cannot be."""
    if not triton_installed():
        raise TritonUnavailable("backend='triton' needs the triton package, which is not installed "
                                "(pip install 'triton>=3.6'; the kernels run on CUDA, or on CPU in its interpreter)")
    return importlib.import_module(f"retrieve_generate_model.kernels.{module}")


def is_interpreted(kernel) -> bool:
    """Whether a ``@triton.jit`` function was made in interpreter mode (decided when its module was imported)."""
    try:
        from triton.runtime.interpreter import InterpretedFunction
    except ImportError:  # pragma: no cover - every supported triton has it
        return False
    return isinstance(kernel, InterpretedFunction)


def check_launchable(kernel, *tensors: torch.Tensor) -> None:
    """Refuse, with the reason, a launch that cannot work: tensors on several devices, or on CPU without the
    interpreter."""
    devices = {t.device for t in tensors}
    if len(devices) != 1:
        raise ValueError(f"all tensors must be on one device, got {sorted(map(str, devices))}")
    device = devices.pop()
    if device.type == "cuda":
        return
    if device.type != "cpu":
        raise TritonUnavailable(f"the Triton kernels run on CUDA (or on CPU in the interpreter), not on {device}")
    if not is_interpreted(kernel):
        late = " (it is set now, but was not when the kernels were imported)" if interpreter_requested() else ""
        raise TritonUnavailable(
            "backend='triton' on CPU tensors runs the kernel in Triton's interpreter, which must be switched on "
            "before the kernels are imported: set TRITON_INTERPRET=1 in the environment before the first kernel "
            f"call of the process{late}")


def wants_kernel(backend: str, tensor: torch.Tensor) -> bool:
    """The first half of a dispatcher's decision: whether to try the kernel (True) or go to the reference (False).

    "torch" never tries it; "auto" tries it on CUDA tensors when triton is installed; "triton" always does (and
    `load` then says so when triton is missing). The kernel module's ``unsupported`` decides the second half: on
    inputs it refuses, "auto" falls back to the reference and "triton" raises the reason.
    """
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
    if backend == "torch":
        return False
    if backend == "auto":
        return tensor.is_cuda and triton_installed()
    return True
