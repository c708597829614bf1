"""WQL parser/evaluator and WMI object paths (hyperv-wmi.md 1.5)."""

from __future__ import annotations

import datetime as dt
from typing import Any, Dict

import pytest
from hypothesis import given
from hypothesis import strategies as st

from hvsim.cim import NS_VIRT, CimInstance, CimInterval, CimRef, ClassDef, PropDef
from hvsim.wql import (
    And,
    AssociatorsQuery,
    Compare,
    IsNull,
    Like,
    Not,
    Or,
    ReferencesQuery,
    SelectQuery,
    WqlError,
    check_properties,
    evaluate,
    like_regex,
    parse_object_path,
    parse_wql,
    project,
)

P = PropDef
CDEF = ClassDef(
    "Msvm_ComputerSystem",
    None,
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
        P("OnTime", "uint64"),
        P("Owner", "reference"),
        P("Uptime", "datetime"),
        P("Load", "real64"),
    ),
)
T0 = dt.datetime(2024, 5, 1, 10, 0, 0, tzinfo=dt.timezone.utc)


def vm(**props: Any) -> CimInstance:
    base: Dict[str, Any] = {
        "Caption": "Virtual Machine",
        "CreationClassName": "Msvm_ComputerSystem",
        "ElementName": "Web01",
        "EnabledState": 2,
        "InstallDate": T0,
        "IsSaved": False,
        "Name": "6A1C0B7E-3D55-4B6F-9F0A-2C7E51D4A9B3",
        "OnTime": 2**40,
        "Owner": None,
        "Uptime": CimInterval(3600),
        "Load": 0.5,
    }
    base.update(props)
    return CimInstance("Msvm_ComputerSystem", NS_VIRT, base)


def matches(where: str, inst: CimInstance) -> bool:
    q = parse_wql(f"SELECT * FROM Msvm_ComputerSystem WHERE {where}")
    assert isinstance(q, SelectQuery)
    check_properties(q.where, q.props, CDEF)
    return evaluate(q.where, inst, CDEF, lambda cls, base: cls.lower() == base.lower())


def test_select_star_and_property_list() -> None:
    q = parse_wql("SELECT * FROM Msvm_ComputerSystem")
    assert q == SelectQuery("Msvm_ComputerSystem", None, None, "SELECT * FROM Msvm_ComputerSystem")
    q = parse_wql("select ElementName , EnabledState from msvm_computersystem")
    assert isinstance(q, SelectQuery)
    assert q.props == ("ElementName", "EnabledState")
    assert q.class_name == "msvm_computersystem"


def test_precedence_not_and_or() -> None:
    q = parse_wql("SELECT * FROM C WHERE A = 1 OR NOT B = 2 AND C = 'x'")
    assert isinstance(q, SelectQuery)
    assert q.where == Or(Compare("A", "=", 1), And(Not(Compare("B", "=", 2)), Compare("C", "=", "x")))
    q = parse_wql("SELECT * FROM C WHERE (A = 1 OR B = 2) AND C IS NOT NULL")
    assert isinstance(q, SelectQuery)
    assert q.where == And(Or(Compare("A", "=", 1), Compare("B", "=", 2)), IsNull("C", negate=True))


def test_literals_and_operators() -> None:
    q = parse_wql(
        "SELECT * FROM C WHERE a <> 'it\\'s' AND b != \"q\\\"q\" AND 5 < c AND d >= -1.5 "
        "AND e = TRUE AND f = NULL AND g NOT LIKE 'x%' AND h <= 0x10"
    )
    assert isinstance(q, SelectQuery)
    flat = []
    node: Any = q.where
    while isinstance(node, And):
        flat.append(node.right)
        node = node.left
    flat.append(node)
    flat.reverse()
    assert flat == [
        Compare("a", "<>", "it's"),
        Compare("b", "<>", 'q"q'),
        Compare("c", ">", 5),
        Compare("d", ">=", -1.5),
        Compare("e", "=", True),
        Compare("f", "=", None),
        Like("g", "x%", negate=True),
        Compare("h", "<=", 16),
    ]


