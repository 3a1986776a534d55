"""Record classes that cost nothing to create: ``viommu``'s stand-in for ``@dataclass``.

``viommu check`` must start within three times ``python3 -c pass`` (issue 5). On
Python 3.11 ``@dataclass`` compiles each class's ``__init__``, ``__repr__``, ``__eq__``,
``__hash__`` and frozen ``__setattr__``/``__delattr__`` from source when the class is
created, about a millisecond a class, and ``import dataclasses`` brings in ``inspect``
(``ast``, ``dis``, ``tokenize``...). The ~40 record types on the check path made that
half of the start-up time. No library fills the gap: ``attrs`` also compiles per class
and imports in 30 ms here, ``msgspec`` imports in 19 ms.

:func:`record` gives the same classes, with the same semantics for what ``viommu`` uses
(``frozen``, ``order``, defaults, ``field(default_factory=..., compare=False)``,
``__post_init__``, inheritance, :func:`replace`), from generic methods shared by every
class, so creating a class is a few dictionary operations. Type checkers see it as a
dataclass (``dataclass_transform``, PEP 681).
"""

from __future__ import annotations

from operator import attrgetter

TYPE_CHECKING = False  # typing.TYPE_CHECKING, without importing typing at run time

if TYPE_CHECKING:
    from typing import Any, TypeVar, dataclass_transform

    _T = TypeVar("_T")
else:
    def dataclass_transform(**_kwargs):
        return lambda decorated: decorated

__all__ = ["FrozenInstanceError", "field", "fields", "record", "replace"]


class FrozenInstanceError(AttributeError):
    """Assigning to a field of a frozen record (as :class:`dataclasses.FrozenInstanceError`)."""


class _Missing:
    __slots__ = ()

    def __repr__(self) -> str:
        return "MISSING"


MISSING: Any = _Missing()


class Field:
    """One field of a record: its name, default (or factory) and whether it is compared."""

    __slots__ = ("compare", "default", "default_factory", "name", "repr")

    def __init__(self, default: Any = MISSING, default_factory: Any = MISSING,
                 compare: bool = True, repr: bool = True) -> None:
        if default is not MISSING and default_factory is not MISSING:
            raise ValueError("cannot specify both default and default_factory")
        self.name = ""
        self.default = default
        self.default_factory = default_factory
        self.compare = compare
        self.repr = repr

    def __repr__(self) -> str:
        return (f"Field(name={self.name!r}, default={self.default!r}, "
                f"default_factory={self.default_factory!r}, compare={self.compare})")


def field(*, default: Any = MISSING, default_factory: Any = MISSING, compare: bool = True,
          repr: bool = True) -> Any:
    """A field with a default factory, or left out of comparison (as :func:`dataclasses.field`)."""
    return Field(default, default_factory, compare, repr)


def _is_classvar(annotation: object) -> bool:
    text = annotation if isinstance(annotation, str) else getattr(annotation, "__name__", "")
    return isinstance(text, str) and (text.startswith("ClassVar") or text.startswith("typing.ClassVar"))


# The shared methods. Each reads its class's field tables, set by ``record``.

def _init(self: Any, *args: Any, **kwargs: Any) -> None:
    cls = type(self)
    names: tuple[str, ...] = cls.__record_names__
    state = self.__dict__
    if args:
        if len(args) > len(names):
            raise TypeError(f"{cls.__qualname__}() takes {len(names)} positional arguments "
                            f"but {len(args)} were given")
        state.update(zip(names, args, strict=False))  # checked above: args fit
    if kwargs:
        keys = kwargs.keys()
        if not keys <= cls.__record_fields__.keys():
            extra = sorted(keys - cls.__record_fields__.keys())[0]
            raise TypeError(f"{cls.__qualname__}() got an unexpected keyword argument {extra!r}")
        if args and not keys.isdisjoint(names[: len(args)]):
            twice = next(name for name in names[: len(args)] if name in kwargs)
            raise TypeError(f"{cls.__qualname__}() got multiple values for argument {twice!r}")
        state.update(kwargs)
    if len(state) < len(names):
        for name, f in cls.__record_optional__:
            if name not in state:
                state[name] = f.default if f.default is not MISSING else f.default_factory()
        if len(state) < len(names):
            missing = next(name for name in names if name not in state)
            raise TypeError(f"{cls.__qualname__}() missing required argument: {missing!r}")
    post = cls.__record_post_init__
    if post is not None:
        post(self)


def _repr(self: Any) -> str:
    cls = type(self)
    inner = ", ".join(f"{name}={getattr(self, name)!r}" for name in cls.__record_repr__)
    return f"{cls.__qualname__}({inner})"


def _key(self: Any) -> Any:
    """The compared fields' values: one C call (``operator.attrgetter``; one field gives the bare value)."""
    return type(self).__record_key__(self)


def _no_key(_self: Any) -> tuple[()]:
    return ()


class _Compare:
    """The comparison methods every record shares (taken from here by ``record``)."""

    def __eq__(self, other: object) -> bool:
        if other.__class__ is self.__class__:
            return bool(_key(self) == _key(other))
        return NotImplemented

    def __hash__(self) -> int:
        return hash(_key(self))

    def __lt__(self, other: object) -> bool:
        if other.__class__ is self.__class__:
            return bool(_key(self) < _key(other))
        return NotImplemented

    def __le__(self, other: object) -> bool:
        if other.__class__ is self.__class__:
            return bool(_key(self) <= _key(other))
        return NotImplemented

    def __gt__(self, other: object) -> bool:
        if other.__class__ is self.__class__:
            return bool(_key(self) > _key(other))
        return NotImplemented

    def __ge__(self, other: object) -> bool:
        if other.__class__ is self.__class__:
            return bool(_key(self) >= _key(other))
        return NotImplemented


