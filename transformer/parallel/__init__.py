"""How a train step uses the devices of every host: the strategies (one device, shard_map,
pmap, GSPMD), the (data, fsdp, tensor) mesh with its one table of sharding rules, and the
multi-host start.
"""

from transformer import _lazy

_EXPORTS = {
  'DataParallel': 'strategies',
  'make': 'strategies',
  'PARALLELISMS': 'strategies',
  'make_mesh': 'sharding',
  'shardings': 'sharding',
  'logical_axes': 'sharding',
  'MeshError': 'sharding',
  'RULES': 'sharding',
  'initialize': 'distributed',
}
__all__ = sorted(_EXPORTS)
__getattr__, __dir__ = _lazy.exports(__name__, _EXPORTS)
