"""``NodeRepository``: one node's view of the world as a :class:`hvsim.cim.Repository`.

``root/virtualization/v2`` shows only the VMs this node owns; ``root/MSCluster``
(cluster nodes only) is the same on every node; ``root/cimv2`` has
``Win32_OperatingSystem``.  Instances are rendered from the world state on
every call (the worlds are small), so they always reflect the present.
"""

from __future__ import annotations

from typing import Any, Iterable, Mapping, Sequence

from hvsim.behaviour import WinrmBehaviour
from hvsim.cim import (
    NS_CIMV2,
    NS_CLUSTER,
    NS_VIRT,
    CimError,
    CimInstance,
    CimInterval,
    CimRef,
    ClassDef,
    MethodOutcome,
)
from hvsim.rights import AccountRights
from hvsim.world import schema
from hvsim.world.jobs import JOB_COMPLETED, JOB_COMPLETED_WITH_WARNINGS, Job
from hvsim.world.state import (
    VM_OFF,
    VM_PAUSED,
    VM_RUNNING,
    VST_PLANNED,
    VST_REALIZED,
    Config,
    Group,
    ReferencePoint,
    Setting,
    Snapshot,
    Vm,
    World,
    switch_ref,
)

NOT_FOUND_CODE = 2150858752  # 0x80338000: the WMI object was not found
PROVIDER_FAILED_CODE = 2150859010  # WMI provider could not perform the operation
WBEM_E_NOT_FOUND = 2147749890

SERVICES: dict[str, tuple[str, str]] = {
    "Msvm_VirtualSystemManagementService": ("vmms", "Virtual Machine Management Service"),
    "Msvm_VirtualSystemSnapshotService": ("vssnapsvc", "Virtual System Snapshot Service"),
    "Msvm_VirtualSystemReferencePointService": ("vsrefptsvc", "Virtual System Reference Point Service"),
    "Msvm_ImageManagementService": ("vhdsvc", "Image Management Service"),
}


def norm_ns(namespace: str) -> str:
    """``root\\virtualization\\v2`` / ``ROOT/Virtualization/V2`` -> canonical ``root/virtualization/v2``."""
    low = namespace.replace("\\", "/").strip("/").lower()
    for ns in (NS_VIRT, NS_CLUSTER, NS_CIMV2):
        if ns.lower() == low:
            return ns
    return namespace


def not_found(what: str, operation: str = "GetObject") -> CimError:
    """The fault Windows sends when selectors resolve to nothing."""
    return CimError(
        "a:DestinationUnreachable",
        f"The WS-Management service cannot process the request because the WMI object was not found: {what}",
        detail="http://schemas.dmtf.org/wbem/wsman/1/wsman/faultDetail/InvalidResourceURI",
        wsman_code=NOT_FOUND_CODE,
        wmi_status={"Description": f"Not found: {what}", "Operation": operation, "ParameterInfo": what,
                    "ProviderName": "WMI", "StatusCode": WBEM_E_NOT_FOUND})


def provider_fault(message: str, operation: str = "ExecMethod", parameter: str = "") -> CimError:
    """A provider failure (how the void MSCluster methods report errors)."""
    return CimError("w:InternalError", message, wsman_code=PROVIDER_FAILED_CODE,
                    wmi_status={"Description": message, "Operation": operation, "ParameterInfo": parameter,
                                "ProviderName": "MS_CLUSTER_PROVIDER", "StatusCode": None})


# ---------------------------------------------------------------- references
def host_ref(host: str) -> CimRef:
    """The host's Msvm_ComputerSystem."""
    return CimRef(NS_VIRT, "Msvm_ComputerSystem", (("CreationClassName", "Msvm_ComputerSystem"), ("Name",
                                                                                                  host)))


def vm_ref(vm: Vm) -> CimRef:
    """A VM's (or planned VM's) computer system."""
    cls = "Msvm_PlannedComputerSystem" if vm.planned else "Msvm_ComputerSystem"
    return CimRef(NS_VIRT, cls, (("CreationClassName", cls), ("Name", vm.id)))


def vssd_ref(config_id: str) -> CimRef:
    """A VSSD (live, planned or snapshot)."""
    return CimRef(NS_VIRT, "Msvm_VirtualSystemSettingData", (("InstanceID", f"Microsoft:{config_id}"),))


def setting_ref(config_id: str, s: Setting) -> CimRef:
    """A RASD-family setting."""
    return CimRef(NS_VIRT, s.class_name, (("InstanceID", f"Microsoft:{config_id}\\{s.rid}"),))


def service_ref(cls: str, host: str) -> CimRef:
    """One of the singleton services."""
    return CimRef(NS_VIRT, cls, (("CreationClassName", cls), ("Name", SERVICES[cls][0]),
                                 ("SystemCreationClassName", "Msvm_ComputerSystem"), ("SystemName", host)))


