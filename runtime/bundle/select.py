"""The one rule that picks an engine set for a variant, a TensorRT version and a GPU."""

from __future__ import annotations

from pixdeploy.runtime.bundle.layout import DEFAULT_VARIANT, BundleError
from pixdeploy.runtime.bundle.reader import Bundle
from pixdeploy.runtime.bundle.records import EngineSet

from pixdeploy.text import printable

# ---- choosing an engine set ----

def _version(v: str) -> tuple:
    from pixdeploy.runtime.engine_header import version_tuple

    return version_tuple(v)


def select_engine_set(bundle: Bundle, variant: str = DEFAULT_VARIANT, *, tensorrt: str | None = None,
                      compute_capability: str | None = None, name: str | None = None,
                      allow_version_compatible: bool = False) -> EngineSet:
    """The one rule that picks an engine set (runtime, `triton`, `bench`, `inspect`):

    - the set of ``variant`` (and the folder ``name``, when given);
    - for this GPU's ``compute_capability`` and this ``tensorrt`` when given: built by that very TensorRT,
      or, with ``allow_version_compatible`` (the user's opt-in: such plans embed host code), a
      version-compatible set built by an older or equal TensorRT (the exact build is preferred);
    - exactly one: several candidates are refused with their names (pass ``name``), none with what exists
      and the `build-engine` command that makes one."""
    bundle.variant(variant)  # an unknown variant is named as such
    sets = [s for s in bundle.engine_sets() if s.variant == variant and (name is None or s.name == name)]
    if compute_capability is not None:
        sets = [s for s in sets if s.compute_capability == compute_capability]
    if tensorrt is not None:
        exact = [s for s in sets if s.tensorrt == tensorrt]
        compatible = [s for s in sets if s.version_compatible and _version(s.tensorrt) <= _version(tensorrt)]
        if exact:
            sets = exact
        elif compatible and allow_version_compatible:
            sets = sorted(compatible, key=lambda s: _version(s.tensorrt))[-1:]  # the newest that loads here
        elif compatible:
            raise BundleError(f"bundle {bundle.path}: engine set {compatible[-1].name} is version-compatible and "
                              "embeds host code; use it only if you trust its source (allow_host_code=True, "
                              "--allow-host-code)")
        else:
            sets = []
    if len(sets) == 1:
        return sets[0]
    want = (f"variant {variant}" + (f", TensorRT {tensorrt}" if tensorrt else "")
            + (f", compute capability {compute_capability}" if compute_capability else "")
            + (f", folder {printable(name)}" if name else ""))
    if sets:
        raise BundleError(f"bundle {bundle.path} has {len(sets)} engine sets for {want}: "
                          f"{printable(', '.join(s.name for s in sets))}; name one (--engines NAME)")
    built = [s.describe() for s in bundle.engine_sets()]
    raise BundleError(f"bundle {bundle.path} has no engines for {want}"
                      + (f" (it has: {'; '.join(built)})" if built else "")
                      + f"; build them with: pixdeploy build-engine {bundle.path} --variant {variant}")
