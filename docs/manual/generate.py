"""Generate the manual's chapters that are derived from the code.

* ``options.rst`` from :data:`bareos_hyperv.fd.options.OPTIONS` (type, default, choices, example, level);
* ``troubleshooting.rst`` from every error message the product raises: the AST of each module under
  ``bareos_hyperv/`` is searched for calls of the product's error classes (the subclasses of
  ``BareosHyperVError``, found by their ``class`` statements), and the first argument (``message``)
  and ``what_to_do=`` are rendered as templates: the text as written, each f-string placeholder (or
  any other expression) shown as ``{...}``.

Run ``python docs/manual/generate.py`` after changing options or messages; ``--check`` exits 1 when
a chapter is out of date (tests/docs/test_manual.py does the same).
"""

from __future__ import annotations

import ast
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional, Set, Tuple

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
PACKAGE = ROOT / "bareos_hyperv"
PLACEHOLDER = "{...}"
ROOT_ERROR = "BareosHyperVError"

# -- error messages ----------------------------------------------------------------------------------


def _render(node: ast.AST) -> str:
    """A message expression as a template: literal text kept, every expression shown as ``{...}``."""
    if isinstance(node, ast.Constant) and isinstance(node.value, str):
        return node.value
    if isinstance(node, ast.JoinedStr):
        return "".join(_render(v) if isinstance(v, ast.Constant) else PLACEHOLDER for v in node.values)
    if isinstance(node, ast.BinOp) and isinstance(node.op, ast.Add):
        return _render(node.left) + _render(node.right)
    return PLACEHOLDER


def normalise(text: str) -> str:
    """The form templates are compared in: runs of placeholders are one ``{...}``, whitespace is one space."""
    text = re.sub(r"(?:\{\.\.\.\}\s*)+\{\.\.\.\}", PLACEHOLDER, text)
    return " ".join(text.split())


def readable(template: str) -> bool:
    """A template says something when, without its placeholders, it has a word of three letters."""
    return re.search(r"[A-Za-z]{3}", template.replace(PLACEHOLDER, " ")) is not None


def _base_name(node: ast.expr) -> str:
    if isinstance(node, ast.Name):
        return node.id
    if isinstance(node, ast.Attribute):
        return node.attr
    return ""


def _modules() -> List[Tuple[Path, ast.Module]]:
    return [(p, ast.parse(p.read_text(encoding="utf-8"), str(p))) for p in sorted(PACKAGE.rglob("*.py"))]


@dataclass
class ErrorClass:
    """What the extraction needs to know of one of the product's error classes."""

    name: str
    bases: List[str]
    cause: str  # first paragraph of the docstring
    message_index: Optional[int] = None  # position of the ``message`` parameter of __init__, if own
    builds_message: bool = False  # own __init__ without a message parameter: it builds the message
    default_what_to_do: Optional[str] = None


def _constants(tree: ast.Module) -> Dict[str, ast.AST]:
    """Module-level ``NAME = <expr>`` assignments (hint texts such as ``_CORRUPT_HINT``)."""
    out: Dict[str, ast.AST] = {}
    for node in tree.body:
        if isinstance(node, ast.Assign) and len(node.targets) == 1 and isinstance(node.targets[0], ast.Name):
            out[node.targets[0].id] = node.value
    return out


def error_classes(modules: List[Tuple[Path, ast.Module]]) -> Dict[str, ErrorClass]:
    """The product's error classes: ``BareosHyperVError`` and every class derived from it."""
    every: Dict[str, ErrorClass] = {}
    for _, tree in modules:
        constants = _constants(tree)
        for node in ast.walk(tree):
            if not isinstance(node, ast.ClassDef):
                continue
            doc = (ast.get_docstring(node) or "").strip().split("\n\n")[0].replace("\n", " ")
            cls = ErrorClass(node.name, [_base_name(b) for b in node.bases], doc)
            for item in node.body:
                if isinstance(item, ast.FunctionDef) and item.name == "__init__":
                    params = [a.arg for a in item.args.posonlyargs + item.args.args][1:]
                    if "message" in params:
                        cls.message_index = params.index("message")
                    else:
                        cls.builds_message = True
                if (isinstance(item, ast.Assign) and len(item.targets) == 1
                        and isinstance(item.targets[0], ast.Name) and item.targets[0].id == "default_what_to_do"):
                    value = item.value
                    if isinstance(value, ast.Name) and value.id in constants:
                        value = constants[value.id]
                    cls.default_what_to_do = normalise(_render(value))
            every[node.name] = cls
    found = {ROOT_ERROR}
    changed = True
    while changed:
        changed = False
        for name, cls in every.items():
            if name not in found and any(b in found for b in cls.bases):
                found.add(name)
                changed = True
    return {name: every[name] for name in found}


