"""CIM objects as this product handles them: instances, endpoint references, values.

* :class:`EndpointReference` - a WS-Addressing EPR naming one CIM instance
  (resource URI + selector set), the form WinRM uses for REF values and keys.
* :class:`CimInstance` - property bag with case-insensitive names, the CIM type of
  each property when known, typed getters, and the instance's EPR when the
  enumeration returned one.
* CIM-XML (DSP0201 "CIM DTD 2.0", ``INSTANCE`` element) in both directions:
  :func:`parse_cimxml` and :func:`to_cimxml`.  This is the text Hyper-V takes for
  embedded-instance parameters and returns for ``GetErrorEx`` and friends
  (``reference/hyperv-wmi.md`` 1.10).
* WS-Man instance element trees (DSP0227 / hyperv-wmi.md 1.8): :func:`parse_wsman_instance`.

Values are ``None``, ``str``, ``bool``, ``int``, ``float``, ``datetime`` (always
timezone-aware), ``timedelta`` (CIM intervals), :class:`EndpointReference`,
:class:`CimInstance` (embedded objects) or a list of those.  Instances that come
from WS-Man carry text only (Windows sends no types); the typed getters convert.

Type names follow DSP0004 (``string``, ``boolean``, ``uint8`` ... ``sint64``,
``real32``, ``real64``, ``datetime``, ``char16``, ``reference``).  A type map entry
ending in ``[]`` marks an array property (so that a NULL array stays an array).
When no type is known :func:`to_cimxml` infers one: ``bool`` -> ``boolean``,
``int`` -> ``uint64`` (``sint64`` when negative; WMI converts to the declared
width, and a caller that needs the exact width passes a type map), ``float`` ->
``real64``, ``datetime``/``timedelta`` -> ``datetime``, everything else -> ``string``.
"""

from __future__ import annotations

import builtins
import datetime as _dt
import re
from datetime import datetime, timedelta, timezone
from typing import Dict, Iterable, Iterator, List, Mapping, Optional, Sequence, Tuple, Union, cast

from lxml import etree

from bareos_hyperv.wsman.errors import CimDataError
from bareos_hyperv.wsman.namespaces import (
    ADDRESS_ANONYMOUS,
    NS_ADDRESSING,
    NS_CIM_COMMON,
    NS_WSMAN,
    NS_XSI,
    WMI_RESOURCE_PREFIX,
    normalize_namespace,
    resource_uri,
    split_resource_uri,
)

INTEGER_TYPES = frozenset({"uint8", "uint16", "uint32", "uint64", "sint8", "sint16", "sint32", "sint64"})
REAL_TYPES = frozenset({"real32", "real64"})
KNOWN_TYPES = INTEGER_TYPES | REAL_TYPES | {"string", "char16", "boolean", "datetime", "reference"}

_XSI_NIL = f"{{{NS_XSI}}}nil"


def secure_parser() -> etree.XMLParser:
    """An lxml parser that resolves no entities and never touches the network."""
    return etree.XMLParser(resolve_entities=False, no_network=True, remove_comments=True, huge_tree=False)


def localname(element: etree._Element) -> str:
    """Local part of an element's tag."""
    return etree.QName(element).localname


def namespace_of(element: etree._Element) -> str | None:
    """Namespace URI of an element's tag (None when unqualified)."""
    return etree.QName(element).namespace


def child_elements(element: etree._Element) -> Iterator[etree._Element]:
    """Element children only (comments and processing instructions skipped)."""
    for child in element:
        if isinstance(child.tag, str):
            yield child


def _text(element: etree._Element | None) -> str | None:
    if element is None:
        return None
    return element.text if element.text is not None else ""


# --------------------------------------------------------------------------- datetimes


_CIM_DATETIME = re.compile(r"^(\d{4})(\d{2})(\d{2})(\d{2})(\d{2})(\d{2})\.(\d{6})([+-])(\d{3})$")
_CIM_INTERVAL = re.compile(r"^(\d{8})(\d{2})(\d{2})(\d{2})\.(\d{6}):000$")
_XS_DATETIME = re.compile(
    r"^(-?\d{4,})-(\d{2})-(\d{2})T(\d{2}):(\d{2}):(\d{2})(?:\.(\d+))?(Z|[+-]\d{2}:\d{2})?$"
)
_XS_DURATION = re.compile(
    r"^(-)?P(?:(\d+)Y)?(?:(\d+)M)?(?:(\d+)D)?(?:T(?:(\d+)H)?(?:(\d+)M)?(?:(\d+(?:\.\d+)?)S)?)?$"
)


def parse_cim_datetime(text: str) -> Union[datetime, timedelta]:
    """Parse DMTF datetime text (``yyyymmddHHMMSS.mmmmmmsUUU``) or interval (``ddddddddHHMMSS.mmmmmm:000``).

    :raises CimDataError: the text is neither form (wildcard ``*`` fields are not supported).
    """
    m = _CIM_DATETIME.match(text)
    if m:
        year, month, day, hour, minute, second, micro, sign, offset = m.groups()
        minutes = int(offset) * (-1 if sign == "-" else 1)
        return datetime(
            int(year),
            int(month),
            int(day),
            int(hour),
            int(minute),
            int(second),
            int(micro),
            tzinfo=timezone(timedelta(minutes=minutes)),
        )
    m = _CIM_INTERVAL.match(text)
    if m:
        days, hours, minutes_, seconds, micro = (int(g) for g in m.groups())
        return timedelta(days=days, hours=hours, minutes=minutes_, seconds=seconds, microseconds=micro)
    raise CimDataError(
        f"not a CIM datetime or interval: {text[:40]!r}",
        what_to_do="expect the DMTF form yyyymmddHHMMSS.mmmmmmsUUU",
    )


