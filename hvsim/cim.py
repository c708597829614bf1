"""The CIM object model shared by the simulator's WS-Man front end and its Hyper-V world.

This is the contract between two halves of ``hvsim``:

* ``hvsim.wsman`` (the dispatcher) turns WS-Management requests into calls on a
  :class:`Repository` and renders what comes back as WS-Man XML, the way WinRM's
  WMI plugin does;
* ``hvsim.world`` (the Hyper-V / failover-cluster model) implements
  :class:`Repository` for one node.

Values travel as plain Python objects, typed by the class schema (:class:`ClassDef`):

=============  =======================================================
CIM type       Python value
=============  =======================================================
string         ``str``
boolean        ``bool``
uint8..uint64  ``int`` (sint8..sint64 likewise)
real32/64      ``float``
datetime       ``datetime.datetime`` (timezone-aware) or ``CimInterval``
reference      ``CimRef``
instance       ``CimInstance`` (embedded instance, sent as CIM-XML text)
array          ``list`` of the element type (``[]`` = empty/absent)
NULL           ``None``
=============  =======================================================

The simulator never imports ``bareos_hyperv``: it implements the other side of the
protocol from the specification and the recorded fixtures.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Iterable, Mapping, Optional, Protocol, Sequence

NS_VIRT = "root/virtualization/v2"
NS_CLUSTER = "root/MSCluster"
NS_CIMV2 = "root/cimv2"

# WMI resource URI prefix; the namespace and class follow ([MS-WSMV] 2.2.4.x).
WMI_URI_PREFIX = "http://schemas.microsoft.com/wbem/wsman/1/wmi/"


@dataclass(frozen=True)
class CimInterval:
    """A CIM interval (``ddddddddHHMMSS.mmmmmm:000``)."""

    seconds: float


@dataclass(frozen=True)
class PropDef:
    """Schema of one property or method parameter.

    ``cim_type`` is one of the CIM scalar type names (``string``, ``boolean``,
    ``uint16``, ``datetime``, ...), ``reference`` or ``instance`` (an embedded
    instance carried in a ``string``, as ``SnapshotSettings`` is).
    ``ref_class`` names the class a reference points to (for CIM-XML
    ``REFERENCECLASS``) or the class of an embedded instance.
    """

    name: str
    cim_type: str
    is_array: bool = False
    ref_class: Optional[str] = None


@dataclass(frozen=True)
class MethodDef:
    """Signature of a CIM method; parameters in MOF declaration order."""

    name: str
    in_params: tuple[PropDef, ...] = ()
    out_params: tuple[PropDef, ...] = ()
    static: bool = False  # invoked on the class (no selectors), e.g. none of the Msvm_* used here
    void: bool = False  # declared void (the MSCluster_* methods): no ReturnValue; failures are faults


@dataclass(frozen=True)
class ClassDef:
    """Schema of a CIM class as the simulator knows it."""

    name: str
    superclass: Optional[str]
    keys: tuple[str, ...]
    properties: tuple[PropDef, ...]
    methods: tuple[MethodDef, ...] = ()
    is_association: bool = False

    def prop(self, name: str) -> Optional[PropDef]:
        """Property schema by case-insensitive name."""
        low = name.lower()
        for p in self.properties:
            if p.name.lower() == low:
                return p
        return None

    def method(self, name: str) -> Optional[MethodDef]:
        """Method schema by case-insensitive name."""
        low = name.lower()
        for m in self.methods:
            if m.name.lower() == low:
                return m
        return None


@dataclass(frozen=True)
class CimRef:
    """Reference to one instance: namespace, class and key values (an object path / EPR).

    ``keys`` is ordered as the class declares its keys; values are strings as
    they appear in a ``w:SelectorSet``.
    """

    namespace: str
    class_name: str
    keys: tuple[tuple[str, str], ...]

    def key(self, name: str) -> Optional[str]:
        """Key value by case-insensitive name."""
        low = name.lower()
        for k, v in self.keys:
            if k.lower() == low:
                return v
        return None

    def resource_uri(self) -> str:
        """The class resource URI, e.g. ``.../wmi/root/virtualization/v2/Msvm_ComputerSystem``."""
        return f"{WMI_URI_PREFIX}{self.namespace.lower()}/{self.class_name}"

    def wmi_path(self, host: str) -> str:
        r"""The WMI object path string, e.g. ``\\HV01\root\virtualization\v2:Cls.K="v"``.

        This is the form Hyper-V stores in string properties such as RASD
        ``Parent`` and EPASD ``HostResource`` (not an EPR).
        """
        ns = self.namespace.replace("/", "\\")
        keys = ",".join(f'{k}="{_escape_path_value(v)}"' for k, v in self.keys)
        return f"\\\\{host}\\{ns}:{self.class_name}.{keys}"

    def same_as(self, other: CimRef) -> bool:
        """Equality that ignores case of namespace, class and key names (as WMI does)."""
        if self.namespace.lower() != other.namespace.lower():
            return False
        if self.class_name.lower() != other.class_name.lower():
            return False
        mine = {k.lower(): v for k, v in self.keys}
        theirs = {k.lower(): v for k, v in other.keys}
        return mine == theirs


def _escape_path_value(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"')


@dataclass
class CimInstance:
    """One instance: class name, namespace and property values (see module table).

    ``class_name`` is the most derived class.  ``path`` is set for instances
    that live in the repository (embedded instances have none).
    """

    class_name: str
    namespace: str
    properties: dict[str, Any] = field(default_factory=dict)
    path: Optional[CimRef] = None

    def get(self, name: str, default: Any = None) -> Any:
        """Property value by case-insensitive name."""
        low = name.lower()
        for k, v in self.properties.items():
            if k.lower() == low:
                return v
        return default


class CimError(Exception):
    """A failure the dispatcher must turn into a WS-Man SOAP fault.

    :param subcode: the fault subcode as Windows sends it, with its prefix,
        e.g. ``w:InvalidSelectors``, ``a:DestinationUnreachable``,
        ``w:InvalidParameter``, ``w:SchemaValidationError``, ``w:AccessDenied``,
        ``w:TimedOut``, ``w:EncodingLimit``, ``w:InternalError``,
        ``w:CannotProcessFilter``, ``a:ActionNotSupported``.
    :param reason: the ``s:Reason/s:Text``.
    :param detail: optional ``w:FaultDetail`` URI.
    :param wsman_code: ``f:WSManFault/@Code`` (decimal), e.g. 2150858752.
    :param wmi_status: for provider faults, the ``__ExtendedStatus`` fields
        (``Description``, ``Operation``, ``ParameterInfo``, ``ProviderName``,
        ``StatusCode``) rendered inside ``f:ProviderFault/f:ExtendedError``.
    """

    def __init__(
        self,
        subcode: str,
        reason: str,
        *,
        detail: Optional[str] = None,
        wsman_code: Optional[int] = None,
        wmi_status: Optional[Mapping[str, Any]] = None,
        http_status: int = 500,
    ) -> None:
        super().__init__(f"{subcode}: {reason}")
        self.subcode = subcode
        self.reason = reason
        self.detail = detail
        self.wsman_code = wsman_code
        self.wmi_status = dict(wmi_status) if wmi_status else None
        self.http_status = http_status


@dataclass
class MethodOutcome:
    """Result of an Invoke: ``ReturnValue`` and the out parameters by name."""

    return_value: int
    out: dict[str, Any] = field(default_factory=dict)


class Repository(Protocol):
    """What one simulated node exposes to the WS-Man dispatcher.

    All lookups are case-insensitive in namespace, class, property and key
    names, as WMI is.  Methods raise :class:`CimError` for anything Windows
    would answer with a fault (unknown class -> ``a:DestinationUnreachable``
    with the WMI "not found" code; bad key names -> ``w:InvalidSelectors``).

    Optional attributes the dispatcher reads when present: ``product_version`` (Identify)
    and ``winrm`` (a :class:`hvsim.behaviour.WinrmBehaviour`: how this node's WinRM words
    what real hosts word differently).
    """

    @property
    def hostname(self) -> str:
        """NetBIOS name of the node (``Machine`` in faults, host part of WMI paths)."""
        ...

    def namespaces(self) -> Sequence[str]:
        """Namespaces this node serves (``root/MSCluster`` only on cluster nodes)."""
        ...

    def class_def(self, namespace: str, class_name: str) -> Optional[ClassDef]:
        """Schema of a class, or None when the class does not exist in that namespace."""
        ...

    def is_a(self, namespace: str, class_name: str, base: str) -> bool:
        """True when ``class_name`` equals ``base`` or derives from it."""
        ...

    def instances(self, namespace: str, class_name: str) -> Iterable[CimInstance]:
        """Every instance of the class and its subclasses (association classes included:
        their reference properties are :class:`CimRef` values)."""
        ...

    def get(self, ref: CimRef) -> CimInstance:
        """The instance a reference names; CimError(a:DestinationUnreachable) if none."""
        ...

    def invoke(self, target: CimRef, method: str, params: Mapping[str, Any]) -> MethodOutcome:
        """Run a method on an instance; parameters already decoded per the MethodDef."""
        ...