def _inherited(classes: Dict[str, ErrorClass], name: str, attr: str) -> object:
    """``attr`` of the class or of the nearest product base class that sets it."""
    seen: Set[str] = set()
    todo = [name]
    while todo:
        cls = classes.get(todo.pop(0))
        if cls is None or cls.name in seen:
            continue
        seen.add(cls.name)
        value = getattr(cls, attr)
        if attr == "message_index" and (value is not None or cls.builds_message):
            return value
        if attr != "message_index" and value:
            return value
        todo += cls.bases
    return 0 if attr == "message_index" else None


def category(classes: Dict[str, ErrorClass], name: str) -> str:
    """The direct child of ``BareosHyperVError`` a class derives from (its layer)."""
    cls = classes[name]
    while cls.name != ROOT_ERROR and ROOT_ERROR not in cls.bases:
        cls = classes[next(b for b in cls.bases if b in classes)]
    return cls.name


@dataclass
class Message:
    template: str
    classes: Set[str] = field(default_factory=set)
    modules: Set[str] = field(default_factory=set)
    what_to_do: List[str] = field(default_factory=list)


class _Scopes(ast.NodeVisitor):
    """Every call that builds one of the product's errors, with the function and class around it."""

    def __init__(self, classes: Dict[str, ErrorClass]) -> None:
        self.classes = classes
        self.found: List[Tuple[str, ast.Call, Optional[ast.AST]]] = []  # (class, call, function)
        self._functions: List[ast.AST] = []
        self._classes: List[str] = []

    def visit_ClassDef(self, node: ast.ClassDef) -> None:
        self._classes.append(node.name)
        self.generic_visit(node)
        self._classes.pop()

    def visit_FunctionDef(self, node: ast.FunctionDef) -> None:
        self._functions.append(node)
        self.generic_visit(node)
        self._functions.pop()

    visit_AsyncFunctionDef = visit_FunctionDef  # type: ignore[assignment]

    def visit_Call(self, node: ast.Call) -> None:
        name = _base_name(node.func)
        function = self._functions[-1] if self._functions else None
        if name in self.classes:
            self.found.append((name, node, function))
        elif (name == "__init__" and isinstance(node.func, ast.Attribute) and isinstance(node.func.value, ast.Call)
              and _base_name(node.func.value.func) == "super" and self._classes
              and self._classes[-1] in self.classes):
            # an error class's own constructor building its message: super().__init__(f"...")
            self.found.append((self._classes[-1], node, function))
        self.generic_visit(node)


def _resolve(node: ast.AST, call: ast.Call, function: Optional[ast.AST]) -> ast.AST:
    """A message passed as a local variable: the nearest assignment to it before the call."""
    if not isinstance(node, ast.Name) or function is None:
        return node
    best: Optional[ast.Assign] = None
    for stmt in ast.walk(function):
        if (isinstance(stmt, ast.Assign) and len(stmt.targets) == 1 and isinstance(stmt.targets[0], ast.Name)
                and stmt.targets[0].id == node.id and stmt.lineno < call.lineno
                and (best is None or stmt.lineno > best.lineno)):
            best = stmt
    return best.value if best is not None else node