def format_cim_datetime(value: Union[datetime, timedelta]) -> str:
    """Format a datetime (naive = UTC) or timedelta in the DMTF text form used inside CIM-XML."""
    if isinstance(value, timedelta):
        if value < timedelta(0):
            raise CimDataError(f"a CIM interval cannot be negative: {value}")
        total_seconds = value.days * 86400 + value.seconds
        days, rest = divmod(total_seconds, 86400)
        hours, rest = divmod(rest, 3600)
        minutes, seconds = divmod(rest, 60)
        return f"{days:08d}{hours:02d}{minutes:02d}{seconds:02d}.{value.microseconds:06d}:000"
    offset = value.utcoffset() or timedelta(0)
    minutes = int(offset.total_seconds() // 60)
    sign = "-" if minutes < 0 else "+"
    return value.strftime("%Y%m%d%H%M%S") + f".{value.microsecond:06d}{sign}{abs(minutes):03d}"


def parse_xs_datetime(text: str) -> datetime:
    """Parse an ``xs:dateTime`` as WinRM writes it inside ``cim:Datetime`` (up to 7 fraction digits)."""
    m = _XS_DATETIME.match(text.strip())
    if not m:
        raise CimDataError(f"not an xs:dateTime: {text[:40]!r}")
    year, month, day, hour, minute, second, fraction, zone = m.groups()
    micro = int((fraction or "0")[:6].ljust(6, "0"))
    if zone is None or zone == "Z":
        tz = timezone.utc
    else:
        sign = -1 if zone[0] == "-" else 1
        tz = timezone(sign * timedelta(hours=int(zone[1:3]), minutes=int(zone[4:6])))
    return datetime(int(year), int(month), int(day), int(hour), int(minute), int(second), micro, tzinfo=tz)


def format_xs_datetime(value: datetime) -> str:
    """Format a datetime (naive = UTC) as ``xs:dateTime``."""
    if value.tzinfo is None:
        value = value.replace(tzinfo=timezone.utc)
    text = value.isoformat()
    return text[:-6] + "Z" if text.endswith("+00:00") else text


def parse_xs_duration(text: str) -> timedelta:
    """Parse an ``xs:duration`` (``cim:Interval``); years and months are not allowed in intervals."""
    m = _XS_DURATION.match(text.strip())
    if not m or text.strip() in ("P", "-P"):
        raise CimDataError(f"not an xs:duration: {text[:40]!r}")
    neg, years, months, days, hours, minutes, seconds = m.groups()
    if years or months:
        raise CimDataError(f"interval with years or months cannot be converted exactly: {text!r}")
    delta = timedelta(
        days=int(days or 0), hours=int(hours or 0), minutes=int(minutes or 0), seconds=float(seconds or 0)
    )
    return -delta if neg else delta


def format_xs_duration(value: timedelta) -> str:
    """Format a timedelta as ``xs:duration`` (``PnDTnHnMn.nS``)."""
    sign = "-" if value < timedelta(0) else ""
    value = abs(value)
    hours, rest = divmod(value.seconds, 3600)
    minutes, seconds = divmod(rest, 60)
    frac = f".{value.microseconds:06d}" if value.microseconds else ""
    return f"{sign}P{value.days}DT{hours}H{minutes}M{seconds}{frac}S"


# --------------------------------------------------------------------------- EPR


SelectorValue = Union[str, "EndpointReference"]


class EndpointReference:
    """A WS-Addressing endpoint reference to one CIM instance ([DSP0227] 7; hyperv-wmi.md 1.8).

    ``selectors`` keep the order given (the key order WinRM reported).  Resource URI
    and selector names compare case-insensitively, like WinRM does; values exactly.
    A selector value is a string or, for REF keys of association instances, another EPR.
    """

    __slots__ = ("_selectors", "address", "resource_uri")

    def __init__(
        self,
        resource_uri: str,
        selectors: Union[Mapping[str, SelectorValue], Iterable[Tuple[str, SelectorValue]]] = (),
        address: str = ADDRESS_ANONYMOUS,
    ) -> None:
        self.resource_uri = resource_uri
        self.address = address
        items = selectors.items() if isinstance(selectors, Mapping) else selectors
        self._selectors: Tuple[Tuple[str, SelectorValue], ...] = tuple((str(k), v) for k, v in items)

    @classmethod
    def build(cls, namespace: str, class_name: str, keys: Mapping[str, SelectorValue]) -> EndpointReference:
        """EPR of a WMI instance from namespace (``root/virtualization/v2`` or ``root\\...``), class, keys."""
        return cls(resource_uri(namespace, class_name), keys)

    @property
    def selectors(self) -> Tuple[Tuple[str, SelectorValue], ...]:
        """Selector (key) pairs in order."""
        return self._selectors

    @property
    def class_name(self) -> str:
        """Class named by the resource URI (last path segment)."""
        return split_resource_uri(self.resource_uri)[1]

    @property
    def namespace(self) -> str:
        """WMI namespace in URI form (``root/virtualization/v2``), or the URI's base for non-WMI URIs."""
        return split_resource_uri(self.resource_uri)[0]

    def selector(self, name: str) -> SelectorValue | None:
        """Value of a selector, by case-insensitive name, or None."""
        lname = name.lower()
        for key, value in self._selectors:
            if key.lower() == lname:
                return value
        return None

    def str_selector(self, name: str) -> str:
        """Value of a string selector; raises :class:`CimDataError` when absent or not a string."""
        value = self.selector(name)
        if not isinstance(value, builtins.str):
            raise CimDataError(
                f"endpoint reference to {self.class_name} has no string selector {name!r}",
                context={"selectors": self._describe_selectors()},
            )
        return value

    def wql_path(self) -> str:
        """The instance as a WQL object path, ``Class.Key="v",...`` (for ``ASSOCIATORS OF {...}``).

        Backslashes and double quotes in values are escaped as WQL requires (hyperv-wmi.md 1.5).
        """
        parts = []
        for key, value in self._selectors:
            if not isinstance(value, builtins.str):
                raise CimDataError(
                    f"selector {key!r} of {self.class_name} is a reference; "
                    "it cannot be written as a WQL object path"
                )
            escaped = value.replace("\\", "\\\\").replace('"', '\\"')
            parts.append(f'{key}="{escaped}"')
        return f"{self.class_name}." + ",".join(parts)

    def _describe_selectors(self) -> str:
        return ",".join(f"{k}={v}" for k, v in self._selectors)

    def _key(self) -> Tuple[builtins.str, Tuple[Tuple[builtins.str, SelectorValue], ...]]:
        return (
            self.resource_uri.lower(),
            tuple(sorted((k.lower(), v) for k, v in self._selectors if isinstance(v, builtins.str)))
            + tuple(
                sorted(
                    ((k.lower(), v) for k, v in self._selectors if not isinstance(v, builtins.str)),
                    key=lambda kv: kv[0],
                )
            ),
        )

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, EndpointReference):
            return NotImplemented
        return self._key() == other._key()

    def __hash__(self) -> int:
        return hash(self._key())

    def __repr__(self) -> str:
        return f"EndpointReference({self.resource_uri!r}, {dict(self._selectors)!r})"

    # ---- XML

    def fill_element(self, parent: etree._Element) -> etree._Element:
        """Append ``a:Address`` and ``a:ReferenceParameters`` to ``parent`` (the EPR content model)."""
        address = etree.SubElement(parent, f"{{{NS_ADDRESSING}}}Address")
        address.text = self.address
        params = etree.SubElement(parent, f"{{{NS_ADDRESSING}}}ReferenceParameters")
        uri = etree.SubElement(params, f"{{{NS_WSMAN}}}ResourceURI")
        uri.text = self.resource_uri
        if self._selectors:
            selector_set_element(params, self._selectors)
        return parent

    @classmethod
    def from_element(cls, element: etree._Element) -> EndpointReference:
        """Parse an element whose children are ``a:Address`` + ``a:ReferenceParameters`` (or an
        ``a:EndpointReference`` element itself)."""
        if localname(element) != "ReferenceParameters":
            found = element.find(f"{{{NS_ADDRESSING}}}ReferenceParameters")
            if found is None:
                found = element.find(f".//{{{NS_ADDRESSING}}}ReferenceParameters")
            if found is None:
                raise CimDataError(f"element {localname(element)} is not an endpoint reference")
            params = found
        else:
            params = element
        parent = params.getparent()
        address = ADDRESS_ANONYMOUS
        if parent is not None:
            addr_el = parent.find(f"{{{NS_ADDRESSING}}}Address")
            if addr_el is not None and addr_el.text:
                address = addr_el.text.strip()
        uri_el = params.find(f"{{{NS_WSMAN}}}ResourceURI")
        if uri_el is None or not uri_el.text:
            raise CimDataError("endpoint reference without w:ResourceURI")
        selectors: List[Tuple[str, SelectorValue]] = []
        sel_set = params.find(f"{{{NS_WSMAN}}}SelectorSet")
        if sel_set is not None:
            for sel in sel_set.iterfind(f"{{{NS_WSMAN}}}Selector"):
                name = sel.get("Name") or ""
                nested = sel.find(f"{{{NS_ADDRESSING}}}EndpointReference")
                if nested is not None:
                    selectors.append((name, cls.from_element(nested)))
                else:
                    selectors.append((name, sel.text or ""))
        return cls(uri_el.text.strip(), selectors, address)


