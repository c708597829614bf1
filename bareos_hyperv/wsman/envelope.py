"""Build WS-Management request envelopes and read response envelopes (lxml only).

Header layout follows DSP0226 and hyperv-wmi.md 1.4: ``a:To``, ``w:ResourceURI``,
``a:ReplyTo``, ``a:Action``, ``w:MaxEnvelopeSize``, ``a:MessageID``, ``w:Locale``,
``p:DataLocale``, ``w:OperationTimeout`` and, for Get/Invoke, ``w:SelectorSet``.
Bodies: Enumerate with WQL or association filter (1.5, 1.6), Pull, Release,
``<Method>_INPUT`` for Invoke (1.9), and the Identify request (DSP0226 11).
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import List, Sequence, Tuple

from lxml import etree

from bareos_hyperv.wsman.cim import (
    CimInstance,
    EmbeddedInstance,
    EndpointReference,
    ParamScalar,
    ParamValue,
    SelectorValue,
    format_xs_datetime,
    format_xs_duration,
    secure_parser,
    selector_set_element,
    to_cimxml,
)
from bareos_hyperv.wsman.errors import CimDataError, WsmanProtocolError
from bareos_hyperv.wsman.namespaces import (
    ADDRESS_ANONYMOUS,
    ENUMERATION_MODE_OBJECT_AND_EPR,
    NAMESPACES,
    NS_ADDRESSING,
    NS_CIM_COMMON,
    NS_CIMBINDING,
    NS_ENUMERATION,
    NS_IDENTITY,
    NS_MS_WSMAN,
    NS_SOAP,
    NS_WSMAN,
    NS_XML,
    NS_XSI,
    Dialect,
)

_S = f"{{{NS_SOAP}}}"
_A = f"{{{NS_ADDRESSING}}}"
_W = f"{{{NS_WSMAN}}}"
_N = f"{{{NS_ENUMERATION}}}"
_B = f"{{{NS_CIMBINDING}}}"
_ENVELOPE_NSMAP = {k: NAMESPACES[k] for k in ("s", "a", "n", "w", "p", "b")}


def new_message_id() -> str:
    """A fresh ``uuid:`` MessageID."""
    return f"uuid:{str(uuid.uuid4()).upper()}"


def format_timeout(seconds: float) -> str:
    """An ``xs:duration`` for ``w:OperationTimeout`` (``PT60.000S``)."""
    return f"PT{seconds:.3f}S"


@dataclass(frozen=True)
class HeaderOptions:
    """Per-client header values."""

    to: str
    operation_timeout: float
    max_envelope_size: int
    locale: str = "en-US"


def build_envelope(
    options: HeaderOptions,
    *,
    action: str,
    resource_uri: str,
    message_id: str,
    selectors: Sequence[Tuple[str, SelectorValue]] = (),
    body: etree._Element | None = None,
) -> etree._Element:
    """A complete request envelope; ``body`` (if any) becomes the only child of ``s:Body``."""
    env = etree.Element(f"{_S}Envelope", nsmap=_ENVELOPE_NSMAP)
    header = etree.SubElement(env, f"{_S}Header")
    etree.SubElement(header, f"{_A}To").text = options.to
    uri = etree.SubElement(header, f"{_W}ResourceURI", {f"{_S}mustUnderstand": "true"})
    uri.text = resource_uri
    reply = etree.SubElement(header, f"{_A}ReplyTo")
    addr = etree.SubElement(reply, f"{_A}Address", {f"{_S}mustUnderstand": "true"})
    addr.text = ADDRESS_ANONYMOUS
    etree.SubElement(header, f"{_A}Action", {f"{_S}mustUnderstand": "true"}).text = action
    size = etree.SubElement(header, f"{_W}MaxEnvelopeSize", {f"{_S}mustUnderstand": "true"})
    size.text = str(options.max_envelope_size)
    etree.SubElement(header, f"{_A}MessageID").text = message_id
    # Pinning the locale keeps fault texts and job ErrorDescriptions in one language.
    etree.SubElement(
        header, f"{_W}Locale", {f"{{{NS_XML}}}lang": options.locale, f"{_S}mustUnderstand": "false"}
    )
    etree.SubElement(
        header,
        f"{{{NS_MS_WSMAN}}}DataLocale",
        {f"{{{NS_XML}}}lang": options.locale, f"{_S}mustUnderstand": "false"},
    )
    etree.SubElement(header, f"{_W}OperationTimeout").text = format_timeout(options.operation_timeout)
    if selectors:
        selector_set_element(header, selectors)
    body_el = etree.SubElement(env, f"{_S}Body")
    if body is not None:
        body_el.append(body)
    return env


def build_identify() -> etree._Element:
    """The Identify request: empty header, ``wsmid:Identify`` body (DSP0226 11)."""
    env = etree.Element(f"{_S}Envelope", nsmap={"s": NS_SOAP, "wsmid": NS_IDENTITY})
    etree.SubElement(env, f"{_S}Header")
    body = etree.SubElement(env, f"{_S}Body")
    etree.SubElement(body, f"{{{NS_IDENTITY}}}Identify")
    return env


def to_bytes(envelope: etree._Element) -> bytes:
    """Serialise an envelope as UTF-8 with an XML declaration."""
    return etree.tostring(envelope, xml_declaration=True, encoding="utf-8")


# --------------------------------------------------------------------------- bodies


def wql_filter(wql: str) -> etree._Element:
    """A ``w:Filter`` in the WQL dialect."""
    flt = etree.Element(f"{_W}Filter", Dialect=Dialect.WQL)
    flt.text = wql
    return flt


def association_filter(
    source: EndpointReference,
    *,
    instances_of_association: bool,
    association_class: str | None = None,
    result_class: str | None = None,
    role: str | None = None,
    result_role: str | None = None,
) -> etree._Element:
    """A ``w:Filter`` in the association dialect (DSP0227 8.2; hyperv-wmi.md 1.6).

    ``instances_of_association`` False gives ``b:AssociatedInstances`` (far ends),
    True gives ``b:AssociationInstances`` (the association objects; ``result_class``
    then names the association class).
    """
    flt = etree.Element(f"{_W}Filter", Dialect=Dialect.ASSOCIATION)
    kind = "AssociationInstances" if instances_of_association else "AssociatedInstances"
    assoc = etree.SubElement(flt, f"{_B}{kind}")
    source.fill_element(etree.SubElement(assoc, f"{_B}Object"))
    if association_class and not instances_of_association:
        etree.SubElement(assoc, f"{_B}AssociationClassName").text = association_class
    if result_class:
        etree.SubElement(assoc, f"{_B}ResultClassName").text = result_class
    if role:
        etree.SubElement(assoc, f"{_B}Role").text = role
    if result_role and not instances_of_association:
        etree.SubElement(assoc, f"{_B}ResultRole").text = result_role
    return flt


def enumerate_body(*, filter_el: etree._Element | None, max_elements: int) -> etree._Element:
    """``n:Enumerate`` with OptimizeEnumeration, MaxElements and EnumerateObjectAndEPR."""
    enum = etree.Element(f"{_N}Enumerate")
    etree.SubElement(enum, f"{_W}OptimizeEnumeration")
    etree.SubElement(enum, f"{_W}MaxElements").text = str(max_elements)
    etree.SubElement(enum, f"{_W}EnumerationMode").text = ENUMERATION_MODE_OBJECT_AND_EPR
    if filter_el is not None:
        enum.append(filter_el)
    return enum


def pull_body(context: str, max_elements: int) -> etree._Element:
    """``n:Pull`` for the next page."""
    pull = etree.Element(f"{_N}Pull")
    etree.SubElement(pull, f"{_N}EnumerationContext").text = context
    etree.SubElement(pull, f"{_N}MaxElements").text = str(max_elements)
    return pull


def release_body(context: str) -> etree._Element:
    """``n:Release`` of an enumeration context we abandon."""
    rel = etree.Element(f"{_N}Release")
    etree.SubElement(rel, f"{_N}EnumerationContext").text = context
    return rel


def _param_text(name: str, value: ParamScalar) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return str(value)
    if isinstance(value, str):
        return value
    raise CimDataError(f"parameter {name}: unsupported value type {type(value).__name__}")


def _param_element(parent: etree._Element, ns: str, name: str, value: ParamScalar | None) -> None:
    el = etree.SubElement(parent, f"{{{ns}}}{name}")
    if value is None:
        el.set(f"{{{NS_XSI}}}nil", "true")
    elif isinstance(value, EndpointReference):
        value.fill_element(el)
    elif isinstance(value, (EmbeddedInstance, CimInstance)):
        text = value.text() if isinstance(value, EmbeddedInstance) else to_cimxml(value)
        # CDATA keeps the embedded text readable in traces; "]]>" cannot live in CDATA,
        # and escaped text is equivalent on the wire.
        el.text = etree.CDATA(text) if "]]>" not in text else text
    elif isinstance(value, datetime):
        etree.SubElement(el, f"{{{NS_CIM_COMMON}}}Datetime").text = format_xs_datetime(value)
    elif isinstance(value, timedelta):
        etree.SubElement(el, f"{{{NS_CIM_COMMON}}}Interval").text = format_xs_duration(value)
    else:
        el.text = _param_text(name, value)


def invoke_body(resource_uri: str, method: str, params: Sequence[Tuple[str, ParamValue]]) -> etree._Element:
    """``<p:Method_INPUT xmlns:p="<class URI>">`` with parameters in the caller's order.

    ``None`` and empty sequences are omitted (optional parameter left out); a
    sequence repeats the element once per item (hyperv-wmi.md 1.9).
    """
    root = etree.Element(
        f"{{{resource_uri}}}{method}_INPUT",
        nsmap={"p": resource_uri, "a": NS_ADDRESSING, "w": NS_WSMAN, "cim": NS_CIM_COMMON, "xsi": NS_XSI},
    )
    for name, value in params:
        if value is None:
            continue
        if isinstance(value, (list, tuple)):
            for item in value:
                _param_element(root, resource_uri, name, item)
        elif isinstance(value, Sequence) and not isinstance(value, str):
            for item in list(value):
                _param_element(root, resource_uri, name, item)
        else:
            _param_element(root, resource_uri, name, value)
    return root


# --------------------------------------------------------------------------- responses


def parse_envelope(data: bytes, *, host: str, action: str) -> etree._Element:
    """Parse a response body into its ``s:Envelope`` element.

    :raises WsmanProtocolError: not XML, or not a SOAP 1.2 envelope.
    """
    try:
        root = etree.fromstring(data, parser=secure_parser())
    except etree.XMLSyntaxError as exc:
        raise WsmanProtocolError(
            f"{host} answered {action.rsplit('/', 1)[-1]} with a body that is not XML ({exc})",
            what_to_do="check that the endpoint is a WinRM listener (port and path /wsman)",
            context={"body": data[:120].decode("utf-8", "replace")},
        ) from exc
    if root.tag != f"{_S}Envelope":
        raise WsmanProtocolError(
            f"{host} answered {action.rsplit('/', 1)[-1]} with {root.tag}, not a SOAP 1.2 envelope",
            what_to_do="check that the endpoint is a WinRM listener (port and path /wsman)",
        )
    return root


def body_of(envelope: etree._Element) -> etree._Element:
    """The ``s:Body`` element (an empty one if missing)."""
    body = envelope.find(f"{_S}Body")
    return body if body is not None else etree.Element(f"{_S}Body")


def relates_to(envelope: etree._Element) -> str | None:
    """The ``a:RelatesTo`` header value."""
    text = envelope.findtext(f"{_S}Header/{_A}RelatesTo")
    return text.strip() if text else None


def check_relates_to(envelope: etree._Element, message_id: str, *, host: str, action: str) -> None:
    """Raise :class:`WsmanProtocolError` unless ``a:RelatesTo`` equals the MessageID we sent.

    A mismatch means the answer belongs to another request (a proxy or connection
    mix-up); acting on it could apply one call's result to another.
    """
    got = relates_to(envelope)
    if got is None or got.lower() != message_id.lower():
        raise WsmanProtocolError(
            f"{host} answered {action.rsplit('/', 1)[-1]} for another request: RelatesTo {got!r}, "
            f"sent MessageID {message_id!r}",
            what_to_do="check for a proxy or load balancer between this client and the host",
        )


def enumeration_context(container: etree._Element) -> str | None:
    """``n:EnumerationContext`` text (None when absent or empty)."""
    text = container.findtext(f"{_N}EnumerationContext")
    return text.strip() if text and text.strip() else None


def end_of_sequence(container: etree._Element) -> bool:
    """Whether ``w:EndOfSequence`` (optimized Enumerate) or ``n:EndOfSequence`` (Pull) is present."""
    return (
        container.find(f"{_W}EndOfSequence") is not None or container.find(f"{_N}EndOfSequence") is not None
    )


def items_of(container: etree._Element) -> List[etree._Element]:
    """Item elements of ``w:Items`` (EnumerateResponse) or ``n:Items`` (PullResponse)."""
    items: List[etree._Element] = []
    for tag in (f"{_W}Items", f"{_N}Items"):
        holder = container.find(tag)
        if holder is not None:
            items.extend(child for child in holder if isinstance(child.tag, str))
    return items


__all__ = [
    "HeaderOptions",
    "association_filter",
    "body_of",
    "build_envelope",
    "build_identify",
    "check_relates_to",
    "end_of_sequence",
    "enumerate_body",
    "enumeration_context",
    "format_timeout",
    "invoke_body",
    "items_of",
    "new_message_id",
    "parse_envelope",
    "pull_body",
    "release_body",
    "to_bytes",
    "wql_filter",
]