@pytest.mark.parametrize(
    "text",
    [
        "",
        "SELECT",
        "SELECT * FROM",
        "SELECT * Msvm_X",
        "SELECT * FROM X WHERE",
        "SELECT * FROM X WHERE a =",
        "SELECT * FROM X WHERE 1 = 2",
        "SELECT * FROM X WHERE a = b",
        "SELECT * FROM X WHERE a LIKE 5",
        "SELECT * FROM X WHERE (a = 1",
        "SELECT * FROM X extra",
        "DELETE FROM X",
        "SELECT * FROM X WHERE a = 'open",
        "ASSOCIATORS OF X",
        "ASSOCIATORS OF {X.a='1'} WHERE Bogus = Y",
        "ASSOCIATORS OF {X.a='1'",
        "REFERENCES OF {X.a='1'} WHERE AssocClass = Y",
        "ASSOCIATORS OF {X.a='1'} WHERE ClassDefsOnly",
        "SELECT * FROM X WHERE a # 1",
    ],
)
def test_syntax_errors(text: str) -> None:
    with pytest.raises(WqlError):
        parse_wql(text)


def test_associators_and_references() -> None:
    q = parse_wql(
        'ASSOCIATORS OF {Msvm_ComputerSystem.CreationClassName="Msvm_ComputerSystem",Name="G"} '
        "WHERE AssocClass = Msvm_SettingsDefineState ResultClass = Msvm_VirtualSystemSettingData "
        "Role = ManagedElement ResultRole = SettingData"
    )
    assert isinstance(q, AssociatorsQuery)
    assert q.path.class_name == "Msvm_ComputerSystem"
    assert q.path.keys == (("CreationClassName", "Msvm_ComputerSystem"), ("Name", "G"))
    assert (q.assoc_class, q.result_class, q.role, q.result_role) == (
        "Msvm_SettingsDefineState",
        "Msvm_VirtualSystemSettingData",
        "ManagedElement",
        "SettingData",
    )
    q = parse_wql(
        "references of {Msvm_ConcreteJob.InstanceID='J'} where resultclass = Msvm_AffectedJobElement"
    )
    assert isinstance(q, ReferencesQuery)
    assert q.result_class == "Msvm_AffectedJobElement"
    assert q.role is None
    q = parse_wql("ASSOCIATORS OF {Msvm_X.InstanceID='a{b}c'}")
    assert isinstance(q, AssociatorsQuery)
    assert q.path.keys == (("InstanceID", "a{b}c"),)


def test_object_path_forms() -> None:
    p = parse_object_path(
        "\\\\HV01\\root\\virtualization\\v2:Msvm_StorageAllocationSettingData."
        'InstanceID="Microsoft:A\\\\B\\\\0\\\\L"'
    )
    assert (p.host, p.namespace, p.class_name) == (
        "HV01",
        "root/virtualization/v2",
        "Msvm_StorageAllocationSettingData",
    )
    assert p.keys == (("InstanceID", "Microsoft:A\\B\\0\\L"),)
    p = parse_object_path("root/MSCluster:MSCluster_Resource.Name='Virtual Machine \\'web01\\''")
    assert p.namespace == "root/MSCluster"
    assert p.keys == (("Name", "Virtual Machine 'web01'"),)
    p = parse_object_path('Win32_Service="WinRM"')
    assert p.keys == ((None, "WinRM"),)
    assert p.to_ref(NS_VIRT, ("Name",)) == CimRef(NS_VIRT, "Win32_Service", (("Name", "WinRM"),))
    p = parse_object_path("Cls.A=5,B=TRUE")
    assert p.keys == (("A", "5"), ("B", "TRUE"))
    p = parse_object_path('Cls.Path="C:\\\\x:y"')  # a ':' inside a quoted value is not a namespace separator
    assert p.namespace is None
    assert p.keys == (("Path", "C:\\x:y"),)


@pytest.mark.parametrize(
    "text", ["", ".A=1", "Cls.", "Cls.A", "Cls.A=", "Cls.A='x", "Cls.A='x' junk", "\\\\"]
)
def test_bad_object_paths(text: str) -> None:
    with pytest.raises(WqlError):
        parse_object_path(text)


safe_text = st.text(alphabet=st.characters(blacklist_categories=("Cs", "Cc")), max_size=30)
ident = st.from_regex(r"[A-Za-z_][A-Za-z0-9_]{0,15}", fullmatch=True)


