"""CIM-XML (DMTF DSP0201) ``INSTANCE`` text: what WMI's ``GetText`` produces and Hyper-V accepts.

Embedded instances travel inside WS-Man messages as this text: method inputs such as
``SnapshotSettings`` or ``ResourceSettings[]``, outputs such as ``GetErrorEx.Errors[]``
or ``GetVirtualHardDiskSettingData.SettingData``.  This is the simulator's own
implementation (it never imports ``bareos_hyperv``).

Supported: ``PROPERTY`` / ``PROPERTY.ARRAY`` / ``PROPERTY.REFERENCE`` /
``PROPERTY.REFARRAY`` / ``PROPERTY.OBJECT`` (WMI DTD) with ``TYPE`` attributes,
``VALUE``, ``VALUE.ARRAY``, ``VALUE.NULL``, ``VALUE.REFERENCE`` holding
``INSTANCEPATH`` / ``LOCALINSTANCEPATH`` / ``INSTANCENAME`` (``KEYBINDING`` /
``KEYVALUE``) or a WMI object path string, embedded instances in ``string``
properties (``EmbeddedObject="instance"``), CIM datetimes
(``yyyymmddHHMMSS.mmmmmmsUUU``) and intervals (``ddddddddHHMMSS.mmmmmm:000``).
"""

from __future__ import annotations

import datetime as _dt
import re
from typing import Any, Callable, List, Optional, Tuple, Union

from lxml import etree

from hvsim.cim import NS_VIRT, CimInstance, CimInterval, CimRef, ClassDef, PropDef
from hvsim.wql import WqlError, parse_object_path

ClassLookup = Callable[[str], Optional[ClassDef]]

INT_TYPES = frozenset(
    {"uint8", "uint16", "uint32", "uint64", "sint8", "sint16", "sint32", "sint64"}
)
REAL_TYPES = frozenset({"real32", "real64"})

_PARSER = etree.XMLParser(resolve_entities=False, no_network=True, huge_tree=False,
                          remove_comments=True)


class CimXmlError(ValueError):
    """The text is not CIM-XML this module understands, or a value does not fit its type."""


# ---------------------------------------------------------------------------
# Datetimes

_DT_RE = re.compile(
    r"(\d{4})(\d{2})(\d{2})(\d{2})(\d{2})(\d{2})\.(\d{6})([+-])(\d{3})\Z"
)
_IV_RE = re.compile(r"(\d{8})(\d{2})(\d{2})(\d{2})\.(\d{6}):000\Z")


def parse_datetime(text: str) -> Union[_dt.datetime, CimInterval, None]:
    """Parse a CIM datetime or interval; all-asterisk (unknown) values give None."""
    s = text.strip()
    if "*" in s:
        # DMTF wildcards mark unknown fields; WMI uses an all-asterisk value for "not set".
        return None
    m = _IV_RE.match(s)
    if m:
        days, hh, mm, ss, us = (int(g) for g in m.groups())
        return CimInterval(days * 86400 + hh * 3600 + mm * 60 + ss + us / 1e6)
    m = _DT_RE.match(s)
    if not m:
        raise CimXmlError(f"{text!r} is not a CIM datetime (yyyymmddHHMMSS.mmmmmmsUUU) or interval")
    y, mo, d, hh, mi, ss, us = (int(g) for g in m.groups()[:7])
    offset = int(m.group(9)) * (1 if m.group(8) == "+" else -1)
    try:
        return _dt.datetime(y, mo, d, hh, mi, ss, us, tzinfo=_dt.timezone(_dt.timedelta(minutes=offset)))
    except ValueError as exc:
        raise CimXmlError(f"{text!r} is not a valid CIM datetime: {exc}") from exc


