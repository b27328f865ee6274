"""Handing freed heap memory back to the operating system (glibc's ``malloc_trim``).

Batches of varying length fragment glibc's heaps with freed activations and KV caches: the memory is
free inside the process but stays resident, so without a trim the resident size of a long CPU run
(training, a server) creeps up. Neither torch nor the standard library exposes ``malloc_trim``, so it
is called through ctypes here, once, for training (:mod:`llavakit.train.loop`) and serving
(:mod:`llavakit.serve.engine`).
"""

from __future__ import annotations

import ctypes
import sys
from typing import Callable


def heap_trimmer(device_type: str = "cpu") -> Callable[[], int | None]:
    """On a Linux CPU with glibc, a function that runs ``malloc_trim(0)`` (returns 1 when memory was
    released, 0 when none could be); elsewhere a no-op returning None."""
    if device_type != "cpu" or not sys.platform.startswith("linux"):
        return lambda: None
    try:
        trim = ctypes.CDLL("libc.so.6").malloc_trim
    except (OSError, AttributeError):  # not glibc (e.g. musl): nothing to do
        return lambda: None
    trim.argtypes, trim.restype = [ctypes.c_size_t], ctypes.c_int
    return lambda: trim(0)