def selector_set_element(
    parent: etree._Element, selectors: Sequence[Tuple[str, SelectorValue]]
) -> etree._Element:
    """Append a ``w:SelectorSet`` with one ``w:Selector`` per pair (nested EPRs for REF keys)."""
    sel_set = etree.SubElement(parent, f"{{{NS_WSMAN}}}SelectorSet")
    for name, value in selectors:
        sel = etree.SubElement(sel_set, f"{{{NS_WSMAN}}}Selector", Name=name)
        if isinstance(value, EndpointReference):
            value.fill_element(etree.SubElement(sel, f"{{{NS_ADDRESSING}}}EndpointReference"))
        else:
            sel.text = value
    return sel_set


# --------------------------------------------------------------------------- instance


class CimInstance:
    """One CIM instance: class name, ordered properties with case-insensitive names, known types.

    ``epr`` is set when the instance came from an ``EnumerateObjectAndEPR`` enumeration
    or a Get (it is what an Invoke REF parameter or a later Get needs).
    ``types`` maps property names to CIM types where known (CIM-XML carries them,
    WS-Man does not); :func:`to_cimxml` uses them.
    """

    def __init__(
        self,
        class_name: str,
        properties: Union[Mapping[str, CimValue], Iterable[Tuple[str, CimValue]]] = (),
        *,
        types: Mapping[str, str] | None = None,
        epr: EndpointReference | None = None,
        resource_uri: str | None = None,
    ) -> None:
        self.class_name = class_name
        self.epr = epr
        self.resource_uri = resource_uri or (epr.resource_uri if epr is not None else None)
        self._props: Dict[builtins.str, Tuple[builtins.str, CimValue]] = {}
        self._types: Dict[builtins.str, builtins.str] = {}
        items = properties.items() if isinstance(properties, Mapping) else properties
        for name, value in items:
            self[name] = value
        for name, cim_type in (types or {}).items():
            self._types[name.lower()] = cim_type

    # ---- mapping protocol

    def __getitem__(self, name: builtins.str) -> CimValue:
        try:
            return self._props[name.lower()][1]
        except KeyError:
            raise KeyError(name) from None

    def __setitem__(self, name: builtins.str, value: CimValue) -> None:
        key = name.lower()
        existing = self._props.get(key)
        self._props[key] = (existing[0] if existing else name, value)

    def __delitem__(self, name: builtins.str) -> None:
        del self._props[name.lower()]
        self._types.pop(name.lower(), None)

    def __contains__(self, name: object) -> builtins.bool:
        return isinstance(name, builtins.str) and name.lower() in self._props

    def __iter__(self) -> Iterator[builtins.str]:
        return (name for name, _ in self._props.values())

    def __len__(self) -> builtins.int:
        return len(self._props)

    def names(self) -> List[builtins.str]:
        """Property names in order, with their original spelling."""
        return [name for name, _ in self._props.values()]

    def items(self) -> List[Tuple[builtins.str, CimValue]]:
        """(name, value) pairs in order."""
        return list(self._props.values())

    def get(self, name: builtins.str, default: CimValue = None) -> CimValue:
        """Value of a property, or ``default`` when the property is absent."""
        entry = self._props.get(name.lower())
        return default if entry is None else entry[1]

    def set(self, name: builtins.str, value: CimValue, cim_type: builtins.str | None = None) -> None:
        """Set a property and, optionally, its CIM type (``uint16``, ``string[]`` ...)."""
        self[name] = value
        if cim_type is not None:
            self._types[name.lower()] = cim_type

    def type_of(self, name: builtins.str) -> builtins.str | None:
        """The CIM type of a property if known (``[]`` suffix for arrays)."""
        return self._types.get(name.lower())

    @property
    def types(self) -> Dict[builtins.str, builtins.str]:
        """Known CIM types by property name (original spelling where the property exists)."""
        out: Dict[builtins.str, builtins.str] = {}
        for key, cim_type in self._types.items():
            entry = self._props.get(key)
            out[entry[0] if entry else key] = cim_type
        return out

    @property
    def namespace(self) -> builtins.str | None:
        """WMI namespace (URI form) the instance came from, when known."""
        if self.resource_uri and self.resource_uri.lower().startswith(WMI_RESOURCE_PREFIX.lower()):
            return split_resource_uri(self.resource_uri)[0]
        return None

    def copy(self) -> CimInstance:
        """A shallow copy (values shared, property table and types copied)."""
        dup = CimInstance(self.class_name, self.items(), epr=self.epr, resource_uri=self.resource_uri)
        dup._types = dict(self._types)
        return dup

    def __eq__(self, other: object) -> builtins.bool:
        if not isinstance(other, CimInstance):
            return NotImplemented
        return self.class_name.lower() == other.class_name.lower() and {
            k: v for k, (_, v) in self._props.items()
        } == {k: v for k, (_, v) in other._props.items()}

    __hash__ = None  # type: ignore[assignment]  # mutable: not hashable, like dict

    def __repr__(self) -> builtins.str:
        shown = ", ".join(f"{n}={v!r}" for n, v in self.items()[:6])
        more = ", ..." if len(self) > 6 else ""
        return f"CimInstance({self.class_name!r}, {{{shown}{more}}})"

    # ---- typed getters

    def _fail(self, name: builtins.str, problem: builtins.str) -> CimDataError:
        return CimDataError(
            f"property {name} of {self.class_name or 'the instance'} {problem}",
            what_to_do="check that the host runs a supported Hyper-V version and the object is complete",
            context={"epr": self.epr._describe_selectors() if self.epr else None},
        )

    def _required(self, name: builtins.str) -> CimValue:
        if name not in self:
            raise self._fail(name, "is missing")
        value = self[name]
        if value is None:
            raise self._fail(name, "is null")
        return value

    def _scalar(self, name: builtins.str, value: CimValue) -> CimValue:
        if isinstance(value, (list, tuple)):
            if len(value) != 1:
                raise self._fail(name, f"is an array of {len(value)} values, expected one value")
            return cast("CimScalar | None", value[0])
        return value

    def _as_str(self, name: builtins.str, value: CimValue) -> builtins.str:
        value = self._scalar(name, value)
        if isinstance(value, builtins.str):
            return value
        raise self._fail(name, f"is a {type(value).__name__}, expected a string")

    def _as_int(self, name: builtins.str, value: CimValue) -> builtins.int:
        value = self._scalar(name, value)
        if isinstance(value, builtins.int) and not isinstance(value, builtins.bool):
            return value
        if isinstance(value, builtins.str):
            try:
                return builtins.int(value.strip())
            except ValueError:
                pass
        raise self._fail(name, f"is {value!r}, expected an integer")

    def _as_bool(self, name: builtins.str, value: CimValue) -> builtins.bool:
        value = self._scalar(name, value)
        if isinstance(value, builtins.bool):
            return value
        if isinstance(value, builtins.str) and value.strip().lower() in ("true", "false", "1", "0"):
            return value.strip().lower() in ("true", "1")
        raise self._fail(name, f"is {value!r}, expected a boolean")

    def _as_float(self, name: builtins.str, value: CimValue) -> builtins.float:
        value = self._scalar(name, value)
        if isinstance(value, (builtins.int, builtins.float)) and not isinstance(value, builtins.bool):
            return builtins.float(value)
        if isinstance(value, builtins.str):
            try:
                return builtins.float(value)
            except ValueError:
                pass
        raise self._fail(name, f"is {value!r}, expected a number")

    def _as_datetime(self, name: builtins.str, value: CimValue) -> datetime:
        value = self._scalar(name, value)
        if isinstance(value, datetime):
            return value
        if isinstance(value, builtins.str):
            parsed = _parse_any_datetime(value)
            if isinstance(parsed, datetime):
                return parsed
        raise self._fail(name, f"is {value!r}, expected a datetime")

    def _as_interval(self, name: builtins.str, value: CimValue) -> timedelta:
        value = self._scalar(name, value)
        if isinstance(value, timedelta):
            return value
        if isinstance(value, builtins.str):
            parsed = _parse_any_datetime(value)
            if isinstance(parsed, timedelta):
                return parsed
        raise self._fail(name, f"is {value!r}, expected an interval")

    def _as_ref(self, name: builtins.str, value: CimValue) -> EndpointReference:
        value = self._scalar(name, value)
        if isinstance(value, EndpointReference):
            return value
        raise self._fail(name, f"is {type(value).__name__}, expected a reference")

    def _as_instance(self, name: builtins.str, value: CimValue) -> CimInstance:
        value = self._scalar(name, value)
        if isinstance(value, CimInstance):
            return value
        if isinstance(value, builtins.str) and value.lstrip().startswith("<"):
            return parse_cimxml(value)
        raise self._fail(name, f"is {type(value).__name__}, expected an embedded instance")

    def _list(self, name: builtins.str) -> List[CimValue]:
        value = self.get(name)
        if value is None:
            return []
        return list(value) if isinstance(value, (list, tuple)) else [value]

    def str(self, name: builtins.str) -> builtins.str:
        """A non-null string property."""
        return self._as_str(name, self._required(name))

    def opt_str(self, name: builtins.str) -> builtins.str | None:
        """A string property, None when absent or null."""
        value = self.get(name)
        return None if value is None else self._as_str(name, value)

    def int(self, name: builtins.str) -> builtins.int:
        """A non-null integer property (text from WS-Man is converted)."""
        return self._as_int(name, self._required(name))

    def opt_int(self, name: builtins.str) -> builtins.int | None:
        """An integer property, None when absent or null."""
        value = self.get(name)
        return None if value is None else self._as_int(name, value)

    def bool(self, name: builtins.str) -> builtins.bool:
        """A non-null boolean property (``true``/``false`` text accepted)."""
        return self._as_bool(name, self._required(name))

    def opt_bool(self, name: builtins.str) -> builtins.bool | None:
        """A boolean property, None when absent or null."""
        value = self.get(name)
        return None if value is None else self._as_bool(name, value)

    def float(self, name: builtins.str) -> builtins.float:
        """A non-null real property."""
        return self._as_float(name, self._required(name))

    def datetime(self, name: builtins.str) -> datetime:
        """A non-null datetime property (timezone-aware)."""
        return self._as_datetime(name, self._required(name))

    def opt_datetime(self, name: builtins.str) -> _dt.datetime | None:
        """A datetime property, None when absent or null."""
        value = self.get(name)
        return None if value is None else self._as_datetime(name, value)

    def interval(self, name: builtins.str) -> timedelta:
        """A non-null interval property."""
        return self._as_interval(name, self._required(name))

    def ref(self, name: builtins.str) -> EndpointReference:
        """A non-null reference property or out parameter."""
        return self._as_ref(name, self._required(name))

    def opt_ref(self, name: builtins.str) -> EndpointReference | None:
        """A reference, None when absent or null."""
        value = self.get(name)
        return None if value is None else self._as_ref(name, value)

    def instance(self, name: builtins.str) -> CimInstance:
        """An embedded instance (element tree or CIM-XML text)."""
        return self._as_instance(name, self._required(name))

    def strs(self, name: builtins.str) -> List[builtins.str]:
        """A string array ([] when absent or null; a single value becomes a one-element list)."""
        return [self._as_str(name, v) for v in self._list(name) if v is not None]

    def ints(self, name: builtins.str) -> List[builtins.int]:
        """An integer array (uint64 arrays included), [] when absent or null."""
        return [self._as_int(name, v) for v in self._list(name) if v is not None]

    def bools(self, name: builtins.str) -> List[builtins.bool]:
        """A boolean array, [] when absent or null."""
        return [self._as_bool(name, v) for v in self._list(name) if v is not None]

    def refs(self, name: builtins.str) -> List[EndpointReference]:
        """A reference array, [] when absent or null."""
        return [self._as_ref(name, v) for v in self._list(name) if v is not None]

    def instances(self, name: builtins.str) -> List[CimInstance]:
        """An array of embedded instances (CIM-XML text is parsed), [] when absent or null."""
        return [self._as_instance(name, v) for v in self._list(name) if v is not None]


