"""Dispatcher tests: real SOAP envelopes in, parsed WS-Man responses out (hyperv-wmi.md 1.5-1.11).

A small in-test repository stands in for the Hyper-V world: a VM and a host, their
settings, a RASD family with subclasses, two association classes, a job, services with
methods that return 4096 + a job, embedded instances in and out, uint64 arrays.
Fault shapes are compared with the recorded Windows faults in
tests/fixtures/shared/wsman-soap.
"""

from __future__ import annotations

import datetime as dt
import threading
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, Iterable, List, Mapping, Sequence, Tuple

import pytest
from lxml import etree

from hvsim import cimxml
from hvsim.cim import (
    NS_VIRT,
    WMI_URI_PREFIX,
    CimError,
    CimInstance,
    CimInterval,
    CimRef,
    ClassDef,
    MethodDef,
    MethodOutcome,
    PropDef,
)
from hvsim.faults import WSMAN_FAULT, FaultPlan
from hvsim.requestlog import RequestLog
from hvsim.wsman import Dispatcher

FIXTURES = (Path(__file__).resolve().parents[2] / "tests/fixtures/shared/wsman-soap")

S = "http://www.w3.org/2003/05/soap-envelope"
A = "http://schemas.xmlsoap.org/ws/2004/08/addressing"
N = "http://schemas.xmlsoap.org/ws/2004/09/enumeration"
W = "http://schemas.dmtf.org/wbem/wsman/1/wsman.xsd"
B = "http://schemas.dmtf.org/wbem/wsman/1/cimbinding.xsd"
F = "http://schemas.microsoft.com/wbem/wsman/1/wsmanfault"
CIM = "http://schemas.dmtf.org/wbem/wscim/1/common"
XSI = "http://www.w3.org/2001/XMLSchema-instance"
WSMID = "http://schemas.dmtf.org/wbem/wsman/identity/1/wsmanidentity.xsd"
ANON = "http://schemas.xmlsoap.org/ws/2004/08/addressing/role/anonymous"
NSMAP = {"s": S, "a": A, "n": N, "w": W, "b": B, "f": F, "cim": CIM, "xsi": XSI, "wsmid": WSMID}

GET = "http://schemas.xmlsoap.org/ws/2004/09/transfer/Get"
PUT = "http://schemas.xmlsoap.org/ws/2004/09/transfer/Put"
ENUMERATE = "http://schemas.xmlsoap.org/ws/2004/09/enumeration/Enumerate"
PULL = "http://schemas.xmlsoap.org/ws/2004/09/enumeration/Pull"
RELEASE = "http://schemas.xmlsoap.org/ws/2004/09/enumeration/Release"
WQL = "http://schemas.microsoft.com/wbem/wsman/1/WQL"
ASSOC = "http://schemas.dmtf.org/wbem/wsman/1/cimbinding/associationFilter"

V2 = WMI_URI_PREFIX + "root/virtualization/v2/"
STAR = V2 + "*"

VM_GUID = "6A1C0B7E-3D55-4B6F-9F0A-2C7E51D4A9B3"
VM2_GUID = "11111111-2222-3333-4444-555555555555"
HOST = "HV01"
T0 = dt.datetime(2024, 5, 1, 10, 11, 12, 123000, tzinfo=dt.timezone.utc)

# --------------------------------------------------------------------------- toy schema

P = PropDef
CS = ClassDef(
    "Msvm_ComputerSystem",
    "CIM_ComputerSystem",
    ("CreationClassName", "Name"),
    (
        P("Caption", "string"),
        P("CreationClassName", "string"),
        P("Dedicated", "uint16", True),
        P("ElementName", "string"),
        P("EnabledState", "uint16"),
        P("InstallDate", "datetime"),
        P("IsSaved", "boolean"),
        P("Name", "string"),
        P("OnTimeInMilliseconds", "uint64"),
        P("ProcessID", "uint32"),
        P("Uptime", "datetime"),
    ),
    (
        MethodDef(
            "RequestStateChange",
            (P("RequestedState", "uint16"), P("TimeoutPeriod", "datetime")),
            (P("Job", "reference", ref_class="CIM_ConcreteJob"),),
        ),
    ),
)
VSSD = ClassDef(
    "Msvm_VirtualSystemSettingData",
    "CIM_VirtualSystemSettingData",
    ("InstanceID",),
    (
        P("CreationTime", "datetime"),
        P("ElementName", "string"),
        P("InstanceID", "string"),
        P("Notes", "string", True),
        P("Parent", "string"),
        P("VirtualSystemIdentifier", "string"),
    ),
)
CIM_RASD = ClassDef(
    "CIM_ResourceAllocationSettingData",
    None,
    ("InstanceID",),
    (
        P("ElementName", "string"),
        P("HostResource", "string", True),
        P("InstanceID", "string"),
        P("ResourceType", "uint16"),
    ),
)
RASD = ClassDef(
    "Msvm_ResourceAllocationSettingData",
    "CIM_ResourceAllocationSettingData",
    ("InstanceID",),
    (P("Address", "string"),),  # the rest is inherited: the dispatcher walks the superclass chain
)
SASD = ClassDef(
    "Msvm_StorageAllocationSettingData",
    "CIM_ResourceAllocationSettingData",
    ("InstanceID",),
    (
        P("ElementName", "string"),
        P("HostResource", "string", True),
        P("InstanceID", "string"),
        P("Parent", "string"),
        P("ResourceType", "uint16"),
    ),
)
SDS = ClassDef(
    "Msvm_SettingsDefineState",
    None,
    ("ManagedElement", "SettingData"),
    (
        P("ManagedElement", "reference", ref_class="CIM_ManagedElement"),
        P("SettingData", "reference", ref_class="CIM_SettingData"),
    ),
    is_association=True,
)
VSSDC = ClassDef(
    "Msvm_VirtualSystemSettingDataComponent",
    None,
    ("GroupComponent", "PartComponent"),
    (
        P("GroupComponent", "reference", ref_class="CIM_VirtualSystemSettingData"),
        P("PartComponent", "reference", ref_class="CIM_ManagedElement"),
    ),
    is_association=True,
)
AJE = ClassDef(
    "Msvm_AffectedJobElement",
    None,
    ("AffectedElement", "AffectingElement"),
    (
        P("AffectedElement", "reference"),
        P("AffectingElement", "reference"),
        P("ElementEffects", "uint16", True),
    ),
    is_association=True,
)
ERROR = ClassDef(
    "Msvm_Error",
    "CIM_Error",
    (),
    (
        P("CIMStatusCode", "uint32"),
        P("ErrorType", "uint16"),
        P("Message", "string"),
        P("MessageArguments", "string", True),
        P("MessageID", "string"),
        P("OwningEntity", "string"),
    ),
)
JOB = ClassDef(
    "Msvm_ConcreteJob",
    "CIM_ConcreteJob",
    ("InstanceID",),
    (
        P("ElapsedTime", "datetime"),
        P("ErrorCode", "uint16"),
        P("InstanceID", "string"),
        P("JobState", "uint16"),
        P("PercentComplete", "uint16"),
    ),
    (MethodDef("GetErrorEx", (), (P("Errors", "instance", True, "Msvm_Error"),)),),
)
SNAP_SETTINGS = ClassDef(
    "Msvm_VirtualSystemSnapshotSettingData",
    None,
    ("InstanceID",),
    (
        P("ConsistencyLevel", "uint8"),
        P("ElementName", "string"),
        P("IgnoreNonSnapshottableDisks", "boolean"),
        P("InstanceID", "string"),
    ),
)
VHDSD = ClassDef(
    "Msvm_VirtualHardDiskSettingData",
    None,
    ("InstanceID",),
    (
        P("BlockSize", "uint32"),
        P("Format", "uint16"),
        P("InstanceID", "string"),
        P("MaxInternalSize", "uint64"),
        P("ParentPath", "string"),
        P("Path", "string"),
        P("Type", "uint16"),
    ),
)
SERVICE_KEYS = ("CreationClassName", "Name", "SystemCreationClassName", "SystemName")
SERVICE_PROPS = tuple(P(k, "string") for k in SERVICE_KEYS)
SNAP_SVC = ClassDef(
    "Msvm_VirtualSystemSnapshotService",
    "CIM_Service",
    SERVICE_KEYS,
    SERVICE_PROPS,
    (
        MethodDef(
            "CreateSnapshot",
            (
                P("AffectedSystem", "reference", ref_class="CIM_ComputerSystem"),
                P("SnapshotSettings", "instance", ref_class="Msvm_VirtualSystemSnapshotSettingData"),
                P("SnapshotType", "uint16"),
            ),
            (
                P("Job", "reference", ref_class="CIM_ConcreteJob"),
                P("ResultingSnapshot", "reference", ref_class="CIM_VirtualSystemSettingData"),
            ),
        ),
        MethodDef("Fail", (P("How", "string"),), ()),
    ),
)
IMG_SVC = ClassDef(
    "Msvm_ImageManagementService",
    "CIM_Service",
    SERVICE_KEYS,
    SERVICE_PROPS,
    (
        MethodDef(
            "GetVirtualHardDiskSettingData",
            (P("Path", "string"),),
            (
                P("Job", "reference"),
                P("SettingData", "instance", ref_class="Msvm_VirtualHardDiskSettingData"),
            ),
        ),
        MethodDef(
            "GetVirtualDiskChanges",
            (
                P("Path", "string"),
                P("LimitId", "string"),
                P("ByteOffset", "uint64"),
                P("ByteLength", "uint64"),
            ),
            (
                P("ChangedByteLengths", "uint64", True),
                P("ChangedByteOffsets", "uint64", True),
                P("Job", "reference"),
                P("ProcessedByteLength", "uint64"),
            ),
        ),
        MethodDef(
            "AddResourceSettings",
            (P("AffectedConfiguration", "reference"), P("ResourceSettings", "instance", True)),
            (P("Job", "reference"), P("ResultingResourceSettings", "reference", True)),
        ),
    ),
)
CLASSES = [
    CS,
    VSSD,
    CIM_RASD,
    RASD,
    SASD,
    SDS,
    VSSDC,
    AJE,
    ERROR,
    JOB,
    SNAP_SETTINGS,
    VHDSD,
    SNAP_SVC,
    IMG_SVC,
]