def messages() -> Tuple[Dict[str, Message], Dict[str, ErrorClass]]:
    """Every readable message template (normalised) the product raises or builds, by template."""
    modules = _modules()
    classes = error_classes(modules)
    out: Dict[str, Message] = {}
    for path, tree in modules:
        rel = path.relative_to(ROOT).as_posix()
        scopes = _Scopes(classes)
        scopes.visit(tree)
        for name, node, function in scopes.found:
            is_super = _base_name(node.func) == "__init__"
            index = 0 if is_super else _inherited(classes, name, "message_index")
            if index is None:  # the class builds its message itself: taken from its super().__init__
                continue
            position = index if isinstance(index, int) else 0
            arg: Optional[ast.AST] = node.args[position] if len(node.args) > position else None
            hint: Optional[ast.AST] = None
            for kw in node.keywords:
                if kw.arg == "message" and arg is None:
                    arg = kw.value
                if kw.arg == "what_to_do":
                    hint = kw.value
            if arg is None:
                continue
            template = normalise(_render(_resolve(arg, node, function)))
            if not readable(template):
                continue
            msg = out.setdefault(template, Message(template))
            msg.classes.add(name)
            msg.modules.add(rel)
            hints = [normalise(_render(_resolve(hint, node, function)))] if hint is not None else []
            default = _inherited(classes, name, "default_what_to_do")
            if default:
                hints.append(str(default))
            for h in hints:
                if readable(h) and h not in msg.what_to_do:
                    msg.what_to_do.append(h)
    return out, classes


def _escape(text: str) -> str:
    return re.sub(r"([\\`*_|])", r"\\\1", text)


# Advice for messages raised without a what_to_do, by the layer of their error class.
CATEGORY_ADVICE = {
    "ConfigurationError": "correct the option, credentials file or plugin string the message names "
                          "(:doc:`options`), then run ``bareos-hyperv check`` with the same values.",
    "WsmanError": "check that WinRM answers on the host named in the message (listener, firewall port "
                  "5985/5986, certificate) and that the account may use it (:doc:`hyperv-hosts`).",
    "HyperVError": "look at the Hyper-V-VMMS event log of the node named in the message, and at the VM in "
                   "Hyper-V Manager or Failover Cluster Manager; retry when the VM or the cluster is settled.",
    "StorageError": "check that the file or share named in the message is reachable over SMB from the file "
                    "daemon with the account (port 445, admin shares) and that the volume has space.",
    "ManifestError": "the backup's manifest cannot be used: restore from another backup of the VM, or restore "
                     "its files to a directory and import them by hand.",
    "PlanError": "set the restore option the message names (:doc:`restore`); "
                 "``restore_dry_run=yes`` shows the plan without writing anything.",
    "ProtocolError": "the file daemon and the agent disagree: install the same bareos-hyperv version for both "
                     "(``agent_python``), and rerun with ``agent_debug=yes`` to see the agent's log.",
    ROOT_ERROR: "read the facts shown with the message; rerun with ``agent_debug=yes`` for the agent's log.",
}

SECTIONS = [
    ("bareos_hyperv/fd/", "In the file daemon: options, credentials, the agent"),
    ("bareos_hyperv/backup/", "Backup"),
    ("bareos_hyperv/restore/", "Restore"),
    ("bareos_hyperv/hyperv/", "Hyper-V and the cluster"),
    ("bareos_hyperv/wsman/", "WS-Management (WinRM)"),
    ("bareos_hyperv/storage/", "Storage: SMB, local files, disk images, deltas"),
    ("bareos_hyperv/manifest/", "The manifest"),
    ("bareos_hyperv/agent/", "The agent"),
    ("bareos_hyperv/protocol/", "The fd-agent protocol"),
    ("bareos_hyperv/", "Elsewhere (command line, models)"),
]