CimScalar = Union[str, bool, int, float, datetime, timedelta, EndpointReference, CimInstance]
CimValue = Union[None, CimScalar, Sequence[Optional[CimScalar]]]


def _parse_any_datetime(text: str) -> Union[datetime, timedelta, None]:
    text = text.strip()
    for parser in (parse_cim_datetime, parse_xs_datetime, parse_xs_duration):
        try:
            return parser(text)
        except CimDataError:
            continue
    return None


# --------------------------------------------------------------------------- CIM-XML parse


def _cimxml_scalar(text: str | None, cim_type: str) -> CimScalar | None:
    """Convert one CIM-XML VALUE text to a Python value according to its TYPE."""
    if text is None:
        return None
    if cim_type in ("string", "char16", ""):
        return text
    stripped = text.strip()
    try:
        if cim_type == "boolean":
            if stripped.lower() not in ("true", "false"):
                raise ValueError(stripped)
            return stripped.lower() == "true"
        if cim_type in INTEGER_TYPES:
            return int(stripped, 0) if stripped.lower().startswith(("0x", "-0x")) else int(stripped)
        if cim_type in REAL_TYPES:
            return float(stripped)
    except ValueError as exc:
        raise CimDataError(f"CIM-XML value {stripped[:40]!r} is not a valid {cim_type}") from exc
    if cim_type == "datetime":
        try:
            return parse_cim_datetime(stripped)
        except CimDataError:
            return text  # wildcarded DMTF datetimes stay as text and are written back verbatim
    return text


