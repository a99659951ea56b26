"""Text from flash, a bundle, the network or a file name, made safe to show on a terminal.

A message, a board name or a file name is data: a newline in it could forge a line of its
own ("signed by trusted key ..."), an escape sequence could hide the next one. Every line a
person reads (the CLI's output and `Error:` lines, syslog) goes through printable(); JSON
output keeps the exact text, escaped by JSON itself. SysLog writes the lines an operator
greps for.
"""
#: C0 controls, DEL, C1 controls, lone surrogates (undecodable bytes of a file name, kept by
#: surrogateescape; they cannot even be encoded for the terminal) and the bidirectional
#: overrides and isolates, which reorder what follows them on screen. (Ranges, listed only
#: when a text first needs escaping: the 2,200 code points cost `list`'s start-up otherwise.)
_UNSAFE = (range(0x00, 0x20), range(0x7F, 0xA0), range(0xD800, 0xE000), (0x061C, 0x200E, 0x200F),
           range(0x202A, 0x202F), range(0x2066, 0x206A))
_NAMED = {"\n": "\\n", "\r": "\\r", "\t": "\\t"}
_escapes: dict[int, str] = {}   # code point -> its escape, made at the first unsafe text


def _escape(code: int) -> str:
    char = chr(code)
    if char in _NAMED:
        return _NAMED[char]
    # A byte that was not UTF-8, as surrogateescape kept it: shown as that byte.
    if 0xDC80 <= code <= 0xDCFF:
        return f"\\x{code - 0xDC00:02x}"
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}"


def printable(text: str) -> str:
    """`text` with every control character visible as an escape (\\n, \\x1b, \\u202e), as
    Python writes it in a string literal; all other text, backslashes included, unchanged.
    (str.translate, not a regular expression: `re` would be a tenth of the start-up of
    `list` on a router's CPU.)"""
    if text.isascii() and text.isprintable():
        return text     # most text: nothing to escape
    if not _escapes:
        _escapes.update((code, _escape(code)) for codes in _UNSAFE for code in codes)
    return text.translate(_escapes)


class SysLog:
    """Lines an operator can grep (`logread | grep snapshot`): syslog, tagged snapshot, and
    stderr unless `echo` is off (a command that reports its own outcome, so that a refusal is
    its one `Error:` line). Control characters are escaped (printable)."""

    def __init__(self, echo: bool = True):
        self.echo = echo
        try:
            import syslog
            syslog.openlog("snapshot", 0, syslog.LOG_DAEMON)
            self._syslog = syslog
        except ImportError:
            self._syslog = None

    def __call__(self, line: str, loud: bool = False) -> None:
        import sys
        line = printable(line)
        if self.echo:
            print(f"snapshot: {line}", file=sys.stderr, flush=True)
        if self._syslog:
            self._syslog.syslog(self._syslog.LOG_ERR if loud else self._syslog.LOG_NOTICE,
                                line)
