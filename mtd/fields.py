"""Tuples with named fields, for the small records every command reads: the flash's
geometry and ECC events (mtd.flash), the chain's entries and headers
(snapshot.store.format).

They behave as collections.namedtuple's do, as far as this project uses them: positional or
keyword construction with defaults for the last fields, attribute access, equality and
hashing as tuples, _replace and _asdict. They are made without importing collections and
without namedtuple's exec of generated source, which together are about a sixth of a short
command's start-up on a router's CPU (bench/bench_mipsel.py).
"""
from _operator import itemgetter


def fields(typename: str, names: str, defaults: tuple = ()) -> type:
    """A tuple type with the fields `names` (space-separated), the last len(defaults) of
    them optional. Subclass it to add methods (with `__slots__ = ()`)."""
    names = tuple(names.split())
    count = len(names)
    default_of = dict(zip(names[count - len(defaults):], defaults))

    def __new__(cls, *args, **given):
        if len(args) == count and not given:
            return tuple.__new__(cls, args)
        if len(args) > count:
            raise TypeError(f"{typename} takes {count} fields, not {len(args)}")
        values = list(args)
        for name in names[len(args):]:
            if name in given:
                values.append(given.pop(name))
            elif name in default_of:
                values.append(default_of[name])
            else:
                raise TypeError(f"{typename} needs its field {name!r}")
        if given:
            raise TypeError(f"{typename} got {', '.join(map(repr, given))} twice or has no "
                            f"such field")
        return tuple.__new__(cls, values)

    def _replace(self, **changes):
        values = [changes.pop(name, value) for name, value in zip(names, self)]
        if changes:
            raise ValueError(f"{typename} has no field {', '.join(map(repr, changes))}")
        return tuple.__new__(type(self), values)

    def _asdict(self) -> dict:
        return dict(zip(names, self))

    def __repr__(self) -> str:
        shown = ", ".join(f"{name}={value!r}" for name, value in zip(names, self))
        return f"{type(self).__name__}({shown})"

    def __getnewargs__(self):
        return tuple(self)

    namespace = {"__slots__": (), "__new__": __new__, "_replace": _replace,
                 "_asdict": _asdict, "__repr__": __repr__, "__getnewargs__": __getnewargs__,
                 "_fields": names, "_field_defaults": default_of}
    for index, name in enumerate(names):
        namespace[name] = property(itemgetter(index), doc=f"Field {index}.")
    return type(typename, (tuple,), namespace)