@dataclass
class Call:
    target: CimRef
    method: str
    params: Mapping[str, Any]


@dataclass
class ToyRepo:
    """A Repository with a handful of instances; methods record their calls."""

    hostname: str = HOST
    product_version: str = "OS: 10.0.20348 SP: 0.0 Stack: 3.0"
    instances_by_class: Dict[str, List[CimInstance]] = field(default_factory=dict)
    calls: List[Call] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def namespaces(self) -> Sequence[str]:
        return [NS_VIRT, "root/MSCluster"]

    def class_names(self, namespace: str) -> Iterable[str]:
        return [c.name for c in CLASSES] if namespace.lower() == NS_VIRT else []

    def class_def(self, namespace: str, class_name: str) -> ClassDef | None:
        if namespace.lower() != NS_VIRT:
            return None
        return next((c for c in CLASSES if c.name.lower() == class_name.lower()), None)

    def is_a(self, namespace: str, class_name: str, base: str) -> bool:
        cdef = self.class_def(namespace, class_name)
        seen = 0
        while cdef is not None and seen < 10:
            if cdef.name.lower() == base.lower():
                return True
            cdef = self.class_def(namespace, cdef.superclass) if cdef.superclass else None
            seen += 1
        return class_name.lower() == base.lower()

    def add(self, inst: CimInstance) -> CimInstance:
        cdef = self.class_def(inst.namespace, inst.class_name)
        assert cdef is not None
        inst.path = CimRef(inst.namespace, cdef.name, tuple((k, str(inst.properties[k])) for k in cdef.keys))
        self.instances_by_class.setdefault(cdef.name, []).append(inst)
        return inst

    def instances(self, namespace: str, class_name: str) -> Iterable[CimInstance]:
        out: List[CimInstance] = []
        for cls, items in self.instances_by_class.items():
            if self.is_a(namespace, cls, class_name):
                out.extend(items)
        return out

    def get(self, ref: CimRef) -> CimInstance:
        for items in self.instances_by_class.values():
            for inst in items:
                if (
                    inst.path is not None
                    and inst.path.same_as(CimRef(ref.namespace, inst.path.class_name, ref.keys))
                    and self.is_a(ref.namespace, inst.class_name, ref.class_name)
                ):
                    return inst
        raise CimError(
            "a:DestinationUnreachable",
            "The WS-Management service cannot process the request. The service cannot find the "
            "resource identified by the resource URI and selectors. ",
            wsman_code=2150858752,
        )

    def invoke(self, target: CimRef, method: str, params: Mapping[str, Any]) -> MethodOutcome:
        with self.lock:
            self.calls.append(Call(target, method, dict(params)))
        if method == "CreateSnapshot":
            job = self.add(
                CimInstance(
                    "Msvm_ConcreteJob", NS_VIRT, {"InstanceID": str(uuid.uuid4()).upper(), "JobState": 4}
                )
            )
            return MethodOutcome(4096, {"Job": job.path, "ResultingSnapshot": None})
        if method == "RequestStateChange":
            return MethodOutcome(32775, {})
        if method == "GetErrorEx":
            return MethodOutcome(
                0,
                {
                    "Errors": [
                        CimInstance(
                            "Msvm_Error",
                            NS_VIRT,
                            {
                                "CIMStatusCode": 1,
                                "ErrorType": 4,
                                "Message": "Failed to create checkpoint <'web01'> & more",
                                "MessageArguments": ["web01", VM_GUID],
                                "MessageID": "32770",
                                "OwningEntity": "Microsoft-Windows-Hyper-V-VMMS",
                            },
                        ),
                        CimInstance("Msvm_Error", NS_VIRT, {"CIMStatusCode": 2, "Message": "second"}),
                    ]
                },
            )
        if method == "GetVirtualHardDiskSettingData":
            return MethodOutcome(
                0,
                {
                    "Job": None,
                    "SettingData": CimInstance(
                        "Msvm_VirtualHardDiskSettingData",
                        NS_VIRT,
                        {
                            "BlockSize": 33554432,
                            "Format": 3,
                            "InstanceID": "x",
                            "MaxInternalSize": 137438953472,
                            "ParentPath": None,
                            "Path": params.get("Path"),
                            "Type": 3,
                        },
                    ),
                },
            )
        if method == "GetVirtualDiskChanges":
            return MethodOutcome(
                0,
                {
                    "ChangedByteOffsets": [0, 2**33, 2**40 + 4096],
                    "ChangedByteLengths": [4096, 2**21, 2**32 + 1],
                    "ProcessedByteLength": 2**41,
                },
            )
        if method == "AddResourceSettings":
            refs = [
                CimRef(NS_VIRT, "Msvm_StorageAllocationSettingData", (("InstanceID", f"new{i}"),))
                for i, _ in enumerate(params.get("ResourceSettings") or [])
            ]
            return MethodOutcome(0, {"ResultingResourceSettings": refs})
        if method == "Fail":
            raise CimError(
                "w:InternalError",
                "The WS-Management service cannot process the request. The WMI "
                "service reported that the WMI provider could not perform the requested operation. ",
                wsman_code=2150859010,
                wmi_status={
                    "Description": "The virtual machine is locked",
                    "Operation": "ExecMethod",
                    "ParameterInfo": "Msvm_VirtualSystemSnapshotService",
                    "ProviderName": "VmmsWmiInstanceAndMethodProvider",
                    "StatusCode": 2,
                },
            )
        raise AssertionError(method)


def vssd_id(guid: str) -> str:
    return f"Microsoft:{guid}"


def sasd_id(guid: str, n: int) -> str:
    return f"Microsoft:{guid}\\83F8638B-8DCA-4152-9EDA-2CA8B33039B4\\{n}\\0\\L"


def build_repo() -> ToyRepo:
    repo = ToyRepo()
    vm = repo.add(
        CimInstance(
            "Msvm_ComputerSystem",
            NS_VIRT,
            {
                "Caption": "Virtual Machine",
                "CreationClassName": "Msvm_ComputerSystem",
                "Dedicated": [],
                "ElementName": "web01",
                "EnabledState": 2,
                "InstallDate": T0,
                "IsSaved": False,
                "Name": VM_GUID,
                "OnTimeInMilliseconds": 2**40,
                "ProcessID": None,
                "Uptime": CimInterval(93784.5),
            },
        )
    )
    vm2 = repo.add(
        CimInstance(
            "Msvm_ComputerSystem",
            NS_VIRT,
            {
                "Caption": "Virtual Machine",
                "CreationClassName": "Msvm_ComputerSystem",
                "ElementName": 'db\'s "01"',
                "EnabledState": 3,
                "Name": VM2_GUID,
            },
        )
    )
    repo.add(
        CimInstance(
            "Msvm_ComputerSystem",
            NS_VIRT,
            {
                "Caption": "Hosting Computer System",
                "CreationClassName": "Msvm_ComputerSystem",
                "ElementName": HOST,
                "EnabledState": 2,
                "Name": HOST,
                "Dedicated": [2, 30],
            },
        )
    )
    for guid, target in ((VM_GUID, vm), (VM2_GUID, vm2)):
        vs = repo.add(
            CimInstance(
                "Msvm_VirtualSystemSettingData",
                NS_VIRT,
                {
                    "CreationTime": T0,
                    "ElementName": target.properties["ElementName"],
                    "InstanceID": vssd_id(guid),
                    "Notes": ["first line", "second <line> & more"],
                    "VirtualSystemIdentifier": guid,
                },
            )
        )
        repo.add(
            CimInstance(
                "Msvm_SettingsDefineState", NS_VIRT, {"ManagedElement": target.path, "SettingData": vs.path}
            )
        )
        parts = [
            repo.add(
                CimInstance(
                    "Msvm_ResourceAllocationSettingData",
                    NS_VIRT,
                    {
                        "Address": "0",
                        "ElementName": "SCSI Controller",
                        "InstanceID": f"Microsoft:{guid}\\ctrl",
                        "ResourceType": 6,
                    },
                )
            ),
            repo.add(
                CimInstance(
                    "Msvm_StorageAllocationSettingData",
                    NS_VIRT,
                    {
                        "ElementName": "Hard Disk Image",
                        "HostResource": [f"C:\\VMs\\{guid}.vhdx"],
                        "InstanceID": sasd_id(guid, 0),
                        "ResourceType": 31,
                    },
                )
            ),
            repo.add(
                CimInstance(
                    "Msvm_StorageAllocationSettingData",
                    NS_VIRT,
                    {
                        "ElementName": "Hard Disk Image",
                        "HostResource": [f"C:\\VMs\\{guid}-data.vhdx"],
                        "InstanceID": sasd_id(guid, 1),
                        "ResourceType": 31,
                    },
                )
            ),
        ]
        for part in parts:
            repo.add(
                CimInstance(
                    "Msvm_VirtualSystemSettingDataComponent",
                    NS_VIRT,
                    {"GroupComponent": vs.path, "PartComponent": part.path},
                )
            )
    for cls in ("Msvm_VirtualSystemSnapshotService", "Msvm_ImageManagementService"):
        repo.add(
            CimInstance(
                cls,
                NS_VIRT,
                {
                    "CreationClassName": cls,
                    "Name": "vhdsvc" if "Image" in cls else "vssnapsvc",
                    "SystemCreationClassName": "Msvm_ComputerSystem",
                    "SystemName": HOST,
                },
            )
        )
    job = repo.add(
        CimInstance(
            "Msvm_ConcreteJob",
            NS_VIRT,
            {
                "ElapsedTime": CimInterval(5),
                "ErrorCode": 32768,
                "InstanceID": "0E3C5F0A-77B2-4D7C-8E21-9B4B0C6D3A11",
                "JobState": 10,
                "PercentComplete": 100,
            },
        )
    )
    repo.add(
        CimInstance(
            "Msvm_AffectedJobElement",
            NS_VIRT,
            {"AffectedElement": vm.path, "AffectingElement": job.path, "ElementEffects": [5]},
        )
    )
    return repo