def format_datetime(value: Union[_dt.datetime, CimInterval]) -> str:
    """Format a datetime (naive = UTC) or :class:`CimInterval` in the CIM text form."""
    if isinstance(value, CimInterval):
        total_us = round(value.seconds * 1_000_000)
        secs, us = divmod(total_us, 1_000_000)
        days, rem = divmod(secs, 86400)
        hh, rem = divmod(rem, 3600)
        mm, ss = divmod(rem, 60)
        return f"{days:08d}{hh:02d}{mm:02d}{ss:02d}.{us:06d}:000"
    off = value.utcoffset()
    minutes = int(off.total_seconds() // 60) if off is not None else 0
    sign = "+" if minutes >= 0 else "-"
    # strftime("%Y") does not zero-pad years below 1000 on glibc.
    v = value
    return (f"{v.year:04d}{v.month:02d}{v.day:02d}{v.hour:02d}{v.minute:02d}{v.second:02d}"
            f".{v.microsecond:06d}{sign}{abs(minutes):03d}")


# ---------------------------------------------------------------------------
# Scalars


def parse_scalar(text: str | None, cim_type: str) -> Any:
    """Convert the text of one ``VALUE`` to the Python value of ``cim_type``."""
    s = text if text is not None else ""
    if cim_type in INT_TYPES:
        try:
            return int(s.strip(), 0) if s.strip().lower().startswith("0x") else int(s.strip())
        except ValueError as exc:
            raise CimXmlError(f"{s!r} is not a valid {cim_type}") from exc
    if cim_type in REAL_TYPES:
        try:
            return float(s.strip())
        except ValueError as exc:
            raise CimXmlError(f"{s!r} is not a valid {cim_type}") from exc
    if cim_type == "boolean":
        low = s.strip().lower()
        if low in ("true", "1"):
            return True
        if low in ("false", "0"):
            return False
        raise CimXmlError(f"{s!r} is not a valid boolean")
    if cim_type == "datetime":
        return parse_datetime(s)
    return s


def format_scalar(value: Any, cim_type: str | None = None) -> str:
    """Text of a scalar value as WMI's ``GetText`` writes it (booleans ``TRUE``/``FALSE``)."""
    if isinstance(value, bool):
        return "TRUE" if value else "FALSE"
    if isinstance(value, (_dt.datetime, CimInterval)):
        return format_datetime(value)
    if isinstance(value, float):
        return repr(value)
    return str(value)


def infer_type(value: Any) -> str:
    """CIM type of a Python value when no schema says (``uint64``/``sint64`` for ints)."""
    v = value
    if isinstance(v, list):
        v = next((x for x in v if x is not None), "")
    if isinstance(v, bool):
        return "boolean"
    if isinstance(v, int):
        return "uint64" if v >= 0 else "sint64"
    if isinstance(v, float):
        return "real64"
    if isinstance(v, (_dt.datetime, CimInterval)):
        return "datetime"
    if isinstance(v, CimRef):
        return "reference"
    if isinstance(v, CimInstance):
        return "instance"
    return "string"


# ---------------------------------------------------------------------------
# Parsing


def _local(el: Any) -> str:
    tag = el.tag
    if not isinstance(tag, str):
        return ""
    return tag.rsplit("}", 1)[-1]


def _children(el: Any, name: str | None = None) -> List[Any]:
    return [c for c in el if isinstance(c.tag, str) and (name is None or _local(c).upper() == name)]


def load_xml(text: Union[str, bytes]) -> Any:
    """Parse XML text safely (no entities, no network)."""
    data = text.encode("utf-8") if isinstance(text, str) else text
    try:
        return etree.fromstring(data.strip(), _PARSER)
    except etree.XMLSyntaxError as exc:
        raise CimXmlError(f"not well-formed XML: {exc}") from exc


def parse_instance(
    text: Union[str, bytes, Any],
    *,
    namespace: str = NS_VIRT,
    class_lookup: ClassLookup | None = None,
) -> CimInstance:
    """Parse CIM-XML ``INSTANCE`` text (or an lxml element) into a :class:`CimInstance`.

    Values are typed by the ``TYPE`` attributes, or by the class schema from
    ``class_lookup`` where the text has none.  A ``__PATH`` system property sets
    :attr:`CimInstance.path`.
    """
    root = text if not isinstance(text, (str, bytes)) else load_xml(text)
    if _local(root).upper() == "VALUE.NAMEDINSTANCE" or _local(root).upper() == "VALUE.OBJECT":
        inner = _children(root, "INSTANCE")
        if not inner:
            raise CimXmlError(f"{_local(root)} without INSTANCE")
        root = inner[0]
    if _local(root).upper() != "INSTANCE":
        raise CimXmlError(f"root element is {_local(root)!r}, expected INSTANCE")
    class_name = root.get("CLASSNAME")
    if not class_name:
        raise CimXmlError("INSTANCE without CLASSNAME")
    cdef = class_lookup(class_name) if class_lookup else None
    props: dict[str, Any] = {}
    for el in _children(root):
        kind = _local(el).upper()
        if kind == "QUALIFIER":
            continue
        name = el.get("NAME")
        if not name:
            raise CimXmlError(f"{kind} without NAME in INSTANCE of {class_name}")
        pdef = cdef.prop(name) if cdef else None
        if kind == "PROPERTY":
            props[name] = _parse_property(el, pdef, namespace, class_lookup)
        elif kind == "PROPERTY.ARRAY":
            props[name] = _parse_array(el, pdef, namespace, class_lookup)
        elif kind == "PROPERTY.REFERENCE":
            vr = _children(el, "VALUE.REFERENCE")
            props[name] = _parse_value_reference(vr[0], namespace) if vr else None
        elif kind == "PROPERTY.REFARRAY":
            va = _children(el, "VALUE.REFARRAY")
            if not va:
                props[name] = None
            else:
                props[name] = [
                    _parse_value_reference(v, namespace) if _local(v).upper() == "VALUE.REFERENCE" else None
                    for v in _children(va[0])
                ]
        elif kind == "PROPERTY.OBJECT":
            vo = _children(el, "VALUE.OBJECT")
            inner = _children(vo[0], "INSTANCE") if vo else []
            props[name] = (
                parse_instance(inner[0], namespace=namespace, class_lookup=class_lookup) if inner else None
            )
        else:
            raise CimXmlError(f"unexpected element {kind} in INSTANCE of {class_name}")
    path: CimRef | None = None
    raw_path = props.get("__PATH")
    if isinstance(raw_path, str) and raw_path:
        try:
            path = parse_object_path(raw_path).to_ref(namespace, cdef.keys if cdef else ())
        except WqlError:
            path = None
    return CimInstance(class_name, namespace, props, path)


def _value_type(el: Any, pdef: PropDef | None) -> str:
    t = el.get("TYPE")
    if el.get("EmbeddedObject") or el.get("EMBEDDEDOBJECT"):
        return "instance"
    if pdef is not None and (t is None or (pdef.cim_type in ("instance", "reference") and t == "string")):
        return pdef.cim_type
    return t or "string"


def _parse_text_value(text: str | None, cim_type: str, namespace: str,
                      class_lookup: ClassLookup | None) -> Any:
    if cim_type == "instance":
        if text is None or not text.strip():
            return None
        return parse_instance(text, namespace=namespace, class_lookup=class_lookup)
    if cim_type == "reference":
        if text is None or not text.strip():
            return None
        try:
            return parse_object_path(text).to_ref(namespace)
        except WqlError as exc:
            raise CimXmlError(str(exc)) from exc
    return parse_scalar(text, cim_type)


def _parse_property(el: Any, pdef: PropDef | None, namespace: str,
                    class_lookup: ClassLookup | None) -> Any:
    cim_type = _value_type(el, pdef)
    values = _children(el, "VALUE")
    if not values:
        vo = _children(el, "VALUE.OBJECT")
        if vo:
            inner = _children(vo[0], "INSTANCE")
            return parse_instance(inner[0], namespace=namespace, class_lookup=class_lookup) if inner else None
        return None
    return _parse_text_value(values[0].text, cim_type, namespace, class_lookup)


def _parse_array(el: Any, pdef: PropDef | None, namespace: str,
                 class_lookup: ClassLookup | None) -> List[Any] | None:
    cim_type = _value_type(el, pdef)
    va = _children(el, "VALUE.ARRAY")
    if not va:
        return None
    out: List[Any] = []
    for v in _children(va[0]):
        kind = _local(v).upper()
        if kind == "VALUE.NULL":
            out.append(None)
        elif kind == "VALUE":
            out.append(_parse_text_value(v.text, cim_type, namespace, class_lookup))
        else:
            raise CimXmlError(f"unexpected {kind} in VALUE.ARRAY of {el.get('NAME')}")
    return out


def _parse_value_reference(vr: Any, namespace: str) -> CimRef | None:
    kids = _children(vr)
    if not kids:
        text = (vr.text or "").strip()
        if not text:
            return None
        try:
            return parse_object_path(text).to_ref(namespace)
        except WqlError as exc:
            raise CimXmlError(str(exc)) from exc
    node = kids[0]
    kind = _local(node).upper()
    ns = namespace
    if kind == "INSTANCEPATH":
        nsp = _children(node, "NAMESPACEPATH")
        if nsp:
            ns = _parse_localnamespace(_children(nsp[0], "LOCALNAMESPACEPATH"), namespace)
        names = _children(node, "INSTANCENAME")
    elif kind == "LOCALINSTANCEPATH":
        ns = _parse_localnamespace(_children(node, "LOCALNAMESPACEPATH"), namespace)
        names = _children(node, "INSTANCENAME")
    elif kind == "INSTANCENAME":
        names = [node]
    elif kind == "VALUE":
        try:
            return parse_object_path(node.text or "").to_ref(namespace)
        except WqlError as exc:
            raise CimXmlError(str(exc)) from exc
    else:
        raise CimXmlError(f"unsupported {kind} in VALUE.REFERENCE")
    if not names:
        raise CimXmlError(f"{kind} without INSTANCENAME")
    return _parse_instancename(names[0], ns)


def _parse_localnamespace(nodes: List[Any], default: str) -> str:
    if not nodes:
        return default
    parts = [n.get("NAME", "") for n in _children(nodes[0], "NAMESPACE")]
    return "/".join(p for p in parts if p) or default


def _parse_instancename(node: Any, namespace: str) -> CimRef:
    cls = node.get("CLASSNAME")
    if not cls:
        raise CimXmlError("INSTANCENAME without CLASSNAME")
    keys: List[Tuple[str, str]] = []
    for kb in _children(node, "KEYBINDING"):
        kv = _children(kb)
        if not kv:
            raise CimXmlError(f"KEYBINDING {kb.get('NAME')} without value")
        if _local(kv[0]).upper() == "VALUE.REFERENCE":
            inner = _parse_value_reference(kv[0], namespace)
            keys.append((kb.get("NAME", ""), inner.wmi_path("") if inner else ""))
        else:
            keys.append((kb.get("NAME", ""), kv[0].text or ""))
    single = _children(node, "KEYVALUE")
    if single and not keys:
        keys.append(("", single[0].text or ""))
    return CimRef(namespace, cls, tuple(keys))


# ---------------------------------------------------------------------------
# Producing


def produce_instance(
    inst: CimInstance,
    class_def: ClassDef | None = None,
    *,
    class_lookup: ClassLookup | None = None,
    host: str | None = None,
) -> str:
    """CIM-XML ``INSTANCE`` text of ``inst`` with ``TYPE`` attributes from the schema.

    With a ``class_def`` every schema property is written, in schema order (missing
    ones as NULL, like WMI's ``GetText``), followed by any extra properties of the
    instance; without one the instance's own properties are written with inferred
    types.  ``host`` makes references full ``INSTANCEPATH``s.
    """
    return etree.tostring(instance_element(inst, class_def, class_lookup=class_lookup, host=host),
                          encoding="unicode")


def instance_element(
    inst: CimInstance,
    class_def: ClassDef | None = None,
    *,
    class_lookup: ClassLookup | None = None,
    host: str | None = None,
) -> Any:
    """Like :func:`produce_instance` but returns the lxml element."""
    cdef = class_def if class_def is not None else (class_lookup(inst.class_name) if class_lookup else None)
    root = etree.Element("INSTANCE", CLASSNAME=inst.class_name)
    seen: set[str] = set()
    if cdef is not None:
        for p in cdef.properties:
            seen.add(p.name.lower())
            root.append(_property_element(p, inst.get(p.name), inst.namespace, class_lookup, host))
    for name, value in inst.properties.items():
        if name.lower() in seen:
            continue
        pdef = PropDef(name, infer_type(value), isinstance(value, list))
        root.append(_property_element(pdef, value, inst.namespace, class_lookup, host))
    return root


def _property_element(p: PropDef, value: Any, namespace: str, class_lookup: ClassLookup | None,
                      host: str | None) -> Any:
    if p.cim_type == "reference":
        if p.is_array:
            el = etree.Element("PROPERTY.REFARRAY", NAME=p.name)
            if p.ref_class:
                el.set("REFERENCECLASS", p.ref_class)
            if value is not None:
                arr = etree.SubElement(el, "VALUE.REFARRAY")
                for v in value:
                    if v is None:
                        etree.SubElement(arr, "VALUE.NULL")
                    else:
                        arr.append(_value_reference(v, host))
            return el
        el = etree.Element("PROPERTY.REFERENCE", NAME=p.name)
        if p.ref_class:
            el.set("REFERENCECLASS", p.ref_class)
        if value is not None:
            el.append(_value_reference(value, host))
        return el
    wire_type = "string" if p.cim_type == "instance" else p.cim_type
    if p.is_array:
        el = etree.Element("PROPERTY.ARRAY", NAME=p.name, TYPE=wire_type)
        if p.cim_type == "instance":
            el.set("EmbeddedObject", "instance")
        if value is not None:
            arr = etree.SubElement(el, "VALUE.ARRAY")
            for v in value:
                if v is None:
                    etree.SubElement(arr, "VALUE.NULL")
                else:
                    etree.SubElement(arr, "VALUE").text = _value_text(v, p, class_lookup, host)
        return el
    el = etree.Element("PROPERTY", NAME=p.name, TYPE=wire_type)
    if p.cim_type == "instance":
        el.set("EmbeddedObject", "instance")
    if value is not None:
        etree.SubElement(el, "VALUE").text = _value_text(value, p, class_lookup, host)
    return el


def _value_text(value: Any, p: PropDef, class_lookup: ClassLookup | None, host: str | None) -> str:
    if isinstance(value, CimInstance):
        return produce_instance(value, class_lookup=class_lookup, host=host)
    return format_scalar(value, p.cim_type)


def _value_reference(ref: CimRef, host: str | None) -> Any:
    vr = etree.Element("VALUE.REFERENCE")
    if host:
        path = etree.SubElement(vr, "INSTANCEPATH")
        nsp = etree.SubElement(path, "NAMESPACEPATH")
        etree.SubElement(nsp, "HOST").text = host
        lnp = etree.SubElement(nsp, "LOCALNAMESPACEPATH")
    else:
        path = etree.SubElement(vr, "LOCALINSTANCEPATH")
        lnp = etree.SubElement(path, "LOCALNAMESPACEPATH")
    for part in ref.namespace.replace("\\", "/").split("/"):
        if part:
            etree.SubElement(lnp, "NAMESPACE", NAME=part)
    name = etree.SubElement(path, "INSTANCENAME", CLASSNAME=ref.class_name)
    for k, v in ref.keys:
        kb = etree.SubElement(name, "KEYBINDING", NAME=k)
        etree.SubElement(kb, "KEYVALUE", VALUETYPE="string").text = v
    return vr
