"""The bundle format, one package and the only place a manifest key or a bundle file name is spelled: its layout
and safe paths (`layout`), its typed records (`records`: each frozen, with a strict ``from_dict`` and a
``to_dict``), its one reader (`reader.Bundle`, with `signatures`, `engine_check` and `tables` for what it checks),
its one writer (`writer`: `new_manifest` + `commit_manifest` for an export, `adding_variant` for a variant,
`add_engine_set` for engines), the rule that picks an engine set (`select`) and the format-1 upgrade (`upgrade`).
Every name here imports from ``pixdeploy.runtime.bundle``.

    bundle/
        manifest.json          format + version, producer, model config, special ids, variants, engine sets,
                               and the sha256 of every other file
        image_encoder.onnx     uint8 images + sizes -> window embeddings (pixdeploy:: custom ops inside)
        decoder.onnx           embeddings + positions + KV cache -> last logits + new cache
        text_embeddings.npy    the word-embedding table, looked up in numpy
        tokenizer.json
        parity.json            the exporter's full parity report (thresholds, statistics)
        variants/NAME-ID/      more precisions of the same graphs (fp16, int8-tensorrt, int8-cpu)
        engines/GPU-trtVERSION-VARIANT/
                               TensorRT engines of one variant for one GPU model and TensorRT version, each
                               with a header saying what it was built from and for (`engine_header`)

The manifest (format version 2):
- ``variants`` maps every variant, ``fp32`` included, to its `VariantRecord`: precision, target, graph files,
  and the `ParityRecord` its gate measured (one shape for every variant), with how it was made (calibration,
  the CPU scheme measured and chosen, the decoder form);
- ``graphs`` holds the `GraphSignature` every variant shares (names, dtypes, symbolic dims); the decoder's
  records its KV-cache pairs (`CachePair`), which every consumer reads from there instead of re-deriving names;
- ``engines`` maps an engine folder to what it was built for (`EngineSet`); the engine headers say the same of
  each file and are checked against it, and `select_engine_set` is the one rule that picks a set;
- ``files`` holds the sha256 of every file (`FileEntry`). A bundle is untrusted: every path it names must resolve
  inside it with no symlink on the way, and a file is read only through `Bundle.checked`, which compares its
  checksum first. The shared files are hashed when a `Bundle` is made, a variant's graphs when the variant is
  first used, engines when a set is selected: a command hashes only what it runs.

Bundles of format version 1 (no explicit fp32 variant, no cache pairs, engine folders without the
variant) are read by `upgrade.upgrade_v1`; their engine sets are not used (rebuild them).
"""

from pixdeploy.runtime.bundle.layout import (  # noqa: F401
    DECODER_FORMS,
    DEFAULT_VARIANT,
    EMBEDDINGS,
    ENGINES_DIR,
    FORMAT,
    FORMAT_VERSION,
    GRAPHS,
    MANIFEST,
    MAX_MANIFEST_BYTES,
    PARITY_REPORT,
    READABLE_VERSIONS,
    TOKENIZER,
    VARIANT_MARKER,
    VARIANTS_DIR,
    BundleError,
    inside,
    real_dir,
)
from pixdeploy.runtime.bundle.reader import Bundle  # noqa: F401
from pixdeploy.runtime.bundle.records import (  # noqa: F401
    CachePair,
    CalibrationRecord,
    CpuSchemeRecord,
    EngineSet,
    FileEntry,
    GraphSignature,
    ParityRecord,
    Provenance,
    RecordError,
    SourceRecord,
    TensorSpec,
    VariantRecord,
    engine_set_name,
)
from pixdeploy.runtime.bundle.select import select_engine_set  # noqa: F401
from pixdeploy.runtime.bundle.writer import (  # noqa: F401
    StagedVariant,
    add_engine_set,
    adding_variant,
    commit_manifest,
    file_entries,
    is_bundle_dir,
    mark_variant_folder,
    new_manifest,
    sweep_variants,
    with_parity,
    write_new_manifest,
)
