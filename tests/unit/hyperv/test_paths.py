from __future__ import annotations

import pytest

from bareos_hyperv.errors import HyperVError
from bareos_hyperv.hyperv.paths import parse_wmi_path


def test_switch_path_as_hyperv_writes_it() -> None:
    p = parse_wmi_path('\\\\HV01\\root\\virtualization\\v2:Msvm_VirtualEthernetSwitch.'
                       'CreationClassName="Msvm_VirtualEthernetSwitch",Name="9F2B7C1E-0000-4000-8000-000000000001"')
    assert p.host == "HV01"
    assert p.namespace == "root/virtualization/v2"
    assert p.class_name == "Msvm_VirtualEthernetSwitch"
    assert p.key("name") == "9F2B7C1E-0000-4000-8000-000000000001"
    assert p.key("CreationClassName") == "Msvm_VirtualEthernetSwitch"


def test_escaped_backslashes_and_quotes_in_instance_ids() -> None:
    p = parse_wmi_path('\\\\HV01\\root\\virtualization\\v2:Msvm_ResourceAllocationSettingData.'
                       'InstanceID="Microsoft:ABC\\\\83F8\\\\0\\\\0\\\\D"')
    assert p.key("InstanceID") == "Microsoft:ABC\\83F8\\0\\0\\D"
    q = parse_wmi_path('Cls.K="a\\"b",N=5')
    assert q.keys == (("K", 'a"b'), ("N", "5"))


@pytest.mark.parametrize("text", ["", "NoKeys", '\\\\HV01\\root', 'Cls.K="unterminated', 'Cls.K="a"x'])
def test_malformed_paths_raise_hyperv_error_naming_the_path(text: str) -> None:
    with pytest.raises(HyperVError) as info:
        parse_wmi_path(text)
    assert "object path" in str(info.value)