def _instance_path_to_epr(element: etree._Element) -> EndpointReference:
    """Convert a CIM-XML INSTANCEPATH / LOCALINSTANCEPATH / INSTANCENAME to an EPR."""
    name_el = element if element.tag == "INSTANCENAME" else element.find(".//INSTANCENAME")
    if name_el is None:
        raise CimDataError(f"CIM-XML reference {element.tag} has no INSTANCENAME")
    namespace = "/".join(ns.get("NAME", "") for ns in element.iterfind(".//LOCALNAMESPACEPATH/NAMESPACE"))
    class_name = name_el.get("CLASSNAME", "")
    selectors: List[Tuple[str, SelectorValue]] = []
    for binding in name_el.iterfind("KEYBINDING"):
        key_value = binding.find("KEYVALUE")
        nested = binding.find("VALUE.REFERENCE")
        if nested is not None and len(nested):
            selectors.append((binding.get("NAME", ""), _instance_path_to_epr(nested[0])))
        else:
            selectors.append((binding.get("NAME", ""), _text(key_value) or ""))
    if not selectors and name_el.find("KEYVALUE") is not None:
        selectors.append(("", _text(name_el.find("KEYVALUE")) or ""))
    uri = resource_uri(namespace, class_name) if namespace else f"{WMI_RESOURCE_PREFIX}{class_name}"
    return EndpointReference(uri, selectors)


