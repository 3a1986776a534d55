"""The registry of stable reason codes.

Every :class:`~viommu.errors.Refusal` (and every configuration error a model
reports the way QEMU would) carries a kebab-case code. Modules that raise a
code register a one-paragraph explanation here when they are imported;
``viommu --explain CODE`` reads :data:`REASONS`.
"""

from __future__ import annotations

#: code -> explanation, in registration order.
REASONS: dict[str, str] = {}

_CODE_CHARS = frozenset("abcdefghijklmnopqrstuvwxyz0123456789")


def _kebab(code: str) -> bool:
    """``[a-z0-9]+(?:-[a-z0-9]+)*`` without a regular expression (this runs at import)."""
    return all(part and _CODE_CHARS.issuperset(part) for part in code.split("-"))


def register(code: str, text: str) -> str:
    """Add ``code``; registering the same code twice with different text is a bug."""
    if not _kebab(code):
        raise ValueError(f"reason code {code!r} is not kebab-case")
    explanation = " ".join(text.split())
    previous = REASONS.setdefault(code, explanation)
    if previous != explanation:
        raise ValueError(f"reason code {code!r} registered twice with different explanations")
    return code