def job_ref(job: Job) -> CimRef:
    """A job."""
    return CimRef(NS_VIRT, job.class_name, (("InstanceID", job.instance_id),))


def rp_ref(rp: ReferencePoint) -> CimRef:
    """A reference point."""
    return CimRef(NS_VIRT, "Msvm_VirtualSystemReferencePoint",
                  (("InstanceID", f"Microsoft:{rp.id}"), ("VirtualSystemIdentifier", rp.vm_id)))


def export_sd_ref(vm: Vm) -> CimRef:
    """A VM's export settings template."""
    return CimRef(NS_VIRT, "Msvm_VirtualSystemExportSettingData", (("InstanceID", f"Microsoft:{vm.id}"),))


def cluster_ref(cls: str, key: str, value: str) -> CimRef:
    """An MSCluster object."""
    return CimRef(NS_CLUSTER, cls, ((key, value),))


def _inst(ns: str, cls: str, values: Mapping[str, Any], path: CimRef | None) -> CimInstance:
    props = schema.blank(ns, cls)
    lower = {k.lower(): k for k in props}
    for k, v in values.items():
        props[lower.get(k.lower(), k)] = v
    return CimInstance(class_name=cls, namespace=ns, properties=props, path=path)


def _assoc(cls: str, ns: str, left: tuple[str, CimRef], right: tuple[str, CimRef], host: str) -> CimInstance:
    path = CimRef(ns, cls, ((left[0], left[1].wmi_path(host)), (right[0], right[1].wmi_path(host))))
    return CimInstance(class_name=cls, namespace=ns, properties={left[0]: left[1], right[0]: right[1]},
                       path=path)


def _interval(seconds: float) -> CimInterval:
    return CimInterval(seconds=max(0.0, seconds))


