r"""WMI object paths held in string properties.

Hyper-V links settings objects with *strings*, not references: a drive's
``Parent`` is the controller's object path, an ``EthernetPortAllocationSettingData``
``HostResource`` is the switch's object path, for example::

    \\HV01\root\virtualization\v2:Msvm_VirtualEthernetSwitch.CreationClassName="Msvm_VirtualEthernetSwitch",Name="9F2B..."

Key values are quoted, with ``\\`` and ``\"`` escaped (``hyperv-wmi.md`` §1.5, §1.8).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

from bareos_hyperv.errors import HyperVError
from bareos_hyperv.wsman.cim import EndpointReference


@dataclass(frozen=True)
class WmiPath:
    """A parsed object path: host (may be empty), namespace, class and key values."""

    host: str
    namespace: str
    class_name: str
    keys: tuple[tuple[str, str], ...]

    def key(self, name: str) -> Optional[str]:
        """Key value by case-insensitive name."""
        low = name.lower()
        return next((v for k, v in self.keys if k.lower() == low), None)


def parse_wmi_path(text: str) -> WmiPath:
    """Parse ``[\\\\host\\namespace:]Class.Key="v",Key2="w"`` (also ``Class="v"`` is not used by Hyper-V).

    Raises HyperVError naming the text when it is not an object path.
    """
    host = ""
    namespace = ""
    rest = text
    if rest.startswith("\\\\"):
        colon = rest.find(":")
        if colon < 0:
            raise _bad(text)
        head = rest[2:colon]
        host, _, ns = head.partition("\\")
        namespace = ns.replace("\\", "/")
        rest = rest[colon + 1 :]
    elif ":" in rest.split(".", 1)[0]:
        ns, _, rest = rest.partition(":")
        namespace = ns.replace("\\", "/")
    class_name, dot, keytext = rest.partition(".")
    if not class_name or not dot:
        raise _bad(text)
    return WmiPath(host=host, namespace=namespace, class_name=class_name, keys=_parse_keys(text, keytext))


def _parse_keys(text: str, keytext: str) -> tuple[tuple[str, str], ...]:
    keys: list[tuple[str, str]] = []
    i = 0
    n = len(keytext)
    while i < n:
        eq = keytext.find("=", i)
        if eq < 0:
            raise _bad(text)
        name = keytext[i:eq].strip()
        i = eq + 1
        if i < n and keytext[i] == '"':
            i += 1
            value_chars: list[str] = []
            while i < n and keytext[i] != '"':
                if keytext[i] == "\\" and i + 1 < n:
                    i += 1
                value_chars.append(keytext[i])
                i += 1
            if i >= n:
                raise _bad(text)
            i += 1  # closing quote
            value = "".join(value_chars)
        else:
            end = keytext.find(",", i)
            end = n if end < 0 else end
            value = keytext[i:end]
            i = end
        keys.append((name, value))
        if i < n:
            if keytext[i] != ",":
                raise _bad(text)
            i += 1
    return tuple(keys)


def _bad(text: str) -> HyperVError:
    return HyperVError(
        "Hyper-V returned a malformed WMI object path",
        context={"path": text[:200]},
        what_to_do="report this with the host's Windows version; the path could not be parsed",
    )


def object_path(host: str, epr: EndpointReference) -> str:
    r"""The WMI object path string Hyper-V expects in string properties, e.g. ``SnapshotVirtualSystem``.

    ``\\HOST\root\virtualization\v2:Class.Key="value"``, key values escaped as in WQL object paths.
    """
    namespace = epr.namespace.replace("/", "\\")
    return f"\\\\{host}\\{namespace}:{epr.wql_path()}"
