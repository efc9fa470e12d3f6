"""llama.cpp's compute devices, and which GPU backend (if any) offloaded layers run on.

Asks the ggml backend registry; knows nothing about models, contexts or requests.
"""

from __future__ import annotations

import ctypes

__all__ = ["devices", "gpu_backend"]


# ggml device types (enum ggml_backend_dev_type) that hold offloaded layers
_GPU_DEVICE_TYPES = (1, 2)  # GGML_BACKEND_DEVICE_TYPE_GPU, GGML_BACKEND_DEVICE_TYPE_IGPU
_BACKEND_NAMES = {"MTL": "metal"}  # registry names that are not the backend's usual name


def devices() -> list[tuple[str, str, int]]:
    """llama.cpp's compute devices: (backend registry name, device name, ggml device type)."""
    import llama_cpp.llama_cpp as L
    from llama_cpp._ggml import libggml as g

    L.llama_backend_init()
    ptr, name = ctypes.c_void_p, ctypes.c_char_p
    for fn, res, args in (
        (g.ggml_backend_dev_count, ctypes.c_size_t, []),
        (g.ggml_backend_dev_get, ptr, [ctypes.c_size_t]),
        (g.ggml_backend_dev_type, ctypes.c_int, [ptr]),
        (g.ggml_backend_dev_name, name, [ptr]),
        (g.ggml_backend_dev_backend_reg, ptr, [ptr]),
        (g.ggml_backend_reg_name, name, [ptr]),
    ):
        fn.restype, fn.argtypes = res, args
    out = []
    for i in range(g.ggml_backend_dev_count()):
        dev = g.ggml_backend_dev_get(i)
        reg = g.ggml_backend_reg_name(g.ggml_backend_dev_backend_reg(dev)).decode()
        out.append((reg, g.ggml_backend_dev_name(dev).decode(), int(g.ggml_backend_dev_type(dev))))
    return out


def gpu_backend() -> str | None:
    """The backend offloaded layers run on in this llama.cpp build ('cuda', 'metal', 'vulkan',
    ...), or None when it has no GPU device."""
    for reg, _, kind in devices():
        if kind in _GPU_DEVICE_TYPES:
            return _BACKEND_NAMES.get(reg, reg.lower())
    return None
