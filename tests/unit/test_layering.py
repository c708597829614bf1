"""The import rules of docs/architecture.md, checked on the source (AST), so the layout stays true.

Each product package may import only the project packages and third-party
distributions listed for it.  The simulator and the fd emulation never import
the product.
"""

from __future__ import annotations

import ast
import sys
import sysconfig
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PKG = ROOT / "bareos_hyperv"

# package -> (project packages it may import, third-party top-level modules it may import)
ALLOWED: dict[str, tuple[set[str], set[str]]] = {
    "errors": (set(), set()),
    "model": ({"errors", "model"}, set()),
    "protocol": ({"errors", "model", "protocol"}, set()),
    "fd": ({"protocol", "model", "errors", "fd"}, {"bareosfd", "BareosFdPluginBaseclass", "BareosFdWrapper"}),
    "wsman": ({"errors", "model", "wsman"}, {"winrm", "lxml", "requests", "urllib3", "spnego"}),
    "hyperv": ({"wsman", "model", "errors", "hyperv"}, set()),
    # cryptography: smb.py verifies signatures and decrypts SMB3 messages itself on the hot path.
    "storage": ({"model", "errors", "storage"}, {"smbprotocol", "smbclient", "spnego", "cryptography"}),
    "manifest": ({"model", "errors", "manifest"}, {"lxml"}),
    "backup": ({"protocol", "hyperv", "storage", "manifest", "model", "errors", "wsman", "backup"}, set()),
    "restore": ({"protocol", "hyperv", "storage", "manifest", "model", "errors", "wsman", "restore"}, set()),
    "agent": ({"protocol", "hyperv", "storage", "manifest", "model", "errors", "agent", "wsman", "backup", "restore"},
              set()),
    "cli": ({"backup", "restore", "agent", "hyperv", "storage", "manifest", "model", "errors", "wsman", "cli",
             "protocol"},
            {"hvsim", "fdsim"}),  # `bareos-hyperv demo` only
}


def _imports(path: Path) -> list[tuple[str, int]]:
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    found: list[tuple[str, int]] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.extend((alias.name, node.lineno) for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:  # relative import: resolve against the module's package
                rel = path.relative_to(ROOT).with_suffix("").parts[: -node.level]
                base = ".".join(rel)
                found.append((f"{base}.{node.module}" if node.module else base, node.lineno))
            elif node.module:
                found.append((node.module, node.lineno))
    return found


def _layer_of(path: Path) -> str:
    rel = path.relative_to(PKG)
    return rel.parts[0].removesuffix(".py") if len(rel.parts) > 1 else rel.stem


def _stdlib_names() -> set[str]:
    names = getattr(sys, "stdlib_module_names", None)  # Python 3.10+
    if names is not None:
        return set(names)
    # Python 3.9: the standard library's directory and the interpreter's built-in modules.
    lib = Path(sysconfig.get_paths()["stdlib"])
    found = {p.stem for p in lib.glob("*.py")} | {p.name for p in lib.iterdir() if (p / "__init__.py").exists()}
    dynload = lib / "lib-dynload"
    found |= {p.name.split(".")[0] for p in dynload.glob("*.so")} if dynload.is_dir() else set()
    return found | set(sys.builtin_module_names)


def _violations() -> list[str]:
    stdlib = _stdlib_names()
    bad: list[str] = []
    for path in sorted(PKG.rglob("*.py")):
        layer = _layer_of(path)
        if layer == "__init__":
            for mod, line in _imports(path):
                bad.append(f"{path.relative_to(ROOT)}:{line}: the package root must import nothing ({mod})")
            continue
        project, third = ALLOWED[layer]
        for mod, line in _imports(path):
            top = mod.split(".")[0]
            where = f"{path.relative_to(ROOT)}:{line}"
            if top == "bareos_hyperv":
                parts = mod.split(".")
                target = parts[1] if len(parts) > 1 else ""
                if target and target not in project and target != "__future__":
                    bad.append(f"{where}: {layer} may not import bareos_hyperv.{target}")
            elif top in stdlib or top == "__future__":
                continue
            elif top not in third:
                bad.append(f"{where}: {layer} may not import third-party module {top}")
    return bad


def test_product_layers_import_only_what_they_may() -> None:
    assert _violations() == []


@pytest.mark.parametrize("package", ["hvsim", "fdsim"])
def test_simulators_never_import_the_product(package: str) -> None:
    offenders = [
        f"{path.relative_to(ROOT)}:{line}"
        for path in sorted((ROOT / package).rglob("*.py"))
        for mod, line in _imports(path)
        if mod.split(".")[0] == "bareos_hyperv"
    ]
    assert offenders == []


def test_smbprotocol_is_confined_to_one_module() -> None:
    users = sorted({
        str(path.relative_to(ROOT))
        for path in PKG.rglob("*.py")
        for mod, _ in _imports(path)
        if mod.split(".")[0] in ("smbprotocol", "smbclient")
    })
    assert users in ([], ["bareos_hyperv/storage/smb.py"])