@given(
    cls=ident, keys=st.lists(st.tuples(ident, safe_text), min_size=1, max_size=4, unique_by=lambda kv: kv[0])
)
def test_wmi_path_round_trip(cls: str, keys: Any) -> None:
    ref = CimRef(NS_VIRT, cls, tuple(keys))
    parsed = parse_object_path(ref.wmi_path("HV01"))
    assert parsed.host == "HV01"
    assert parsed.to_ref("elsewhere") == ref


def test_like_patterns() -> None:
    assert like_regex("Microsoft:ABC%").match("microsoft:abc\\def")
    assert not like_regex("Microsoft:ABC%").match("Microsoft:AB")
    assert like_regex("a_c").match("abc")
    assert not like_regex("a_c").match("abbc")
    assert like_regex("[a-c]x").match("Bx")
    assert not like_regex("[^a-c]x").match("bx")
    assert like_regex("100%").match("100% sure")
    assert like_regex("a.b*").match("a.b*")
    assert not like_regex("a.b").match("axb")


def test_string_comparisons_are_case_insensitive() -> None:
    inst = vm()
    assert matches("Caption = 'virtual machine'", inst)
    assert matches("ElementName <> 'web02'", inst)
    assert matches("ElementName > 'WEB00' AND ElementName < 'web02'", inst)
    assert matches("Name LIKE '6a1c%'", inst)
    assert not matches("Name NOT LIKE '6a1c%'", inst)


def test_numbers_booleans_nulls() -> None:
    inst = vm(Owner=None)
    assert matches("EnabledState = 2 AND OnTime >= 1099511627776 AND OnTime < 1099511627777", inst)
    assert matches("EnabledState = '2'", inst)
    assert matches("IsSaved = FALSE AND NOT IsSaved = TRUE AND IsSaved = 0", inst)
    assert matches("Owner IS NULL AND Owner = NULL AND ElementName IS NOT NULL", inst)
    assert not matches("Owner = 'x'", inst)
    assert not matches("Owner <> 'x'", inst)  # comparisons with NULL values are false
    assert matches("Load > 0.25 AND Load <= 0.5", inst)
    assert matches("2 = EnabledState AND 3 > EnabledState", inst)


def test_datetimes_and_references() -> None:
    owner = CimRef(
        NS_VIRT, "Msvm_ComputerSystem", (("CreationClassName", "Msvm_ComputerSystem"), ("Name", "HV01"))
    )
    inst = vm(Owner=owner)
    assert matches("InstallDate = '20240501100000.000000+000'", inst)
    assert matches("InstallDate < '20240501120000.000000+060'", inst)
    assert matches("Uptime = '00000000010000.000000:000'", inst)
    assert matches(
        'Owner = \'Msvm_ComputerSystem.Name="HV01",CreationClassName="Msvm_ComputerSystem"\'', inst
    )
    assert matches("Owner ISA 'Msvm_ComputerSystem'", inst)
    assert not matches("Owner ISA 'CIM_Job'", inst)
    assert matches("__CLASS = 'MSVM_COMPUTERSYSTEM'", inst)


def test_unknown_and_array_properties_are_rejected() -> None:
    with pytest.raises(WqlError, match="NoSuch"):
        matches("NoSuch = 1", vm())
    with pytest.raises(WqlError, match="array"):
        matches("Dedicated = 2", vm(Dedicated=[2]))
    with pytest.raises(WqlError):
        matches("InstallDate = 'yesterday'", vm())
    with pytest.raises(WqlError):
        matches("IsSaved > TRUE", vm())
    q = parse_wql("SELECT Bogus FROM Msvm_ComputerSystem")
    assert isinstance(q, SelectQuery)
    with pytest.raises(WqlError, match="Bogus"):
        check_properties(q.where, q.props, CDEF)


def test_project_keeps_selected_properties_in_schema_order() -> None:
    out = project(vm(), ("name", "Caption"), CDEF)
    assert list(out.properties) == ["Caption", "Name"]
    assert out.class_name == "Msvm_ComputerSystem"
    assert project(vm(), None, CDEF) == vm()
