"""The house (DESIGN.md, "The house"): each layer in its own package, and no module imports from
a layer above its own or goes round in a circle. Imports are read from the source with `ast`:
at module level and inside functions, `import x` and `from x import y`, relative ones too."""
import ast
from pathlib import Path

import snapshot

ROOT = Path(snapshot.__file__).parent

#: Each unit (a package, or one module) -> its layer, lowest first, numbered as in DESIGN.md.
#: A module belongs to the unit that names it or its package; `snapshot` alone is its own
#: __init__.
LAYERS = {
    # base: anything may import it
    "snapshot": 1, "snapshot.errors": 1, "snapshot.text": 1, "snapshot.kept": 1,
    # the chain on flash: bytes and records
    "snapshot.store": 2,
    # overlay directories to and from tar streams
    "snapshot.tree": 3,
    # the engine: the operations on a chain and its overlay
    **dict.fromkeys(["snapshot.boot", "snapshot.config", "snapshot.convert", "snapshot.jobs",
                     "snapshot.legacy_archive", "snapshot.live", "snapshot.operations",
                     "snapshot.overview", "snapshot.reboot", "snapshot.squash",
                     "snapshot.uci_changes"], 4),
    # the wings
    "snapshot.packages": 5, "snapshot.fleet": 5, "snapshot.health": 5,
    # the faces
    "snapshot.cli": 6, "snapshot.rpcd": 6, "snapshot.__main__": 6,
}
#: Layers whose units do not import each other (the wings), but for these (importer, imported):
#: the watch reads the fleet's settings.
APART = {5}
SIDEWAYS = {("snapshot.health", "snapshot.fleet")}
#: A unit that may import only these modules of a lower one: the tree needs the compression
#: numbers of the format, nothing else of the store.
ONLY = {("snapshot.tree", "snapshot.store"): {"snapshot.store.format"}}
#: Packages whose __init__ may import (the command line registers its commands); the others
#: stay empty, so that importing one module of a layer does not import the rest of it.
INIT_IMPORTS = {"snapshot.cli"}


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {module_name(path): path for path in sorted(ROOT.rglob("*.py"))}


def imported(module: str) -> list[tuple[str, int]]:
    """Every snapshot module `module` imports, with the line: `from p import m` names module
    p.m when there is one, else p."""
    path = MODULES[module]
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    found = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                up = package.split(".")[:len(package.split(".")) - (node.level - 1)]
                base = ".".join(up + ([base] if base else []))
            names = [f"{base}.{alias.name}" if f"{base}.{alias.name}" in MODULES else base
                     for alias in node.names]
        else:
            continue
        found += [(name, node.lineno) for name in names
                  if name == "snapshot" or name.startswith("snapshot.")]
    return found


def unit_of(module: str) -> str | None:
    parts = module.split(".")
    for n in range(len(parts), 0, -1):
        candidate = ".".join(parts[:n])
        if candidate in LAYERS and (candidate != "snapshot" or module == "snapshot"):
            return candidate
    return None


def refusal(importer: str, target: str) -> str | None:
    """Why `importer` may not import `target` (None: it may)."""
    mine, theirs = unit_of(importer), unit_of(target)
    if LAYERS[theirs] > LAYERS[mine]:
        return f"{theirs} is in layer {LAYERS[theirs]}, above {mine}'s {LAYERS[mine]}"
    if (LAYERS[theirs] == LAYERS[mine] and LAYERS[mine] in APART and mine != theirs
            and (mine, theirs) not in SIDEWAYS):
        return f"{mine} and {theirs} are wings of the same layer: neither imports the other"
    only = ONLY.get((mine, theirs))
    if only is not None and target not in only:
        return f"{mine} imports only {', '.join(sorted(only))} of {theirs}"
    return None


def test_every_module_is_in_a_layer():
    assert [m for m in MODULES if unit_of(m) is None] == []


def test_no_module_imports_from_a_layer_above_its_own_or_a_wing_beside_it():
    refused = [f"{MODULES[m].relative_to(ROOT.parent)}:{line}: imports {target}: {why}"
               for m in MODULES for target, line in imported(m)
               if (why := refusal(m, target)) is not None]
    assert not refused, "\n".join(refused)


def test_the_imports_between_snapshot_modules_go_round_no_circle():
    graph = {m: sorted({t for t, _ in imported(m) if t in MODULES and t != m}) for m in MODULES}
    done: set[str] = set()

    def circle_from(module: str, path: list[str]) -> list[str] | None:
        if module in path:
            return path[path.index(module):] + [module]
        if module in done:
            return None
        for target in graph[module]:
            found = circle_from(target, path + [module])
            if found:
                return found
        done.add(module)
        return None

    circles = {frozenset(c): " -> ".join(c) for m in graph if (c := circle_from(m, []))}
    assert not circles, "\n".join(circles.values())


def test_a_layer_package_imports_nothing_when_it_is_imported():
    packages = [m for m, path in MODULES.items()
                if path.name == "__init__.py" and m != "snapshot" and m not in INIT_IMPORTS]
    assert packages and {m: imported(m) for m in packages if imported(m)} == {}


def test_the_rules_refuse_an_upward_import_a_wing_beside_and_more_than_format_of_the_store():
    assert refusal("snapshot.store.chain", "snapshot.tree.archive")
    assert refusal("snapshot.operations", "snapshot.fleet.bundle")
    assert refusal("snapshot.fleet.channel", "snapshot.health.watch")
    assert refusal("snapshot.tree.capture", "snapshot.store.chain")
    assert refusal("snapshot.health.watch", "snapshot.fleet.channel") is None
