"""Every simulated WMI method, invoked through the product's CimClient and followed with JobFollower.

Each test drives the simulator only over WS-Management (NTLM-encrypted HTTP); the
simulator's world and the files behind it are read afterwards to check the effect.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import time
from pathlib import Path, PureWindowsPath
from typing import Iterator

import pytest

from bareos_hyperv.hyperv.jobs import JobFailedError, JobResult, JobState, JobVanishedError, MethodFailedError
from bareos_hyperv.wsman.cim import CimInstance, EmbeddedInstance, EndpointReference, to_cimxml
from bareos_hyperv.wsman.client import CimClient
from bareos_hyperv.wsman.connection_types import Connector  # noqa: F401  (placeholder, replaced below)
from hvsim.simulation import Simulation

from .helpers import (
    JOB_TIMEOUT,
    NS_CLUSTER,
    NS_VIRT,
    connector,
    follower,
    object_path,
    one,
    quick_sim,
    service,
    vm_instance,
    vm_settings,
    vssd_of,
)
