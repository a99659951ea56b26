"""README.md's reference is the command line's: every visible command of `snapshot` (the click
tree under snapshot.cli.main) has one synopsis line in the README's "Commands" block, naming
every visible option it takes, a flag as `[--flag]`, an optional value as `[--opt VALUE]` and a
required option as `--opt VALUE`; the README names no command or option the CLI lacks; and the
exit statuses the README lists are exactly the ones the code defines."""
import re
from pathlib import Path

import click
import pytest

import mtd
from snapshot.cli import common, main, stores
from snapshot.errors import SnapshotError

README = Path(__file__).resolve().parent.parent / "README.md"
OPTION = re.compile(r"^(\[?)(-{1,2}[A-Za-z][\w-]*)(\]?)$")


def section(title: str) -> str:
    """The README text under the heading `title`, up to the next heading of its level or above."""
    text = README.read_text()
    m = re.search(rf"^(#+) {re.escape(title)}\n", text, re.MULTILINE)
    assert m, f"README.md has no heading {title!r}"
    end = re.compile(rf"^#{{1,{len(m.group(1))}}} ", re.MULTILINE).search(text, m.end())
    return text[m.end():end.start() if end else len(text)]


def synopses() -> dict[tuple[str, ...], str]:
    """{command path: synopsis line} from the first fenced block of "Commands"."""
    block = re.search(r"^```\n(.*?)^```", section("Commands"), re.MULTILINE | re.DOTALL)
    assert block, "README.md's Commands section has no fenced block"
    found = {}
    for line in block.group(1).splitlines():
        if not line.startswith("snapshot"):
            continue   # a description line, indented under its synopsis
        words = line.split()
        path = ["snapshot"]
        for word in words[1:]:
            if not re.fullmatch(r"[a-z][a-z-]*", word):
                break
            path.append(word)
        assert tuple(path) not in found, f"README.md gives `{' '.join(path)}` twice"
        found[tuple(path)] = line
    return found


def documented_options(line: str) -> dict[str, tuple[bool, bool]]:
    """{option as written: (is a flag, is required)} in a synopsis line."""
    tokens = line.split()
    options = {}
    for i, token in enumerate(tokens):
        m = OPTION.match(token)
        if not m:
            continue
        opened, name, closed = m.groups()
        flag = bool(opened and closed)
        if opened and not closed:
            assert i + 1 < len(tokens) and tokens[i + 1].endswith("]"), \
                f"README.md: `{token}` opens a bracket its value does not close in: {line}"
        options[name] = (flag, not opened)
    return options


def commands(command=main, path=("snapshot",), parent=None):
    """(path, command, context) for every visible command, groups included."""
    ctx = click.Context(command, info_name=path[-1], parent=parent)
    yield path, command, ctx
    names = command.list_commands(ctx) if isinstance(command, click.Group) else []
    for name in sorted(names):
        sub = command.get_command(ctx, name)
        if not sub.hidden:
            yield from commands(sub, path + (name,), ctx)


def visible_options(command):
    return [p for p in command.params if isinstance(p, click.Option) and not p.hidden]


CLI = {path: command for path, command, _ in commands()
       if not isinstance(command, click.Group) or path == ("snapshot",)}


def test_every_command_has_a_synopsis_in_the_readme():
    missing = sorted(" ".join(path) for path in CLI if path not in synopses())
    assert not missing, f"README.md's Commands block lacks: {', '.join(missing)}"


def test_the_readme_names_no_command_the_cli_lacks():
    extra = sorted(" ".join(path) for path in synopses() if path not in CLI)
    assert not extra, f"README.md's Commands block names commands snapshot lacks: {extra}"


@pytest.mark.parametrize("path", sorted(CLI), ids=lambda p: " ".join(p))
def test_each_synopsis_names_exactly_the_options_of_its_command(path):
    line = synopses().get(path)
    if line is None:
        pytest.skip("no synopsis (test_every_command_has_a_synopsis_in_the_readme fails)")
    written = documented_options(line)
    command = CLI[path]
    problems = []
    for option in visible_options(command):
        names = [n for n in option.opts + option.secondary_opts if n in written]
        if not names:
            problems.append(f"{max(option.opts, key=len)} is missing")
            continue
        flag, required = written[names[0]]
        if flag != option.is_flag:
            problems.append(f"{names[0]} is {'a flag' if option.is_flag else 'given a value'}"
                            f", written {'as a flag' if flag else 'with a value'}")
        if required != option.required:
            problems.append(f"{names[0]} is {'required' if option.required else 'optional'}"
                            f", written {'without' if required else 'in'} brackets")
    known = {n for option in visible_options(command)
             for n in option.opts + option.secondary_opts}
    problems += [f"{name} is not an option of it" for name in written
                 if name not in known and name not in ("-h", "--help")]
    assert not problems, f"README.md, `{' '.join(path)}`: " + "; ".join(problems)


def defined_exit_statuses() -> set[int]:
    """Every exit status the code gives: 0, click's usage error, the CLI's own, and each
    error class's (snapshot.cli imports every module whose errors a command raises)."""
    statuses = {0, click.UsageError.exit_code, stores.INEXACT, common.UNHEALTHY,
                common.INTERRUPTED}
    todo = [SnapshotError, mtd.FlashOpenError, mtd.MtdError]
    while todo:
        cls = todo.pop()
        statuses.add(getattr(cls, "exit_code", 1))
        todo += cls.__subclasses__()
    return statuses


def documented_exit_statuses() -> set[int]:
    rows = re.findall(r"^\| *(\d+) *\|", section("Exit status"), re.MULTILINE)
    assert rows, "README.md's Exit status section has no table"
    return {int(row) for row in rows}


def test_every_exit_status_the_readme_lists_is_one_the_code_gives():
    extra = documented_exit_statuses() - defined_exit_statuses()
    assert not extra, f"README.md lists exit statuses no code gives: {sorted(extra)}"


def test_every_exit_status_the_code_gives_is_in_the_readme():
    missing = defined_exit_statuses() - documented_exit_statuses()
    assert not missing, f"README.md's Exit status table lacks: {sorted(missing)}"
