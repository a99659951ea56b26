"""JSON read without the json module, for the simulator's sidecar (mtd/sim.py).

Every command that opens a simulated image reads its sidecar, and json's import (with re,
enum, functools and collections, and the regular expressions it compiles) costs about as
much as Python's own start-up: on a PC trying the tool, or in bench/bench_startup.py, it was
most of `snapshot list`. A router opens /dev/mtdN and never reads a sidecar; this keeps the
simulator from weighing on what the host measures of the commands. Writing still goes
through json (mtd/sim.py imports it when a writable handle saves).

`loads` takes what RFC 8259 calls JSON text and gives what json.loads gives, or ValueError
(tests/test_sim.py compares the two on generated documents and on every prefix of them);
unlike json.loads it refuses NaN and Infinity, which are not JSON. A flat array of
integers, as the erase counts are, is read in one split.
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


def _object(text: str, at: int):
    found = {}
    at = _skip(text, at + 1)
    if text[at] == "}":
        return found, at + 1
    while True:
        if text[at] != '"':
            raise ValueError(f"not JSON: a name expected at character {at}")
        key, at = _string(text, at)
        at = _skip(text, at)
        if text[at] != ":":
            raise ValueError(f"not JSON: ':' expected at character {at}")
        found[key], at = _value(text, _skip(text, at + 1))
        at = _skip(text, at)
        if text[at] == "}":
            return found, at + 1
        if text[at] != ",":
            raise ValueError(f"not JSON: ',' or '}}' expected at character {at}")
        at = _skip(text, at + 1)


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
    found = []
    at = _skip(text, at + 1)
    if text[at] == "]":
        return found, at + 1
    while True:
        value, at = _value(text, at)
        found.append(value)
        at = _skip(text, at)
        if text[at] == "]":
            return found, at + 1
        if text[at] != ",":
            raise ValueError(f"not JSON: ',' or ']' expected at character {at}")
        at = _skip(text, at + 1)


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
    if not chunk.isascii() or not chunk.isprintable():
        if any(c < " " for c in chunk):
            raise ValueError(f"not JSON: a control character in the string at character {at}")


def _number(word: str, at: int):
    """A number as JSON writes it: -?(0|[1-9][0-9]*)(.[0-9]+)?([eE][+-]?[0-9]+)?"""
    body = word[1:] if word.startswith("-") else word
    whole, dot, rest = body.partition(".")
    if not dot:
        whole, e, exponent = whole.partition("e") if "e" in whole else whole.partition("E")
        fraction = ""
    else:
        fraction, e, exponent = rest.partition("e") if "e" in rest else rest.partition("E")
    if (not whole or not _DIGITS.issuperset(whole) or (len(whole) > 1 and whole[0] == "0")
            or (dot and (not fraction or not _DIGITS.issuperset(fraction)))
            or (e and not _DIGITS.issuperset(exponent.lstrip("+-") or "x"))
            or (e and exponent[:1] in "+-" and exponent.count("+") + exponent.count("-") > 1)):
        raise ValueError(f"not JSON: a value expected at character {at}")
    return float(word) if dot or e else int(word)