# --------------------------------------------------------------------------- request helpers


def q(ns: str, local: str) -> str:
    return f"{{{ns}}}{local}"


def envelope(
    action: str | None,
    uri: str | None = None,
    body: Any = None,
    *,
    selectors: Sequence[Tuple[str, str]] = (),
    max_envelope: int | None = 153600,
    message_id: str | None = "auto",
    timeout: str | None = "PT60S",
) -> bytes:
    """A request shaped like pywinrm's / the plugin's (hyperv-wmi.md 1.4)."""
    env = etree.Element(
        q(S, "Envelope"),
        nsmap={"s": S, "a": A, "n": N, "w": W, "p": "http://schemas.microsoft.com/wbem/wsman/1/wsman.xsd"},
    )
    header = etree.SubElement(env, q(S, "Header"))
    etree.SubElement(header, q(A, "To")).text = "http://127.0.0.1:5985/wsman"
    if uri is not None:
        r = etree.SubElement(header, q(W, "ResourceURI"))
        r.set(q(S, "mustUnderstand"), "true")
        r.text = uri
    reply = etree.SubElement(header, q(A, "ReplyTo"))
    etree.SubElement(reply, q(A, "Address")).text = ANON
    if action is not None:
        etree.SubElement(header, q(A, "Action")).text = action
    if max_envelope is not None:
        etree.SubElement(header, q(W, "MaxEnvelopeSize")).text = str(max_envelope)
    if message_id == "auto":
        message_id = f"uuid:{uuid.uuid4()}"
    if message_id is not None:
        etree.SubElement(header, q(A, "MessageID")).text = message_id
    loc = etree.SubElement(header, q(W, "Locale"))
    loc.set("{http://www.w3.org/XML/1998/namespace}lang", "en-US")
    loc.set(q(S, "mustUnderstand"), "false")
    if timeout is not None:
        etree.SubElement(header, q(W, "OperationTimeout")).text = timeout
    if selectors:
        sset = etree.SubElement(header, q(W, "SelectorSet"))
        for name, value in selectors:
            sel = etree.SubElement(sset, q(W, "Selector"), Name=name)
            sel.text = value
    b = etree.SubElement(env, q(S, "Body"))
    if body is not None:
        b.append(body)
    return bytes(etree.tostring(env))


@dataclass
class Ctx:
    username: str = "HV01\\backup"


@dataclass
class Sim:
    repo: ToyRepo
    faults: FaultPlan
    log: RequestLog
    disp: Dispatcher
    now: List[float]

    def send(self, data: bytes) -> Tuple[int, Any]:
        status, out = self.disp.handle(data, Ctx())
        return status, (etree.fromstring(out) if out else None)

    def ok(self, data: bytes) -> Any:
        status, root = self.send(data)
        assert status == 200, etree.tostring(root).decode()
        return root

    def fault(self, data: bytes) -> Any:
        status, root = self.send(data)
        assert status == 500
        assert root.find("s:Body/s:Fault", NSMAP) is not None, etree.tostring(root).decode()
        return root


@pytest.fixture
def sim() -> Sim:
    repo = build_repo()
    faults = FaultPlan()
    log = RequestLog()
    now = [1000.0]
    disp = Dispatcher(repo, faults, log, enumeration_timeout_s=240, clock=lambda: now[0])
    return Sim(repo, faults, log, disp, now)


def subcode(root: Any) -> str:
    return str(root.findtext("s:Body/s:Fault/s:Code/s:Subcode/s:Value", namespaces=NSMAP))


def wsman_code(root: Any) -> int:
    return int(root.find("s:Body/s:Fault/s:Detail/f:WSManFault", NSMAP).get("Code"))


def fault_detail(root: Any) -> str | None:
    return root.findtext("s:Body/s:Fault/s:Detail/w:FaultDetail", namespaces=NSMAP)


def shape(el: Any, prefix: str = "") -> List[str]:
    """Tag paths of the fault part of an envelope (for structure comparison with fixtures)."""
    out = []
    for child in el:
        if not isinstance(child.tag, str):
            continue
        local = etree.QName(child).localname
        ns = etree.QName(child).namespace
        tag = f"{{{ns}}}{local}" if ns in (S, A, W, F) else "{*}" + local
        path = f"{prefix}/{tag}"
        out.append(path)
        out.extend(shape(child, path))
    return out


def fixture_root(name: str) -> Any:
    return etree.fromstring((FIXTURES / name).read_bytes())


def get_req(cls: str, selectors: Sequence[Tuple[str, str]], **kw: Any) -> bytes:
    return envelope(GET, V2 + cls, selectors=selectors, **kw)


def vm_selectors(guid: str = VM_GUID) -> List[Tuple[str, str]]:
    return [("CreationClassName", "Msvm_ComputerSystem"), ("Name", guid)]


def enumerate_body(
    *,
    optimize: bool = False,
    max_elements: int | None = None,
    mode: str | None = None,
    wql: str | None = None,
    filter_el: Any = None,
) -> Any:
    en = etree.Element(q(N, "Enumerate"))
    if optimize:
        etree.SubElement(en, q(W, "OptimizeEnumeration"))
    if max_elements is not None:
        etree.SubElement(en, q(W, "MaxElements")).text = str(max_elements)
    if mode:
        etree.SubElement(en, q(W, "EnumerationMode")).text = mode
    if wql is not None:
        f = etree.SubElement(en, q(W, "Filter"), Dialect=WQL)
        f.text = wql
    if filter_el is not None:
        en.append(filter_el)
    return en


def pull_body(context: str, max_elements: int | None = None) -> Any:
    pull = etree.Element(q(N, "Pull"))
    etree.SubElement(pull, q(N, "EnumerationContext")).text = context
    if max_elements is not None:
        etree.SubElement(pull, q(N, "MaxElements")).text = str(max_elements)
    return pull


def epr(cls: str, selectors: Sequence[Tuple[str, str]], tag: str) -> Any:
    el = etree.Element(tag)
    etree.SubElement(el, q(A, "Address")).text = ANON
    rp = etree.SubElement(el, q(A, "ReferenceParameters"))
    etree.SubElement(rp, q(W, "ResourceURI")).text = V2 + cls
    sset = etree.SubElement(rp, q(W, "SelectorSet"))
    for n, v in selectors:
        etree.SubElement(sset, q(W, "Selector"), Name=n).text = v
    return el


def items_of(root: Any) -> List[Any]:
    for path in ("s:Body/n:EnumerateResponse/w:Items", "s:Body/n:PullResponse/n:Items"):
        el = root.find(path, NSMAP)
        if el is not None:
            return [c for c in el if isinstance(c.tag, str)]
    return []


def enumerate_all(sim: Sim, body: Any, uri: str = STAR, pull_max: int = 50, **kw: Any) -> List[Any]:
    """Enumerate then Pull to the end, as a client does; returns every item element."""
    root = sim.ok(envelope(ENUMERATE, uri, body, **kw))
    out = items_of(root)
    resp = root.find("s:Body/n:EnumerateResponse", NSMAP)
    done = resp.find("w:EndOfSequence", NSMAP) is not None
    context = resp.findtext("n:EnumerationContext", namespaces=NSMAP)
    while not done:
        root = sim.ok(envelope(PULL, uri, pull_body(context, pull_max), **kw))
        out.extend(items_of(root))
        pr = root.find("s:Body/n:PullResponse", NSMAP)
        done = pr.find("n:EndOfSequence", NSMAP) is not None
        context = pr.findtext("n:EnumerationContext", namespaces=NSMAP)
    return out


def prop(el: Any, name: str) -> Any:
    return el.find(f"{{{etree.QName(el).namespace}}}{name}")


def props(el: Any, name: str) -> List[Any]:
    return el.findall(f"{{{etree.QName(el).namespace}}}{name}")


# --------------------------------------------------------------------------- Identify, headers


def test_identify_answers_like_windows_without_addressing_headers(sim: Sim) -> None:
    env = etree.Element(q(S, "Envelope"), nsmap={"s": S, "wsmid": WSMID})
    etree.SubElement(env, q(S, "Header"))
    etree.SubElement(etree.SubElement(env, q(S, "Body")), q(WSMID, "Identify"))
    root = sim.ok(etree.tostring(env))
    resp = root.find("s:Body/wsmid:IdentifyResponse", NSMAP)
    assert resp.findtext("wsmid:ProtocolVersion", namespaces=NSMAP) == W
    assert resp.findtext("wsmid:ProductVendor", namespaces=NSMAP) == "Microsoft Corporation"
    assert resp.findtext("wsmid:ProductVersion", namespaces=NSMAP) == sim.repo.product_version
    assert sim.log.count("Identify") == 1


def test_response_headers_echo_message_id(sim: Sim) -> None:
    mid = "uuid:0B7C1D4E-2F6A-4C1B-9D8E-5A3F7E1C2B90"
    root = sim.ok(get_req("Msvm_ComputerSystem", vm_selectors(), message_id=mid))
    h = root.find("s:Header", NSMAP)
    assert h.findtext("a:Action", namespaces=NSMAP) == GET + "Response"
    assert h.findtext("a:RelatesTo", namespaces=NSMAP) == mid
    assert h.findtext("a:To", namespaces=NSMAP) == ANON
    assert h.findtext("a:MessageID", namespaces=NSMAP).startswith("uuid:")
    assert h.findtext("a:MessageID", namespaces=NSMAP) != mid


def test_malformed_xml_is_a_fault(sim: Sim) -> None:
    root = sim.fault(b"<s:Envelope xmlns:s='http://www.w3.org/2003/05/soap-envelope'><s:Body>")
    assert subcode(root) == "w:SchemaValidationError"


def test_missing_message_id_is_header_required_fault(sim: Sim) -> None:
    root = sim.fault(get_req("Msvm_ComputerSystem", vm_selectors(), message_id=None))
    assert subcode(root) == "a:MessageInformationHeaderRequired"
    assert (
        root.findtext("s:Header/a:Action", namespaces=NSMAP)
        == "http://schemas.xmlsoap.org/ws/2004/08/addressing/fault"
    )


