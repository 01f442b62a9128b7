"""The bench report: its format, its table, reading one back, and comparing two.

A report is plain JSON (``format``, ``format_version``, ``machine``, ``libraries``, ``bundle``, ``settings``,
``rows``); a row is one stage at one batch (and context) on one side: the bundle's (``bundle``) or PyTorch
eager's (``torch-eager``). A report read back is untrusted text: it is checked field by field before any
figure is compared, and every string of it is printed escaped.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from pixdeploy.errors import PixdeployError
from pixdeploy.jsonfile import BadJson, brief, load_json, need
from pixdeploy.text import printable

REPORT_FORMAT, REPORT_VERSION = "pixdeploy-bench", 1
BUNDLE, EAGER = "bundle", "torch-eager"  # a row's ``impl``: which side it timed


def row_key(row: dict) -> tuple:
    return row["stage"], row["batch"], row["context"], row["impl"]


def row_label(row: dict) -> str:
    ctx = f" ctx {row['context']}" if row["context"] else ""
    return f"{row['stage']} b{row['batch']}{ctx}"


def _fmt(value, spec: str) -> str:
    return "-" if value is None else format(value, spec)


def impl_label(row: dict, settings: dict) -> str:
    """What a row timed, named in full: backend/variant/precision (reports written before rows named it: from
    the settings)."""
    if row["impl"] == EAGER:
        return "torch-eager/fp32"
    backend = row.get("backend", settings.get("backend", "?"))
    variant = row.get("variant", settings.get("variant", "?"))
    return f"{backend}/{variant}/{row.get('precision', settings.get('precision', '?'))}"


def table(report: dict) -> str:
    s = report["settings"]
    lines = [f"{'stage':<22}{'impl (backend/variant/precision)':<34}{'p50 ms':>9}{'p90 ms':>9}{'p99 ms':>9}"
             f"{'img/s':>9}{'tok/s':>10}"
             f"{'RSS MiB':>9}{'dev MiB':>9}{'x eager':>9}"]
    for r in report["rows"]:
        speed = r.get("speedup_vs_eager", {}).get("p50")
        lines.append(f"{row_label(r):<22}{impl_label(r, s):<34}{r['p50_ms']:>9.2f}"
                     f"{r['p90_ms']:>9.2f}{r['p99_ms']:>9.2f}{_fmt(r['images_per_s'], '.1f'):>9}"
                     f"{_fmt(r['tokens_per_s'], '.0f'):>10}{_fmt(r['peak_rss_mb'], '.0f'):>9}"
                     f"{_fmt(r['device_memory_mb'], '.0f'):>9}{_fmt(speed, '.2f'):>9}")
    m = report["machine"]
    lines.append(f"machine: {m['cpu']}, {m['cores']} cores" + (f", {', '.join(m['gpus'])}" if m["gpus"] else "")
                 + f"; providers: {', '.join(s['providers'] or [])}; bundle sha256 "
                 f"{report['bundle']['manifest_sha256'][:12]}")
    return "\n".join(map(printable, lines))  # labels name variants and machines: escaped line by line


@dataclass
class Change:
    """One figure of a row, before and now (`compare`)."""

    label: str
    impl: str
    figure: str  # "p50" (latency: lower is better) or "speedup" (ratio to eager: higher is better)
    old: float
    new: float
    regressed: bool

    @property
    def change(self) -> float:
        return self.new / self.old - 1


def same_machine(a: dict, b: dict) -> bool:
    keys = ("cpu", "cores", "gpus")
    return all(a.get("machine", {}).get(k) == b.get("machine", {}).get(k) for k in keys)


def check_report(doc: object) -> None:
    """``BadJson`` unless ``doc`` is a bench report with every field `compare` reads of the right kind: a
    figure is a finite positive number (NaN passes every comparison, so a NaN baseline could never fail)."""
    if not isinstance(doc, dict) or doc.get("format") != REPORT_FORMAT:
        raise BadJson("is not a pixdeploy bench report")
    version = need(doc, "format_version", "an integer")
    if version != REPORT_VERSION:
        raise BadJson(f"has format version {version}; this pixdeploy reads version {REPORT_VERSION}")
    need(doc, "created", "a string", default=None)
    m = need(doc, "machine", "an object")
    need(m, "cpu", "a string", where="machine")
    need(m, "cores", "an integer", "null", where="machine")
    gpus = need(m, "gpus", "a list", where="machine")
    if not all(isinstance(g, str) for g in gpus):
        raise BadJson("field 'machine.gpus' is not a list of strings")
    libraries = need(doc, "libraries", "an object", default={})
    if not all(isinstance(v, str) for v in libraries.values()):
        raise BadJson("field 'libraries' is not an object of version strings")
    settings = need(doc, "settings", "an object", default={})
    for key in ("backend", "variant", "precision"):  # what a row timed (`impl_label`)
        need(settings, key, "a string", "null", default=None, where="settings")
    for i, row in enumerate(need(doc, "rows", "a list")):
        where = f"rows[{i}]"
        if not isinstance(row, dict):
            raise BadJson(f"{where} is {brief(row)}, not an object")
        need(row, "stage", "a string", where=where)
        need(row, "impl", "a string", where=where)
        for key in ("backend", "variant", "precision"):
            need(row, key, "a string", "null", default=None, where=where)
        need(row, "batch", "an integer", where=where)
        need(row, "context", "an integer", "null", where=where)
        need(row, "p50_ms", "a positive number", where=where)
        speedup = need(row, "speedup_vs_eager", "an object", default=None, where=where)
        if speedup is not None:
            need(speedup, "p50", "a positive number", where=f"{where}.speedup_vs_eager")


def read_report(path: Path) -> dict:
    """A bench report from a file, checked as `check_report` does; one `PixdeployError` naming the file."""
    try:
        doc = load_json(path)
    except FileNotFoundError:
        raise PixdeployError(f"{path}: no such file") from None
    except OSError as e:
        raise PixdeployError(f"{path}: not a readable bench report ({e.strerror or e})") from None
    except BadJson as e:
        raise PixdeployError(f"{path}: not a readable bench report: {e}") from None
    try:
        check_report(doc)
    except BadJson as e:
        raise PixdeployError(f"{path} {e}" if str(e).startswith("is not") else f"{path}: bench report {e}") from None
    return doc


def compare(new: dict, old: dict, margin: float) -> list[Change]:
    """Every figure present in both reports: p50 latency per row, and the ratio to eager where both have it.
    A figure regressed when it is worse than the old one by more than ``margin`` (0.2 = 20%). Latencies
    from another machine are shown but never count as regressed: only same-run ratios travel."""
    try:
        check_report(old)
    except BadJson as e:
        raise PixdeployError(f"not a pixdeploy bench report: {e}") from None
    gate_latency = same_machine(new, old)
    # A row is compared only with the same backend, variant and precision (a bf16 row never with an fp32 one).
    before = {(*row_key(r), impl_label(r, old.get("settings") or {})): r for r in old.get("rows", [])}
    out = []
    for r in new["rows"]:
        o = before.get((*row_key(r), impl_label(r, new.get("settings") or {})))
        if o is None:
            continue
        out.append(Change(row_label(r), r["impl"], "p50", o["p50_ms"], r["p50_ms"],
                          gate_latency and r["p50_ms"] > o["p50_ms"] * (1 + margin)))
        if "speedup_vs_eager" in r and "speedup_vs_eager" in o and r["impl"] != EAGER:
            a, b = o["speedup_vs_eager"]["p50"], r["speedup_vs_eager"]["p50"]
            out.append(Change(row_label(r), r["impl"], "speedup", a, b, b * (1 + margin) < a))
    return out


def compare_table(changes: list[Change], new: dict, old: dict) -> str:
    lines = [f"{'stage':<22}{'impl':<14}{'figure':<10}{'before':>10}{'now':>10}{'change':>9}"]
    for c in changes:
        lines.append(f"{c.label:<22}{c.impl:<14}{c.figure:<10}{c.old:>10.3f}{c.new:>10.3f}{c.change:>+9.1%}"
                     + ("  REGRESSED" if c.regressed else ""))
    if not changes:
        lines.append("(no stage, batch and context in common)")
    if not same_machine(new, old):
        lines.append("note: the runs are from different machines: latencies are shown, "
                     "only ratios to eager can regress")
        for when, report in (("before", old), ("now", new)):  # the old report's strings are untrusted text
            m = report["machine"]
            lines.append(printable(f"  {when}: {m['cpu']}, {m['cores']} cores" + "".join(f", {g}" for g in m["gpus"])))
    before, now = old.get("libraries", {}), new.get("libraries", {})
    changed = [f"{k} {before.get(k, '-')} -> {now.get(k, '-')}" for k in sorted(before.keys() | now.keys())
               if before.get(k) != now.get(k)]
    if changed:
        lines.append("note: library versions differ: " + ", ".join(changed))
    return "\n".join(map(printable, lines))  # an old report's labels are untrusted text: escaped line by line