class NodeRepository:
    """What one simulated node serves (implements :class:`hvsim.cim.Repository`)."""

    def __init__(self, world: World, node: str) -> None:
        self.world = world
        self.node = world.node(node)

    # ------------------------------------------------------------- protocol
    @property
    def hostname(self) -> str:
        """NetBIOS name of the node."""
        return self.node.name

    def namespaces(self) -> Sequence[str]:
        """Namespaces served (root/MSCluster only on cluster nodes)."""
        out = [NS_VIRT, NS_CIMV2]
        if self.node.cluster:
            out.insert(1, NS_CLUSTER)
        return out

    @property
    def winrm(self) -> WinrmBehaviour:
        """How this node's WinRM answers where real hosts differ (read by the dispatcher)."""
        return self.node.winrm

    @property
    def rights(self) -> AccountRights:
        """Who the simulation's account is on this node (read by the dispatcher; hvsim.rights)."""
        return self.node.rights

    @property
    def product_version(self) -> str:
        """What WinRM's Identify reports as ProductVersion on this node."""
        return f"OS: {self.node.os_version} SP: 0.0 Stack: 3.0"

    def class_names(self, namespace: str) -> list[str]:
        """Every class of a namespace this node serves (for association queries without AssocClass)."""
        ns = norm_ns(namespace)
        if ns not in self.namespaces():
            return []
        return [c.name for c in schema.SCHEMAS.get(ns.lower(), {}).values()]

    def class_def(self, namespace: str, class_name: str) -> ClassDef | None:
        """Schema of a class in a namespace this node serves."""
        ns = norm_ns(namespace)
        if ns not in self.namespaces():
            return None
        return schema.class_def(ns, class_name)

    def is_a(self, namespace: str, class_name: str, base: str) -> bool:
        """Class derivation test."""
        return schema.is_a(norm_ns(namespace), class_name, base)

    def instances(self, namespace: str, class_name: str) -> Iterable[CimInstance]:
        """Every instance of the class and its subclasses."""
        ns = norm_ns(namespace)
        if self.class_def(ns, class_name) is None:
            raise not_found(f"class {class_name} in namespace {namespace}", "ExecQuery")
        with self.world.lock:
            self.world.advance()
            return [i for i in self._render(ns) if schema.is_a(ns, i.class_name, class_name)]

    def get(self, ref: CimRef) -> CimInstance:
        """The instance a reference names."""
        ns = norm_ns(ref.namespace)
        cdef = self.class_def(ns, ref.class_name)
        if cdef is None:
            raise not_found(f"class {ref.class_name} in namespace {ref.namespace}")
        if cdef.keys:
            wanted = {k.lower() for k in cdef.keys}
            given = {k.lower() for k, _ in ref.keys}
            if given - wanted:
                raise CimError("w:InvalidSelectors", "The selectors are not valid for this class.",
                               detail="http://schemas.dmtf.org/wbem/wsman/1/wsman/faultDetail/UnexpectedSelectors")
            if wanted - given:
                raise CimError("w:InvalidSelectors", "Selectors are missing for this class.",
                               detail="http://schemas.dmtf.org/wbem/wsman/1/wsman/faultDetail/InsufficientSelectors")
        with self.world.lock:
            self.world.advance()
            for inst in self._render(ns):
                if inst.path is not None and schema.is_a(ns, inst.class_name, ref.class_name) \
                        and _keys_match(inst.path, ref):
                    return inst
        raise not_found(_describe(ref))

    def invoke(self, target: CimRef, method: str, params: Mapping[str, Any]) -> MethodOutcome:
        """Run a method (see :mod:`hvsim.world.methods`)."""
        from hvsim.world.methods import invoke

        return invoke(self, target, method, params)

    # ------------------------------------------------------------ resolving
    def find_vm(self, ref: CimRef | None, param: str = "AffectedSystem") -> Vm:
        """The VM (or planned VM) a reference names, if it is on this node; else the not-found fault."""
        if not isinstance(ref, CimRef):
            raise CimError("w:InvalidParameter", f"{param}: a reference to a virtual machine is required.",
                           detail="http://schemas.dmtf.org/wbem/wsman/1/wsman/faultDetail/InvalidValue")
        name = ref.key("Name") or ""
        planned = ref.class_name.lower() == "msvm_plannedcomputersystem"
        for vm in self.world.vms.values():
            if vm.id.lower() == name.lower() and vm.node == self.node.name and (
                    ref.class_name.lower() == "cim_computersystem" or vm.planned == planned):
                return vm
        raise not_found(f"{ref.class_name}.Name=\"{name}\" ({param})", "ExecMethod")

    def find_config(self, ref: CimRef | None, param: str) -> tuple[Vm, Snapshot | None, Config]:
        """The VM and checkpoint (None: live/planned) behind a VSSD reference on this node."""
        if not isinstance(ref, CimRef):
            raise CimError("w:InvalidParameter", f"{param}: a reference to a VSSD is required.")
        iid = ref.key("InstanceID") or ""
        return self.find_config_id(iid, param)

    def find_config_id(self, instance_id: str, param: str) -> tuple[Vm, Snapshot | None, Config]:
        """Like :meth:`find_config` for an InstanceID ``Microsoft:<GUID>``."""
        cid = instance_id.split(":", 1)[-1]
        hit = self.world.vm_for_config(cid)
        if hit is None or hit[0].node != self.node.name:
            raise not_found(f"Msvm_VirtualSystemSettingData.InstanceID=\"{instance_id}\" ({param})",
                            "ExecMethod")
        vm, snap = hit
        return vm, snap, (snap.config if snap else vm.config)

    def find_setting(self, instance_id: str) -> tuple[Vm, Snapshot | None, Config, Setting]:
        """A device setting by InstanceID ``Microsoft:<config>\\<rid>``."""
        body = instance_id.split(":", 1)[-1]
        cid, _, rid = body.partition("\\")
        vm, snap, cfg = self.find_config_id(f"Microsoft:{cid}", "ResourceSettings")
        s = cfg.find(rid)
        if s is None:
            raise not_found(f"setting {instance_id}", "ExecMethod")
        return vm, snap, cfg, s

    def find_rp(self, ref: CimRef | None) -> tuple[Vm, ReferencePoint]:
        """A reference point on this node."""
        if not isinstance(ref, CimRef):
            raise CimError("w:InvalidParameter", "AffectedReferencePoint: a reference is required.")
        rid = (ref.key("InstanceID") or "").split(":", 1)[-1]
        for vm in self.world.vms_on(self.node.name):
            rp = vm.reference_points.get(rid.upper())
            if rp is not None:
                return vm, rp
        raise not_found(f"Msvm_VirtualSystemReferencePoint.InstanceID=\"{ref.key('InstanceID')}\"",
                        "ExecMethod")

    def find_job(self, ref: CimRef) -> Job:
        """A job of this node."""
        iid = (ref.key("InstanceID") or "").upper()
        job = self.world.jobs_engine.jobs.get(iid)
        if job is None or job.node != self.node.name:
            raise not_found(f"{ref.class_name}.InstanceID=\"{iid}\"")
        return job

    # ------------------------------------------------------------- rendering
    def _render(self, ns: str) -> list[CimInstance]:
        if ns == NS_VIRT:
            return self._render_virt()
        if ns == NS_CLUSTER:
            return self._render_cluster()
        return self._render_cimv2()

    def _render_cimv2(self) -> list[CimInstance]:
        n = self.node
        name = f"{n.os_caption}|C:\\Windows|\\Device\\Harddisk0\\Partition2"
        return [_inst(NS_CIMV2, "Win32_OperatingSystem", {
            "Caption": n.os_caption, "Name": name, "Version": n.os_version,
            "BuildNumber": str(n.build), "CSName": n.name, "OSArchitecture": "64-bit",
            "TotalVisibleMemorySize": n.memory_mb * 1024, "FreePhysicalMemory": n.memory_mb * 512,
        }, CimRef(NS_CIMV2, "Win32_OperatingSystem", (("Name", name),))),
            # learn.microsoft.com/windows/win32/cimwin32prov/win32-computersystem: NumberOfLogicalProcessors
            _inst(NS_CIMV2, "Win32_ComputerSystem", {
                "Name": n.name, "NumberOfLogicalProcessors": n.logical_processors,
                "TotalPhysicalMemory": n.memory_mb * 1024 * 1024, "Domain": "example.test",
            }, CimRef(NS_CIMV2, "Win32_ComputerSystem", (("Name", n.name),)))]

    def _render_virt(self) -> list[CimInstance]:
        w, n, host = self.world, self.node, self.node.name
        out: list[CimInstance] = []
        out.append(_inst(NS_VIRT, "Msvm_ComputerSystem", {
            "CreationClassName": "Msvm_ComputerSystem", "Name": host, "ElementName": host,
            "Caption": "Hosting Computer System", "Description": "Microsoft Hosting Computer System",
            "EnabledState": 2, "RequestedState": 12, "HealthState": 5, "OperationalStatus": [2],
            "EnabledDefault": 2, "NameFormat": None, "NumberOfNumaNodes": 1,
        }, host_ref(host)))
        for cls, (svc, element) in SERVICES.items():
            out.append(_inst(NS_VIRT, cls, {
                "CreationClassName": cls, "Name": svc, "SystemCreationClassName": "Msvm_ComputerSystem",
                "SystemName": host, "ElementName": element, "Caption": element, "EnabledState": 2,
                "HealthState": 5, "OperationalStatus": [2], "Started": True, "StartMode": "Auto",
            }, service_ref(cls, host)))
        out.append(_inst(NS_VIRT, "Msvm_VirtualSystemManagementServiceSettingData", {
            "InstanceID": f"Microsoft:{host}", "ElementName": "Hyper-V", "Caption": "Hyper-V Settings",
            "DefaultExternalDataRoot": n.default_vm_path, "DefaultVirtualHardDiskPath": n.default_vhd_path,
            "MinimumMacAddress": "00155D0A0000", "MaximumMacAddress": "00155D0AFFFF",
            "NumaSpanningEnabled": True, "EnhancedSessionModeEnabled": False,
        }, CimRef(NS_VIRT, "Msvm_VirtualSystemManagementServiceSettingData",
                  (("InstanceID", f"Microsoft:{host}"),))))
        for cls, pool, values in _TEMPLATES:
            iid = f"Microsoft:Definition\\{pool}\\Default"
            out.append(_inst(NS_VIRT, cls, {**values, "InstanceID": iid, "PoolID": "",
                                            "AutomaticAllocation": True, "AutomaticDeallocation": True},
                             CimRef(NS_VIRT, cls, (("InstanceID", iid),))))
        for sw in n.switches:
            out.append(_inst(NS_VIRT, "Msvm_VirtualEthernetSwitch", {
                "CreationClassName": "Msvm_VirtualEthernetSwitch", "Name": sw.id, "ElementName": sw.name,
                "Caption": "Virtual Switch", "Description": "Microsoft Virtual Switch", "EnabledState": 2,
                "HealthState": 5, "OperationalStatus": [2], "MaxVMQOffloads": 0, "MaxChimneyOffloads": 0,
            }, switch_ref(host, sw)))
        for vm in w.vms.values():
            if vm.node == host:
                out.extend(self._render_vm(vm))
        existing = {_identity(i.path) for i in out if i.path is not None}
        for job in w.jobs_engine.on_node(host):
            out.extend(self._render_job(job, existing))
        return out

    def _render_vm(self, vm: Vm) -> list[CimInstance]:
        host = self.node.name
        w = self.world
        out: list[CimInstance] = []
        ref = vm_ref(vm)
        now = w.clock()
        running = vm.state in (VM_RUNNING, VM_PAUSED)
        out.append(_inst(NS_VIRT, ref.class_name, {
            "CreationClassName": ref.class_name, "Name": vm.id, "ElementName": vm.name,
            "Caption": "Planned Virtual Machine" if vm.planned else "Virtual Machine",
            "Description": "Microsoft Planned Virtual Machine" if vm.planned else "Microsoft Virtual Machine",
            "EnabledState": VM_OFF if vm.planned else vm.state, "RequestedState": 12, "EnabledDefault": 2,
            "HealthState": 5, "OperationalStatus": self._operational_status(vm), "InstallDate": vm.created,
            "OnTimeInMilliseconds": int((now - vm.state_since) * 1000) if running else 0,
            "ProcessID": vm.pid or None, "TimeOfLastConfigurationChange": vm.last_change,
            "TimeOfLastStateChange": vm.last_change, "NumberOfNumaNodes": 1, "ReplicationState": 0,
            "ReplicationHealth": 0, "ReplicationMode": 0, "EnhancedSessionModeState": 3,
            "LastSuccessfulBackupTime": vm.last_backup,
        }, ref))
        live = vssd_ref(vm.id)
        out.extend(self._render_config(vm, vm.config, vm.id, VST_PLANNED if vm.planned else VST_REALIZED,
                                       None))
        out.append(_assoc("Msvm_SettingsDefineState", NS_VIRT, ("ManagedElement", ref), ("SettingData", live),
                          host))
        out.append(_assoc("Msvm_ElementSettingData", NS_VIRT, ("ManagedElement", ref), ("SettingData", live),
                          host))
        for snap in vm.snapshots.values():
            out.extend(self._render_config(vm, snap.config, snap.id, snap.vtype, snap))
            sref = vssd_ref(snap.id)
            out.append(_assoc("Msvm_SnapshotOfVirtualSystem", NS_VIRT, ("Antecedent", ref), ("Dependent",
                                                                                             sref),
                              host))
            out.append(_assoc("Msvm_ElementSettingData", NS_VIRT, ("ManagedElement", ref),
                              ("SettingData", sref), host))
        if vm.current_snapshot:
            out.append(_assoc("Msvm_MostCurrentSnapshotInBranch", NS_VIRT, ("Antecedent", ref),
                              ("Dependent", vssd_ref(vm.current_snapshot)), host))
        for rp in vm.reference_points.values():
            rref = rp_ref(rp)
            out.append(_inst(NS_VIRT, "Msvm_VirtualSystemReferencePoint", {
                "InstanceID": f"Microsoft:{rp.id}", "VirtualSystemIdentifier": vm.id,
                "ElementName": f"{vm.name} - reference point", "Caption": "Reference Point",
                "ReferencePointType": 2, "ConsistencyLevel": rp.consistency, "HasAssociatedData": False,
                "CreationTime": rp.created, "VirtualDiskIdentifiers": list(rp.disk_ids),
                "ResilientChangeTrackingIdentifiers": list(rp.rct_ids),
            }, rref))
            out.append(_assoc("Msvm_ReferencePointOfVirtualSystem", NS_VIRT, ("Antecedent", ref),
                              ("Dependent", rref), host))
        if not vm.planned:
            eref = export_sd_ref(vm)
            out.append(_inst(NS_VIRT, "Msvm_VirtualSystemExportSettingData", {
                "InstanceID": f"Microsoft:{vm.id}", "ElementName": "Export Settings",
                "Caption": "Virtual System Export Setting Data", "CopySnapshotConfiguration": 0,
                "CopyVmStorage": True, "CopyVmRuntimeInformation": True, "CreateVmExportSubdirectory": True,
                "SnapshotVirtualSystem": None, "CaptureLiveState": 0, "BackupIntent": 0,
                "DifferentialBackupBase": None, "ExportForLiveMigration": False,
                    "ExcludedVirtualHardDisks": [],
                "DisableDifferentialOfIgnoredStorage": False,
            }, eref))
            out.append(_assoc("Msvm_SystemExportSettingData", NS_VIRT, ("ManagedElement", ref),
                              ("SettingData", eref), host))
        return out

    def _operational_status(self, vm: Vm) -> list[int]:
        """[2 OK] plus the operation a running job is doing to the VM (hyperv-wmi.md 2.1).

        A merge that outlives the job that deleted the checkpoint shows as 32772 "Merging Disks"
        (Msvm_ComputerSystem page; hvsim.behaviour.MERGE).
        """
        for job in self.world.jobs_engine.on_node(self.node.name):
            code = _BUSY_STATUS.get(job.method)
            if code is None or job.finished:
                continue
            if any((a.key("Name") or "").lower() == vm.id.lower() for a in job.affected):
                return [2, code]
        if self.world.merging(vm.id):
            return [2, MERGING_DISKS]
        return [2]

    def _render_config(self, vm: Vm, cfg: Config, cid: str, vtype: str,
                       snap: Snapshot | None) -> list[CimInstance]:
        host = self.node.name
        out: list[CimInstance] = []
        values = dict(cfg.vssd)
        parent_id = snap.parent_id if snap is not None else (None if vm.planned else vm.current_snapshot)
        values.update({
            "InstanceID": f"Microsoft:{cid}", "VirtualSystemIdentifier": vm.id, "VirtualSystemType": vtype,
            "ConfigurationID": cid,
            # a checkpoint's parent checkpoint; for the live settings, the checkpoint "Now" hangs under
            "Parent": vssd_ref(parent_id).wmi_path(host) if parent_id else None,
        })
        if snap is not None:
            values["Description"] = "Checkpoint settings for the virtual machine."
        vref = vssd_ref(cid)
        out.append(_inst(NS_VIRT, "Msvm_VirtualSystemSettingData", values, vref))
        by_rid = {s.rid.lower(): s for s in cfg.settings}
        for s in cfg.settings:
            sref = setting_ref(cid, s)
            sv = dict(s.props)
            sv["InstanceID"] = f"Microsoft:{cid}\\{s.rid}"
            parent = by_rid.get(s.parent.lower()) if s.parent else None
            sv["Parent"] = setting_ref(cid, parent).wmi_path(host) if parent else None
            out.append(_inst(NS_VIRT, s.class_name, sv, sref))
            out.append(_assoc("Msvm_VirtualSystemSettingDataComponent", NS_VIRT, ("GroupComponent", vref),
                              ("PartComponent", sref), host))
        return out

    def _render_job(self, job: Job, existing: set[tuple[str, tuple[tuple[str, str], ...]]]
                    ) -> list[CimInstance]:
        host = self.node.name
        w = self.world
        now = w.clock()
        end = job.finished_at if job.finished_at is not None else now
        values: dict[str, Any] = {
            "InstanceID": job.instance_id, "Caption": job.description, "Description": job.description,
            "ElementName": job.method, "Name": job.method, "JobState": job.state,
            "PercentComplete": job.percent, "ErrorCode": job.error_code,
            "ErrorDescription": job.error_description or None,
            "ErrorSummaryDescription": job.error_description or None,
            "JobStatus": _job_status(job), "TimeSubmitted": job.submitted_wall,
                "StartTime": job.submitted_wall,
            "ElapsedTime": _interval(end - job.submitted), "TimeBeforeRemoval": _interval(
                w.jobs_engine.time_before_removal),
            "TimeOfLastStateChange": job.finished_wall or job.submitted_wall, "Cancellable": job.cancellable,
            "DeleteOnCompletion": True, "JobType": job.job_type, "Owner": "EXAMPLE\\backup",
            "Priority": 0, "JobRunTimes": 1, "LocalOrUtcTime": 2, "HealthState": 5, "OperationalStatus": [2],
        }
        if job.class_name == "Msvm_StorageJob":
            values.update(Parent=job.storage_parent or None, Child=job.storage_child or None,
                          JobCompletionStatusCode=0 if job.state in (JOB_COMPLETED, JOB_COMPLETED_WITH_WARNINGS)
                          else 0x80004005)
        jref = job_ref(job)
        out = [_inst(NS_VIRT, job.class_name, values, jref)]
        for ref in job.affected:
            # an element the job touched that no longer exists here (destroyed, realized, migrated)
            # is no longer associated, as WMI would not return it
            if _identity(ref) in existing:
                out.append(_assoc("Msvm_AffectedJobElement", NS_VIRT, ("AffectedElement", ref),
                                  ("AffectingElement", jref), host))
        return out

    def _render_cluster(self) -> list[CimInstance]:
        w = self.world
        c = w.cluster
        if c is None:
            return []
        out: list[CimInstance] = []
        cref = cluster_ref("MSCluster_Cluster", "Name", c.name)
        out.append(_inst(NS_CLUSTER, "MSCluster_Cluster", {
            "Name": c.name, "Fqdn": f"{c.name}.{c.domain}".lower(),
                "SharedVolumesRoot": c.shared_volumes_root,
            "EnableSharedVolumes": 1, "QuorumType": "Node and Disk Majority", "QuorumPath": "",
            "Id": c.id, "Caption": c.name, "MaxNumberOfNodes": 64,
        }, cref))
        for name in c.nodes:
            node = w.node(name)
            nref = cluster_ref("MSCluster_Node", "Name", node.name)
            major, minor, _build = node.os_version.split(".")
            out.append(_inst(NS_CLUSTER, "MSCluster_Node", {
                "Name": node.name, "State": node.state, "Id": str(node.node_id), "NodeWeight": 1,
                "BuildNumber": node.build, "MajorVersion": int(major), "MinorVersion": int(minor),
            }, nref))
            out.append(_assoc("MSCluster_ClusterToNode", NS_CLUSTER, ("Antecedent", cref), ("Dependent",
                                                                                            nref),
                              self.node.name))
        for csv in c.csvs:
            path = f"{c.shared_volumes_root}\\Volume{csv.number}"
            csv_ref = cluster_ref("MSCluster_ClusterSharedVolume", "Name", csv.name)
            part_ref = cluster_ref("MSCluster_DiskPartition", "Path", path)
            free = max(0, csv.free_bytes - w.csv_used_bytes(csv))
            out.append(_inst(NS_CLUSTER, "MSCluster_ClusterSharedVolume", {
                "Name": csv.name, "VolumeName": f"\\\\?\\Volume{{{csv.volume_guid}}}\\", "FaultState": 0,
                "BackupState": 0, "Id": csv.volume_guid,
            }, csv_ref))
            out.append(_inst(NS_CLUSTER, "MSCluster_DiskPartition", {
                "Path": path, "VolumeLabel": f"CSV{csv.number}", "VolumeGuid": csv.volume_guid,
                "FileSystem": "CSVFS", "TotalSize": csv.total_bytes // (1 << 20),
                    "FreeSpace": free // (1 << 20),
                "PartitionNumber": 2, "SerialNumber": 0x1000 + csv.number, "MountPoints": [path],
            }, part_ref))
            out.append(_assoc("MSCluster_ClusterSharedVolumeToPartition", NS_CLUSTER, ("GroupComponent",
                                                                                       csv_ref),
                              ("PartComponent", part_ref), self.node.name))
            if csv.owner_node:
                out.append(_assoc("MSCluster_ClusterSharedVolumeToNode", NS_CLUSTER, ("GroupComponent",
                                                                                      csv_ref),
                                  ("PartComponent", cluster_ref("MSCluster_Node", "Name", csv.owner_node)),
                                  self.node.name))
            out.append(_assoc("MSCluster_ClusterToClusterSharedVolume", NS_CLUSTER, ("GroupComponent", cref),
                              ("PartComponent", csv_ref), self.node.name))
        for g in c.groups:
            out.extend(self._render_group(g, cref))
        return out

    def _render_group(self, g: Group, cref: CimRef) -> list[CimInstance]:
        w = self.world
        vm = w.vms.get(g.vm_id)
        present = vm is not None and not vm.planned
        vm_state = vm.state if vm is not None else VM_OFF
        if not present:
            gstate, rstate = 2, 4  # Failed
        elif vm_state in (VM_RUNNING, VM_PAUSED):
            gstate, rstate = 0, 2
        else:
            gstate, rstate = 1, 3
        gref = cluster_ref("MSCluster_ResourceGroup", "Name", g.name)
        out = [_inst(NS_CLUSTER, "MSCluster_ResourceGroup", {
            "Name": g.name, "Id": g.id, "OwnerNode": g.owner_node, "State": gstate, "GroupType": 111,
            "PersistentState": gstate == 0, "FailoverThreshold": 4294967295, "FailoverPeriod": 6,
            "AutoFailbackType": 0, "FailbackWindowStart": -1, "FailbackWindowEnd": -1, "Priority": 2000,
            "AntiAffinityClassNames": [], "IsCore": False,
        }, gref)]
        out.append(_assoc("MSCluster_ClusterToResourceGroup", NS_CLUSTER, ("GroupComponent", cref),
                          ("PartComponent", gref), self.node.name))
        vm_name = vm.name if vm is not None else g.name
        store = str(vm.config.vssd.get("ConfigurationDataRoot") or "") if vm is not None else ""
        # The member is spelled VmID, as the cluster database and Hyper-V Manager's
        # Microsoft.Virtualization.Client.Management spell it (MSClusterResourceBaseView:
        # VMComputerSystemInstanceId = "VmID"); Microsoft's private-properties page writes VmId.
        # Both resources of a VM role carry it (MSClusterVMOrConfigurationResourceView).
        resources: list[tuple[str, str, str, dict[str, Any]]] = [
            (f"Virtual Machine {vm_name}", "Virtual Machine", g.vm_resource_id, {
                "VmID": g.vm_id, "OfflineAction": g.offline_action, "ShutdownAction": 0, "CheckHeartbeat": 1,
                "MigrationState": 0, "MigrationProgress": 0, "DefaultMoveType": 4294967295,
                "VmState": vm_state}),
            (f"Virtual Machine Configuration {vm_name}", "Virtual Machine Configuration",
             g.config_resource_id, {"VmID": g.vm_id, "VmStoreRootPath": store,
                                    "DependsOnSharedVolumes": [], "VmPhysicalDisks": []}),
        ]
        for rname, rtype, rid, private in resources:
            rref = cluster_ref("MSCluster_Resource", "Name", rname)
            out.append(_inst(NS_CLUSTER, "MSCluster_Resource", {
                "Name": rname, "Id": rid, "Type": rtype, "State": rstate, "OwnerGroup": g.name,
                "OwnerNode": g.owner_node, "IsClusterSharedVolume": False, "RestartAction": 2,
                "PrivateProperties": CimInstance("MSCluster_Property", NS_CLUSTER, dict(private)),
            }, rref))
            out.append(_assoc("MSCluster_ResourceGroupToResource", NS_CLUSTER, ("GroupComponent", gref),
                              ("PartComponent", rref), self.node.name))
        return out