def troubleshooting_rst() -> str:
    msgs, classes = messages()
    lines = [
        ".. This chapter is generated by docs/manual/generate.py from the code: do not edit it by hand.",
        "",
        ".. _troubleshooting:",
        "",
        "Troubleshooting",
        "===============",
        "",
        "Every error message bareos-hyperv can emit is listed here, grouped by the part of the product",
        "that raises it. In the job log a message appears as the text below, followed by the facts it is",
        "about in parentheses (host, VM, path, ...) and, after a dash, what to do. In the text below every",
        "value that is filled in when the message is emitted (an option, a host, a path, a number) is",
        "shown as ``{...}``.",
        "",
        "To find a message, search this page for a few words of it that are not a name or a number.",
        "The *cause* is the kind of error (the class raised); *what to do* is the advice the product",
        "gives with the message. Messages from Hyper-V itself (a WMI job's error text) and from Windows",
        "(a WinRM fault) are quoted inside the messages below; their codes are explained in",
        "Microsoft's documentation of the WMI class named in the message.",
        "",
        "Before reading further, run ``bareos-hyperv check`` with the job's host, VMs and credentials",
        "(:ref:`check`): it tests every right and path a backup needs and says what to change.",
        "",
    ]
    placed: Set[str] = set()
    for prefix, title in SECTIONS:
        entries = [m for t, m in sorted(msgs.items()) if t not in placed
                   and min(m.modules).startswith(prefix)]
        if not entries:
            continue
        lines += [title, "-" * len(title), ""]
        for m in entries:
            placed.add(m.template)
            lines += [".. code-block:: text", "", "   " + m.template, ""]
            cause = "; ".join(sorted({f"{classes[c].cause} (``{c}``)" if classes[c].cause else f"``{c}``"
                                      for c in m.classes}))
            lines += [f"* **Cause:** {_escape_cause(cause)}"]
            if m.what_to_do:
                for h in m.what_to_do:
                    lines += [f"* **What to do:** {_escape(h)}"]
            else:
                for advice in sorted({CATEGORY_ADVICE.get(category(classes, c), CATEGORY_ADVICE[ROOT_ERROR])
                                      for c in m.classes}):
                    lines += [f"* **What to do:** {advice}"]
            lines += [f"* **Raised in:** {', '.join(f'``{p}``' for p in sorted(m.modules))}", ""]
    return "\n".join(lines).rstrip() + "\n"


def _escape_cause(text: str) -> str:
    # Keep the ``Class`` literals, escape the docstring text around them.
    parts = re.split(r"(``[A-Za-z_]+``)", text)
    return "".join(p if p.startswith("``") else _escape(p.replace("``", "")) for p in parts)


# -- options ----------------------------------------------------------------------------------------

EXAMPLES = {
    "host": "hv-cluster01",
    "vm": "web01,db*",
    "exclude_vm": "test-*",
    "username": "bareos-backup@example.com",
    "port": "5986",
    "ca_trust_path": "/etc/bareos/hyperv-ca.pem",
    "host_map": "HV01=10.0.0.5#5985,HV02=10.0.0.6#5985",
    "smb_host_map": "HV01=10.0.0.5#445,HV02=10.0.0.6#445",
    "share_map": "C$/ClusterStorage/Volume1=//hv-fs01/csv1",
    "path_map": "C$/ClusterStorage/Volume1=/mnt/csv1",
    "staging_path": "C$/ClusterStorage/Volume1/bareos-staging",
    "timeout": "3600",
    "paths": "/srv/a,/srv/b",
    "smb_server": "HV01",
    "smb_share": "C$",
    "smb_paths": "VMs/web01/disk.vhdx",
    "smb_address": "10.0.0.5",
    "smb_port": "445",
    "credentials_file": "/etc/bareos/hyperv.cred",
    "agent_python": "/opt/bareos-hyperv/venv/bin/python3",
    "agent_timeout": "600",
    "restore_host": "HVSTANDALONE01",
    "restore_node": "HV02",
    "restore_vm_name": "web01-test",
    "restore_storage": "C$/ClusterStorage/Volume2",
    "restore_disk_map": "web01-data.vhdx=C$/ClusterStorage/Volume3/web01",
    "restore_switch_map": "LAN=LAN-Test",
    "restore_vm": "web01",
}


def default_text(spec: Any) -> str:
    default = spec.default
    if default is None:
        return "(none)"
    if isinstance(default, bool):
        return "yes" if default else "no"
    return str(default)


def example_text(key: str, spec: Any) -> str:
    if key in EXAMPLES:
        return f"{key}={EXAMPLES[key]}"
    kind, default, choices = spec.kind, spec.default, spec.choices
    if kind is bool:
        return f"{key}={'no' if default else 'yes'}"
    if choices:
        other = [c for c in choices if c != default]
        return f"{key}={other[0] if other else choices[0]}"
    raise KeyError(f"docs/manual/generate.py: no example for option {key}: add it to EXAMPLES")


def level_text(key: str, spec: Any) -> str:
    if key.startswith("restore_"):
        return "restore"
    required = spec.required_for
    where = "backup (Full, Incremental, Differential) and restore"
    if required:
        return f"{where}; required with source={'/'.join(required)}"
    return where


