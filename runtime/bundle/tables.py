"""The bundle's numpy table (the word embeddings), read header first: its declared shape and dtype are checked
before numpy allocates anything."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
from pixdeploy.runtime.bundle.layout import BundleError

from pixdeploy.text import printable


def read_embeddings(path: Path, want: tuple, root: Path) -> np.ndarray:
    """The float32 table of shape ``want`` in ``path`` (a checksummed file of the bundle at ``root``), finite."""
    name = path.name
    try:
        with open(path, "rb") as f:
            version = np.lib.format.read_magic(f)
            read = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
            shape, fortran, dtype = read(f)
            data_bytes = os.fstat(f.fileno()).st_size - f.tell()
    except (OSError, ValueError, EOFError) as e:
        raise BundleError(f"damaged bundle {root}: {name}: {printable(str(e))}") from None
    if dtype.hasobject:
        raise BundleError(f"damaged bundle {root}: {name}: holds Python objects, which would need pickle")
    if dtype != np.dtype("<f4") or tuple(shape) != want or fortran or data_bytes != 4 * want[0] * want[1]:
        raise BundleError(f"damaged bundle {root}: text embeddings have shape {tuple(shape)} ({dtype}, "
                          f"{data_bytes} bytes of data), expected {want} float32")
    try:
        table = np.load(path, allow_pickle=False)
    except (OSError, ValueError, EOFError) as e:
        raise BundleError(f"damaged bundle {root}: {name}: {printable(str(e))}") from None
    if not isinstance(table, np.ndarray) or table.dtype != np.float32 or table.shape != want:
        raise BundleError(f"damaged bundle {root}: {name} is not a float32 array of shape {want}")
    if not np.isfinite(table).all():
        raise BundleError(f"damaged bundle {root}: {name} holds NaN or infinite values")
    return table