# Default settings ("templates") every host lists in the RASD classes, as
# ``Microsoft:Definition\<pool GUID>\Default``; clients copy them for
# AddResourceSettings and must not mistake them for a VM's devices.
_TEMPLATES: tuple[tuple[str, str, dict[str, Any]], ...] = (
    ("Msvm_ResourceAllocationSettingData", "118C3BE5-0D31-4804-85F0-5C6074ABEA8F",
     {"ResourceType": 17, "ResourceSubType": "Microsoft:Hyper-V:Synthetic Disk Drive",
      "ElementName": "Hard Drive", "Address": "0"}),
    ("Msvm_ResourceAllocationSettingData", "D9F5C7F7-0F0B-4C7F-A3A2-1B4E0E2D8C11",
     {"ResourceType": 16, "ResourceSubType": "Microsoft:Hyper-V:Synthetic DVD Drive", "ElementName": "DVD Drive"}),
    ("Msvm_ResourceAllocationSettingData", "6B5A8A7C-1E77-4B5E-9B8F-6C8B1B2A7F21",
     {"ResourceType": 6, "ResourceSubType": "Microsoft:Hyper-V:Synthetic SCSI Controller",
      "ElementName": "SCSI Controller"}),
    ("Msvm_StorageAllocationSettingData", "70BB60D2-A9D3-46AA-B654-3DE53004B4F8",
     {"ResourceType": 31, "ResourceSubType": "Microsoft:Hyper-V:Virtual Hard Disk",
      "ElementName": "Hard Disk Image", "HostResource": []}),
    ("Msvm_StorageAllocationSettingData", "8F0E1B55-8E2B-4B3C-9E61-1B7F4C5E3D02",
     {"ResourceType": 31, "ResourceSubType": "Microsoft:Hyper-V:Virtual CD/DVD Disk",
      "ElementName": "ISO Disk Image", "HostResource": []}),
    ("Msvm_SyntheticEthernetPortSettingData", "C1F1E2D3-4B5A-4C6D-8E7F-9A0B1C2D3E41",
     {"ResourceType": 10, "ResourceSubType": "Microsoft:Hyper-V:Synthetic Ethernet Port",
      "ElementName": "Network Adapter", "StaticMacAddress": False}),
    ("Msvm_EthernetPortAllocationSettingData", "3A2B1C0D-9E8F-4A7B-8C6D-5E4F3A2B1C51",
     {"ResourceType": 33, "ResourceSubType": "Microsoft:Hyper-V:Ethernet Connection",
      "ElementName": "Dynamic Ethernet Switch Port", "EnabledState": 2, "HostResource": []}),
)

