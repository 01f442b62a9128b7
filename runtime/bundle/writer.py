"""The one writer of a bundle: a new manifest, a variant committed as one transaction, an engine set added."""

from __future__ import annotations

import contextlib
import copy
import json
import os
import shutil
import stat
import time
from collections.abc import Callable, Iterator
from pathlib import Path

from pixdeploy.runtime.bundle.layout import (
    DEFAULT_VARIANT,
    ENGINES_DIR,
    FORMAT,
    FORMAT_VERSION,
    MANIFEST,
    MARKER_FORMAT,
    PARITY_REPORT,
    VARIANT_FOLDER,
    VARIANT_MARKER,
    VARIANTS_DIR,
    real_dir,
)
from pixdeploy.runtime.bundle.reader import Bundle
from pixdeploy.runtime.bundle.records import (
    EngineSet,
    FileEntry,
    GraphSignature,
    ParityRecord,
    Provenance,
    SourceRecord,
    VariantRecord,
)

from pixdeploy.config import SPECIAL_TOKENS
from pixdeploy.errors import PixdeployError
from pixdeploy.files import locked_dir, parse_temp, sha256, staged_dir, staged_file, writing
from pixdeploy.jsonfile import BadJson, load_json

# ---- writing ----

def _rewrite(path: Path, change: Callable[[dict], None], echo=None) -> None:
    """Read the manifest afresh, let ``change`` edit it, write it back in one rename. Callers hold the
    bundle's lock, so what another writer added since is kept."""
    bundle = Bundle(path, verify=False)
    manifest = copy.deepcopy(bundle.manifest)
    manifest["format_version"] = FORMAT_VERSION  # a format-1 bundle is written back as format 2
    change(manifest)
    with staged_file(Path(path) / MANIFEST, echo=echo) as tmp:
        tmp.write_text(json.dumps(manifest, indent=2), encoding="utf-8")


def file_entries(root: Path, where: Path) -> dict:
    """Checksum-table entries for ``where``, a plain file or every plain file under a folder (paths relative to
    ``root``)."""
    paths = [where] if where.is_file() else sorted(where.rglob("*"))
    return {p.relative_to(root).as_posix(): FileEntry(sha256(p), p.stat().st_size).to_dict()
            for p in paths if p.is_file() and not p.is_symlink()}


def new_manifest(folder: Path, cfg, graphs: dict, provenance: Provenance,
                 parity: ParityRecord | None = None) -> tuple[dict, dict]:
    """(manifest, hashed) of a bundle being exported into ``folder``, in memory: the fp32 variant (with its parity
    record, once measured), the signatures (``graphs``: name -> signature with its ``file``; the decoder's with
    its cache pairs), where it came from, and the checksum of every file already written there; ``hashed``:
    name -> sha256, for `Bundle.from_manifest`, so no file is hashed twice."""
    files = {k: v for k, v in file_entries(folder, folder).items() if k != MANIFEST}
    fp32 = VariantRecord("fp32", "any", {g: d["file"] for g, d in graphs.items()}, parity=parity)
    signatures = {g: GraphSignature.from_dict(d, g).to_dict() for g, d in graphs.items()}  # files: per variant
    manifest = {
        "format": FORMAT, "format_version": FORMAT_VERSION, **provenance.to_dict(), "config": cfg.to_dict(),
        "special_tokens": {name: i for i, name in enumerate(SPECIAL_TOKENS)}, "graphs": signatures,
        "variants": {DEFAULT_VARIANT: fp32.to_dict()}, "engines": {}, "files": files,
    }
    return manifest, {k: v["sha256"] for k, v in files.items()}


def with_parity(folder: Path, manifest: dict, parity: ParityRecord) -> dict:
    """``manifest`` with the fp32 variant's parity record and the exporter's report (parity.json, written in
    ``folder``) among the checksummed files."""
    manifest = copy.deepcopy(manifest)
    manifest["variants"][DEFAULT_VARIANT]["parity"] = parity.to_dict()
    manifest["files"].update(file_entries(folder, folder / PARITY_REPORT))
    return manifest


