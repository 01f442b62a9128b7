"""Format 1 read as format 2, in memory."""

from __future__ import annotations

import copy

from pixdeploy.runtime.bundle.layout import DEFAULT_VARIANT


def upgrade_v1(m: dict) -> dict:
    """A format-1 manifest as format 2, in memory: its top-level graphs are the fp32 variant, its cache pairs
    follow the past_/present_ names format 1 used, and its engine sets (folders without the variant, no file
    list) are dropped: rebuild them with `pixdeploy build-engine`."""
    m = copy.deepcopy(m)
    graphs = m.get("graphs")
    variants = m.get("variants") if isinstance(m.get("variants"), dict) else {}
    if isinstance(graphs, dict):
        files = {g: {"file": d.get("file")} for g, d in graphs.items() if isinstance(d, dict)}
        variants = {DEFAULT_VARIANT: {"precision": "fp32", "target": "any", "graphs": files,
                                      "parity": m.get("parity")}, **variants}
        dec = graphs.get("decoder")
        if isinstance(dec, dict) and isinstance(dec.get("inputs"), dict):
            dec["cache"] = [{"past": k, "present": "present_" + k[len("past_"):], **v}
                            for k, v in dec["inputs"].items() if k.startswith("past_") and isinstance(v, dict)]
    m["variants"] = variants
    m["engines"] = {}
    return m