_eq, _hash = _Compare.__eq__, _Compare.__hash__
_lt, _le, _gt, _ge = _Compare.__lt__, _Compare.__le__, _Compare.__gt__, _Compare.__ge__


def _frozen_setattr(self: Any, name: str, value: Any) -> None:
    raise FrozenInstanceError(f"cannot assign to field {name!r}")


def _frozen_delattr(self: Any, name: str) -> None:
    raise FrozenInstanceError(f"cannot delete field {name!r}")


class _Signature:
    """``inspect.signature(RecordClass)`` as for a dataclass: built on first use (``inspect``
    is imported then), from the class's fields."""

    def __get__(self, instance: object, owner: type) -> Any:
        import inspect

        annotations: dict[str, Any] = {}
        for base in reversed(owner.__mro__):
            annotations.update(inspect.get_annotations(base))
        params = []
        for f in owner.__record_fields__.values():  # type: ignore[attr-defined]
            default: Any = inspect.Parameter.empty
            if f.default is not MISSING:
                default = f.default
            elif f.default_factory is not MISSING:
                default = _FactoryDefault()
            annotation = annotations.get(f.name, inspect.Parameter.empty)
            params.append(inspect.Parameter(f.name, inspect.Parameter.POSITIONAL_OR_KEYWORD,
                                            default=default, annotation=annotation))
        return inspect.Signature(params, return_annotation=None)


class _FactoryDefault:
    """Shown where a field's default comes from a factory (dataclasses shows ``<factory>``)."""

    def __repr__(self) -> str:
        return "<factory>"


_SIGNATURE = _Signature()


def _build(cls: type, frozen: bool, order: bool) -> type:
    own = cls.__dict__
    table: dict[str, Field] = {}
    for base in reversed(cls.__mro__[1:]):
        inherited = base.__dict__.get("__record_fields__")
        if inherited:
            table.update(inherited)
    for name, annotation in own.get("__annotations__", {}).items():
        if _is_classvar(annotation):
            continue
        value = own.get(name, MISSING)
        if isinstance(value, Field):
            f = value
            if f.default is MISSING:
                delattr(cls, name)
            else:
                setattr(cls, name, f.default)
        else:
            f = Field(value)
        f.name = name
        table[name] = f
    seen_default = False
    for f in table.values():
        if f.default is not MISSING or f.default_factory is not MISSING:
            seen_default = True
        elif seen_default:
            raise TypeError(f"non-default argument {f.name!r} follows default argument")
    compared = tuple(n for n, f in table.items() if f.compare)
    attributes: dict[str, Any] = {
        "__record_fields__": table,
        "__record_names__": tuple(table),
        "__record_optional__": tuple(
            (n, f) for n, f in table.items() if f.default is not MISSING or f.default_factory is not MISSING
        ),
        "__record_compare__": compared,
        "__record_key__": attrgetter(*compared) if compared else _no_key,
        "__record_repr__": tuple(n for n, f in table.items() if f.repr),
        "__record_post_init__": getattr(cls, "__post_init__", None),
        "__match_args__": tuple(table),
        "__signature__": _SIGNATURE,
    }
    for name, method in (("__init__", _init), ("__repr__", _repr), ("__eq__", _eq)):
        if name not in own:
            attributes[name] = method
    if order:
        for name, method in (("__lt__", _lt), ("__le__", _le), ("__gt__", _gt), ("__ge__", _ge)):
            if name in own:
                raise TypeError(f"cannot overwrite attribute {name} in class {cls.__name__}: "
                                "use record(order=False)")
            attributes[name] = method
    explicit_hash = "__hash__" in own and not (own["__hash__"] is None and "__eq__" in own)
    if not explicit_hash:
        attributes["__hash__"] = _hash if frozen else None
    if frozen:
        attributes["__setattr__"] = _frozen_setattr
        attributes["__delattr__"] = _frozen_delattr
    for name, value in attributes.items():
        setattr(cls, name, value)
    return cls


@dataclass_transform(field_specifiers=(field, Field))
def record(cls: type | None = None, /, *, frozen: bool = False, order: bool = False) -> Any:
    """Make ``cls`` a record: ``@record`` or ``@record(frozen=True, order=True)``."""
    if cls is None:
        return lambda c: _build(c, frozen, order)
    return _build(cls, frozen, order)


def fields(obj: Any) -> tuple[Field, ...]:
    """The fields of a record class or instance, in order."""
    return tuple(obj.__record_fields__.values())


def replace(obj: _T, /, **changes: Any) -> _T:
    """A copy of the record ``obj`` with ``changes`` (as :func:`dataclasses.replace`)."""
    cls = type(obj)
    state = {name: getattr(obj, name) for name in cls.__record_names__}  # type: ignore[attr-defined]
    for name in changes:
        if name not in state:
            raise TypeError(f"{cls.__qualname__} has no field {name!r}")
    state.update(changes)
    return cls(**state)
