"""Class schemas (ClassDef) of every class the simulated nodes serve.

Properties include the inherited ones (as the MOF pages on learn.microsoft.com
list them); method parameters are in MOF declaration order (hyperv-wmi.md
sections 2-7).  A compact spec string keeps the tables readable:
``"Name:type"`` where type is a CIM scalar name, optionally followed by
``[]``, or ``ref(Class)`` / ``inst(Class)`` for references and embedded
instances.
"""

from __future__ import annotations

import dataclasses

from hvsim.cim import NS_CIMV2, NS_CLUSTER, NS_VIRT, ClassDef, MethodDef, PropDef


def _prop(spec: str) -> PropDef:
    name, _, typ = spec.partition(":")
    is_array = typ.endswith("[]")
    if is_array:
        typ = typ[:-2]
    ref_class: str | None = None
    if typ.startswith("ref(") or typ.startswith("inst("):
        kind, _, rest = typ.partition("(")
        ref_class = rest.rstrip(")")
        typ = "reference" if kind == "ref" else "instance"
    return PropDef(name=name.strip(), cim_type=typ.strip(), is_array=is_array, ref_class=ref_class)


def _props(*specs: str) -> tuple[PropDef, ...]:
    return tuple(_prop(s) for s in specs)


def _method(name: str, ins: tuple[str, ...] = (), outs: tuple[str, ...] = ()) -> MethodDef:
    return MethodDef(name=name, in_params=_props(*ins), out_params=_props(*outs))


_JOB_OUT = "Job:ref(CIM_ConcreteJob)"

_ManagedElement = ("Caption:string", "Description:string", "ElementName:string")
_EnabledLogical = (*_ManagedElement, "InstallDate:datetime", "Name:string", "OperationalStatus:uint16[]",
                   "StatusDescriptions:string[]", "Status:string", "HealthState:uint16",
                   "EnabledState:uint16", "OtherEnabledState:string", "RequestedState:uint16",
                   "EnabledDefault:uint16", "TimeOfLastStateChange:datetime")
_ComputerSystem = (*_EnabledLogical, "CreationClassName:string", "PrimaryOwnerName:string",
                   "PrimaryOwnerContact:string", "Roles:string[]", "NameFormat:string",
                   "Dedicated:uint16[]", "OtherDedicatedDescriptions:string[]")
_MsvmComputerSystem = (*_ComputerSystem, "OnTimeInMilliseconds:uint64", "ProcessID:uint32",
                       "TimeOfLastConfigurationChange:datetime", "NumberOfNumaNodes:uint16",
                       "ReplicationState:uint16", "ReplicationHealth:uint16", "ReplicationMode:uint16",
                       "FailedOverReplicationType:uint16", "LastReplicationType:uint16",
                       "LastApplicationConsistentReplicationTime:datetime", "LastReplicationTime:datetime",
                       "LastSuccessfulBackupTime:datetime", "EnhancedSessionModeState:uint16",
                       "HwThreadsPerCoreRealized:uint32")
_RequestStateChange = _method("RequestStateChange", ("RequestedState:uint16", "TimeoutPeriod:datetime"),
                              (_JOB_OUT,))

_SettingData = (*_ManagedElement, "InstanceID:string")
_VSSD = (*_SettingData, "VirtualSystemIdentifier:string", "VirtualSystemType:string", "Notes:string[]",
         "CreationTime:datetime", "ConfigurationID:string", "ConfigurationDataRoot:string",
         "ConfigurationFile:string", "SnapshotDataRoot:string", "SuspendDataRoot:string",
         "SwapFileDataRoot:string", "LogDataRoot:string", "AutomaticStartupAction:uint16",
         "AutomaticStartupActionDelay:datetime", "AutomaticStartupActionSequenceNumber:uint16",
         "AutomaticShutdownAction:uint16", "AutomaticRecoveryAction:uint16", "RecoveryFile:string")
