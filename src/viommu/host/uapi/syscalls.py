"""The syscall boundary: the only code that opens /dev nodes and issues ioctls.

Probes take a :class:`SysOps` argument; tests pass a fake kernel with the same
methods. A kernel error leaves this module as a one-line
:class:`~viommu.errors.HostAccessError` naming the call, the node, the
device and the errno; file descriptors and kernel objects are released by
context managers, on error paths too (where a failing release never hides
the error that caused the unwinding).
"""

from __future__ import annotations

import ctypes
import enum
import errno
import fcntl
import os
import stat
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager, suppress

from viommu.errors import HostAccessError, ViommuError
from viommu.record import record

#: What an ioctl takes: an int by value, or a mutable buffer the kernel reads and writes in place.
IoctlArg = int | bytearray | ctypes.Structure | ctypes.c_int32

#: Errno explanations used when the caller has no more specific one.
_EXPLAIN = {
    errno.ENOTTY: "the kernel lacks this ioctl",
    errno.EPERM: "permission denied",
    errno.EACCES: "permission denied",
    errno.ENODEV: "no such device",
    errno.ENOENT: "no such object",
    errno.EBUSY: "busy: in use elsewhere",
    errno.EINVAL: "invalid argument",
    errno.E2BIG: "the kernel rejects fields it does not know",
    errno.EOPNOTSUPP: "not supported",
    errno.EMSGSIZE: "buffer too small",
    errno.EFAULT: "bad address",
}


def errno_name(code: int) -> str:
    return errno.errorcode.get(code, f"errno {code}")


@record(frozen=True)
class NodeStat:
    """The parts of ``fstat`` discovery checks."""

    mode: int
    rdev: int

    @property
    def is_char_device(self) -> bool:
        return stat.S_ISCHR(self.mode)


class SysOps:
    """The real kernel."""

    def open(self, path: str) -> int:
        return os.open(path, os.O_RDWR | os.O_CLOEXEC)

    def close(self, fd: int) -> None:
        os.close(fd)

    def ioctl(self, fd: int, request: int, arg: IoctlArg) -> int:
        if isinstance(arg, int):
            return int(fcntl.ioctl(fd, request, arg))
        # A mutable buffer is handed to the kernel in place (or, up to 1024
        # bytes, copied back even when the call fails: EMSGSIZE relies on it).
        return int(fcntl.ioctl(fd, request, arg, True))

    def fstat(self, fd: int) -> NodeStat:
        st = os.fstat(fd)
        return NodeStat(mode=st.st_mode, rdev=st.st_rdev)

    def exists(self, path: str) -> bool:
        return os.path.exists(path)


class IoctlFailed(HostAccessError):
    """An ioctl returned an error; ``request`` is its kernel name, ``errno`` the code."""

    def __init__(self, message: str, *, where: str, errno: int, request: str) -> None:
        super().__init__(message, where=where, errno=errno)
        self.request = request


class Node:
    """An open /dev node, named in errors by its path and the device being probed."""

    def __init__(self, ops: SysOps, fd: int, path: str, subject: str) -> None:
        self.ops = ops
        self.fd = fd
        self.path = path
        self.subject = subject

    def ioctl(self, request: enum.IntEnum, arg: IoctlArg = 0, *, why: Mapping[int, str] | None = None) -> int:
        """Issue ``request``; ``why`` explains errnos in this call's context."""
        try:
            return self.ops.ioctl(self.fd, int(request), arg)
        except OSError as exc:
            code = exc.errno or errno.EIO
            explanation = (why or {}).get(code) or _EXPLAIN.get(code) or os.strerror(code)
            raise IoctlFailed(
                f"{request.name} on {self.path} failed: {errno_name(code)}, {explanation}",
                where=self.subject,
                errno=code,
                request=request.name,
            ) from None

    def fstat(self) -> NodeStat:
        try:
            return self.ops.fstat(self.fd)
        except OSError as exc:
            code = exc.errno or errno.EIO
            raise HostAccessError(
                f"fstat of {self.path} failed: {errno_name(code)}", where=self.subject, errno=code
            ) from None


def _open_explanation(path: str, code: int) -> str:
    if code in (errno.EPERM, errno.EACCES):
        return f"permission denied opening {path}, run as root or give this user access to it"
    if code == errno.ENOENT:
        return f"{path} does not exist"
    return f"cannot open {path}: {os.strerror(code)}"


@contextmanager
def open_node(
    ops: SysOps, path: str, subject: str, *, why: Mapping[int, str] | None = None
) -> Iterator[Node]:
    """Open ``path`` read-write; ``why`` explains open errnos (e.g. ENOENT: "kernel lacks …")."""
    try:
        fd = ops.open(path)
    except OSError as exc:
        code = exc.errno or errno.EIO
        explanation = (why or {}).get(code) or _open_explanation(path, code)
        raise HostAccessError(f"{explanation} ({errno_name(code)})", where=subject, errno=code) from None
    node = Node(ops, fd, path, subject)
    with undone(lambda: _close(node)):
        yield node


def _close(node: Node) -> None:
    try:
        node.ops.close(node.fd)
    except OSError as exc:
        code = exc.errno or errno.EIO
        raise HostAccessError(
            f"closing {node.path} failed: {errno_name(code)}", where=node.subject, errno=code
        ) from None


@contextmanager
def undone(undo: Callable[[], object]) -> Iterator[None]:
    """Run ``undo`` when the block exits, however it exits.

    When the block failed, a failing ``undo`` is ignored so that the first
    error is the one reported; otherwise its error propagates.
    """
    try:
        yield
    except BaseException:
        with suppress(OSError, ViommuError):
            undo()
        raise
    undo()
