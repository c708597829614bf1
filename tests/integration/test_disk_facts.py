"""For every disk of the simulated estate, Hyper-V's view (image service over WS-Man) agrees with qemu-img."""

from __future__ import annotations

import json
import subprocess

from bareos_hyperv.hyperv import vms as vmops
from bareos_hyperv.hyperv.connection import Connector
from bareos_hyperv.hyperv.images import ImageService
from bareos_hyperv.hyperv.services import HostServices
from bareos_hyperv.model.credentials import Credentials
from bareos_hyperv.model.disk import DiskFormat, DiskType
from bareos_hyperv.model.vm import DriveKind
from bareos_hyperv.wsman.transport import TransportOptions
from hvsim.simulation import Simulation

QEMU_FORMAT = {DiskFormat.VHDX: "vhdx", DiskFormat.VHD: "vpc"}


def test_image_service_and_qemu_img_agree_on_every_disk(sim: Simulation) -> None:
    checked = 0
    with Connector(Credentials(sim.user, sim.password), TransportOptions(), host_map=sim.host_map()) as conn:
        for node in sorted(sim.world.nodes):
            client = conn.client(node)
            images = ImageService(HostServices(client, node), timeout=60)
            for vm in vmops.list_vms(client):
                config = vmops.normalise(vm, vmops.read_settings(client, vm), [])
                for drive in config.drives:
                    if drive.kind is not DriveKind.VIRTUAL_DISK or not drive.path:
                        continue
                    info = images.info(drive.path)
                    local = sim.world.local(node, drive.path)
                    # qemu cannot probe a fixed VHD (its only header is the footer): name the format.
                    fmt = QEMU_FORMAT[info.format]
                    qemu = json.loads(subprocess.run(["qemu-img", "info", "-f", fmt, "--output=json", str(local)],
                                                     capture_output=True, text=True, check=True).stdout)
                    assert qemu["format"] == fmt, drive.path
                    assert qemu["virtual-size"] == info.virtual_size, drive.path
                    if info.format is DiskFormat.VHDX:
                        assert qemu["cluster-size"] == info.block_size, drive.path
                        check = subprocess.run(["qemu-img", "check", str(local)], capture_output=True, text=True,
                                               check=False)
                        assert check.returncode == 0, check.stdout + check.stderr
                    assert info.type in (DiskType.FIXED, DiskType.DYNAMIC)
                    checked += 1
    assert checked >= 6  # web01 (2), db01, file01, legacy01 (3)
