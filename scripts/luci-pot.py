"""Write luci-app-snapshot's translation template, po/templates/snapshot.pot: every string the
views pass to LuCI's _(), in order of first use. tests/test_luci_app.py fails when the
template is out of date. Run: python3 scripts/luci-pot.py"""
import re
import sys
from pathlib import Path

APP = Path(__file__).resolve().parent.parent / "openwrt-package/luci-app-snapshot"
TEMPLATE = APP / "po/templates/snapshot.pot"
# _('...') or _("..."), a single literal with backslash escapes.
CALL = re.compile(r"""\b_\(\s*(?:'((?:[^'\\]|\\.)*)'|"((?:[^"\\]|\\.)*)")\s*\)""")


def strings() -> list[str]:
    found: list[str] = []
    for view in sorted((APP / "htdocs").rglob("*.js")):
        for single, double in CALL.findall(view.read_text()):
            text = re.sub(r"\\(.)", r"\1", single or double)
            if text not in found:
                found.append(text)
    return found


def template() -> str:
    def quoted(text: str) -> str:
        return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'
    entries = ['msgid ""\nmsgstr "Content-Type: text/plain; charset=UTF-8"\n']
    entries += [f"msgid {quoted(text)}\nmsgstr \"\"\n" for text in strings()]
    return "\n".join(entries)


if __name__ == "__main__":
    TEMPLATE.parent.mkdir(parents=True, exist_ok=True)
    TEMPLATE.write_text(template())
    print(f"{TEMPLATE}: {len(strings())} strings", file=sys.stderr)
