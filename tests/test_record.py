"""viommu.record against the standard library's dataclasses: the same class written with
both must behave alike in everything viommu uses (construction, defaults, factories,
comparison, hashing, ordering, frozenness, __post_init__, inheritance, replace)."""

from __future__ import annotations

import dataclasses
import pickle
from typing import Any, ClassVar

import pytest

from viommu import record as rec


def pair(frozen: bool = False, order: bool = False) -> tuple[Any, Any]:
    """The same class, once as a dataclass and once as a record."""

    def body(deco: Any, fld: Any) -> Any:
        @deco(frozen=frozen, order=order)
        class Point:
            x: int
            y: int = 0
            tags: list[str] = fld(default_factory=list)
            note: str = fld(default="", compare=False)
            LIMIT: ClassVar[int] = 9

        return Point

    return body(dataclasses.dataclass, dataclasses.field), body(rec.record, rec.field)


CALLS: list[tuple[tuple[Any, ...], dict[str, Any]]] = [
    ((1,), {}),
    ((1, 2), {}),
    ((1,), {"y": 5}),
    ((), {"x": 3, "tags": ["a"]}),
    ((1, 2, ["b"], "n"), {}),
    ((), {"x": 1, "note": "other"}),
]


@pytest.mark.parametrize("frozen", [False, True])
@pytest.mark.parametrize(("args", "kwargs"), CALLS)
def test_construction_and_repr_match_dataclasses(frozen: bool, args: tuple[Any, ...],
                                                 kwargs: dict[str, Any]) -> None:
    dc, rc = pair(frozen)
    a, b = dc(*args, **kwargs), rc(*args, **kwargs)
    assert repr(a) == repr(b).replace("pair.<locals>.body.<locals>.", "pair.<locals>.body.<locals>.")
    assert vars(a) == vars(b)
    assert rc.__match_args__ == dc.__match_args__