def test_invalid_timeout_matches_recorded_windows_fault(sim: Sim) -> None:
    mid = f"uuid:{uuid.uuid4()}"
    root = sim.fault(get_req("Msvm_ComputerSystem", vm_selectors(), timeout="PT-1S", message_id=mid))
    recorded = fixture_root(
        "pypsrp-extracted-test_psrp_is_alive_other_wsman_error-msg3-fault-a_InvalidMessageInformationHeader.xml"
    )
    assert subcode(root) == subcode(recorded) == "a:InvalidMessageInformationHeader"
    assert wsman_code(root) == wsman_code(recorded) == 2150858767
    assert shape(root.find("s:Body", NSMAP)) == shape(recorded.find("s:Body", NSMAP))
    assert root.findtext("s:Header/a:Action", namespaces=NSMAP) == recorded.findtext(
        "s:Header/a:Action", namespaces=NSMAP
    )
    assert root.findtext("s:Header/a:RelatesTo", namespaces=NSMAP) == mid
    assert "PT-1S" in root.findtext("s:Body/s:Fault/s:Detail/f:WSManFault/f:Message", namespaces=NSMAP)
    assert root.find("s:Body/s:Fault/s:Detail/f:WSManFault", NSMAP).get("Machine") == HOST


def test_put_and_unknown_actions_are_not_supported(sim: Sim) -> None:
    assert (
        subcode(sim.fault(envelope(PUT, V2 + "Msvm_ComputerSystem", selectors=vm_selectors())))
        == "a:ActionNotSupported"
    )
    assert (
        subcode(sim.fault(envelope("http://example.test/Frobnicate", V2 + "Msvm_ComputerSystem")))
        == "a:ActionNotSupported"
    )


# --------------------------------------------------------------------------- Get


def test_get_renders_instance_like_winrm(sim: Sim) -> None:
    root = sim.ok(get_req("msvm_computersystem", vm_selectors(), max_envelope=512000))
    el = root.find("s:Body", NSMAP)[0]
    ns = V2 + "Msvm_ComputerSystem"
    assert el.tag == q(ns, "Msvm_ComputerSystem")
    assert el.get(q(XSI, "type")) == "p:Msvm_ComputerSystem_Type"
    assert el.nsmap["p"] == ns
    names = [etree.QName(c).localname for c in el]
    # schema order; the empty array Dedicated is absent
    assert names == [
        "Caption",
        "CreationClassName",
        "ElementName",
        "EnabledState",
        "InstallDate",
        "IsSaved",
        "Name",
        "OnTimeInMilliseconds",
        "ProcessID",
        "Uptime",
    ]
    assert prop(el, "EnabledState").text == "2"
    assert prop(el, "IsSaved").text == "false"
    assert prop(el, "OnTimeInMilliseconds").text == str(2**40)
    assert prop(el, "ProcessID").get(q(XSI, "nil")) == "true"
    assert prop(el, "InstallDate").findtext("cim:Datetime", namespaces=NSMAP) == "2024-05-01T10:11:12.123000Z"
    assert prop(el, "Uptime").findtext("cim:Interval", namespaces=NSMAP) == "P1DT2H3M4.5S"
    host = sim.ok(get_req("Msvm_ComputerSystem", vm_selectors(HOST)))
    assert [d.text for d in props(host.find("s:Body", NSMAP)[0], "Dedicated")] == ["2", "30"]


def test_get_subclass_instance_through_base_class_uri_uses_most_derived_class(sim: Sim) -> None:
    root = sim.ok(get_req("CIM_ResourceAllocationSettingData", [("InstanceID", sasd_id(VM_GUID, 0))]))
    el = root.find("s:Body", NSMAP)[0]
    assert etree.QName(el).localname == "Msvm_StorageAllocationSettingData"
    assert etree.QName(el).namespace == V2 + "Msvm_StorageAllocationSettingData"
    assert prop(el, "InstanceID").text == sasd_id(VM_GUID, 0)
    assert [h.text for h in props(el, "HostResource")] == [f"C:\\VMs\\{VM_GUID}.vhdx"]


def test_get_inherited_properties_come_from_superclass_schema(sim: Sim) -> None:
    root = sim.ok(
        get_req("Msvm_ResourceAllocationSettingData", [("InstanceID", f"Microsoft:{VM_GUID}\\ctrl")])
    )
    el = root.find("s:Body", NSMAP)[0]
    assert prop(el, "Address").text == "0"
    assert prop(el, "ResourceType").text == "6"
    assert prop(el, "ElementName").text == "SCSI Controller"


def test_get_with_unexpected_selector_matches_windows_fault(sim: Sim) -> None:
    root = sim.fault(get_req("Msvm_ComputerSystem", [*vm_selectors(), ("Bogus", "1")]))
    recorded = fixture_root(
        "pypsrp-extracted-test_psrp_is_alive_invalid_selectors-msg4-fault-w_InvalidSelectors.xml"
    )
    assert subcode(root) == subcode(recorded) == "w:InvalidSelectors"
    assert fault_detail(root) == fault_detail(recorded)
    assert wsman_code(root) == wsman_code(recorded) == 2150858843
    assert shape(root.find("s:Body", NSMAP)) == shape(recorded.find("s:Body", NSMAP))
    assert root.findtext("s:Header/a:Action", namespaces=NSMAP) == recorded.findtext(
        "s:Header/a:Action", namespaces=NSMAP
    )
    assert root.find("s:Body/s:Fault/s:Code/s:Value", NSMAP).text == "s:Sender"


def test_get_with_missing_selectors(sim: Sim) -> None:
    root = sim.fault(get_req("Msvm_ComputerSystem", [("Name", VM_GUID)]))
    assert subcode(root) == "w:InvalidSelectors"
    assert fault_detail(root).endswith("/InsufficientSelectors")
    assert wsman_code(root) == 0x8033805A
    root = sim.fault(get_req("Msvm_ComputerSystem", []))
    assert fault_detail(root).endswith("/InsufficientSelectors")
    assert wsman_code(root) == 2150859002


def test_get_selector_names_are_case_insensitive(sim: Sim) -> None:
    root = sim.ok(
        get_req("Msvm_ComputerSystem", [("name", VM_GUID), ("CREATIONCLASSNAME", "Msvm_ComputerSystem")])
    )
    assert prop(root.find("s:Body", NSMAP)[0], "ElementName").text == "web01"


def test_get_of_missing_instance_is_destination_unreachable(sim: Sim) -> None:
    root = sim.fault(get_req("Msvm_ComputerSystem", vm_selectors("00000000-0000-0000-0000-000000000000")))
    assert subcode(root) == "a:DestinationUnreachable"
    assert wsman_code(root) == 2150858752
    assert (
        root.findtext("s:Header/a:Action", namespaces=NSMAP)
        == "http://schemas.xmlsoap.org/ws/2004/08/addressing/fault"
    )


@pytest.mark.parametrize(
    "uri",
    [
        V2 + "Msvm_NoSuchClass",
        WMI_URI_PREFIX + "root/nosuch/Msvm_ComputerSystem",
        WMI_URI_PREFIX + "root/MSCluster/MSCluster_Node",
    ],
)
def test_unknown_class_or_namespace_is_destination_unreachable(sim: Sim, uri: str) -> None:
    root = sim.fault(envelope(GET, uri, selectors=[("Name", "x")]))
    assert subcode(root) == "a:DestinationUnreachable"
    assert wsman_code(root) == 2150858752


def test_namespace_in_uri_is_case_insensitive(sim: Sim) -> None:
    uri = WMI_URI_PREFIX + "ROOT/Virtualization/V2/Msvm_ComputerSystem"
    root = sim.ok(envelope(GET, uri, selectors=vm_selectors()))
    assert prop(root.find("s:Body", NSMAP)[0], "Name").text == VM_GUID


# --------------------------------------------------------------------------- Enumerate / Pull / Release


def test_plain_enumeration_pages_with_pull_and_includes_subclasses(sim: Sim) -> None:
    uri = V2 + "CIM_ResourceAllocationSettingData"
    root = sim.ok(envelope(ENUMERATE, uri, enumerate_body()))
    resp = root.find("s:Body/n:EnumerateResponse", NSMAP)
    assert resp.find("w:Items", NSMAP) is None
    context = resp.findtext("n:EnumerationContext", namespaces=NSMAP)
    assert context.startswith("uuid:")
    got: List[str] = []
    batches = []
    while True:
        root = sim.ok(envelope(PULL, uri, pull_body(context, 4)))
        pr = root.find("s:Body/n:PullResponse", NSMAP)
        batch = items_of(root)
        batches.append(len(batch))
        got.extend(etree.QName(i).localname for i in batch)
        if pr.find("n:EndOfSequence", NSMAP) is not None:
            assert pr.find("n:EnumerationContext", NSMAP) is None
            break
        assert pr.findtext("n:EnumerationContext", namespaces=NSMAP) == context
    assert batches == [4, 2]
    assert sorted(got) == sorted(
        ["Msvm_ResourceAllocationSettingData"] * 2 + ["Msvm_StorageAllocationSettingData"] * 4
    )
    root = sim.fault(envelope(PULL, uri, pull_body(context, 4)))
    assert subcode(root) == "n:InvalidEnumerationContext"
    assert wsman_code(root) == 0x8033801B
    assert root.find("s:Body/s:Fault/s:Code/s:Value", NSMAP).text == "s:Receiver"
    assert sim.disp.open_enumerations() == 0


def test_optimized_enumeration_returns_first_items_in_w_items(sim: Sim) -> None:
    uri = V2 + "Msvm_ComputerSystem"
    root = sim.ok(envelope(ENUMERATE, uri, enumerate_body(optimize=True, max_elements=2)))
    resp = root.find("s:Body/n:EnumerateResponse", NSMAP)
    assert len(items_of(root)) == 2
    assert resp.find("w:EndOfSequence", NSMAP) is None
    context = resp.findtext("n:EnumerationContext", namespaces=NSMAP)
    root = sim.ok(envelope(PULL, uri, pull_body(context, 10)))
    assert len(items_of(root)) == 1
    assert root.find("s:Body/n:PullResponse/n:EndOfSequence", NSMAP) is not None


