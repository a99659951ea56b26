"""JSON text read and written without the json module: the simulator's sidecar (mtd/sim.py),
and the small JSON the commands a router runs most read and write (the records kept in RAM,
snapshot/kept.py; a bundle's manifest; `--json` output; the rpcd plugin's replies).

json's import (with re, enum, functools and collections, and the regular expressions it
compiles at import) costs about as much as Python's own start-up: most of `snapshot list`
on a simulated image, and of `status` and `bundle apply` anywhere. It lives here, below
snapshot, beside mtd/fields.py, because the simulator needs it too.

- `loads` takes what RFC 8259 calls JSON text and gives what json.loads gives, or ValueError;
  unlike json.loads it refuses NaN and Infinity, which are not JSON. A flat array of
  integers, as the simulator's erase counts are, is read in one split.
- `dumps(value, indent, separators, sort_keys)` gives what json.dumps gives with the same
  options, character for character (ASCII only), for what the json module takes of dicts,
  lists, tuples, strings, numbers, booleans and None.
tests/test_sim.py compares both with json on generated documents, and `loads` on every prefix
of some.
"""

_SPACE = " \t\n\r"
_ESCAPES = {'"': '"', "\\": "\\", "/": "/", "b": "\b", "f": "\f", "n": "\n", "r": "\r",
            "t": "\t"}
_DIGITS = frozenset("0123456789")
_NUMBER = frozenset("0123456789+-.eE")
_INTEGERS = frozenset("0123456789-," + _SPACE)
_WORDS = (("true", True), ("false", False), ("null", None))


def loads(text: str):
    """The value of the JSON text `text`; ValueError if it is not JSON."""
    try:
        value, at = _value(text, _skip(text, 0))
    except (IndexError, RecursionError):
        raise ValueError("not JSON: it ends early, or nests too deep") from None
    if _skip(text, at) != len(text):
        raise ValueError(f"not JSON: extra data at character {at}")
    return value


def _skip(text: str, at: int) -> int:
    while at < len(text) and text[at] in _SPACE:
        at += 1
    return at


def _value(text: str, at: int):
    """The value starting at `at` (no space before it), and where it ends."""
    c = text[at]
    if c == "{":
        return _object(text, at)
    if c == "[":
        return _array(text, at)
    if c == '"':
        return _string(text, at)
    for word, value in _WORDS:
        if text.startswith(word, at):
            return value, at + len(word)
    end = at
    while end < len(text) and text[end] in _NUMBER:
        end += 1
    return _number(text[at:end], at), end


def _members(text: str, at: int, close: str, member):
    """The members of the object or array whose bracket is at `at`, each read by
    `member(text, at)`, and where it ends."""
    found = []
    at = _skip(text, at + 1)
    if text[at] == close:
        return found, at + 1
    while True:
        item, at = member(text, at)
        found.append(item)
        at = _skip(text, at)
        if text[at] == close:
            return found, at + 1
        if text[at] != ",":
            raise ValueError(f"not JSON: ',' or '{close}' expected at character {at}")
        at = _skip(text, at + 1)


def _pair(text: str, at: int):
    """An object's name and value."""
    if text[at] != '"':
        raise ValueError(f"not JSON: a name expected at character {at}")
    key, at = _string(text, at)
    at = _skip(text, at)
    if text[at] != ":":
        raise ValueError(f"not JSON: ':' expected at character {at}")
    value, at = _value(text, _skip(text, at + 1))
    return (key, value), at


def _object(text: str, at: int):
    pairs, at = _members(text, at, "}", _pair)
    return dict(pairs), at     # a name given twice: the last value, as json keeps


def _array(text: str, at: int):
    end = text.find("]", at)
    if end > 0:
        inner = text[at + 1:end]
        if inner.strip(_SPACE) and _INTEGERS.issuperset(inner):
            words = [word.strip(_SPACE) for word in inner.split(",")]
            try:
                values = list(map(int, words))
            except ValueError:
                values = None
            # int() takes leading zeros and a lone "-0", which JSON writes otherwise: only
            # what reads back as written is taken here, the rest by the general path.
            if values is not None and list(map(str, values)) == words:
                return values, end + 1
    return _members(text, at, "]", _value)


def _string(text: str, at: int):
    """The string whose opening quote is at `at`."""
    end = _quote(text, at + 1)
    chunk = text[at + 1:end]
    if "\\" not in chunk:
        _no_controls(chunk, at)
        return chunk, end + 1
    parts, at = [], at + 1
    while True:
        quote = _quote(text, at)
        slash = text.find("\\", at, quote)
        stop = quote if slash < 0 else slash
        _no_controls(text[at:stop], at)
        parts.append(text[at:stop])
        if text[stop] == '"':
            return "".join(parts), stop + 1
        escape = text[stop + 1]
        if escape in _ESCAPES:
            parts.append(_ESCAPES[escape])
            at = stop + 2
            continue
        if escape != "u":
            raise ValueError(f"not JSON: an unknown escape at character {stop}")
        code = _hex4(text, stop + 2)
        at = stop + 6
        if 0xD800 <= code < 0xDC00 and text.startswith("\\u", at):
            low = _hex4(text, at + 2)
            if 0xDC00 <= low < 0xE000:
                code = 0x10000 + ((code - 0xD800) << 10) + (low - 0xDC00)
                at += 6
        parts.append(chr(code))