def commit_manifest(folder: Path, manifest: dict) -> None:
    """Write ``manifest`` into the bundle being exported into ``folder`` (a private staging folder), in one
    rename."""
    tmp = folder / f"{MANIFEST}.tmp"
    tmp.write_text(json.dumps(manifest, indent=2), encoding="utf-8")
    os.replace(tmp, folder / MANIFEST)


def write_new_manifest(folder: Path, cfg, graphs: dict, extra: dict, producer: str) -> None:
    """A fresh manifest over the files in ``folder``; ``extra``: the manifest form of what `new_manifest` takes by
    name (source, export_profile, onnx, and parity: the fp32 variant's record)."""
    source, parity = extra.get("source"), extra.get("parity")
    provenance = Provenance(producer, None if source is None else SourceRecord.from_dict(source),
                            extra.get("export_profile"), extra.get("onnx"))
    commit_manifest(folder, new_manifest(folder, cfg, graphs, provenance,
                                         None if parity is None else ParityRecord.from_dict(parity))[0])


def is_bundle_dir(path: Path) -> bool:
    """A folder a pixdeploy exporter wrote (so --force may replace it): it has a pixdeploy manifest."""
    try:
        return Bundle(path, verify=False).manifest.get("format") == FORMAT
    except PixdeployError:
        return False


def mark_variant_folder(folder: Path, variant: str) -> None:
    """Mark ``folder`` as one `adding_variant` made (`sweep_variants` removes nothing else)."""
    (folder / VARIANT_MARKER).write_text(json.dumps({"format": MARKER_FORMAT, "variant": variant}),
                                         encoding="utf-8")


def _made_by_adding_variant(folder: Path) -> bool:
    """Whether ``folder`` holds the marker `mark_variant_folder` writes: a small regular file (not a
    symlink) of the right format."""
    marker = folder / VARIANT_MARKER
    try:
        st = marker.lstat()
        if not stat.S_ISREG(st.st_mode) or st.st_size > 4096:
            return False
        info = load_json(marker, max_bytes=4096)
    except (OSError, BadJson):
        return False
    return isinstance(info, dict) and info.get("format") == MARKER_FORMAT


def sweep_variants(bundle_path: Path, echo) -> None:
    """Remove variant folders no manifest entry names, left by a run killed before its manifest switch.
    Only what `adding_variant` made is ever removed — a real folder (not a symlink) named ``VARIANT-ID``, or
    its staging sibling, that holds the marker it writes first — and only when no running process is writing
    it; anything else (a folder of the user's, whatever its name) is left alone."""
    root = real_dir(bundle_path, VARIANTS_DIR)
    if root is None:
        return
    bundle = Bundle(bundle_path, verify=False)
    used = {Path(f).parts[1] for v in bundle.variants.values() for f in v.graphs.values()
            if Path(f).parts[:1] == (VARIANTS_DIR,) and len(Path(f).parts) > 2}
    for p in sorted(root.iterdir()):
        if p.name in used or p.is_symlink() or not p.is_dir():
            continue
        temp = parse_temp(p.name)  # (target, writer still running) for a staging folder
        if temp is not None and temp[1]:
            continue
        if not VARIANT_FOLDER.match(temp[0] if temp else p.name) or not _made_by_adding_variant(p):
            continue  # not a folder pixdeploy made: never deleted
        shutil.rmtree(p)
        echo(f"removed {VARIANTS_DIR}/{p.name}, left by an interrupted run")


class StagedVariant:
    """A variant being written: its graphs go into ``dir``; ``view(entry)`` is the bundle seeing it (what the
    parity gate loads); the variant joins the manifest when the `adding_variant` block ends without error."""

    def __init__(self, bundle: Bundle, name: str, final: Path, tmp: Path):
        self.bundle, self.name, self.final, self.dir = bundle, name, final, tmp

    def entry_file(self, filename: str) -> str:
        """The manifest path of a file of this variant once it is in place."""
        return self.final.relative_to(self.bundle.path).joinpath(filename).as_posix()

    def view(self, entry: dict) -> Bundle:
        """The same bundle, unverified, with variant ``self.name`` = ``entry`` read from the staging folder."""
        manifest = copy.deepcopy(self.bundle.manifest)
        here = self.dir.relative_to(self.bundle.path).as_posix()
        record = VariantRecord.from_dict(entry, f"variant {self.name}")
        graphs = {g: f"{here}/{Path(f).name}" for g, f in record.graphs.items()}
        manifest["variants"][self.name] = {**record.to_dict(), "graphs": {g: {"file": f} for g, f in graphs.items()}}
        staged = file_entries(self.bundle.path, self.dir)
        manifest["files"] = {**manifest["files"], **staged}
        hashed = {name: e["sha256"] for name, e in staged.items()}
        hashed.update(self.bundle.hashed_files())
        return Bundle.from_manifest(self.bundle.path, manifest, verify=False, hashed=hashed)