def test_optimized_enumeration_complete_in_first_response_has_windows_shape(sim: Sim) -> None:
    root = sim.ok(
        envelope(ENUMERATE, V2 + "Msvm_ComputerSystem", enumerate_body(optimize=True, max_elements=50))
    )
    recorded = fixture_root(
        "pypsrp-extracted-test_psrp_disconnect_runspaces-msg11-EnumerateResponse-shells.xml"
    )
    for r in (root, recorded):
        resp = r.find("s:Body/n:EnumerateResponse", NSMAP)
        assert [etree.QName(c).localname for c in resp] == ["EnumerationContext", "Items", "EndOfSequence"]
        assert (resp.findtext("n:EnumerationContext", namespaces=NSMAP) or "") == ""
        assert resp.find("w:EndOfSequence", NSMAP) is not None
    assert len(items_of(root)) == 3
    assert sim.disp.open_enumerations() == 0


def test_enumerate_object_and_epr(sim: Sim) -> None:
    items = enumerate_all(
        sim,
        enumerate_body(optimize=True, max_elements=10, mode="EnumerateObjectAndEPR"),
        uri=V2 + "Msvm_VirtualSystemSnapshotService",
    )
    assert len(items) == 1
    item = items[0]
    assert item.tag == q(W, "Item")
    inst, ref = item[0], item[1]
    assert etree.QName(inst).localname == "Msvm_VirtualSystemSnapshotService"
    assert ref.tag == q(A, "EndpointReference")
    assert ref.findtext("a:Address", namespaces=NSMAP) == ANON
    assert (
        ref.findtext("a:ReferenceParameters/w:ResourceURI", namespaces=NSMAP)
        == V2 + "Msvm_VirtualSystemSnapshotService"
    )
    sels = {
        s.get("Name"): s.text for s in ref.findall("a:ReferenceParameters/w:SelectorSet/w:Selector", NSMAP)
    }
    assert sels == {
        "CreationClassName": "Msvm_VirtualSystemSnapshotService",
        "Name": "vssnapsvc",
        "SystemCreationClassName": "Msvm_ComputerSystem",
        "SystemName": HOST,
    }


def test_enumerate_epr_only(sim: Sim) -> None:
    items = enumerate_all(
        sim,
        enumerate_body(optimize=True, max_elements=10, mode="EnumerateEPR"),
        uri=V2 + "Msvm_ComputerSystem",
    )
    assert {i.tag for i in items} == {q(A, "EndpointReference")}
    names = sorted(s.text for i in items for s in i.findall(".//w:Selector[@Name='Name']", NSMAP))
    assert names == sorted([HOST, VM_GUID, VM2_GUID])


def test_release_frees_the_context(sim: Sim) -> None:
    uri = V2 + "Msvm_ComputerSystem"
    root = sim.ok(envelope(ENUMERATE, uri, enumerate_body()))
    context = root.findtext("s:Body/n:EnumerateResponse/n:EnumerationContext", namespaces=NSMAP)
    assert sim.disp.open_enumerations() == 1
    rel = etree.Element(q(N, "Release"))
    etree.SubElement(rel, q(N, "EnumerationContext")).text = context
    root = sim.ok(envelope(RELEASE, uri, rel))
    assert root.findtext("s:Header/a:Action", namespaces=NSMAP) == RELEASE + "Response"
    assert sim.disp.open_enumerations() == 0
    assert subcode(sim.fault(envelope(RELEASE, uri, rel))) == "n:InvalidEnumerationContext"


def test_enumeration_context_expires_after_idle_timeout(sim: Sim) -> None:
    uri = V2 + "Msvm_ComputerSystem"
    root = sim.ok(envelope(ENUMERATE, uri, enumerate_body()))
    context = root.findtext("s:Body/n:EnumerateResponse/n:EnumerationContext", namespaces=NSMAP)
    sim.now[0] += 200
    assert len(items_of(sim.ok(envelope(PULL, uri, pull_body(context, 1))))) == 1
    sim.now[0] += 239  # idle time counts from the last Pull
    assert len(items_of(sim.ok(envelope(PULL, uri, pull_body(context, 1))))) == 1
    sim.now[0] += 241
    root = sim.fault(envelope(PULL, uri, pull_body(context, 1)))
    assert subcode(root) == "n:InvalidEnumerationContext"
    assert (
        root.findtext("s:Header/a:Action", namespaces=NSMAP)
        == "http://schemas.xmlsoap.org/ws/2004/09/enumeration/fault"
    )


# --------------------------------------------------------------------------- WQL


def test_wql_select_where_on_star_uri(sim: Sim) -> None:
    items = enumerate_all(
        sim,
        enumerate_body(
            optimize=True,
            max_elements=1,
            mode="EnumerateObjectAndEPR",
            wql='SELECT * FROM Msvm_ComputerSystem WHERE Caption = "Virtual Machine"',
        ),
    )
    names = sorted(prop(i[0], "Name").text for i in items)
    assert names == sorted([VM_GUID, VM2_GUID])
    assert sim.log.count("Enumerate", cls="Msvm_ComputerSystem") == 1
    assert sim.log.count("Pull") == 1


def test_wql_like_on_instance_ids_with_backslashes(sim: Sim) -> None:
    wql = f"SELECT * FROM Msvm_StorageAllocationSettingData WHERE InstanceID LIKE 'Microsoft:{VM_GUID}%'"
    items = enumerate_all(sim, enumerate_body(wql=wql))
    assert sorted(prop(i, "InstanceID").text for i in items) == [sasd_id(VM_GUID, 0), sasd_id(VM_GUID, 1)]
    wql = (
        "SELECT * FROM Msvm_StorageAllocationSettingData WHERE InstanceID = "
        f"'{sasd_id(VM2_GUID, 1)}'".replace("\\", "\\\\")
    )
    items = enumerate_all(sim, enumerate_body(wql=wql))
    assert [prop(i, "InstanceID").text for i in items] == [sasd_id(VM2_GUID, 1)]


def test_wql_boolean_logic_and_numbers(sim: Sim) -> None:
    wql = (
        "select * from msvm_computersystem where (EnabledState = 2 or EnabledState >= 3) "
        "and not Caption <> 'virtual machine' and ProcessID is null"
    )
    items = enumerate_all(sim, enumerate_body(wql=wql))
    assert sorted(prop(i, "ElementName").text for i in items) == sorted(["web01", 'db\'s "01"'])


def test_wql_property_list_projects_to_xml_fragment(sim: Sim) -> None:
    items = enumerate_all(
        sim, enumerate_body(wql="SELECT ElementName, EnabledState FROM Msvm_ComputerSystem")
    )
    assert len(items) == 3
    for i in items:
        assert i.tag == q(W, "XmlFragment")
        assert [c.tag for c in i] == ["ElementName", "EnabledState"]


def test_wql_with_class_uri_is_rejected(sim: Sim) -> None:
    root = sim.fault(
        envelope(
            ENUMERATE, V2 + "Msvm_ComputerSystem", enumerate_body(wql="SELECT * FROM Msvm_ComputerSystem")
        )
    )
    assert subcode(root) == "w:InternalError"
    assert wsman_code(root) == 0x803380FB


def test_wql_of_unknown_class_matches_recorded_cannot_process_filter(sim: Sim) -> None:
    query = 'Select * from Msvm_NoSuchThing where name="sshd.exe"'
    root = sim.fault(envelope(ENUMERATE, STAR, enumerate_body(wql=query)))
    recorded = fixture_root("winrb-soap_fault_v2.xml")
    assert subcode(root) == subcode(recorded) == "n:CannotProcessFilter"
    assert wsman_code(root) == wsman_code(recorded) == 2150858778
    assert shape(root.find("s:Body", NSMAP)) == shape(recorded.find("s:Body", NSMAP))
    assert root.findtext("s:Header/a:Action", namespaces=NSMAP) == recorded.findtext(
        "s:Header/a:Action", namespaces=NSMAP
    )
    status = root.find(".//f:ExtendedError", NSMAP)[0]
    pns = etree.QName(status).namespace
    assert status.findtext(f"{{{pns}}}Operation") == "ExecQuery"
    assert status.findtext(f"{{{pns}}}ParameterInfo") == query
    assert status.findtext(f"{{{pns}}}ProviderName") == "WinMgmt"
    assert root.findtext(".//f:ProviderFault/f:WSManFault/f:Message", namespaces=NSMAP) == recorded.findtext(
        ".//f:ProviderFault/f:WSManFault/f:Message", namespaces=NSMAP
    )


@pytest.mark.parametrize(
    "query",
    [
        "SELECT * FROM",
        "SELECT * FROM Msvm_ComputerSystem WHERE",
        "SELEKT * FROM Msvm_ComputerSystem",
        "SELECT * FROM Msvm_ComputerSystem WHERE NoSuchProperty = 1",
        "SELECT Bogus FROM Msvm_ComputerSystem",
        "SELECT * FROM Msvm_ComputerSystem WHERE Dedicated = 2",
        "ASSOCIATORS OF {Msvm_ComputerSystem.Name='x'} WHERE AssocClass = Msvm_NoSuchAssoc",
    ],
)
def test_bad_wql_is_cannot_process_filter(sim: Sim, query: str) -> None:
    root = sim.fault(envelope(ENUMERATE, STAR, enumerate_body(wql=query)))
    assert subcode(root) == "n:CannotProcessFilter"
    assert sim.log.count("Enumerate", outcome="n:CannotProcessFilter") == 1


def test_associators_of_settings_define_state(sim: Sim) -> None:
    wql = (
        f'ASSOCIATORS OF {{Msvm_ComputerSystem.CreationClassName="Msvm_ComputerSystem",Name="{VM_GUID}"}} '
        "WHERE AssocClass = Msvm_SettingsDefineState ResultClass = Msvm_VirtualSystemSettingData"
    )
    items = enumerate_all(sim, enumerate_body(wql=wql, mode="EnumerateObjectAndEPR"))
    assert [prop(i[0], "InstanceID").text for i in items] == [vssd_id(VM_GUID)]
    assert sim.log.records()[0].class_name == "Msvm_VirtualSystemSettingData"


