"""The viommu exception hierarchy.

Every error the package raises on purpose derives from :class:`ViommuError`
and carries a human message without a prefix::

    ViommuError
     +-- InputError          bad input or usage: a file, a hex value, a command
     |                       line, XML, a sysfs tree, a scenario (exit 2)
     +-- HostAccessError     the host could not be read: permission, a missing
     |                       interface, a kernel error from an ioctl (exit 2)
     +-- Refusal             a device, hotplug or migration is refused, with a
                             stable reason code and QEMU's text (exit 1)

The CLI maps them to exit codes in one place (:data:`EXIT_CODES`).
"""

from __future__ import annotations


class ViommuError(Exception):
    """Root of every error viommu raises on purpose."""

    exit_code = 2

    def __init__(self, message: str, *, where: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.where = where

    def __str__(self) -> str:
        if self.where:
            return f"{self.where}: {self.message}"
        return self.message


class InputError(ViommuError):
    """Bad input or usage; ``where`` names the file, line, flag or key."""

    exit_code = 2


class HostAccessError(ViommuError):
    """The host could not be read (permission, missing interface, kernel error)."""

    exit_code = 2

    def __init__(self, message: str, *, where: str | None = None, errno: int | None = None) -> None:
        super().__init__(message, where=where)
        self.errno = errno


class Refusal(ViommuError):
    """A device, hotplug or migration is refused.

    ``code`` is a stable kebab-case reason code; ``message`` is QEMU's text
    for the chosen version profile.
    """

    exit_code = 1

    def __init__(self, code: str, message: str, *, where: str | None = None) -> None:
        super().__init__(message, where=where)
        self.code = code


EXIT_OK = 0
EXIT_REFUSED = 1
EXIT_INPUT = 2