@contextlib.contextmanager
def adding_variant(bundle, name: str, *, force: bool, echo=print) -> Iterator[tuple[StagedVariant, dict]]:
    """The bundle transaction of `quantize`: yields (staged variant, entry dict to fill). On success the folder
    is renamed into place and the manifest names it in one rename, both under the bundle's lock (so no other
    writer reads the manifest in between or sweeps the folder as an orphan); the folder of a variant it
    replaces (``force``) is removed after. On any error or Ctrl-C the bundle is left as it was. ``bundle``: a
    `Bundle` the caller already verified, or its path."""
    bundle = bundle if isinstance(bundle, Bundle) else Bundle(bundle)
    bundle_path = bundle.path
    if name in bundle.variants and not force:
        raise PixdeployError(f"bundle {bundle_path} already has variant {name}; pass --force to replace it")
    with locked_dir(bundle_path, echo):  # another quantize may be switching its folder in right now
        sweep_variants(bundle_path, echo)
    root = real_dir(bundle_path, VARIANTS_DIR)
    made_root = root is None
    if made_root:
        root = bundle_path / VARIANTS_DIR
        root.mkdir()
    final = root / f"{name}-{time.time_ns():x}"  # new each run: never half-replaced
    entry: dict = {}
    try:
        with contextlib.ExitStack() as switching, writing(final):  # a full disk names the variant's folder
            with staged_dir(final, what="pixdeploy variant", echo=echo) as tmp:
                mark_variant_folder(tmp, name)  # first: a kill from here on leaves a folder the sweep knows
                staged = StagedVariant(bundle, name, final, tmp)
                yield staged, entry
                switching.enter_context(locked_dir(bundle_path, echo))
            try:
                _switch_in(bundle_path, name, entry, final, force, echo)
            except BaseException:
                shutil.rmtree(final, ignore_errors=True)
                raise
    except BaseException:
        if made_root and root.is_dir() and not any(root.iterdir()):
            root.rmdir()  # the bundle is left exactly as it was: no empty variants/ either
        raise


def _switch_in(bundle_path: Path, name: str, entry: dict, folder: Path, force: bool, echo) -> None:
    def add(manifest: dict) -> None:
        variants = manifest["variants"]
        old = variants.get(name)
        if old and not force:
            raise PixdeployError(f"another pixdeploy process added variant {name} to bundle {bundle_path} "
                                 "while this one ran; pass --force to replace it")
        variants[name] = VariantRecord.from_dict(entry, f"variant {name}").to_dict()  # committed as a record
        files = manifest["files"]
        if old:  # --force: the replaced variant's files leave the checksum table with it
            old_dirs = {Path(f).parent.as_posix() for f in VariantRecord.from_dict(old).graphs.values()}
            for f in [f for f in files if Path(f).parent.as_posix() in old_dirs]:
                files.pop(f)
        files.update(file_entries(bundle_path, folder))

    _rewrite(bundle_path, add, echo)
    sweep_variants(bundle_path, lambda *_: None)  # the replaced variant's folder


def add_engine_set(bundle_path, engine_set: EngineSet, folder: Path, echo=None) -> None:
    """Record an engine folder (already in place under engines/) and checksum its files, under the bundle's lock."""
    bundle_path = Path(bundle_path)

    def add(manifest: dict) -> None:
        prefix = f"{ENGINES_DIR}/{engine_set.name}/"
        files = manifest["files"]
        for f in [f for f in files if f.startswith(prefix)]:
            files.pop(f)
        files.update(file_entries(bundle_path, folder))
        manifest.setdefault("engines", {})[engine_set.name] = engine_set.to_dict()

    with locked_dir(bundle_path, echo):
        _rewrite(bundle_path, add, echo)