_MsvmVSSD = (*_VSSD, "VirtualSystemSubType:string", "Version:string", "Parent:string", "IsSaved:boolean",
             "UserSnapshotType:uint16", "IncrementalBackupEnabled:boolean", "BootOrder:uint16[]",
             "BootSourceOrder:string[]", "NetworkBootPreferredProtocol:uint16", "SecureBootEnabled:boolean",
             "SecureBootTemplateId:string", "BIOSGUID:string", "BIOSSerialNumber:string",
             "BaseBoardSerialNumber:string", "ChassisSerialNumber:string", "ChassisAssetTag:string",
             "BIOSNumLock:boolean", "TurnOffOnGuestRestart:boolean", "AutomaticCriticalErrorAction:uint16",
             "AutomaticCriticalErrorActionTimeout:datetime", "GuestStateDataRoot:string",
             "GuestStateFile:string", "GuestStateIsolationEnabled:boolean", "LowMmioGapSize:uint64",
             "HighMmioGapSize:uint64", "VirtualNumaEnabled:boolean", "EnhancedSessionTransportType:uint16",
             "Architecture:string", "AllowFullSCSICommandSet:boolean", "AllowReducedFcRedundancy:boolean",
             "DebugChannelId:uint32", "DebugPort:uint32", "DebugPortEnabled:uint16")
_RASD = (*_SettingData, "ResourceType:uint16", "OtherResourceType:string", "ResourceSubType:string",
         "PoolID:string", "ConsumerVisibility:uint16", "HostResource:string[]", "AllocationUnits:string",
         "VirtualQuantity:uint64", "Reservation:uint64", "Limit:uint64", "Weight:uint32",
         "AutomaticAllocation:boolean", "AutomaticDeallocation:boolean", "Parent:string",
         "Connection:string[]", "Address:string", "MappingBehavior:uint16", "AddressOnParent:string",
         "VirtualQuantityUnits:string")
_MsvmRASD = (*_RASD, "VirtualSystemIdentifiers:string[]")
_SASD = (*_RASD, "VirtualResourceBlockSize:uint64", "Access:uint16", "HostResourceBlockSize:uint64",
         "HostExtentStartingAddress:uint64", "HostExtentName:string", "HostExtentNameFormat:uint16",
         "OtherHostExtentNameFormat:string", "HostExtentNameNamespace:uint16",
         "OtherHostExtentNameNamespace:string")
_MsvmSASD = (*_SASD, "IOPSLimit:uint64", "IOPSReservation:uint64", "IOPSAllocationUnits:string",
             "PersistentReservationsSupported:boolean", "CachingMode:uint16", "SnapshotId:string",
             "IgnoreFlushes:boolean", "WriteHardeningMethod:uint16", "StorageQoSPolicyID:string")
_EthPortASD = (*_RASD, "DesiredVLANEndpointMode:uint16", "OtherEndpointMode:string")
_SyntheticNic = (*_EthPortASD, "VirtualSystemIdentifiers:string[]", "StaticMacAddress:boolean",
                 "ClusterMonitored:boolean", "DeviceNamingEnabled:boolean", "InterruptModeration:boolean",
                 "AllowPacketDirect:boolean", "NumaAwarePlacement:boolean", "MediaType:uint32")
_EPASD = (*_EthPortASD, "EnabledState:uint16", "LastKnownSwitchName:string", "RequiredFeatures:string[]",
          "RequiredFeatureHints:string[]", "TestReplicaPoolID:string", "TestReplicaSwitchName:string",
          "CompartmentGuid:string")
_Processor = (*_RASD, "LimitCPUID:boolean", "LimitProcessorFeatures:boolean",
              "MaxProcessorsPerNumaNode:uint64", "MaxNumaNodesPerSocket:uint64",
              "HwThreadsPerCore:uint64", "EnableHostResourceProtection:boolean",
              "ExposeVirtualizationExtensions:boolean", "EnablePerfmonPmu:boolean")
