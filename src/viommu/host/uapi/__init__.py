"""ctypes mirrors of linux/vfio.h and linux/iommufd.h; the only code that calls ioctl.

``vfio`` and ``iommufd`` mirror one header each (structs, flags, request
numbers); ``syscalls`` is the one place that opens /dev nodes and issues
ioctls, behind a :class:`~viommu.host.uapi.syscalls.SysOps` object that
tests replace with a fake kernel.
"""

from __future__ import annotations

import ctypes


def IO(type_: str, nr: int) -> int:
    """The kernel's ``_IO(type, nr)`` on x86_64.

    VFIO and iommufd put no size or direction in their request numbers (every
    struct carries its own ``argsz``/``size``), so the request is just
    ``(type << 8) | nr``.
    """
    return (ord(type_) << 8) | nr


def offsetofend(struct: type[ctypes.Structure], name: str) -> int:
    """The kernel's ``offsetofend()``: the first byte after field ``name``."""
    descriptor = getattr(struct, name)
    return int(descriptor.offset + descriptor.size)


def check_sizes(expected: dict[type[ctypes.Structure], int]) -> None:
    """Fail the import if a mirror's size differs from the kernel's (a typo in ``_fields_``)."""
    for struct, size in expected.items():
        if ctypes.sizeof(struct) != size:
            raise ImportError(f"{struct.__name__} is {ctypes.sizeof(struct)} bytes, the kernel's is {size}")
