"""Base classes of the generated method and property classes in `txpika.spec` and
`txpika.spec_0_8`, and the `Dialect` record that tells the core which one it speaks.

The generated modules give each AMQP method a frozen, slotted dataclass with class
attributes describing it; this module only declares those attributes so that the core can
be typed against them.

Fast construction
=================
A frozen dataclass's ``__init__`` stores each field with ``object.__setattr__``, which costs
about 0.1 us a field: most of the time it takes to build ``BasicProperties`` or decode a
``basic.deliver``. So the generated classes are declared with ``init=False`` and get a
generated ``__new__`` instead, which fills an instance of a private *twin* class (`twin`: the
same base and the same ``__slots__``, but not frozen, so stores are plain slot writes) and
then sets its ``__class__`` to the frozen class. The slots have the same layout, so the
object is an ordinary instance of the frozen dataclass from then on: equality, hashing,
``repr``, ``dataclasses.replace``, ``copy`` and pickling (through ``__new__`` with the
defaults, then the dataclass ``__setstate__``) behave as for any frozen slotted dataclass.
A subclass of a generated class is built by `build` with ``object.__setattr__`` instead; it
takes the generated class's arguments and no others.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar, Self

__all__ = ["Dialect", "Method", "Properties"]


class Method:
    """One AMQP method: its arguments are the dataclass fields of the subclass."""

    __slots__ = ()

    CLASS_ID: ClassVar[int]
    METHOD_ID: ClassVar[int]
    #: ``CLASS_ID << 16 | METHOD_ID``: the key of the dialect's method table.
    INDEX: ClassVar[int]
    #: Dotted AMQP name, e.g. ``"basic.publish"``.
    NAME: ClassVar[str]
    #: True for a request that the peer must answer with one of `REPLIES`.
    SYNCHRONOUS: ClassVar[bool]
    #: True if a content header and body frames follow this method.
    CONTENT: ClassVar[bool]
    #: True if a server may send this method to a client.
    CLIENT_RECEIVES: ClassVar[bool]
    #: True if a client may send this method to a server.
    CLIENT_SENDS: ClassVar[bool]
    #: The methods that answer this one, when it is synchronous.
    REPLIES: ClassVar[tuple[type[Method], ...]]

    def encode(self) -> bytes:
        """The method frame payload: class id, method id and the packed arguments."""
        raise NotImplementedError

    @classmethod
    def decode(cls, data: bytes, offset: int) -> tuple[Self, int]:
        """Read the arguments from ``data`` at ``offset`` (after the ids).

        Returns the method and the offset just after it. Truncated or malformed input
        raises `txpika._wire.WireError`.
        """
        raise NotImplementedError


class Properties:
    """The properties of a content header (``BasicProperties`` and, in 0-8, others)."""

    __slots__ = ()

    CLASS_ID: ClassVar[int]

    def encode(self) -> bytes:
        """The property flags followed by the present property values."""
        raise NotImplementedError

    @classmethod
    def decode(cls, data: bytes, offset: int) -> tuple[Self, int]:
        """Read property flags and values from ``data`` at ``offset``."""
        raise NotImplementedError


@dataclass(frozen=True, slots=True)
class Dialect:
    """What differs between AMQP 0-9-1 and 0-8, as the core needs it."""

    #: ``"0-9-1"`` or ``"0-8"``.
    name: str
    #: The 8 bytes a client sends first.
    protocol_header: bytes
    #: ``INDEX`` -> method class, every method of the dialect.
    methods: dict[int, type[Method]]
    #: Content class id -> properties class.
    properties: dict[int, type[Properties]]
    #: The generated module itself, for looking up method classes by name.
    module: Any
    #: Whether the dialect has publisher confirms, basic.nack and exchange bindings.
    extensions: bool


def check_int(owner: str, name: str, value: object, bits: int) -> None:
    """Raise `txpika._wire.EncodeError` if ``value`` is not an unsigned ``bits``-bit int.

    Called by generated encoders after ``struct`` refused a value, to say which field it was.
    """
    from txpika._wire import EncodeError

    if not isinstance(value, int) or (isinstance(value, bool) and bits != 8):
        raise EncodeError(f"{owner}.{name} must be an int, not {type(value).__name__}")
    if not 0 <= value < 1 << bits:
        raise EncodeError(f"{owner}.{name}={value} is outside 0..{(1 << bits) - 1}")


def bad_flags(flags: int) -> None:
    """Raise `txpika._wire.WireError` for property flags this dialect does not define."""
    from txpika._wire import WireError

    raise WireError(f"property flags {flags:#06x} set unknown bits or a continuation")


def twin(cls: Any) -> Any:
    """A class with ``cls``'s base and ``__slots__`` but no frozen ``__setattr__``.

    A generated ``__new__`` fills an instance of it and then turns it into a ``cls``
    (assigning ``__class__`` is allowed between classes with the same slot layout).
    """
    (base,) = cls.__bases__
    return type(cls.__name__, (base,), {
        "__slots__": cls.__slots__,
        "__module__": cls.__module__,
        "__qualname__": f"{cls.__qualname__}.<twin>",
    })


def build(cls: type, owner: Any, values: tuple[Any, ...]) -> Any:
    """An instance of ``cls``, a subclass of the generated class ``owner``, with ``owner``'s
    fields set to ``values`` (in field order), as a dataclass ``__init__`` would set them."""
    obj: Any = object.__new__(cls)
    for name, value in zip(owner.__slots__, values, strict=True):
        object.__setattr__(obj, name, value)
    return obj


def decode_as(cls: type, owner: Any, data: bytes, offset: int) -> tuple[Any, int]:
    """``owner.decode`` for ``cls``, a subclass of the generated class ``owner``."""
    obj: Any
    obj, offset = owner.decode(data, offset)
    return cls(*[getattr(obj, name) for name in owner.__slots__]), offset


def decode_failure(exc: BaseException, what: str) -> Exception:
    """The `txpika._wire.WireError` for a generated decoder that read past its input (or,
    for a field table, recursed too deeply)."""
    from txpika._wire import WireError

    if isinstance(exc, RecursionError):
        return WireError(f"{what} nested too deeply to decode")
    return WireError(f"truncated {what}")
