"""keep_heap_flat against glibc itself: after a large buffer is freed, the next one of that size is
mmapped (handed back to the OS when freed) instead of carved from the heap."""

from __future__ import annotations

import subprocess
import sys

import pytest

PROBE = """
import ctypes, sys
import numpy as np

class MallInfo2(ctypes.Structure):  # glibc >= 2.33, malloc.h
    _fields_ = [(n, ctypes.c_size_t) for n in ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks",
                                                "fsmblks", "uordblks", "fordblks", "keepcost")]

libc = ctypes.CDLL(None)
libc.mallinfo2.restype = MallInfo2
if sys.argv[1] == "flat":
    from uft.steps.common import keep_heap_flat
    assert keep_heap_flat()
a = np.ones(4 << 20, np.uint8)  # 4 MB: mmapped (above the initial 128 KB threshold)
del a                           # by default glibc now raises its threshold to 4 MB
before = libc.mallinfo2().hblkhd
b = np.ones(4 << 20, np.uint8)
print(libc.mallinfo2().hblkhd - before)
"""


def _mmapped_bytes_of_second_buffer(mode: str) -> int:
    out = subprocess.run([sys.executable, "-c", PROBE, mode], capture_output=True, text=True, check=True)
    return int(out.stdout.split()[-1])


def test_large_buffers_stay_mmapped_after_a_free():
    try:
        import ctypes

        ctypes.CDLL(None).mallinfo2
    except AttributeError:
        pytest.skip("not glibc >= 2.33: keep_heap_flat does nothing there")
    assert _mmapped_bytes_of_second_buffer("default") == 0  # glibc's dynamic threshold: from the heap
    assert _mmapped_bytes_of_second_buffer("flat") >= 4 << 20  # fixed threshold: mmapped again
