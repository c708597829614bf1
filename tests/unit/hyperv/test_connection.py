from __future__ import annotations

import pytest

from bareos_hyperv.errors import ConfigurationError
from bareos_hyperv.hyperv.connection import Connector, parse_host_map
from bareos_hyperv.model.credentials import Credentials
from bareos_hyperv.wsman.transport import TransportOptions


def test_host_map_parses_names_case_insensitively_with_optional_ports() -> None:
    assert parse_host_map("hv01=10.0.0.1:15985, HV02=hv02.lab") == {
        "HV01": ("10.0.0.1", 15985),
        "HV02": ("hv02.lab", None),
    }
    assert parse_host_map("") == {}


@pytest.mark.parametrize("bad", ["HV01", "=1.2.3.4", "HV01=", "HV01=1.2.3.4:port", "HV01=1.2.3.4:70000"])
def test_bad_host_map_entries_are_named(bad: str) -> None:
    with pytest.raises(ConfigurationError) as info:
        parse_host_map(bad)
    assert "host_map" in str(info.value)


def test_endpoints_default_to_winrm_ports_and_follow_the_map() -> None:
    creds = Credentials("u", "p")
    plain = Connector(creds, TransportOptions(), host_map={"HV01": ("127.0.0.1", 4000)})
    assert plain.endpoint("hv01").url == "http://127.0.0.1:4000/wsman"
    assert plain.endpoint("HV02").url == "http://HV02:5985/wsman"
    tls = Connector(creds, TransportOptions(), https=True)
    assert tls.endpoint("hv02").url == "https://hv02:5986/wsman"