def test_associators_of_vssd_components_with_result_class_and_roles(sim: Sim) -> None:
    base = (
        f'ASSOCIATORS OF {{Msvm_VirtualSystemSettingData.InstanceID="{vssd_id(VM_GUID)}"}} '
        "WHERE AssocClass = Msvm_VirtualSystemSettingDataComponent"
    )
    all_parts = enumerate_all(sim, enumerate_body(wql=base))
    assert len(all_parts) == 3
    disks = enumerate_all(sim, enumerate_body(wql=base + " ResultClass = Msvm_StorageAllocationSettingData"))
    assert sorted(prop(i, "InstanceID").text for i in disks) == [sasd_id(VM_GUID, 0), sasd_id(VM_GUID, 1)]
    by_role = enumerate_all(
        sim, enumerate_body(wql=base + " Role = GroupComponent ResultRole = PartComponent")
    )
    assert len(by_role) == 3
    wrong_role = enumerate_all(sim, enumerate_body(wql=base + " Role = PartComponent"))
    assert wrong_role == []


def test_associators_of_path_with_escaped_backslashes(sim: Sim) -> None:
    escaped = sasd_id(VM_GUID, 1).replace("\\", "\\\\")
    wql = (
        f"ASSOCIATORS OF {{\\\\{HOST}\\root\\virtualization\\v2:Msvm_StorageAllocationSettingData."
        f'InstanceID="{escaped}"}} WHERE AssocClass = Msvm_VirtualSystemSettingDataComponent'
    )
    items = enumerate_all(sim, enumerate_body(wql=wql))
    assert [prop(i, "InstanceID").text for i in items] == [vssd_id(VM_GUID)]


def test_associators_without_assoc_class_walks_every_association(sim: Sim) -> None:
    wql = f'ASSOCIATORS OF {{Msvm_ComputerSystem.CreationClassName="Msvm_ComputerSystem",Name="{VM_GUID}"}}'
    items = enumerate_all(sim, enumerate_body(wql=wql))
    assert sorted(etree.QName(i).localname for i in items) == [
        "Msvm_ConcreteJob",
        "Msvm_VirtualSystemSettingData",
    ]


def test_associators_of_missing_object_is_destination_unreachable(sim: Sim) -> None:
    wql = "ASSOCIATORS OF {Msvm_ComputerSystem.CreationClassName='Msvm_ComputerSystem',Name='nope'}"
    root = sim.fault(envelope(ENUMERATE, STAR, enumerate_body(wql=wql)))
    assert subcode(root) == "a:DestinationUnreachable"


def test_references_of_returns_link_instances_with_epr_properties(sim: Sim) -> None:
    wql = (
        f'REFERENCES OF {{Msvm_ComputerSystem.CreationClassName="Msvm_ComputerSystem",Name="{VM_GUID}"}} '
        "WHERE ResultClass = Msvm_AffectedJobElement"
    )
    items = enumerate_all(sim, enumerate_body(wql=wql))
    assert len(items) == 1
    link = items[0]
    assert etree.QName(link).localname == "Msvm_AffectedJobElement"
    job_epr = prop(link, "AffectingElement")
    assert (
        job_epr.findtext("a:ReferenceParameters/w:ResourceURI", namespaces=NSMAP) == V2 + "Msvm_ConcreteJob"
    )
    assert (
        job_epr.findtext("a:ReferenceParameters/w:SelectorSet/w:Selector", namespaces=NSMAP)
        == "0E3C5F0A-77B2-4D7C-8E21-9B4B0C6D3A11"
    )
    assert [e.text for e in props(link, "ElementEffects")] == ["5"]


# --------------------------------------------------------------------------- association filter dialect


def assoc_filter(kind: str, obj: Any, dialect: str = ASSOC, **opts: str) -> Any:
    f = etree.Element(q(W, "Filter"), Dialect=dialect)
    node = etree.SubElement(f, q(B, kind), nsmap={"b": B})
    node.append(obj)
    for name, value in opts.items():
        etree.SubElement(node, q(B, name)).text = value
    return f


@pytest.mark.parametrize("dialect", [ASSOC, ASSOC.replace("associationFilter", "AssociationFilter")])
def test_association_filter_associated_instances(sim: Sim, dialect: str) -> None:
    obj = epr("Msvm_ComputerSystem", vm_selectors(), q(B, "Object"))
    f = assoc_filter(
        "AssociatedInstances",
        obj,
        dialect,
        AssociationClassName="Msvm_SettingsDefineState",
        ResultClassName="Msvm_VirtualSystemSettingData",
    )
    items = enumerate_all(sim, enumerate_body(mode="EnumerateObjectAndEPR", filter_el=f))
    assert [prop(i[0], "InstanceID").text for i in items] == [vssd_id(VM_GUID)]
    sels = items[0][1].findall(".//w:Selector", NSMAP)
    assert [(s.get("Name"), s.text) for s in sels] == [("InstanceID", vssd_id(VM_GUID))]


def test_association_filter_job_affected_element_with_roles(sim: Sim) -> None:
    obj = epr("Msvm_ConcreteJob", [("InstanceID", "0E3C5F0A-77B2-4D7C-8E21-9B4B0C6D3A11")], q(B, "Object"))
    f = assoc_filter(
        "AssociatedInstances",
        obj,
        AssociationClassName="Msvm_AffectedJobElement",
        Role="AffectingElement",
        ResultRole="AffectedElement",
        ResultClassName="Msvm_ComputerSystem",
    )
    items = enumerate_all(sim, enumerate_body(filter_el=f))
    assert [prop(i, "Name").text for i in items] == [VM_GUID]
    f = assoc_filter(
        "AssociatedInstances",
        epr("Msvm_ConcreteJob", [("InstanceID", "0E3C5F0A-77B2-4D7C-8E21-9B4B0C6D3A11")], q(B, "Object")),
        Role="AffectedElement",
    )
    assert enumerate_all(sim, enumerate_body(filter_el=f)) == []


def test_association_filter_association_instances(sim: Sim) -> None:
    obj = epr("Msvm_VirtualSystemSettingData", [("InstanceID", vssd_id(VM2_GUID))], q(B, "Object"))
    f = assoc_filter("AssociationInstances", obj, ResultClassName="Msvm_VirtualSystemSettingDataComponent")
    items = enumerate_all(sim, enumerate_body(filter_el=f))
    assert len(items) == 3
    assert {etree.QName(i).localname for i in items} == {"Msvm_VirtualSystemSettingDataComponent"}


# --------------------------------------------------------------------------- Invoke


SNAP_URI = V2 + "Msvm_VirtualSystemSnapshotService"
IMG_URI = V2 + "Msvm_ImageManagementService"
SNAP_SEL = [
    ("CreationClassName", "Msvm_VirtualSystemSnapshotService"),
    ("Name", "vssnapsvc"),
    ("SystemCreationClassName", "Msvm_ComputerSystem"),
    ("SystemName", HOST),
]
IMG_SEL = [
    ("CreationClassName", "Msvm_ImageManagementService"),
    ("Name", "vhdsvc"),
    ("SystemCreationClassName", "Msvm_ComputerSystem"),
    ("SystemName", HOST),
]
SNAP_SETTINGS_XML = (
    '<INSTANCE CLASSNAME="Msvm_VirtualSystemSnapshotSettingData">'
    '<PROPERTY NAME="ConsistencyLevel" TYPE="uint8"><VALUE>1</VALUE></PROPERTY>'
    '<PROPERTY NAME="IgnoreNonSnapshottableDisks" TYPE="boolean"><VALUE>true</VALUE></PROPERTY>'
    '<PROPERTY NAME="ElementName" TYPE="string"><VALUE>a &amp; &lt;b&gt;</VALUE></PROPERTY>'
    "</INSTANCE>"
)


def method_input(uri: str, method: str) -> Any:
    return etree.Element(q(uri, f"{method}_INPUT"), nsmap={"p": uri})


def create_snapshot_body(settings_mode: str = "cdata") -> Any:
    inp = method_input(SNAP_URI, "CreateSnapshot")
    inp.append(epr("Msvm_ComputerSystem", vm_selectors(), q(SNAP_URI, "AffectedSystem")))
    ss = etree.SubElement(inp, q(SNAP_URI, "SnapshotSettings"))
    if settings_mode == "cdata":
        ss.text = etree.CDATA(SNAP_SETTINGS_XML)
    elif settings_mode == "escaped":
        ss.text = SNAP_SETTINGS_XML
    else:  # a WS-Man style element tree
        cls_uri = V2 + "Msvm_VirtualSystemSnapshotSettingData"
        tree = etree.SubElement(ss, q(cls_uri, "Msvm_VirtualSystemSnapshotSettingData"), nsmap={"c": cls_uri})
        etree.SubElement(tree, q(cls_uri, "ConsistencyLevel")).text = "1"
        etree.SubElement(tree, q(cls_uri, "IgnoreNonSnapshottableDisks")).text = "true"
        etree.SubElement(tree, q(cls_uri, "ElementName")).text = "a & <b>"
    etree.SubElement(inp, q(SNAP_URI, "SnapshotType")).text = "32768"
    return inp