def _parse_instance_element(root: etree._Element) -> CimInstance:
    inst = CimInstance(root.get("CLASSNAME", ""))
    for prop in root:
        if not isinstance(prop.tag, str):
            continue
        name = prop.get("NAME", "")
        if prop.tag == "PROPERTY":
            cim_type = prop.get("TYPE", "string")
            value_el = prop.find("VALUE")
            embedded = prop.get("EmbeddedObject") or prop.get("EMBEDDEDOBJECT")
            value = _cimxml_scalar(_text(value_el), cim_type)
            if embedded and isinstance(value, str) and value.lstrip().startswith("<"):
                cim_type = "string"
            inst.set(name, value, cim_type)
        elif prop.tag == "PROPERTY.ARRAY":
            cim_type = prop.get("TYPE", "string")
            array_el = prop.find("VALUE.ARRAY")
            if array_el is None:
                inst.set(name, None, cim_type + "[]")
                continue
            values: List[CimScalar | None] = []
            for item in array_el:
                if not isinstance(item.tag, str):
                    continue
                if item.tag == "VALUE.NULL":
                    values.append(None)
                elif item.tag == "VALUE":
                    converted = _cimxml_scalar(_text(item), cim_type)
                    values.append(converted)
            inst.set(name, values, cim_type + "[]")
        elif prop.tag == "PROPERTY.REFERENCE":
            ref_el = prop.find("VALUE.REFERENCE")
            ref_value: CimValue = None
            if ref_el is not None:
                path = next((c for c in ref_el if isinstance(c.tag, str)), None)
                if path is None:
                    ref_value = ref_el.text
                elif path.tag == "VALUE":
                    ref_value = _text(path)
                else:
                    ref_value = _instance_path_to_epr(path)
            inst.set(name, ref_value, "reference")
        # QUALIFIER and unknown elements: tolerated and ignored.
    return inst