@pytest.mark.parametrize(
    ("args", "kwargs"),
    [((), {}), ((1, 2, [], "", 5), {}), ((1,), {"x": 2}), ((1,), {"z": 2}), ((), {"y": 1})],
)
def test_bad_calls_raise_typeerror_like_dataclasses(args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
    dc, rc = pair()
    with pytest.raises(TypeError):
        dc(*args, **kwargs)
    with pytest.raises(TypeError):
        rc(*args, **kwargs)


def test_factories_give_each_instance_its_own_value() -> None:
    _, rc = pair()
    a, b = rc(1), rc(1)
    a.tags.append("x")
    assert b.tags == []


@pytest.mark.parametrize("frozen", [False, True])
def test_equality_and_hash_match_dataclasses(frozen: bool) -> None:
    dc, rc = pair(frozen)
    for left in CALLS:
        for right in CALLS:
            want = dc(*left[0], **left[1]) == dc(*right[0], **right[1])
            assert (rc(*left[0], **left[1]) == rc(*right[0], **right[1])) is want
    assert rc(1) != dc(1)  # another class is never equal, as with dataclasses
    if frozen:
        @dataclasses.dataclass(frozen=True)
        class D:
            a: int
            b: str = "s"

        @rec.record(frozen=True)
        class R:
            a: int
            b: str = "s"

        assert hash(R(1)) == hash(R(1)) and hash(R(1)) != hash(R(2))
        assert {R(1), R(1), R(2)} == {R(1), R(2)}
        assert (hash(D(1)) == hash(D(1))) and D.__hash__ is not None
    else:
        assert rc.__hash__ is None and dc.__hash__ is None


def test_order_matches_dataclasses() -> None:
    dc, rc = pair(frozen=True, order=True)
    values = [(3, 1), (1, 2), (1, 1), (2, 0)]
    assert [(p.x, p.y) for p in sorted(rc(x, y) for x, y in values)] == \
        [(p.x, p.y) for p in sorted(dc(x, y) for x, y in values)]
    assert rc(1, 1) <= rc(1, 1) and rc(1, 2) > rc(1, 1) and rc(0, 9) < rc(1, 0) and rc(2, 0) >= rc(1, 5)
    with pytest.raises(TypeError):
        _ = rc(1) < 1


def test_frozen_refuses_assignment_and_deletion() -> None:
    _, rc = pair(frozen=True)
    p = rc(1)
    with pytest.raises(rec.FrozenInstanceError):
        p.x = 2
    with pytest.raises(rec.FrozenInstanceError):
        del p.x
    assert isinstance(rec.FrozenInstanceError("x"), AttributeError)
    assert p.x == 1


def test_post_init_runs_and_may_set_derived_state_on_a_frozen_record() -> None:
    seen: list[int] = []

    @rec.record(frozen=True)
    class Window:
        start: int
        last: int

        def __post_init__(self) -> None:
            if self.start > self.last:
                raise ValueError("empty window")
            seen.append(self.start)
            object.__setattr__(self, "size", self.last - self.start + 1)

    assert Window(2, 5).size == 4  # type: ignore[attr-defined]
    with pytest.raises(ValueError, match="empty window"):
        Window(5, 2)
    assert seen == [2]


def test_inheritance_appends_fields_and_redefinition_keeps_position() -> None:
    @rec.record(frozen=True)
    class Base:
        a: int
        b: int = 1

    @rec.record(frozen=True)
    class Child(Base):
        c: int = 2
        a: int = 0  # redefined with a default: stays first, as in dataclasses

    assert [f.name for f in rec.fields(Child)] == ["a", "b", "c"]
    assert Child() == Child(0, 1, 2) and Child(5).a == 5
    assert Child(1) != Base(1)


@pytest.mark.parametrize("frozen", [False, True])
def test_explicit_methods_are_kept_and_hash_follows_dataclasses(frozen: bool) -> None:
    def make(deco: Any, explicit_hash: bool) -> Any:
        class Named:
            name: str

            def __repr__(self) -> str:
                return f"<{self.name}>"

            def __eq__(self, other: object) -> bool:
                return isinstance(other, Named) and other.name.lower() == self.name.lower()

            if explicit_hash:
                def __hash__(self) -> int:
                    return 7

        return deco(frozen=frozen)(Named)

    for explicit_hash in (False, True):
        dc, rc = make(dataclasses.dataclass, explicit_hash), make(rec.record, explicit_hash)
        assert repr(rc("a")) == "<a>" and rc("a") == rc("A")
        assert (rc.__hash__ is None) is (dc.__hash__ is None)
        if dc.__hash__ is not None:
            assert (hash(rc("a")) == 7) is (hash(dc("a")) == 7)


def test_order_refuses_an_explicit_comparison() -> None:
    with pytest.raises(TypeError, match="__lt__"):
        @rec.record(order=True)
        class Bad:
            a: int

            def __lt__(self, other: object) -> bool:
                return True


def test_non_default_after_default_is_refused() -> None:
    with pytest.raises(TypeError, match="'b' follows default"):
        @rec.record
        class Bad:
            a: int = 0
            b: int  # type: ignore[misc]


def test_replace_and_fields() -> None:
    _, rc = pair(frozen=True)
    p = rc(1, 2, ["t"], "n")
    q = rec.replace(p, y=7)
    assert (q.x, q.y, q.tags, q.note) == (1, 7, ["t"], "n") and p.y == 2
    with pytest.raises(TypeError, match="no field 'z'"):
        rec.replace(p, z=1)
    assert [f.name for f in rec.fields(p)] == ["x", "y", "tags", "note"]
    assert [f.compare for f in rec.fields(rc)] == [True, True, True, False]


def test_pickle_round_trip_of_a_frozen_record() -> None:
    from viommu.host.caps import IovaRange

    r = IovaRange(0, 0xFFFF)
    assert pickle.loads(pickle.dumps(r)) == r


def test_defaults_and_factory_together_are_refused() -> None:
    with pytest.raises(ValueError):
        rec.field(default=1, default_factory=int)


def test_signature_matches_dataclasses() -> None:
    import inspect

    for frozen in (False, True):
        dc, rc = pair(frozen)
        assert str(inspect.signature(rc)) == str(inspect.signature(dc))
