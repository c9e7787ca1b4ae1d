"""The device mesh and how arrays are laid out on it (training and evaluation alike).

One 1-D mesh over every device of every process, axis "data": batches are
split along it, parameters are replicated (or, above `fsdp_min_params`
elements, sharded FSDP-style along their largest divisible axis). Each process
holds only its rows of a global batch; `put_batch` assembles the global array
and `to_host` brings per-example results back to every process.
"""

from __future__ import annotations

from typing import Any, Callable

import jax
import numpy as np
from jax.experimental import multihost_utils
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

AXIS = "data"


def make_mesh(devices: list | None = None) -> Mesh:
    """1-D "data" mesh over all devices of all processes (or the given ones)."""
    devices = jax.devices() if devices is None else devices
    return Mesh(np.asarray(devices), (AXIS,))


def batch_sharding(mesh: Mesh) -> NamedSharding:
    """Leading (batch) axis split over the mesh."""
    return NamedSharding(mesh, P(AXIS))


def replicated(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, P())


def param_sharding_rule(mesh: Mesh, fsdp_min_params: int = 0) -> Callable[[Any], NamedSharding]:
    """Sharding of one parameter: replicated, or FSDP-style above `fsdp_min_params` elements."""
    n = mesh.devices.size

    def rule(x) -> NamedSharding:
        if fsdp_min_params > 0 and x.size >= fsdp_min_params:
            for i in sorted(range(x.ndim), key=lambda i: -x.shape[i]):
                if x.shape[i] % n == 0:
                    spec = [None] * x.ndim
                    spec[i] = AXIS
                    return NamedSharding(mesh, P(*spec))
        return NamedSharding(mesh, P())
    return rule


def check_batch_size(batch_size: int, mesh: Mesh, what: str = "batch_size") -> None:
    if batch_size <= 0 or batch_size % mesh.devices.size:
        raise ValueError(f"{what}={batch_size} must be a positive multiple of the device count "
                         f"{mesh.devices.size}")


def put_batch(mesh: Mesh, local_batch: dict[str, np.ndarray]) -> dict[str, jax.Array]:
    """Global arrays from this process's rows of a batch (dict of numpy arrays)."""
    sharding = batch_sharding(mesh)
    return {k: jax.make_array_from_process_local_data(sharding, np.asarray(v))
            for k, v in local_batch.items()}


def to_host(tree: Any) -> Any:
    """Numpy copies of (global) arrays on every process."""
    if jax.process_count() == 1:
        return jax.device_get(tree)
    return multihost_utils.process_allgather(tree, tiled=True)


def local_rows(x: jax.Array) -> np.ndarray:
    """This process's rows of a batch-sharded global array, in order (numpy)."""
    if jax.process_count() == 1:
        return np.asarray(x)
    shards = sorted(x.addressable_shards, key=lambda s: s.index[0].start or 0)
    rows, seen = [], set()
    for s in shards:
        start = s.index[0].start or 0
        if start not in seen:  # replicas of a row block on several local devices
            seen.add(start)
            rows.append(np.asarray(s.data))
    return np.concatenate(rows)


def gather_rows(tree: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Every process's rows of host (numpy) per-example arrays, in global batch order.

    Process p holds rows [p*b, (p+1)*b) of a global batch, so concatenating in
    process order restores the global order. String arrays are gathered too.
    """
    if jax.process_count() == 1:
        return {k: np.asarray(v) for k, v in tree.items()}
    out = {}
    for k, v in tree.items():
        v = np.asarray(v)
        if v.dtype.kind == "U":
            width = int(multihost_utils.process_allgather(np.int32(v.dtype.itemsize // 4)).max())
            codes = np.frombuffer(v.astype(f"<U{max(width, 1)}").tobytes(), np.uint32)
            gathered = multihost_utils.process_allgather(codes.reshape(len(v), -1), tiled=True)
            out[k] = np.frombuffer(np.ascontiguousarray(gathered).tobytes(), f"<U{max(width, 1)}")
        else:
            out[k] = np.asarray(multihost_utils.process_allgather(v, tiled=True))
    return out