def options_rst() -> str:
    sys.path.insert(0, str(ROOT))
    from bareos_hyperv.fd.options import OPTIONS

    lines = [
        ".. This chapter is generated by docs/manual/generate.py from bareos_hyperv/fd/options.py:",
        "   do not edit it by hand.",
        "",
        ".. _options:",
        "",
        "Plugin options",
        "==============",
        "",
        "Options are ``key=value`` items of the plugin string, separated by ``:``, after",
        "``python3:module_name=bareos-fd-hyperv``. At restore, ``pluginoptions=`` of bconsole's",
        "``restore`` command (or of a restore Job resource) come first, so a value given there wins over",
        "the backup-time FileSet line. Unknown options, missing options and bad values stop the job with",
        "one message naming every problem and what to write instead (:ref:`troubleshooting`).",
        "",
        "* **Type**: ``str``, ``int`` (base-10 digits) or ``bool`` (``yes``/``on``/``true``/``1`` or",
        "  ``no``/``off``/``false``/``0``).",
        "* **Level**: when the option is read. Options starting with ``restore_`` matter only at",
        "  restore and are accepted (and ignored) at backup, so one FileSet line may carry them. The",
        "  other options apply to every backup level (Full, Incremental, Differential) and are read",
        "  again at restore from the backup-time definition.",
        "* **Default** ``(none)``: unset; the description says what happens then.",
        "",
        "Values hold neither ``:`` nor ``\\``: see :ref:`option-values`.",
        "",
        ".. list-table::",
        "   :header-rows: 1",
        "   :widths: 18 8 14 30 30",
        "",
        "   * - Option",
        "     - Type",
        "     - Default",
        "     - Meaning",
        "     - Example and level",
    ]
    for key, spec in OPTIONS.items():
        meaning = _escape(spec.help)
        if spec.choices:
            meaning += " (one of " + ", ".join(f"``{c}``" for c in spec.choices) + ")"
        lines += [
            f"   * - ``{key}``",
            f"     - {spec.kind.__name__}",
            f"     - ``{default_text(spec)}``",
            f"     - {meaning}",
            f"     - ``{example_text(key, spec)}``",
            "",
            f"       Level: {level_text(key, spec)}",
        ]
    lines += [
        "",
        ".. _option-values:",
        "",
        "Writing option values",
        "---------------------",
        "",
        "Bareos reads a plugin string twice before the plugin sees it. In ``bareos-dir.conf``, inside",
        "the quotes of ``Plugin = \"...\"``, every single backslash is dropped together with its special",
        "meaning (``\\:`` arrives as ``:``, ``C:\\VMs`` as ``C:VMs``); bconsole does the same to the",
        "arguments of ``run`` and ``restore``. Then ``:`` separates the options. So values are written",
        "with neither:",
        "",
        "* an address with a port (``host_map``, ``smb_host_map``): ``HV01=10.0.0.5#5985``, the port",
        "  after ``#``, not ``HV01=10.0.0.5:5985``;",
        "* a Windows path (``staging_path``, ``restore_storage``, ``restore_disk_map``, ``share_map``,",
        "  ``path_map``): ``C$/ClusterStorage/Volume1``, not ``C:\\ClusterStorage\\Volume1``;",
        "* a UNC path: ``//fileserver/vms``, not ``\\\\fileserver\\vms``;",
        "* a map entry for one node only (``share_map``, ``path_map``): ``HV01/D$/VMs=//hv01/vms``.",
        "",
        "The older spelling with an escaped colon still works when it reaches the plugin as ``\\:``:",
        "write ``\\\\:`` (two backslashes) in ``bareos-dir.conf`` and in bconsole. A single ``\\:``",
        "arrives as a bare ``:`` and cuts the value; the job then stops at once with a message naming",
        "the option and the spelling to use.",
    ]
    return "\n".join(lines) + "\n"


GENERATED = {"options.rst": options_rst, "troubleshooting.rst": troubleshooting_rst}


def main(argv: List[str]) -> int:
    stale = []
    for name, make in GENERATED.items():
        text = make()
        path = HERE / name
        if "--check" in argv:
            if not path.exists() or path.read_text(encoding="utf-8") != text:
                stale.append(name)
        else:
            path.write_text(text, encoding="utf-8")
    if stale:
        print(f"out of date: {', '.join(stale)}: run python docs/manual/generate.py", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