def parse_cimxml(text: Union[str, bytes]) -> CimInstance:
    """Parse CIM-XML ``INSTANCE`` text (DSP0201) into a :class:`CimInstance` with CIM types.

    Also accepts a WS-Man style element tree (``<p:Class><p:Prop>...``), which some
    hosts return where an embedded instance is expected.

    :raises CimDataError: the text is not well-formed XML or holds no instance.
    """
    data = text.encode("utf-8") if isinstance(text, str) else text
    try:
        root = etree.fromstring(data.strip(), parser=secure_parser())
    except etree.XMLSyntaxError as exc:
        raise CimDataError(
            f"embedded instance is not well-formed XML: {exc}",
            context={"text": data[:80].decode("utf-8", "replace")},
        ) from exc
    if root.tag != "INSTANCE":
        inner = root.find(".//INSTANCE")
        if inner is not None:
            root = inner
        elif namespace_of(root) is not None or len(root):
            return parse_wsman_instance(root)
        else:
            raise CimDataError(f"embedded instance text has root {root.tag!r}, expected INSTANCE")
    return _parse_instance_element(root)


# --------------------------------------------------------------------------- CIM-XML produce


def infer_cim_type(value: CimValue) -> str:
    """The CIM type :func:`to_cimxml` uses for a value with no known type (see module docstring)."""
    if isinstance(value, list):
        first = next((v for v in value if v is not None), None)
        return infer_cim_type(first) + "[]"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int):
        return "uint64" if value >= 0 else "sint64"
    if isinstance(value, float):
        return "real64"
    if isinstance(value, (datetime, timedelta)):
        return "datetime"
    if isinstance(value, EndpointReference):
        return "reference"
    return "string"


def _cimxml_text(name: str, value: CimScalar, cim_type: str) -> str:
    """Text of one VALUE element for a value of the given CIM type."""
    if cim_type == "boolean":
        if isinstance(value, bool):
            return "TRUE" if value else "FALSE"
        if isinstance(value, str) and value.strip().lower() in ("true", "false"):
            return value.strip().upper()
    elif cim_type in INTEGER_TYPES:
        if isinstance(value, int) and not isinstance(value, bool):
            return str(value)
        if isinstance(value, str):
            try:
                return str(int(value.strip()))
            except ValueError:
                pass
    elif cim_type in REAL_TYPES:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return repr(float(value))
        if isinstance(value, str):
            try:
                return repr(float(value))
            except ValueError:
                pass
    elif cim_type == "datetime":
        if isinstance(value, (datetime, timedelta)):
            return format_cim_datetime(value)
        if isinstance(value, str):
            parsed = _parse_any_datetime(value)
            return format_cim_datetime(parsed) if parsed is not None else value
    else:  # string, char16, unknown
        if isinstance(value, str):
            return value
        if isinstance(value, CimInstance):
            return to_cimxml(value)
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return str(value)
    raise CimDataError(
        f"cannot write property {name} value {value!r} as CIM type {cim_type}",
        what_to_do="pass a value of the right Python type or fix the type map",
    )


def _epr_to_instancepath(parent: etree._Element, epr: EndpointReference) -> None:
    path = etree.SubElement(parent, "INSTANCEPATH")
    ns_path = etree.SubElement(path, "NAMESPACEPATH")
    etree.SubElement(ns_path, "HOST").text = "localhost"
    local = etree.SubElement(ns_path, "LOCALNAMESPACEPATH")
    namespace = epr.namespace if epr.resource_uri.lower().startswith(WMI_RESOURCE_PREFIX.lower()) else ""
    for part in normalize_namespace(namespace).split("/"):
        if part:
            etree.SubElement(local, "NAMESPACE", NAME=part)
    name_el = etree.SubElement(path, "INSTANCENAME", CLASSNAME=epr.class_name)
    for key, value in epr.selectors:
        binding = etree.SubElement(name_el, "KEYBINDING", NAME=key)
        if isinstance(value, EndpointReference):
            _epr_to_instancepath(etree.SubElement(binding, "VALUE.REFERENCE"), value)
        else:
            etree.SubElement(binding, "KEYVALUE", VALUETYPE="string").text = value