def _quote(text: str, at: int) -> int:
    end = text.find('"', at)
    if end < 0:
        raise ValueError(f"not JSON: a string from character {at} is not closed")
    return end


def _hex4(text: str, at: int) -> int:
    digits = text[at:at + 4]
    if len(digits) != 4 or not all(c in "0123456789abcdefABCDEF" for c in digits):
        raise ValueError(f"not JSON: four hex digits expected at character {at}")
    return int(digits, 16)


def _no_controls(chunk: str, at: int) -> None:
    # Printable ASCII, most text, has none; otherwise look.
    if not (chunk.isascii() and chunk.isprintable()) and any(c < " " for c in chunk):
        raise ValueError(f"not JSON: a control character in the string at character {at}")


def _number(word: str, at: int):
    """A number as JSON writes it: -?(0|[1-9][0-9]*)(.[0-9]+)?([eE][+-]?[0-9]+)?"""
    mantissa, e, exponent = word.removeprefix("-").replace("E", "e").partition("e")
    whole, dot, fraction = mantissa.partition(".")
    exponent = exponent[1:] if exponent[:1] in ("+", "-") else exponent
    if not (_digits(whole) and (whole == "0" or whole[0] != "0")
            and (not dot or _digits(fraction)) and (not e or _digits(exponent))):
        raise ValueError(f"not JSON: a value expected at character {at}")
    return float(word) if dot or e else int(word)


def _digits(part: str) -> bool:
    return bool(part) and _DIGITS.issuperset(part)


# -- writing -------------------------------------------------------------------------------------

#: json's escapes: \\, \", the five short ones, \u00XX for the other controls and DEL; the rest
#: of ASCII stands for itself.
_ESCAPED = {**{i: f"\\u{i:04x}" for i in [*range(0x20), 0x7F]},
            **{ord(c): f"\\{e}" for e, c in _ESCAPES.items() if e != "/"}}


def dumps(value, indent: int | None = None, separators: tuple[str, str] | None = None,
          sort_keys: bool = False) -> str:
    """json.dumps(value, indent=indent, separators=separators, sort_keys=sort_keys),
    character for character."""
    if separators is None:
        separators = (", ", ": ") if indent is None else (",", ": ")
    parts = []
    try:
        _write(value, parts, _Style(indent, *separators, sort_keys), "\n")
    except RecursionError:
        raise ValueError("Circular reference detected, or nested too deep") from None
    return "".join(parts)


class _Style:
    __slots__ = ("indent", "item", "key", "sort")

    def __init__(self, indent, item: str, key: str, sort: bool):
        self.indent, self.item, self.key, self.sort = indent, item, key, sort


def _write(value, parts: list, style: _Style, newline: str) -> None:
    if isinstance(value, str):
        parts.append(_quoted(value))
    elif value is None:
        parts.append("null")
    elif value is True:
        parts.append("true")
    elif value is False:
        parts.append("false")
    elif isinstance(value, int):
        parts.append(int.__repr__(value))
    elif isinstance(value, float):
        parts.append(_float(value))
    elif isinstance(value, (list, tuple, dict)):
        is_object = isinstance(value, dict)
        opening, closing = "{}" if is_object else "[]"
        if not value:
            parts.append(opening + closing)
            return
        inner = newline + " " * style.indent if style.indent is not None else ""
        parts.append(opening)
        if is_object:
            pairs = sorted(value.items()) if style.sort else value.items()
            members = ((_quoted(_key(key)) + style.key, item) for key, item in pairs)
        else:
            members = (("", item) for item in value)
        for i, (name, item) in enumerate(members):
            parts.append((style.item if i else "") + inner + name)
            _write(item, parts, style, inner)
        parts.append((newline if style.indent is not None else "") + closing)
    else:
        raise TypeError(f"Object of type {type(value).__name__} is not JSON serializable")


def _key(key) -> str:
    """A dict key as json writes it."""
    if isinstance(key, str):
        return key
    if key is None:
        return "null"
    if key is True or key is False:
        return "true" if key else "false"
    if isinstance(key, int):
        return int.__repr__(key)
    if isinstance(key, float):
        return _float(key)
    raise TypeError(f"keys must be str, int, float, bool or None, not {type(key).__name__}")


def _float(value: float) -> str:
    if value != value:
        return "NaN"
    if value in (float("inf"), float("-inf")):
        return "Infinity" if value > 0 else "-Infinity"
    return float.__repr__(value)


def _quoted(text: str) -> str:
    if text.isascii() and text.isprintable() and '"' not in text and "\\" not in text:
        return f'"{text}"'
    text = text.translate(_ESCAPED)
    if not text.isascii():
        text = "".join(c if c < "\x80" else _unicode(ord(c)) for c in text)
    return f'"{text}"'


def _unicode(code: int) -> str:
    if code < 0x10000:
        return f"\\u{code:04x}"
    code -= 0x10000
    return f"\\u{0xD800 | code >> 10:04x}\\u{0xDC00 | code & 0x3FF:04x}"