_Memory = (*_RASD, "DynamicMemoryEnabled:boolean", "TargetMemoryBuffer:uint32", "IsVirtualized:boolean",
           "SwapFilesInUse:boolean", "MaxMemoryBlocksPerNumaNode:uint64", "SgxSize:uint64",
           "SgxEnabled:boolean", "HugePagesEnabled:boolean")
_Job = (*_ManagedElement, "InstanceID:string", "InstallDate:datetime", "Name:string",
        "OperationalStatus:uint16[]", "StatusDescriptions:string[]", "Status:string", "HealthState:uint16",
        "JobStatus:string", "TimeSubmitted:datetime", "ScheduledStartTime:datetime", "StartTime:datetime",
        "ElapsedTime:datetime", "JobRunTimes:uint32", "RunMonth:uint8", "RunDay:sint8",
        "RunDayOfWeek:sint8", "RunStartInterval:datetime", "LocalOrUtcTime:uint16", "UntilTime:datetime",
        "Notify:string", "Owner:string", "Priority:uint32", "PercentComplete:uint16",
        "DeleteOnCompletion:boolean", "ErrorCode:uint16", "ErrorDescription:string", "RecoveryAction:uint16",
        "OtherRecoveryAction:string", "JobState:uint16", "TimeOfLastStateChange:datetime",
        "TimeBeforeRemoval:datetime", "Cancellable:boolean", "ErrorSummaryDescription:string",
        "JobType:uint16")
_JobMethods = (
    _RequestStateChange,
    _method("GetError", (), ("Error:inst(Msvm_Error)",)),
    _method("GetErrorEx", (), ("Errors:inst(Msvm_Error)[]",)),
    _method("KillJob", ("DeleteOnKill:boolean",)),
)
_Service = (*_EnabledLogical, "SystemCreationClassName:string", "SystemName:string",
            "CreationClassName:string", "PrimaryOwnerName:string", "PrimaryOwnerContact:string",
            "StartMode:string", "Started:boolean")
_Error = ("ErrorType:uint16", "OtherErrorType:string", "OwningEntity:string", "MessageID:string",
          "Message:string", "MessageArguments:string[]", "PerceivedSeverity:uint16", "ProbableCause:uint16",
          "ProbableCauseDescription:string", "RecommendedActions:string[]", "ErrorSource:string",
          "ErrorSourceFormat:uint16", "OtherErrorSourceFormat:string", "CIMStatusCode:uint32",
          "CIMStatusCodeDescription:string", "ErrorCode:uint32")

_SVC_KEYS = ("CreationClassName", "Name", "SystemCreationClassName", "SystemName")


def _cls(name: str, superclass: str | None, keys: tuple[str, ...], props: tuple[str, ...],
         methods: tuple[MethodDef, ...] = ()) -> ClassDef:
    if name.startswith("MSCluster_"):
        # Every MSCluster_* method is declared void (hyperv-wmi.md §7.4): WinRM sends an
        # empty _OUTPUT and reports failure as a SOAP fault with __ExtendedStatus.
        methods = tuple(dataclasses.replace(m, void=True) for m in methods)
    return ClassDef(name=name, superclass=superclass, keys=keys, properties=_props(*props), methods=methods)


def _assoc(name: str, left: tuple[str, str], right: tuple[str, str],
           superclass: str | None = None) -> ClassDef:
    return ClassDef(name=name, superclass=superclass, keys=(left[0], right[0]),
                    properties=_props(f"{left[0]}:ref({left[1]})", f"{right[0]}:ref({right[1]})"),
                    is_association=True)