def to_cimxml(instance: CimInstance, types: Mapping[str, str] | None = None) -> str:
    """Serialise an instance as CIM-XML ``INSTANCE`` text (DSP0201), e.g. for an embedded parameter.

    Each property's TYPE comes from ``types`` (case-insensitive names), else from the
    type the instance knows (CIM-XML origin or :meth:`CimInstance.set`), else from
    :func:`infer_cim_type`.  NULL values are written as properties without VALUE;
    every property is written, in the instance's order.

    :raises CimDataError: a value does not fit its type.
    """
    type_map = {k.lower(): v for k, v in (types or {}).items()}
    root = etree.Element("INSTANCE", CLASSNAME=instance.class_name)
    for name, value in instance.items():
        cim_type = type_map.get(name.lower()) or instance.type_of(name) or infer_cim_type(value)
        is_array = cim_type.endswith("[]") or isinstance(value, (list, tuple))
        base_type = cim_type[:-2] if cim_type.endswith("[]") else cim_type
        if base_type not in KNOWN_TYPES:
            raise CimDataError(f"unknown CIM type {cim_type!r} for property {name} of {instance.class_name}")
        if base_type == "reference":
            prop = etree.SubElement(root, "PROPERTY.REFERENCE", NAME=name)
            if isinstance(value, EndpointReference):
                prop.set("REFERENCECLASS", value.class_name)
                _epr_to_instancepath(etree.SubElement(prop, "VALUE.REFERENCE"), value)
            elif isinstance(value, str):
                etree.SubElement(etree.SubElement(prop, "VALUE.REFERENCE"), "VALUE").text = value
            elif value is not None:
                raise CimDataError(f"property {name} of {instance.class_name} is not a reference: {value!r}")
        elif is_array:
            prop = etree.SubElement(root, "PROPERTY.ARRAY", NAME=name, TYPE=base_type)
            if value is not None:
                array_el = etree.SubElement(prop, "VALUE.ARRAY")
                items = value if isinstance(value, (list, tuple)) else [cast(CimScalar, value)]
                for item in items:
                    if item is None:
                        etree.SubElement(array_el, "VALUE.NULL")
                    else:
                        etree.SubElement(array_el, "VALUE").text = _cimxml_text(name, item, base_type)
        else:
            prop = etree.SubElement(root, "PROPERTY", NAME=name, TYPE=base_type)
            if value is not None:
                etree.SubElement(prop, "VALUE").text = _cimxml_text(name, cast(CimScalar, value), base_type)
    return etree.tostring(root, encoding="unicode")


# --------------------------------------------------------------------------- WS-Man instances


def _wsman_value(element: etree._Element) -> CimValue:
    """Decode one property element of a WS-Man instance (hyperv-wmi.md 1.8)."""
    if element.get(_XSI_NIL, "").lower() == "true":
        return None
    children = list(child_elements(element))
    if not children:
        return element.text if element.text is not None else ""
    first = children[0]
    first_ns = namespace_of(first)
    if first_ns == NS_CIM_COMMON:
        text = (first.text or "").strip()
        kind = localname(first)
        if kind == "Datetime":
            return parse_xs_datetime(text)
        if kind == "Interval":
            return parse_xs_duration(text)
        return text  # cim:Date / cim:Time etc. are kept as text
    if first_ns == NS_ADDRESSING and localname(first) in (
        "Address",
        "ReferenceParameters",
        "EndpointReference",
    ):
        return EndpointReference.from_element(first if localname(first) == "EndpointReference" else element)
    return parse_wsman_instance(element)


def parse_wsman_instance(element: etree._Element, epr: EndpointReference | None = None) -> CimInstance:
    """Parse a WS-Man instance element (``<p:Class><p:Prop>...``) or a ``w:XmlFragment``.

    Repeated property elements become lists; ``xsi:nil`` becomes None;
    ``cim:Datetime``/``cim:Interval`` become datetime/timedelta; EPR-valued
    properties become :class:`EndpointReference`; other structured values become
    nested instances.  Everything else stays text.  ``w:XmlFragment`` items have
    no class: their ``class_name`` is ``""``.
    """
    ns = namespace_of(element)
    name = localname(element)
    class_name = "" if (ns == NS_WSMAN and name == "XmlFragment") else name
    inst = CimInstance(class_name, epr=epr, resource_uri=ns if ns and ns != NS_WSMAN else None)
    if epr is not None:
        inst.resource_uri = epr.resource_uri
    collected: Dict[str, Tuple[str, List[CimValue]]] = {}
    for child in child_elements(element):
        prop = localname(child)
        collected.setdefault(prop.lower(), (prop, []))[1].append(_wsman_value(child))
    for prop, values in collected.values():
        # WS-Man repeats the element per array item; one element is indistinguishable
        # from a scalar, which is why the list getters accept scalars.
        inst[prop] = values[0] if len(values) == 1 else values  # type: ignore[assignment]  # items are scalars
    return inst


# --------------------------------------------------------------------------- method parameters


class EmbeddedInstance:
    """An Invoke parameter sent as embedded-instance CIM-XML text (in CDATA).

    ``instance`` is a :class:`CimInstance` (serialised with :func:`to_cimxml` and
    ``types``) or CIM-XML text already prepared by the caller.
    """

    __slots__ = ("instance", "types")

    def __init__(self, instance: CimInstance | str, types: Mapping[str, str] | None = None) -> None:
        self.instance = instance
        self.types = types

    def text(self) -> str:
        """The CIM-XML text to send."""
        if isinstance(self.instance, str):
            return self.instance
        return to_cimxml(self.instance, self.types)

    def __repr__(self) -> str:
        name = self.instance.class_name if isinstance(self.instance, CimInstance) else "text"
        return f"EmbeddedInstance({name})"


ParamScalar = Union[
    str, bool, int, float, datetime, timedelta, EndpointReference, CimInstance, EmbeddedInstance
]
ParamValue = Union[None, ParamScalar, Sequence[Optional[ParamScalar]]]
