"""Typed CIM-XML of every VM's settings, read over WS-Man from the simulated estate.

The product's table (``bareos_hyperv.hyperv.schema``, from Microsoft's documentation)
is compared with the simulator's own class schema (``hvsim.world.schema``), written
independently; a typed SASD is then sent back through ``ModifyResourceSettings``.
"""

from __future__ import annotations

import shutil
from pathlib import PureWindowsPath
from typing import Dict, List, Optional, Tuple

from bareos_hyperv.hyperv import constants as C
from bareos_hyperv.hyperv import vms as vmmod
from bareos_hyperv.hyperv.schema import property_types, to_typed_cimxml, typed
from bareos_hyperv.model.vm import PowerState
from bareos_hyperv.wsman.cim import CimInstance, EmbeddedInstance, parse_cimxml
from hvsim.cim import NS_VIRT as SIM_NS_VIRT
from hvsim.simulation import Simulation
from hvsim.world import schema as sim_schema

from .helpers import JOB_TIMEOUT, connector, follower, one, service

NODES = ("HV01", "HV02", "HVSTANDALONE01")
VIRTUAL_HARD_DISK = "Microsoft:Hyper-V:Virtual Hard Disk"

# Where the simulator's schema and Microsoft's disagree: (class, property) -> (product, simulator, evidence).
# In both cases the simulator is the one that is wrong; hvsim is not ours to edit (reported instead).
# Disagreements between the product's table and the simulator's schema that are the simulator's
# error per Microsoft's sources: (product type, simulator type, evidence).  Empty now that the
# simulator follows the MOF for VSSD.Architecture (string) and MediaType (uint32).
KNOWN_SIMULATOR_ERRORS: Dict[Tuple[str, str], Tuple[str, str, str]] = {}


def _sim_type(class_name: str, prop: str) -> Optional[str]:
    cdef = sim_schema.class_def(SIM_NS_VIRT, class_name)
    pdef = cdef.prop(prop) if cdef is not None else None
    if pdef is None:
        return None
    return pdef.cim_type + ("[]" if pdef.is_array else "")


def _settings_of_every_vm(sim: Simulation) -> List[Tuple[str, str, CimInstance]]:
    found: List[Tuple[str, str, CimInstance]] = []
    with connector(sim) as conn:
        for node in NODES:
            client = conn.client(node)
            for vm in vmmod.list_vms(client):
                settings = vmmod.read_settings(client, vm)
                found.extend((node, vm.ref.name, inst) for inst in [settings.system, *settings.devices])
    return found


def test_typed_settings_of_every_vm_match_the_simulator_schema(sim: Simulation) -> None:
    instances = _settings_of_every_vm(sim)
    vms = {(node, vm) for node, vm, _ in instances}
    assert len(vms) == len(sim.world.vms), "every VM of the estate was read"
    classes = {inst.class_name for _, _, inst in instances}
    assert {C.VSSD, C.RASD, C.SASD, C.PROCESSOR_SD, C.MEMORY_SD, C.SYNTHETIC_NIC_SD, C.EPASD} <= classes

    disagreements: Dict[Tuple[str, str], Tuple[Optional[str], Optional[str]]] = {}
    where: Dict[Tuple[str, str], str] = {}
    not_in_table: List[str] = []
    for node, vm, inst in instances:
        table = {k.lower() for k in property_types(inst.class_name)}
        written = parse_cimxml(to_typed_cimxml(inst))
        assert written.class_name == inst.class_name
        assert [n.lower() for n in written.names()] == [n.lower() for n in inst.names()]
        for name in inst.names():
            if name.lower() not in table:
                not_in_table.append(f"{node}/{vm}: {inst.class_name}.{name}")
            ours = written.type_of(name)
            theirs = _sim_type(inst.class_name, name)
            if ours != theirs:
                disagreements[(inst.class_name, name)] = (ours, theirs)
                where.setdefault((inst.class_name, name), f"{node}/{vm} value {inst[name]!r}")
            if ours is not None and ours.endswith("[]"):
                assert isinstance(written[name], list) or written[name] is None, f"{inst.class_name}.{name}"

    assert not_in_table == [], "properties the simulator sends that the table lacks"
    expected = {key: (ours, theirs) for key, (ours, theirs, _why) in KNOWN_SIMULATOR_ERRORS.items()}
    unexpected = {k: (v, where[k]) for k, v in disagreements.items() if k not in expected}
    assert unexpected == {}, "product table and simulator schema disagree (product type, simulator type)"
    assert disagreements == expected, "a known simulator error was fixed or changed: update KNOWN_SIMULATOR_ERRORS"


def test_one_element_arrays_survive_the_wire(sim: Simulation) -> None:
    with connector(sim) as conn:
        hv01 = conn.client("HV01")
        web01 = one([v for v in vmmod.list_vms(hv01) if v.ref.name == "web01"], "web01")
        settings = vmmod.read_settings(hv01, web01)
    disks = [d for d in settings.devices
             if d.class_name == C.SASD and d.opt_str("ResourceSubType") == VIRTUAL_HARD_DISK]
    assert disks
    for sasd in disks:
        assert isinstance(sasd["HostResource"], str)  # WS-Man: one element, indistinguishable from a scalar
        text = to_typed_cimxml(sasd)
        assert '<PROPERTY.ARRAY NAME="HostResource" TYPE="string">' in text
        assert parse_cimxml(text)["HostResource"] == [sasd["HostResource"]]


def test_modify_resource_settings_with_a_typed_sasd_on_an_off_vm(sim: Simulation) -> None:
    with connector(sim) as conn:
        hv02 = conn.client("HV02")
        db01 = one([v for v in vmmod.list_vms(hv02) if v.ref.name == "db01"], "db01")
        assert db01.state is PowerState.OFF
        sasd = one([s for s in vmmod.read_settings(hv02, db01).devices
                    if s.class_name == C.SASD and s.opt_str("ResourceSubType") == VIRTUAL_HARD_DISK], "db01 disk")
        old = sasd.str("HostResource")
        new = str(PureWindowsPath(old).with_name("db01-restored.vhdx"))
        # a restore stages the disk under its new name first (SMB in production, the node's disk here)
        shutil.copyfile(sim.world.local("HV02", old), sim.world.local("HV02", new))

        sasd["HostResource"] = [new]
        text = to_typed_cimxml(sasd)
        assert '<PROPERTY.ARRAY NAME="HostResource" TYPE="string">' in text
        assert '<PROPERTY NAME="ResourceType" TYPE="uint16"><VALUE>31</VALUE></PROPERTY>' in text
        res = follower(hv02).call(service(hv02, C.VSMS), "ModifyResourceSettings",
                                  [("ResourceSettings", [EmbeddedInstance(text)])], timeout=JOB_TIMEOUT)
        (ref,) = res.outputs.refs("ResultingResourceSettings")
        assert ref == sasd.epr

        again = typed(hv02.get(ref))
        assert again["HostResource"] == [new]
        assert again["ResourceType"] == 31 and again.type_of("HostResource") == "string[]"

    stored = one([s for s in sim.world.vm("db01").config.settings
                  if s.class_name == C.SASD and s.subtype == VIRTUAL_HARD_DISK], "stored SASD")
    assert stored.props["HostResource"] == [new]  # an array on the host, not a string
