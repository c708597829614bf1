"""The simulated Hyper-V failover cluster: state, WMI classes and methods, jobs.

Start with :func:`hvsim.world.scenario.default_world` and serve each node with
:class:`hvsim.world.node.NodeRepository`.
"""

from __future__ import annotations

from hvsim.world.node import NodeRepository
from hvsim.world.scenario import default_world, repositories
from hvsim.world.state import DiskSpec, World

__all__ = ["DiskSpec", "NodeRepository", "World", "default_world", "repositories"]
