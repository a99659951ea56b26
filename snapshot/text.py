"""Text from flash, a bundle, the network or a file name, made safe to show on a terminal.

A message, a board name or a file name is data: a newline in it could forge a line of its
own ("signed by trusted key ..."), an escape sequence could hide the next one. Every line a
person reads (the CLI's output and `Error:` lines, syslog) goes through printable(); JSON
output keeps the exact text, escaped by JSON itself.
"""
import re

#: C0 controls, DEL, C1 controls, lone surrogates (undecodable bytes of a file name, kept by
#: surrogateescape; they cannot even be encoded for the terminal) and the bidirectional
#: overrides and isolates, which reorder what follows them on screen.
_UNSAFE = re.compile("[\x00-\x1f\x7f-\x9f\ud800-\udfff\u061c\u200e\u200f\u202a-\u202e"
                     "\u2066-\u2069]")
_NAMED = {"\n": "\\n", "\r": "\\r", "\t": "\\t"}


def _escape(match: re.Match) -> str:
    char = match.group()
    if char in _NAMED:
        return _NAMED[char]
    code = ord(char)
    # A byte that was not UTF-8, as surrogateescape kept it: shown as that byte.
    if 0xDC80 <= code <= 0xDCFF:
        return f"\\x{code - 0xDC00:02x}"
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}"


def printable(text: str) -> str:
    """`text` with every control character visible as an escape (\\n, \\x1b, \\u202e), as
    Python writes it in a string literal; all other text, backslashes included, unchanged."""
    return _UNSAFE.sub(_escape, text)