@pytest.mark.parametrize("settings_mode", ["cdata", "escaped"])
def test_invoke_create_snapshot(sim: Sim, settings_mode: str) -> None:
    root = sim.ok(
        envelope(
            SNAP_URI + "/CreateSnapshot", SNAP_URI, create_snapshot_body(settings_mode), selectors=SNAP_SEL
        )
    )
    assert root.findtext("s:Header/a:Action", namespaces=NSMAP) == SNAP_URI + "/CreateSnapshotResponse"
    call = sim.repo.calls[-1]
    assert call.method == "CreateSnapshot"
    assert call.target.class_name == "Msvm_VirtualSystemSnapshotService"
    assert call.target.key("SystemName") == HOST
    affected = call.params["AffectedSystem"]
    assert isinstance(affected, CimRef)
    assert affected.same_as(CimRef(NS_VIRT, "Msvm_ComputerSystem", tuple(vm_selectors())))
    settings = call.params["SnapshotSettings"]
    assert isinstance(settings, CimInstance)
    assert settings.class_name == "Msvm_VirtualSystemSnapshotSettingData"
    assert settings.get("ConsistencyLevel") == 1
    assert settings.get("IgnoreNonSnapshottableDisks") is True
    assert settings.get("ElementName") == "a & <b>"
    assert call.params["SnapshotType"] == 32768
    out = root.find(f"s:Body/{{{SNAP_URI}}}CreateSnapshot_OUTPUT", NSMAP)
    assert [etree.QName(c).localname for c in out] == ["Job", "ResultingSnapshot", "ReturnValue"]
    assert out.findtext(f"{{{SNAP_URI}}}ReturnValue") == "4096"
    job = out.find(f"{{{SNAP_URI}}}Job")
    job_id = job.findtext(
        "a:ReferenceParameters/w:SelectorSet/w:Selector[@Name='InstanceID']", namespaces=NSMAP
    )
    assert job.findtext("a:ReferenceParameters/w:ResourceURI", namespaces=NSMAP) == V2 + "Msvm_ConcreteJob"
    assert out.find(f"{{{SNAP_URI}}}ResultingSnapshot").get(q(XSI, "nil")) == "true"
    sim.ok(get_req("Msvm_ConcreteJob", [("InstanceID", job_id)]))  # the job EPR resolves
    assert sim.log.count("Invoke", method="CreateSnapshot", cls="Msvm_VirtualSystemSnapshotService") == 1


def test_invoke_refuses_an_embedded_instance_sent_as_a_wsman_element_tree(sim: Sim) -> None:
    # Windows takes embedded instances only as CIM-XML text (hyperv-wmi.md §1.10, trap 2)
    root = sim.fault(envelope(SNAP_URI + "/CreateSnapshot", SNAP_URI, create_snapshot_body("tree"),
                              selectors=SNAP_SEL))
    assert subcode(root) == "w:SchemaValidationError"
    assert wsman_code(root) == 0x80338041
    assert "SnapshotSettings" in etree.tostring(root).decode()
    assert not [c for c in sim.repo.calls if c.method == "CreateSnapshot"]  # the method never ran


def test_invoke_refuses_a_wmi_path_string_where_a_reference_is_expected(sim: Sim) -> None:
    inp = method_input(SNAP_URI, "CreateSnapshot")
    path = "\\\\HV01\\root\\virtualization\\v2:Msvm_ComputerSystem.CreationClassName=" \
        f'"Msvm_ComputerSystem",Name="{VM_GUID}"'
    etree.SubElement(inp, q(SNAP_URI, "AffectedSystem")).text = path
    etree.SubElement(inp, q(SNAP_URI, "SnapshotSettings")).text = etree.CDATA(SNAP_SETTINGS_XML)
    etree.SubElement(inp, q(SNAP_URI, "SnapshotType")).text = "32768"
    root = sim.fault(envelope(SNAP_URI + "/CreateSnapshot", SNAP_URI, inp, selectors=SNAP_SEL))
    assert subcode(root) == "w:SchemaValidationError"
    assert "AffectedSystem" in etree.tostring(root).decode()
    assert not [c for c in sim.repo.calls if c.method == "CreateSnapshot"]


def test_invoke_datetime_parameter_and_nonzero_return(sim: Sim) -> None:
    uri = V2 + "Msvm_ComputerSystem"
    inp = method_input(uri, "RequestStateChange")
    etree.SubElement(inp, q(uri, "RequestedState")).text = "3"
    tp = etree.SubElement(inp, q(uri, "TimeoutPeriod"))
    etree.SubElement(tp, q(CIM, "Datetime")).text = "2024-05-01T10:11:12.1234567+02:00"
    root = sim.ok(envelope(uri + "/RequestStateChange", uri, inp, selectors=vm_selectors()))
    assert root.findtext(f".//{{{uri}}}ReturnValue") == "32775"
    when = sim.repo.calls[-1].params["TimeoutPeriod"]
    assert when == dt.datetime(2024, 5, 1, 8, 11, 12, 123456, tzinfo=dt.timezone.utc)
    inp = method_input(uri, "RequestStateChange")
    etree.SubElement(inp, q(uri, "TimeoutPeriod")).text = "00000000000500.000000:000"
    sim.ok(envelope(uri + "/RequestStateChange", uri, inp, selectors=vm_selectors()))
    assert sim.repo.calls[-1].params["TimeoutPeriod"] == CimInterval(300)


def test_invoke_returns_embedded_instances_as_escaped_cim_xml(sim: Sim) -> None:
    uri = V2 + "Msvm_ConcreteJob"
    root = sim.ok(
        envelope(
            uri + "/GetErrorEx",
            uri,
            method_input(uri, "GetErrorEx"),
            selectors=[("InstanceID", "0E3C5F0A-77B2-4D7C-8E21-9B4B0C6D3A11")],
        )
    )
    out = root.find(f"s:Body/{{{uri}}}GetErrorEx_OUTPUT", NSMAP)
    errors = out.findall(f"{{{uri}}}Errors")
    assert len(errors) == 2
    assert len(errors[0]) == 0  # text, not an element tree
    text = errors[0].text
    assert text.startswith('<INSTANCE CLASSNAME="Msvm_Error">')
    inst = cimxml.parse_instance(text)
    assert inst.get("CIMStatusCode") == 1
    assert inst.get("MessageArguments") == ["web01", VM_GUID]
    assert inst.get("Message") == "Failed to create checkpoint <'web01'> & more"
    cim = etree.fromstring(text)
    assert cim.find("PROPERTY[@NAME='CIMStatusCode']").get("TYPE") == "uint32"
    assert cim.find("PROPERTY.ARRAY[@NAME='MessageArguments']").get("TYPE") == "string"
    raw = sim.disp.handle(
        envelope(
            uri + "/GetErrorEx",
            uri,
            method_input(uri, "GetErrorEx"),
            selectors=[("InstanceID", "0E3C5F0A-77B2-4D7C-8E21-9B4B0C6D3A11")],
        ),
        Ctx(),
    )[1]
    assert b"&lt;INSTANCE CLASSNAME=" in raw


def test_invoke_single_embedded_output_and_uint64_arrays(sim: Sim) -> None:
    inp = method_input(IMG_URI, "GetVirtualHardDiskSettingData")
    etree.SubElement(inp, q(IMG_URI, "Path")).text = "C:\\VMs\\disk.vhdx"
    root = sim.ok(envelope(IMG_URI + "/GetVirtualHardDiskSettingData", IMG_URI, inp, selectors=IMG_SEL))
    sd = root.findtext(f".//{{{IMG_URI}}}SettingData")
    inst = cimxml.parse_instance(sd)
    assert inst.class_name == "Msvm_VirtualHardDiskSettingData"
    assert inst.get("MaxInternalSize") == 137438953472
    assert inst.get("Path") == "C:\\VMs\\disk.vhdx"
    assert etree.fromstring(sd).find("PROPERTY[@NAME='MaxInternalSize']").get("TYPE") == "uint64"

    inp = method_input(IMG_URI, "GetVirtualDiskChanges")
    etree.SubElement(inp, q(IMG_URI, "Path")).text = "C:\\VMs\\disk.vhdx"
    etree.SubElement(inp, q(IMG_URI, "ByteLength")).text = str(2**41)
    root = sim.ok(envelope(IMG_URI + "/GetVirtualDiskChanges", IMG_URI, inp, selectors=IMG_SEL))
    out = root.find(f"s:Body/{{{IMG_URI}}}GetVirtualDiskChanges_OUTPUT", NSMAP)
    assert [int(e.text) for e in out.findall(f"{{{IMG_URI}}}ChangedByteOffsets")] == [0, 2**33, 2**40 + 4096]
    assert [int(e.text) for e in out.findall(f"{{{IMG_URI}}}ChangedByteLengths")] == [4096, 2**21, 2**32 + 1]
    assert sim.repo.calls[-1].params["ByteLength"] == 2**41


def test_invoke_array_of_embedded_instances_and_reference_array_output(sim: Sim) -> None:
    inp = method_input(IMG_URI, "AddResourceSettings")
    inp.append(
        epr(
            "Msvm_VirtualSystemSettingData",
            [("InstanceID", vssd_id(VM_GUID))],
            q(IMG_URI, "AffectedConfiguration"),
        )
    )
    for path in ("C:\\a.vhdx", "C:\\b.vhdx"):
        el = etree.SubElement(inp, q(IMG_URI, "ResourceSettings"))
        el.text = etree.CDATA(
            '<INSTANCE CLASSNAME="Msvm_StorageAllocationSettingData">'
            '<PROPERTY.ARRAY NAME="HostResource" TYPE="string"><VALUE.ARRAY>'
            f"<VALUE>{path}</VALUE></VALUE.ARRAY></PROPERTY.ARRAY>"
            f'<PROPERTY NAME="Parent" TYPE="string"><VALUE>\\\\{HOST}\\root\\virtualization\\v2:'
            'Msvm_ResourceAllocationSettingData.InstanceID="Microsoft:X\\\\Y"</VALUE></PROPERTY></INSTANCE>'
        )
    root = sim.ok(envelope(IMG_URI + "/AddResourceSettings", IMG_URI, inp, selectors=IMG_SEL))
    settings = sim.repo.calls[-1].params["ResourceSettings"]
    assert [s.get("HostResource") for s in settings] == [["C:\\a.vhdx"], ["C:\\b.vhdx"]]
    assert settings[0].get("Parent").endswith('InstanceID="Microsoft:X\\\\Y"')
    refs = root.findall(f".//{{{IMG_URI}}}ResultingResourceSettings")
    assert [r.findtext(".//w:Selector", namespaces=NSMAP) for r in refs] == ["new0", "new1"]
    assert sim.repo.calls[-1].params["AffectedConfiguration"].key("InstanceID") == vssd_id(VM_GUID)


