"""Markdown tables of the synthetic benchmark and their blocks in docs/benchmark.md (see :mod:`experiments._benchmark`)."""

from __future__ import annotations

from pathlib import Path

from ._methods import METHOD_LABELS


def fmt(ms, digits=3) -> str:
    """``mean ± std`` with a shared number of significant digits."""
    m, s = ms
    return f"{m:.{digits}g} ± {s:.2g}"


TABLE_METRICS = (("exact_mmd2", "MMD²"), ("mode_weight_tv", "mode TV"), ("frac_near_mode", "near mode"),
                 ("recall", "recall"), ("w2", "W₂"), ("frac_far", "far (>6σ)"))


def markdown_table(results: dict, titles: dict, methods, metrics=TABLE_METRICS) -> str:
    """One row per (scenario, method): mean ± std of ``metrics``; the best non-oracle, non-reference MMD² in bold."""
    head = "| scenario | method | " + " | ".join(lbl for _, lbl in metrics) + " |"
    lines = [head, "|" + "---|" * (2 + len(metrics))]
    for key, res in results.items():
        cands = [m for m in res if m not in ("doob_oracle", "refs", "none")]
        best = min(cands, key=lambda m: res[m]["summary"]["exact_mmd2"][0]) if cands else None
        for m in methods:
            if m not in res:
                continue
            summ = res[m]["summary"]
            cells = []
            for k, _ in metrics:
                if k not in summ:
                    cells.append("–")
                    continue
                c = fmt(summ[k])
                cells.append(f"**{c}**" if (k == "exact_mmd2" and m == best) else c)
            lines.append(f"| {titles[key]} | {METHOD_LABELS[m]} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


# --------------------------------------------------------------------------- docs
DOC = Path(__file__).resolve().parents[1] / "docs" / "benchmark.md"
FIGURES = Path(__file__).resolve().parents[1] / "paper_figures"


def sync_doc_tables(out_dir, name: str, tables: dict, doc=None) -> bool:
    """Replace the generated blocks of ``docs/benchmark.md`` with fresh tables.

    A block is the text between ``<!-- BEGIN name:key -->`` and ``<!-- END name:key -->``; ``tables``
    maps ``key`` to its markdown. Only runs that write the committed figures (``out_dir`` is the
    repository's ``paper_figures/``) touch the document, unless ``doc`` is given explicitly (tests).
    Blocks absent from the document are skipped. Returns whether the document was rewritten.
    """
    if doc is None:
        if Path(out_dir).resolve() != FIGURES or not DOC.exists():
            return False
        doc = DOC
    doc = Path(doc)
    text = old = doc.read_text()
    for key, md in tables.items():
        begin, end = f"<!-- BEGIN {name}:{key} -->", f"<!-- END {name}:{key} -->"
        i, j = text.find(begin), text.find(end)
        if i < 0 or j < i:
            continue
        text = text[: i + len(begin)] + "\n" + md.strip("\n") + "\n" + text[j:]
    if text != old:
        doc.write_text(text)
    return text != old