VIRT_CLASSES: tuple[ClassDef, ...] = (
    _cls("CIM_ComputerSystem", None, ("CreationClassName", "Name"), _ComputerSystem, (_RequestStateChange,)),
    _cls("Msvm_ComputerSystem", "CIM_ComputerSystem", ("CreationClassName", "Name"), _MsvmComputerSystem,
         (_RequestStateChange,)),
    _cls("Msvm_PlannedComputerSystem", "CIM_ComputerSystem", ("CreationClassName", "Name"),
         _MsvmComputerSystem),
    _cls("Msvm_VirtualEthernetSwitch", "CIM_ComputerSystem", ("CreationClassName", "Name"),
         (*_ComputerSystem, "MaxVMQOffloads:uint32", "MaxChimneyOffloads:uint32")),
    _cls("CIM_SettingData", None, ("InstanceID",), _SettingData),
    _cls("CIM_VirtualSystemSettingData", "CIM_SettingData", ("InstanceID",), _VSSD),
    _cls("Msvm_VirtualSystemSettingData", "CIM_VirtualSystemSettingData", ("InstanceID",), _MsvmVSSD),
    _cls("CIM_ResourceAllocationSettingData", "CIM_SettingData", ("InstanceID",), _RASD),
    _cls("Msvm_ResourceAllocationSettingData", "CIM_ResourceAllocationSettingData", ("InstanceID",),
         _MsvmRASD),
    _cls("Msvm_ProcessorSettingData", "CIM_ResourceAllocationSettingData", ("InstanceID",), _Processor),
    _cls("Msvm_MemorySettingData", "CIM_ResourceAllocationSettingData", ("InstanceID",), _Memory),
    _cls("CIM_StorageAllocationSettingData", "CIM_ResourceAllocationSettingData", ("InstanceID",), _SASD),
    _cls("Msvm_StorageAllocationSettingData", "CIM_StorageAllocationSettingData", ("InstanceID",),
         _MsvmSASD),
    _cls("CIM_EthernetPortAllocationSettingData", "CIM_ResourceAllocationSettingData", ("InstanceID",),
         _EthPortASD),
    _cls("Msvm_SyntheticEthernetPortSettingData", "CIM_EthernetPortAllocationSettingData", ("InstanceID",),
         _SyntheticNic),
    _cls("Msvm_EthernetPortAllocationSettingData", "CIM_EthernetPortAllocationSettingData", ("InstanceID",),
         _EPASD),
    _cls("Msvm_VirtualSystemExportSettingData", "CIM_SettingData", ("InstanceID",),
         (*_SettingData, "CopySnapshotConfiguration:uint8", "CopyVmStorage:boolean",
          "CopyVmRuntimeInformation:boolean", "CreateVmExportSubdirectory:boolean",
          "SnapshotVirtualSystem:string", "CaptureLiveState:uint8", "BackupIntent:uint8",
          "DifferentialBackupBase:string", "ExportForLiveMigration:boolean",
          "ExcludedVirtualHardDisks:string[]", "DisableDifferentialOfIgnoredStorage:boolean")),
    _cls("Msvm_VirtualSystemSnapshotSettingData", "CIM_SettingData", ("InstanceID",),
         (*_SettingData, "ConsistencyLevel:uint8", "GuestBackupType:uint8",
          "IgnoreNonSnapshottableDisks:boolean")),
    _cls("Msvm_VirtualSystemManagementServiceSettingData", "CIM_SettingData", ("InstanceID",),
         (*_SettingData, "BiosLockString:string", "DefaultExternalDataRoot:string",
          "DefaultVirtualHardDiskPath:string", "MinimumMacAddress:string", "MaximumMacAddress:string",
          "NumaSpanningEnabled:boolean", "EnhancedSessionModeEnabled:boolean",
          "HypervisorRootSchedulerEnabled:boolean")),
    _cls("Msvm_VirtualHardDiskSettingData", "CIM_SettingData", ("InstanceID",),
         (*_SettingData, "Type:uint16", "Format:uint16", "Path:string", "ParentPath:string",
          "ParentTimestamp:datetime", "ParentIdentifier:string", "MaxInternalSize:uint64",
          "BlockSize:uint32", "LogicalSectorSize:uint32", "PhysicalSectorSize:uint32",
          "VirtualDiskId:string", "DataAlignment:uint64", "PmemAddressAbstractionType:uint16",
          "IsPmemCompatible:boolean")),
    _cls("Msvm_VirtualHardDiskState", None, (),
         ("FileSize:uint64", "InUse:boolean", "MinInternalSize:uint64", "PhysicalSectorSize:uint32",
          "Alignment:uint32", "FragmentationPercentage:uint32", "Timestamp:datetime")),
    _cls("CIM_ConcreteJob", None, ("InstanceID",), _Job, _JobMethods),
    _cls("Msvm_ConcreteJob", "CIM_ConcreteJob", ("InstanceID",), _Job, _JobMethods),
    _cls("Msvm_StorageJob", "CIM_ConcreteJob", ("InstanceID",),
         (*_Job, "Parent:string", "Child:string", "JobCompletionStatusCode:uint32", "Lun:uint8",
          "PathId:uint8", "PortNumber:uint8", "TargetId:uint8"), _JobMethods),
    _cls("CIM_Error", None, (), _Error),
    _cls("Msvm_Error", "CIM_Error", (), _Error),
    _cls("Msvm_VirtualSystemReferencePoint", None, ("InstanceID", "VirtualSystemIdentifier"),
         (*_ManagedElement, "InstanceID:string", "VirtualSystemIdentifier:string",
          "ReferencePointType:uint16", "ConsistencyLevel:uint16", "HasAssociatedData:boolean",
          "CreationTime:datetime", "VirtualDiskIdentifiers:string[]",
          "ResilientChangeTrackingIdentifiers:string[]")),
    _cls("CIM_Service", None, _SVC_KEYS, _Service),
    _cls("Msvm_VirtualSystemManagementService", "CIM_Service", _SVC_KEYS, _Service, (
        _method("DefineSystem",
                ("SystemSettings:inst(Msvm_VirtualSystemSettingData)",
                 "ResourceSettings:inst(CIM_ResourceAllocationSettingData)[]",
                 "ReferenceConfiguration:ref(CIM_VirtualSystemSettingData)"),
                ("ResultingSystem:ref(CIM_ComputerSystem)", _JOB_OUT)),
        _method("DestroySystem", ("AffectedSystem:ref(CIM_ComputerSystem)",), (_JOB_OUT,)),
        _method("AddResourceSettings",
                ("AffectedConfiguration:ref(CIM_VirtualSystemSettingData)",
                 "ResourceSettings:inst(CIM_ResourceAllocationSettingData)[]"),
                ("ResultingResourceSettings:ref(CIM_ResourceAllocationSettingData)[]", _JOB_OUT)),
        _method("ModifyResourceSettings", ("ResourceSettings:inst(CIM_ResourceAllocationSettingData)[]",),
                ("ResultingResourceSettings:ref(CIM_ResourceAllocationSettingData)[]", _JOB_OUT)),
        _method("RemoveResourceSettings", ("ResourceSettings:ref(CIM_ResourceAllocationSettingData)[]",),
                (_JOB_OUT,)),
        _method("ModifySystemSettings", ("SystemSettings:inst(Msvm_VirtualSystemSettingData)",),
                (_JOB_OUT,)),
        _method("ExportSystemDefinition",
                ("ComputerSystem:ref(CIM_ComputerSystem)", "ExportDirectory:string",
                 "ExportSettingData:inst(Msvm_VirtualSystemExportSettingData)"),
                (_JOB_OUT,)),
        _method("ImportSystemDefinition",
                ("SystemDefinitionFile:string", "SnapshotFolder:string",
                 "GenerateNewSystemIdentifier:boolean"),
                ("ImportedSystem:ref(Msvm_PlannedComputerSystem)", _JOB_OUT)),
        _method("ValidatePlannedSystem", ("PlannedSystem:ref(Msvm_PlannedComputerSystem)",), (_JOB_OUT,)),
        _method("RealizePlannedSystem", ("PlannedSystem:ref(Msvm_PlannedComputerSystem)",),
                ("ResultingSystem:ref(CIM_ComputerSystem)", _JOB_OUT)),
        _method("FormatError", ("Errors:inst(Msvm_Error)[]",), ("ErrorMessage:string",)),
    )),
    _cls("Msvm_VirtualSystemSnapshotService", "CIM_Service", _SVC_KEYS, _Service, (
        _method("CreateSnapshot",
                ("AffectedSystem:ref(CIM_ComputerSystem)",
                 "SnapshotSettings:inst(Msvm_VirtualSystemSnapshotSettingData)", "SnapshotType:uint16",
                 "ResultingSnapshot:ref(CIM_VirtualSystemSettingData)"),
                ("ResultingSnapshot:ref(CIM_VirtualSystemSettingData)", _JOB_OUT)),
        _method("DestroySnapshot", ("AffectedSnapshot:ref(CIM_VirtualSystemSettingData)",), (_JOB_OUT,)),
        _method("ConvertToReferencePoint",
                ("AffectedSnapshot:ref(CIM_VirtualSystemSettingData)", "ReferencePointSettings:string",
                 "ResultingReferencePoint:ref(Msvm_VirtualSystemReferencePoint)"),
                ("ResultingReferencePoint:ref(Msvm_VirtualSystemReferencePoint)", _JOB_OUT)),
    )),
    _cls("Msvm_VirtualSystemReferencePointService", "CIM_Service", _SVC_KEYS, _Service, (
        _method("DestroyReferencePoint", ("AffectedReferencePoint:ref(Msvm_VirtualSystemReferencePoint)",),
                (_JOB_OUT,)),
    )),
    _cls("Msvm_ImageManagementService", "CIM_Service", _SVC_KEYS, _Service, (
        _method("GetVirtualHardDiskSettingData", ("Path:string",),
                ("SettingData:inst(Msvm_VirtualHardDiskSettingData)", _JOB_OUT)),
        _method("GetVirtualHardDiskState", ("Path:string",),
                ("State:inst(Msvm_VirtualHardDiskState)", _JOB_OUT)),
        _method("ValidateVirtualHardDisk", ("Path:string",), (_JOB_OUT,)),
        _method("GetVirtualDiskChanges",
                ("Path:string", "LimitId:string", "TargetSnapshotId:string", "ByteOffset:uint64",
                 "ByteLength:uint64"),
                ("ProcessedByteLength:uint64", "ChangedByteOffsets:uint64[]", "ChangedByteLengths:uint64[]",
                 _JOB_OUT)),
    )),
    _assoc("Msvm_SettingsDefineState", ("ManagedElement", "CIM_ComputerSystem"),
           ("SettingData", "CIM_VirtualSystemSettingData")),
    _assoc("Msvm_VirtualSystemSettingDataComponent", ("GroupComponent", "CIM_VirtualSystemSettingData"),
           ("PartComponent", "CIM_ResourceAllocationSettingData")),
    _assoc("Msvm_SnapshotOfVirtualSystem", ("Antecedent", "CIM_ComputerSystem"),
           ("Dependent", "CIM_VirtualSystemSettingData")),
    _assoc("Msvm_MostCurrentSnapshotInBranch", ("Antecedent", "CIM_ComputerSystem"),
           ("Dependent", "CIM_VirtualSystemSettingData")),
    _assoc("Msvm_ReferencePointOfVirtualSystem", ("Antecedent", "CIM_ComputerSystem"),
           ("Dependent", "Msvm_VirtualSystemReferencePoint")),
    _assoc("Msvm_AffectedJobElement", ("AffectedElement", "CIM_ManagedElement"),
           ("AffectingElement", "CIM_ConcreteJob")),
    _assoc("Msvm_SystemExportSettingData", ("ManagedElement", "CIM_ComputerSystem"),
           ("SettingData", "Msvm_VirtualSystemExportSettingData")),
    _assoc("Msvm_ElementSettingData", ("ManagedElement", "CIM_ComputerSystem"),
           ("SettingData", "CIM_VirtualSystemSettingData")),
)