def test_invoke_unknown_parameter_and_bad_values(sim: Sim) -> None:
    inp = create_snapshot_body()
    etree.SubElement(inp, q(SNAP_URI, "Bogus")).text = "1"
    root = sim.fault(envelope(SNAP_URI + "/CreateSnapshot", SNAP_URI, inp, selectors=SNAP_SEL))
    assert subcode(root) == "w:InvalidParameter"
    assert fault_detail(root).endswith("/InvalidName")
    inp = method_input(SNAP_URI, "CreateSnapshot")
    etree.SubElement(inp, q(SNAP_URI, "SnapshotType")).text = "not-a-number"
    root = sim.fault(envelope(SNAP_URI + "/CreateSnapshot", SNAP_URI, inp, selectors=SNAP_SEL))
    assert subcode(root) == "w:InvalidParameter"
    assert fault_detail(root).endswith("/InvalidValue")
    inp = method_input(SNAP_URI, "CreateSnapshot")
    etree.SubElement(inp, q(SNAP_URI, "SnapshotType")).text = "70000"
    assert (
        subcode(sim.fault(envelope(SNAP_URI + "/CreateSnapshot", SNAP_URI, inp, selectors=SNAP_SEL)))
        == "w:InvalidParameter"
    )
    inp = method_input(SNAP_URI, "CreateSnapshot")
    etree.SubElement(inp, q(SNAP_URI, "SnapshotSettings")).text = "<INSTANCE CLASSNAME='X'><PROPERTY"
    assert (
        subcode(sim.fault(envelope(SNAP_URI + "/CreateSnapshot", SNAP_URI, inp, selectors=SNAP_SEL)))
        == "w:SchemaValidationError"
    )
    wrong_root = method_input(SNAP_URI, "DestroySnapshot")
    assert (
        subcode(sim.fault(envelope(SNAP_URI + "/CreateSnapshot", SNAP_URI, wrong_root, selectors=SNAP_SEL)))
        == "w:SchemaValidationError"
    )
    assert [c.method for c in sim.repo.calls] == []


def test_invoke_unknown_method_and_missing_target(sim: Sim) -> None:
    root = sim.fault(
        envelope(
            SNAP_URI + "/NoSuchMethod", SNAP_URI, method_input(SNAP_URI, "NoSuchMethod"), selectors=SNAP_SEL
        )
    )
    assert subcode(root) == "a:ActionNotSupported"
    sel = [(n, "elsewhere" if n == "SystemName" else v) for n, v in SNAP_SEL]
    root = sim.fault(envelope(SNAP_URI + "/CreateSnapshot", SNAP_URI, create_snapshot_body(), selectors=sel))
    assert subcode(root) == "a:DestinationUnreachable"
    assert sim.repo.calls == []


def test_provider_error_becomes_fault_with_extended_status(sim: Sim) -> None:
    inp = method_input(SNAP_URI, "Fail")
    root = sim.fault(envelope(SNAP_URI + "/Fail", SNAP_URI, inp, selectors=SNAP_SEL))
    recorded = fixture_root("winrb-soap_fault_v2.xml")
    assert subcode(root) == "w:InternalError"
    assert root.find("s:Body/s:Fault/s:Code/s:Value", NSMAP).text == "s:Receiver"
    assert wsman_code(root) == 2150859010
    assert shape(root.find("s:Body/s:Fault/s:Detail", NSMAP)) == shape(
        recorded.find("s:Body/s:Fault/s:Detail", NSMAP)
    )
    status = root.find(".//f:ExtendedError", NSMAP)[0]
    pns = etree.QName(status).namespace
    assert pns == V2 + "__ExtendedStatus"
    assert status.get(q(XSI, "type")) == "p:__ExtendedStatus_Type"
    assert status.findtext(f"{{{pns}}}Description") == "The virtual machine is locked"
    assert status.findtext(f"{{{pns}}}StatusCode") == "2"
    pf = root.find(".//f:ProviderFault", NSMAP)
    assert pf.get("path") == "%systemroot%\\system32\\WsmWmiPl.dll"
    assert sim.log.count("Invoke", method="Fail", outcome="w:InternalError") == 1


# --------------------------------------------------------------------------- envelope size


def test_response_over_max_envelope_size_is_encoding_limit(sim: Sim) -> None:
    vs = sim.repo.instances_by_class["Msvm_VirtualSystemSettingData"][0]
    vs.properties["Notes"] = ["x" * 9000]
    root = sim.fault(
        get_req("Msvm_VirtualSystemSettingData", [("InstanceID", vssd_id(VM_GUID))], max_envelope=8192)
    )
    assert subcode(root) == "w:EncodingLimit"
    assert fault_detail(root).endswith("/MaxEnvelopeSize")
    assert wsman_code(root) == 0x80338048
    sim.ok(get_req("Msvm_VirtualSystemSettingData", [("InstanceID", vssd_id(VM_GUID))], max_envelope=16384))


def test_enumeration_shortens_batches_to_fit_the_envelope(sim: Sim) -> None:
    for i in range(40):
        sim.repo.add(
            CimInstance(
                "Msvm_ConcreteJob",
                NS_VIRT,
                {"InstanceID": f"JOB-{i:04d}-" + "z" * 300, "JobState": 7, "PercentComplete": i},
            )
        )
    limit = 8192
    uri = V2 + "Msvm_ConcreteJob"
    root = sim.ok(
        envelope(ENUMERATE, uri, enumerate_body(optimize=True, max_elements=100), max_envelope=limit)
    )
    first = items_of(root)
    assert 1 <= len(first) < 41
    context = root.findtext("s:Body/n:EnumerateResponse/n:EnumerationContext", namespaces=NSMAP)
    got = len(first)
    pulls = 0
    while True:
        status, out = sim.disp.handle(envelope(PULL, uri, pull_body(context, 100), max_envelope=limit), Ctx())
        assert status == 200
        assert len(out) <= limit
        r = etree.fromstring(out)
        got += len(items_of(r))
        pulls += 1
        if r.find("s:Body/n:PullResponse/n:EndOfSequence", NSMAP) is not None:
            break
    assert got == 41
    assert pulls >= 2


def test_max_envelope_size_above_server_limit_and_oversized_request(sim: Sim) -> None:
    root = sim.fault(get_req("Msvm_ComputerSystem", vm_selectors(), max_envelope=500 * 1024 + 1))
    assert subcode(root) == "w:EncodingLimit"
    assert wsman_code(root) == 0x80338047
    small = Dispatcher(sim.repo, sim.faults, sim.log, max_envelope_size_kb=8)
    status, body = small.handle(
        get_req("Msvm_ComputerSystem", vm_selectors(), max_envelope=None).replace(
            b"<s:Body/>", b"<s:Body>" + b" " * 9000 + b"</s:Body>"
        ),
        Ctx(),
    )
    assert (status, body) == (413, b"")


# --------------------------------------------------------------------------- fault injection, request log


def test_injected_fault_fires_on_nth_matching_call(sim: Sim) -> None:
    rule = sim.faults.add(WSMAN_FAULT, "Get", nth=2)
    sim.ok(get_req("Msvm_ComputerSystem", vm_selectors()))
    root = sim.fault(get_req("Msvm_ComputerSystem", vm_selectors()))
    assert subcode(root) == "w:InternalError"
    assert root.find(".//f:ExtendedError", NSMAP) is not None
    sim.ok(get_req("Msvm_ComputerSystem", vm_selectors()))
    assert rule.fired == 1


def test_injected_fault_on_a_method_with_custom_fields(sim: Sim) -> None:
    sim.faults.add(
        WSMAN_FAULT,
        "CreateSnapshot",
        subcode="w:TimedOut",
        wsman_code=2150858793,
        reason="The WS-Management service cannot complete the operation within the time specified in "
        "OperationTimeout.  ",
        provider=False,
    )
    sim.ok(get_req("Msvm_ComputerSystem", vm_selectors()))  # other operations are unaffected
    root = sim.fault(
        envelope(SNAP_URI + "/CreateSnapshot", SNAP_URI, create_snapshot_body(), selectors=SNAP_SEL)
    )
    recorded = fixture_root("pypsrp-extracted-test_winrs_operation_timeout-msg3-fault-w_TimedOut.xml")
    assert subcode(root) == "w:TimedOut"
    assert wsman_code(root) == wsman_code(recorded)
    assert shape(root.find("s:Body", NSMAP)) == shape(recorded.find("s:Body", NSMAP))
    assert root.find("s:Body/s:Fault/s:Code/s:Value", NSMAP).text == "s:Receiver"
    assert sim.repo.calls == []  # the fault fires before the method runs
    sim.ok(envelope(SNAP_URI + "/CreateSnapshot", SNAP_URI, create_snapshot_body(), selectors=SNAP_SEL))


def test_request_log_records_every_request(sim: Sim) -> None:
    sim.ok(get_req("Msvm_ComputerSystem", vm_selectors()))
    sim.fault(get_req("Msvm_ComputerSystem", vm_selectors("nope")))
    enumerate_all(sim, enumerate_body(max_elements=1), uri=V2 + "Msvm_ComputerSystem", pull_max=2)
    recs = sim.log.records()
    assert [r.operation for r in recs] == ["Get", "Get", "Enumerate", "Pull", "Pull"]
    assert recs[0].user == "HV01\\backup"
    assert recs[0].namespace == NS_VIRT
    assert recs[0].class_name == "Msvm_ComputerSystem"
    assert (recs[0].outcome, recs[0].items) == ("ok", 1)
    assert (recs[1].outcome, recs[1].items) == ("a:DestinationUnreachable", 0)
    assert [r.items for r in recs[2:]] == [0, 2, 1]
    assert recs[3].class_name == "Msvm_ComputerSystem"
    assert all(r.duration >= 0 for r in recs)
    assert sim.log.count("get") == 2
    assert sim.log.count(outcome="fault") == 1
    sim.log.clear()
    assert sim.log.count() == 0


def test_concurrent_clients(sim: Sim) -> None:
    errors: List[BaseException] = []

    def worker() -> None:
        try:
            for _ in range(10):
                items = enumerate_all(
                    sim, enumerate_body(max_elements=1), uri=V2 + "Msvm_ComputerSystem", pull_max=1
                )
                assert len(items) == 3
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=worker) for _ in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert sim.log.count("Enumerate") == 60
    assert sim.log.count("Pull") == 180
    assert sim.disp.open_enumerations() == 0
