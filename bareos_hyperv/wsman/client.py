"""CimClient: the WS-Management CIM verbs this product uses (knows nothing of Hyper-V).

Identify, Get, Enumerate/Pull (plain, WQL, association filters; always
``EnumerateObjectAndEPR`` so that every instance keeps its EPR) and Invoke, over
:class:`~bareos_hyperv.wsman.transport.WsmanTransport`.  Every answer is checked:
SOAP faults become :mod:`~bareos_hyperv.wsman.faults` exceptions, ``a:RelatesTo``
must match the MessageID sent.  Sources: DSP0226, DSP0227, hyperv-wmi.md section 1.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import List, Mapping, Sequence, Tuple

from lxml import etree

from bareos_hyperv.model.credentials import Credentials
from bareos_hyperv.wsman import envelope as env
from bareos_hyperv.wsman.cim import (
    CimInstance,
    CimValue,
    EndpointReference,
    ParamValue,
    SelectorValue,
    child_elements,
    localname,
    namespace_of,
    parse_cimxml,
    parse_wsman_instance,
)
from bareos_hyperv.wsman.errors import CimDataError, WsmanHttpError, WsmanProtocolError
from bareos_hyperv.wsman.faults import EncodingLimitFault, TimedOutFault, find_fault, parse_fault
from bareos_hyperv.wsman.namespaces import (
    NS_ADDRESSING,
    NS_ENUMERATION,
    NS_IDENTITY,
    NS_WSMAN,
    Action,
    resource_uri,
    wildcard_uri,
)
from bareos_hyperv.wsman.transport import Endpoint, TransportOptions, WsmanTransport

log = logging.getLogger("bareos_hyperv.wsman")

# A Pull that times out on the server only means no items were ready yet (DSP0226 8.4).
PULL_TIMEOUT_RETRIES = 3


@dataclass(frozen=True)
class IdentifyResult:
    """Answer of Identify (DSP0226 11)."""

    protocol_version: str
    product_vendor: str
    product_version: str
    security_profiles: Tuple[str, ...] = ()


@dataclass
class InvokeResult:
    """Answer of an Invoke: the method's ``ReturnValue`` and its output parameters.

    ``outputs`` holds the out parameters decoded: references as
    :class:`EndpointReference`, embedded-instance strings (CIM-XML) as
    :class:`CimInstance`, arrays as lists, types converted where ``out_types`` said so.
    """

    method: str
    return_value: int
    outputs: CimInstance
    target: EndpointReference = field(repr=False)


class CimClient:
    """WS-Management CIM client for one host.

    :param endpoint: where WinRM listens.
    :param credentials: account for the host.
    :param options: transport and protocol options (defaults: NTLM, 60 s operations).
    """

    def __init__(
        self,
        endpoint: Endpoint,
        credentials: Credentials,
        options: TransportOptions | None = None,
        *,
        transport: WsmanTransport | None = None,
    ) -> None:
        self.endpoint = endpoint
        self.options = options or TransportOptions()
        self._transport = transport or WsmanTransport(endpoint, credentials, self.options)
        self._headers = env.HeaderOptions(
            to=endpoint.url,
            operation_timeout=self.options.operation_timeout,
            max_envelope_size=self.options.max_envelope_size,
            locale=self.options.locale,
        )

    # ------------------------------------------------------------------ plumbing

    @property
    def host(self) -> str:
        """Name of the host (its own name when reached through a host map, else the address)."""
        return self.endpoint.name or self.endpoint.host

    @property
    def request_count(self) -> int:
        """SOAP round trips sent so far (retries included, NTLM handshakes not)."""
        return self._transport.request_count

    def close(self) -> None:
        """Close the HTTP session."""
        self._transport.close()

    def __enter__(self) -> CimClient:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def _exchange(
        self,
        action: str,
        uri: str,
        *,
        body: etree._Element | None = None,
        selectors: Sequence[Tuple[str, SelectorValue]] = (),
        idempotent: bool,
    ) -> etree._Element:
        """Send one request and return the response ``s:Body`` (faults raised)."""
        message_id = env.new_message_id()
        request = env.build_envelope(
            self._headers,
            action=action,
            resource_uri=uri,
            message_id=message_id,
            selectors=selectors,
            body=body,
        )
        label = f"{action.rsplit('/', 1)[-1]} {uri.rsplit('/', 1)[-1]}"
        status, data = self._transport.send(env.to_bytes(request), operation=label, idempotent=idempotent)
        envelope = self._check_http(status, data, action=action, uri=uri)
        env.check_relates_to(envelope, message_id, host=self.host, action=action)
        return env.body_of(envelope)

    def _check_http(self, status: int, data: bytes, *, action: str, uri: str | None) -> etree._Element:
        if not data.strip():
            if status == 200:
                raise WsmanProtocolError(
                    f"{self.host} sent an empty answer to {action.rsplit('/', 1)[-1]}",
                    what_to_do="check the WinRM service on the host",
                )
            raise WsmanHttpError(
                f"{self.host} answered HTTP {status} with an empty body to {action.rsplit('/', 1)[-1]}",
                status=status,
                what_to_do=(
                    "an empty HTTP 500 usually means the host refused an unencrypted request: use "
                    "transport=ntlm over HTTP or HTTPS"
                )
                if status == 500
                else "check the endpoint URL (port and path /wsman)",
                context={"host": self.endpoint.hostport, "resource": uri},
            )
        try:
            envelope = env.parse_envelope(data, host=self.host, action=action)
        except WsmanProtocolError:
            if status != 200:
                raise WsmanHttpError(
                    f"{self.host} answered HTTP {status} to {action.rsplit('/', 1)[-1]}",
                    status=status,
                    what_to_do="check the endpoint URL (port and path /wsman) and any proxy in between",
                    context={"host": self.endpoint.hostport, "resource": uri},
                ) from None
            raise
        fault = find_fault(envelope)
        if fault is not None:
            raise parse_fault(fault, host=self.host, action=action, resource_uri=uri, http_status=status)
        if status != 200:
            raise WsmanHttpError(
                f"{self.host} answered HTTP {status} without a SOAP fault",
                status=status,
                what_to_do="check the host's WinRM service",
                context={"host": self.endpoint.hostport, "resource": uri},
            )
        return envelope

    # ------------------------------------------------------------------ Identify

    def identify(self) -> IdentifyResult:
        """WS-Management Identify: protocol version, vendor and product version of the service."""
        status, data = self._transport.send(
            env.to_bytes(env.build_identify()), operation="Identify", idempotent=True
        )
        envelope = self._check_http(status, data, action=Action.IDENTIFY, uri=None)
        resp = env.body_of(envelope).find(f"{{{NS_IDENTITY}}}IdentifyResponse")
        if resp is None:
            raise WsmanProtocolError(
                f"{self.host} sent no IdentifyResponse",
                what_to_do="check that the endpoint is a WinRM listener",
            )

        def text(name: str) -> str:
            return (resp.findtext(f"{{{NS_IDENTITY}}}{name}") or "").strip()

        profiles = tuple(
            (p.text or "").strip() for p in resp.iterfind(f".//{{{NS_IDENTITY}}}SecurityProfileName")
        )
        return IdentifyResult(
            text("ProtocolVersion"), text("ProductVendor"), text("ProductVersion"), profiles
        )

    # ------------------------------------------------------------------ Get

    def get(self, ref: EndpointReference) -> CimInstance:
        """Get one instance by its EPR (class resource URI + selectors).

        :raises NotFoundFault: the instance does not exist.
        """
        body = self._exchange(Action.GET, ref.resource_uri, selectors=ref.selectors, idempotent=True)
        element = next(child_elements(body), None)
        if element is None:
            raise WsmanProtocolError(
                f"{self.host} returned an empty Get response for {ref.class_name}",
                what_to_do="check the WinRM service on the host",
            )
        inst = parse_wsman_instance(element, ref)
        return inst

    # ------------------------------------------------------------------ Enumerate

    def enumerate(
        self, namespace: str, class_name: str, *, max_elements: int | None = None
    ) -> List[CimInstance]:
        """All instances of a class (and its subclasses), each with its EPR."""
        return self._enumerate(resource_uri(namespace, class_name), None, max_elements)

    def query(self, namespace: str, wql: str, *, max_elements: int | None = None) -> List[CimInstance]:
        """Instances selected by a WQL query (sent to the namespace's ``/*`` URI, as WinRM requires)."""
        return self._enumerate(wildcard_uri(namespace), env.wql_filter(wql), max_elements)

    def associators(
        self,
        ref: EndpointReference,
        *,
        assoc_class: str | None = None,
        result_class: str | None = None,
        role: str | None = None,
        result_role: str | None = None,
        max_elements: int | None = None,
    ) -> List[CimInstance]:
        """Instances associated with ``ref`` (``AssociatedInstances`` filter; CIM Associators)."""
        flt = env.association_filter(
            ref,
            instances_of_association=False,
            association_class=assoc_class,
            result_class=result_class,
            role=role,
            result_role=result_role,
        )
        return self._enumerate(wildcard_uri(ref.namespace), flt, max_elements)

    def references(
        self,
        ref: EndpointReference,
        *,
        result_class: str | None = None,
        role: str | None = None,
        max_elements: int | None = None,
    ) -> List[CimInstance]:
        """Association instances that refer to ``ref`` (``AssociationInstances`` filter; CIM References)."""
        flt = env.association_filter(ref, instances_of_association=True, result_class=result_class, role=role)
        return self._enumerate(wildcard_uri(ref.namespace), flt, max_elements)

    def _enumerate(self, uri: str, flt: etree._Element | None, max_elements: int | None) -> List[CimInstance]:
        page = max_elements or self.options.max_elements
        while True:
            try:
                # The filter element moves into the body; copy it so a retry can reuse it.
                body_el = env.enumerate_body(filter_el=_copy(flt), max_elements=page)
                body = self._exchange(Action.ENUMERATE, uri, body=body_el, idempotent=True)
                break
            except EncodingLimitFault as exc:
                page = self._smaller_page(page, exc, "Enumerate", uri)
        response = self._response(body, "EnumerateResponse", uri)
        results = self._items(response, uri)
        context = env.enumeration_context(response)
        done = env.end_of_sequence(response)
        timeouts = 0
        try:
            while not done:
                if context is None:
                    raise WsmanProtocolError(
                        f"{self.host} ended an enumeration of {uri} without context or EndOfSequence",
                        what_to_do="check the WinRM service on the host",
                    )
                try:
                    body = self._exchange(
                        Action.PULL, uri, body=env.pull_body(context, page), idempotent=True
                    )
                except EncodingLimitFault as exc:
                    page = self._smaller_page(page, exc, "Pull", uri)
                    continue
                except TimedOutFault:
                    timeouts += 1
                    if timeouts > PULL_TIMEOUT_RETRIES:
                        raise
                    log.info("Pull of %s on %s timed out on the server; pulling again", uri, self.host)
                    continue
                response = self._response(body, "PullResponse", uri)
                results.extend(self._items(response, uri))
                context = env.enumeration_context(response) or context
                done = env.end_of_sequence(response)
        except BaseException:
            if context is not None and not done:
                self._release(uri, context)
            raise
        log.debug("enumerated %d instances of %s on %s", len(results), uri, self.host)
        return results

    def _smaller_page(self, page: int, fault: EncodingLimitFault, operation: str, uri: str) -> int:
        """Half the page size after an EncodingLimit fault; give up at one item per page."""
        if page <= 1:
            raise fault
        log.info(
            "%s of %s on %s exceeded the envelope size with %d items per page; trying %d",
            operation,
            uri,
            self.host,
            page,
            page // 2,
        )
        return page // 2

    def _release(self, uri: str, context: str) -> None:
        try:
            self._exchange(Action.RELEASE, uri, body=env.release_body(context), idempotent=False)
        except Exception as exc:
            log.debug("Release of an enumeration on %s failed: %s", self.host, exc)

    def _response(self, body: etree._Element, name: str, uri: str) -> etree._Element:
        response = body.find(f"{{{NS_ENUMERATION}}}{name}")
        if response is None:
            raise WsmanProtocolError(
                f"{self.host} sent no {name} for {uri}", what_to_do="check the WinRM service on the host"
            )
        return response

    def _items(self, response: etree._Element, uri: str) -> List[CimInstance]:
        return [self._item(item) for item in env.items_of(response)]

    @staticmethod
    def _item(item: etree._Element) -> CimInstance:
        if namespace_of(item) == NS_ADDRESSING and localname(item) == "EndpointReference":
            epr = EndpointReference.from_element(item)
            return CimInstance(epr.class_name, epr=epr)
        if namespace_of(item) == NS_WSMAN and localname(item) == "Item":
            item_epr: EndpointReference | None = None
            inst_el: etree._Element | None = None
            for child in child_elements(item):
                if namespace_of(child) == NS_ADDRESSING and localname(child) == "EndpointReference":
                    item_epr = EndpointReference.from_element(child)
                elif inst_el is None:
                    inst_el = child
            if inst_el is None:
                if item_epr is None:
                    raise CimDataError("enumeration item with neither instance nor endpoint reference")
                return CimInstance(item_epr.class_name, epr=item_epr)
            return parse_wsman_instance(inst_el, item_epr)
        return parse_wsman_instance(item)

    # ------------------------------------------------------------------ Invoke

    def invoke(
        self,
        ref: EndpointReference,
        method: str,
        params: Sequence[Tuple[str, ParamValue]] = (),
        *,
        out_types: Mapping[str, str] | None = None,
    ) -> InvokeResult:
        """Invoke a method on the instance ``ref`` (never retried: methods change state).

        :param params: (name, value) pairs sent in this order (declare order of the MOF).
        :param out_types: CIM types of out parameters to convert (``{"Ranges": "uint64[]"}``);
            text stays text otherwise, and the typed getters convert on read.
        :raises WsmanFault: the call was refused before the method ran.
        """
        action = f"{ref.resource_uri}/{method}"
        body = self._exchange(
            action,
            ref.resource_uri,
            selectors=ref.selectors,
            body=env.invoke_body(ref.resource_uri, method, params),
            idempotent=False,
        )
        output = next(child_elements(body), None)
        if output is None or not localname(output).lower().endswith("_output"):
            raise WsmanProtocolError(
                f"{self.host} sent no {method}_OUTPUT for {ref.class_name}.{method}",
                what_to_do="check the WinRM service on the host",
            )
        outputs = parse_wsman_instance(output)
        _decode_outputs(outputs, out_types or {})
        # Methods declared void (the MSCluster_* methods) answer with an empty _OUTPUT;
        # they report failure with a SOAP fault, so reaching here means success.
        return_value = outputs.int("ReturnValue") if "ReturnValue" in outputs else 0
        return InvokeResult(method=method, return_value=return_value, outputs=outputs, target=ref)


def _copy(element: etree._Element | None) -> etree._Element | None:
    if element is None:
        return None
    return etree.fromstring(etree.tostring(element))


def _decode_outputs(outputs: CimInstance, out_types: Mapping[str, str]) -> None:
    """Parse embedded CIM-XML strings and convert typed out parameters in place."""
    types = {k.lower(): v for k, v in out_types.items()}
    for name, declared in out_types.items():
        # WS-Man leaves an empty array (and often a NULL) out of the _OUTPUT element
        # altogether: a typed out parameter that is absent is an empty array / None.
        if name not in outputs:
            outputs.set(name, [] if declared.endswith("[]") else None, declared)
    for name, value in outputs.items():
        cim_type = types.get(name.lower())
        if cim_type is not None:
            converted = _convert(outputs, name, cim_type)
            outputs.set(name, converted, cim_type)
            continue
        if isinstance(value, str) and value.lstrip().startswith("<INSTANCE"):
            outputs[name] = parse_cimxml(value)
        elif (
            isinstance(value, list)
            and value
            and all(isinstance(v, str) and v.lstrip().startswith("<INSTANCE") for v in value)
        ):
            outputs[name] = [parse_cimxml(v) for v in value if isinstance(v, str)]


def _convert(outputs: CimInstance, name: str, cim_type: str) -> CimValue:
    base = cim_type[:-2] if cim_type.endswith("[]") else cim_type
    array = cim_type.endswith("[]")
    if outputs.get(name) is None:
        return [] if array else None
    if base.startswith(("uint", "sint")):
        return list(outputs.ints(name)) if array else outputs.int(name)
    if base == "boolean":
        return list(outputs.bools(name)) if array else outputs.bool(name)
    if base.startswith("real"):
        return outputs.float(name)
    if base == "datetime":
        return outputs.datetime(name)
    if base == "reference":
        return list(outputs.refs(name)) if array else outputs.ref(name)
    return list(outputs.strs(name)) if array else outputs.str(name)