_ClusterCommon = ("Caption:string", "Description:string", "Name:string", "Status:string",
                  "InstallDate:datetime", "Id:string")
CLUSTER_CLASSES: tuple[ClassDef, ...] = (
    _cls("MSCluster_Cluster", None, ("Name",),
         (*_ClusterCommon, "Fqdn:string", "SharedVolumesRoot:string", "EnableSharedVolumes:uint32",
          "QuorumType:string", "QuorumPath:string", "MaxNumberOfNodes:uint32"),
         (_method("AddVirtualMachine", ("VirtualMachine:string",)),)),
    _cls("MSCluster_Node", None, ("Name",),
         (*_ClusterCommon, "State:uint32", "NodeWeight:uint32", "NodeHighestVersion:uint32",
          "BuildNumber:uint32", "MajorVersion:uint32", "MinorVersion:uint32")),
    _cls("MSCluster_ResourceGroup", None, ("Name",),
         (*_ClusterCommon, "OwnerNode:string", "State:uint32", "GroupType:uint32", "PersistentState:boolean",
          "FailoverThreshold:uint32", "FailoverPeriod:uint32", "AutoFailbackType:uint32",
          "FailbackWindowStart:sint32", "FailbackWindowEnd:sint32", "Priority:uint32",
          "AntiAffinityClassNames:string[]", "StatusInformation:uint64", "IsCore:boolean",
          "PrivateProperties:inst(MSCluster_Property)"),
         (_method("BringOnline", ("TimeOut:uint32", "Flags:uint32")),
          _method("TakeOffline", ("TimeOut:uint32", "Parameters:inst(MSCluster_Property)", "Flags:uint32")),
          _method("MoveToNewNode", ("NodeName:string", "TimeOut:uint32")),
          _method("MoveToNewNodeEx", ("NodeName:string", "Parameters:inst(MSCluster_Property)",
                                      "Flags:uint32")),
          _method("DestroyGroup", ("Options:uint32",)),
          _method("DeleteGroup"))),
    _cls("MSCluster_Resource", None, ("Name",),
         (*_ClusterCommon, "Type:string", "State:uint32", "OwnerGroup:string", "OwnerNode:string",
          "IsClusterSharedVolume:boolean", "RestartAction:uint32", "ResourceSpecificStatus:string",
          "PrivateProperties:inst(MSCluster_Property)"),
         (_method("BringOnline", ("TimeOut:uint32",)),
          _method("TakeOffline", ("TimeOut:uint32",)),
          _method("UpdateVirtualMachine"))),
    _cls("MSCluster_Property", None, (),
         ("VmID:string", "OfflineAction:uint32", "ShutdownAction:uint32", "CheckHeartbeat:uint32",
          "MigrationState:uint32", "MigrationProgress:uint32", "DefaultMoveType:uint32", "VmState:uint32",
          "VmStoreRootPath:string", "DependsOnSharedVolumes:string[]", "VmPhysicalDisks:string[]")),
    _cls("MSCluster_ClusterSharedVolume", None, ("Name",),
         (*_ClusterCommon, "VolumeName:string", "FaultState:uint32", "BackupState:uint32"),
         (_method("MoveToNewHost", ("NodeName:string",)),)),
    _cls("MSCluster_ClusterDiskPartition", None, ("Path",),
         (*_ClusterCommon, "Path:string", "VolumeLabel:string", "VolumeGuid:string", "FileSystem:string",
          "TotalSize:uint32", "FreeSpace:uint32", "PartitionNumber:uint32", "SerialNumber:uint32",
          "MountPoints:string[]")),
    _cls("MSCluster_DiskPartition", "MSCluster_ClusterDiskPartition", ("Path",),
         (*_ClusterCommon, "Path:string", "VolumeLabel:string", "VolumeGuid:string", "FileSystem:string",
          "TotalSize:uint32", "FreeSpace:uint32", "PartitionNumber:uint32", "SerialNumber:uint32",
          "MountPoints:string[]")),
    _assoc("MSCluster_ClusterSharedVolumeToPartition", ("GroupComponent", "MSCluster_ClusterSharedVolume"),
           ("PartComponent", "MSCluster_DiskPartition")),
    _assoc("MSCluster_ClusterSharedVolumeToNode", ("GroupComponent", "MSCluster_ClusterSharedVolume"),
           ("PartComponent", "MSCluster_Node")),
    _assoc("MSCluster_ClusterToClusterSharedVolume", ("GroupComponent", "MSCluster_Cluster"),
           ("PartComponent", "MSCluster_ClusterSharedVolume")),
    _assoc("MSCluster_ResourceGroupToResource", ("GroupComponent", "MSCluster_ResourceGroup"),
           ("PartComponent", "MSCluster_Resource")),
    _assoc("MSCluster_ClusterToNode", ("Antecedent", "MSCluster_Cluster"), ("Dependent", "MSCluster_Node")),
    _assoc("MSCluster_ClusterToResourceGroup", ("GroupComponent", "MSCluster_Cluster"),
           ("PartComponent", "MSCluster_ResourceGroup")),
)