# OperationalStatus[1] while a job works on a VM.
MERGING_DISKS = 32772  # Msvm_ComputerSystem.OperationalStatus[1] "Merging Disks"
_BUSY_STATUS: dict[str, int] = {"CreateSnapshot": 32768, "DestroySnapshot": 32770,
                                "ConvertToReferencePoint": 32772, "ExportSystemDefinition": 32773}


def _identity(ref: CimRef) -> tuple[str, tuple[tuple[str, str], ...]]:
    """Case-insensitive identity of a reference (class and keys)."""
    return ref.class_name.lower(), tuple(sorted((k.lower(), v.lower()) for k, v in ref.keys))


def _job_status(job: Job) -> str:
    if job.state == JOB_COMPLETED:
        return "Job completed successfully"
    if job.state == JOB_COMPLETED_WITH_WARNINGS:
        return "Job completed with warnings"
    if job.finished:
        return "Job failed"
    return "Job is running"


def _keys_match(path: CimRef, ref: CimRef) -> bool:
    mine = {k.lower(): v for k, v in path.keys}
    for k, v in ref.keys:
        have = mine.get(k.lower())
        if have is None:
            return False
        # WMI compares key strings case-insensitively for GUIDs and names.
        if have.lower() != v.lower():
            return False
    return True


def _describe(ref: CimRef) -> str:
    keys = ",".join(f'{k}="{v}"' for k, v in ref.keys)
    return f"{ref.class_name}.{keys}"
