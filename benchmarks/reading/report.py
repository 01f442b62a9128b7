"""The benchmark's result as a Markdown table and a plot of accuracy against font size."""

from __future__ import annotations

from pathlib import Path

LABELS = {"pixel": "pixel tokens", "vit": "patch ViT"}


def table(result: dict) -> str:
    """Exact match / character accuracy (%) per font size, per background, and overall; one column per model."""
    models = list(result["models"])
    first = result["models"][models[0]]
    head = "| | " + " | ".join(f"{LABELS.get(m, m)} exact / chars" for m in models) + " | n |"
    lines = [head, "|" + "---|" * (len(models) + 2)]

    def row(label: str, pick) -> str:
        cells = [f"{pick(result['models'][m])['exact']:.1f} / {pick(result['models'][m])['chars']:.1f}"
                 for m in models]
        return f"| {label} | " + " | ".join(cells) + f" | {pick(first)['n']} |"

    for size in first["by_font_size"]:
        lines.append(row(f"font {size} px", lambda r, s=size: r["by_font_size"][s]))
    for bg in first["by_background"]:
        lines.append(row(f"{bg} background", lambda r, b=bg: r["by_background"][b]))
    for kind in first["by_kind"]:
        lines.append(row(f"{kind}s", lambda r, k=kind: r["by_kind"][k]))
    lines.append(row("**all**", lambda r: r["overall"]))
    lines.append("")
    lines.append("| | " + " | ".join(LABELS.get(m, m) for m in models) + " |")
    lines.append("|" + "---|" * (len(models) + 1))
    for label, pick in (
        ("parameters", lambda r: f"{r['params']['total']:,}"),
        ("image-encoder parameters", lambda r: f"{r['params']['image_encoder']:,}"),
        ("image-encoder FLOPs / image", lambda r: f"{r['encoder_flops_per_image'] / 1e6:,.1f} M"),
        ("training wall time", lambda r: f"{r['train_seconds'] / 60:.1f} min"),
        ("final training loss", lambda r: f"{r['final_train_loss']:.3f}"),
        ("held-out word loss", lambda r: f"{r['heldout_word_loss']:.3f}" if r["heldout_word_loss"] else "-"),
    ):
        lines.append(f"| {label} | " + " | ".join(pick(result["models"][m]) for m in models) + " |")
    return "\n".join(lines)


def figure_class():
    """matplotlib's `Figure`, used without pyplot (no global backend state, no display needed). Called
    before training too, so that a missing matplotlib is reported before the work, not after it."""
    try:
        from matplotlib.figure import Figure
    except ImportError:
        from pixdeploy.errors import PixdeployError

        raise PixdeployError('the reading benchmark plots with matplotlib: pip install "pixdeploy[bench]"') from None
    return Figure


def plot(result: dict, path: Path) -> None:
    """Accuracy against font size, one line per model and metric."""
    fig = figure_class()(figsize=(9, 3.6))
    axes = fig.subplots(1, 2, sharey=True)
    for ax, metric, title in zip(axes, ("exact", "chars"), ("exact match", "character accuracy")):
        for name, r in result["models"].items():
            sizes = [int(s) for s in r["by_font_size"]]
            ax.plot(sizes, [r["by_font_size"][str(s)][metric] for s in sizes], marker="o", label=LABELS.get(name, name))
        ax.set_title(f"held-out {title}")
        ax.set_xlabel("font size (px, em height)")
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("%")
    axes[0].set_ylim(0, 100)
    axes[1].legend(loc="upper right")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