CIMV2_CLASSES: tuple[ClassDef, ...] = (
    _cls("Win32_OperatingSystem", None, ("Name",),
         ("Caption:string", "Name:string", "Version:string", "BuildNumber:string", "CSName:string",
          "OSArchitecture:string", "TotalVisibleMemorySize:uint64", "FreePhysicalMemory:uint64",
          "LastBootUpTime:datetime")),
    _cls("Win32_ComputerSystem", None, ("Name",),
         ("Name:string", "NumberOfLogicalProcessors:uint32", "TotalPhysicalMemory:uint64", "Domain:string")),
)

SCHEMAS: dict[str, dict[str, ClassDef]] = {
    NS_VIRT.lower(): {c.name.lower(): c for c in VIRT_CLASSES},
    NS_CLUSTER.lower(): {c.name.lower(): c for c in CLUSTER_CLASSES},
    NS_CIMV2.lower(): {c.name.lower(): c for c in CIMV2_CLASSES},
}


def class_def(namespace: str, class_name: str) -> ClassDef | None:
    """Schema of a class in a namespace, or None."""
    return SCHEMAS.get(namespace.lower().replace("\\", "/"), {}).get(class_name.lower())


def is_a(namespace: str, class_name: str, base: str) -> bool:
    """True when ``class_name`` is ``base`` or derives from it (case-insensitive)."""
    target = base.lower()
    current: ClassDef | None = class_def(namespace, class_name)
    if current is None:
        return class_name.lower() == target
    while current is not None:
        if current.name.lower() == target:
            return True
        if current.superclass is None:
            return False
        current = class_def(namespace, current.superclass)
    return False


def subclasses(namespace: str, base: str) -> list[str]:
    """Names of ``base`` and every class deriving from it, in schema order."""
    ns = SCHEMAS.get(namespace.lower().replace("\\", "/"), {})
    return [c.name for c in ns.values() if is_a(namespace, c.name, base)]


def blank(namespace: str, class_name: str) -> dict[str, object]:
    """Every property of the class set to NULL (arrays to ``[]``), in schema order."""
    cdef = class_def(namespace, class_name)
    if cdef is None:
        raise KeyError(class_name)
    return {p.name: ([] if p.is_array else None) for p in cdef.properties}
