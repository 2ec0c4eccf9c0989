"""Writing an evaluation (:class:`deblur_rotate.evaluate.tables.EvaluationResult`) to a report folder.

``write_report(result, REPORT)`` writes, each file atomically::

    REPORT/report.md          protocol, settings, skipped tables with reasons, every table with its notes
    REPORT/table<k>.csv       one per table that ran: the label columns, then per value column its mean,
                              "<column> n" (measured) and "<column> missing" (not measured, e.g. no face found)
    REPORT/report.json        every number (NaN as null), settings, protocol, skipped tables
    REPORT/figure5.png        a grid like the paper's Figure 5 (input, reconstructions with and without rotation,
                              ground truth; dlib landmarks on the first and last generated frames)
    REPORT/error_vs_angle.png landmark error and PSNR against the true yaw change (drawn with PIL: matplotlib is
                              not a dependency)

Cell text in report.md: the mean, then ``(measured/total)`` when some measurements are missing; ``–`` when
nothing could be measured.
"""
from __future__ import annotations

import csv
import io
import math
import os
from pathlib import Path

import numpy as np

from deblur_rotate.errors import UserError

__all__ = [
    "check_out_folder",
    "error_vs_angle_png",
    "figure5_png",
    "format_cell",
    "report_json",
    "report_markdown",
    "table_csv",
    "table_markdown",
    "write_report",
]

FIGURE_MIN_CELL = 128  # figure cells are enlarged (nearest neighbour) to at least this many pixels
_COLOURS = [(31, 119, 180), (255, 127, 14), (44, 160, 44), (214, 39, 40), (148, 103, 189), (140, 86, 75),
            (227, 119, 194), (127, 127, 127)]


# ------------------------------------------------------------------------------------------------ tables

def format_cell(cell: dict, fmt: str = "{:.2f}") -> str:
    """``{"mean", "n", "missing"}`` -> text: the mean, ``(n/total)`` when some are missing, ``–`` when none measured."""
    mean, n, missing = cell.get("mean"), int(cell.get("n", 0)), int(cell.get("missing", 0))
    if mean is None or (isinstance(mean, float) and math.isnan(mean)) or n == 0:
        return "–" if not missing else f"– (0/{missing})"
    text = "inf" if math.isinf(mean) else fmt.format(mean)
    return f"{text} ({n}/{n + missing})" if missing else text


def table_markdown(table) -> str:
    """A :class:`~deblur_rotate.evaluate.tables.Table` as a Markdown section (heading, table, notes)."""
    head = [str(h).replace("|", "\\|") for h in list(table.row_header) + list(table.columns)]
    lines = [f"### Table {table.number}: {table.title}", "",
             "| " + " | ".join(head) + " |", "|" + "|".join("---" for _ in head) + "|"]
    for row in table.rows:
        cells = [format_cell(row.cells.get(c, {}), row.fmt) for c in table.columns]
        labels = [str(label).replace("|", "\\|") for label in row.labels]
        lines.append("| " + " | ".join(labels + cells) + " |")
    if table.notes:
        lines.append("")
        lines += [f"- {note}" for note in table.notes]
    return "\n".join(lines) + "\n"


def _number(value) -> str:
    if value is None:
        return "nan"
    return repr(float(value))


def _short(value) -> str:
    """Two decimals, '–' for a missing value (report.md)."""
    return "–" if value is None or math.isnan(float(value)) else f"{float(value):.2f}"


def table_csv(table) -> str:
    """CSV text: label columns, then ``<col>, <col> n, <col> missing`` per value column; NaN written as nan."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    header = list(table.row_header)
    for col in table.columns:
        header += [col, f"{col} n", f"{col} missing"]
    writer.writerow(header)
    for row in table.rows:
        values = list(row.labels)
        for col in table.columns:
            cell = row.cells.get(col, {})
            values += [_number(cell.get("mean")), int(cell.get("n", 0)), int(cell.get("missing", 0))]
        writer.writerow(values)
    return buffer.getvalue()


def _json_safe(obj):
    """NaN -> None, ±inf -> "inf"/"-inf", numpy scalars -> Python, recursively."""
    if isinstance(obj, dict):
        return {str(k): _json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_json_safe(v) for v in obj]
    if isinstance(obj, (np.floating, np.integer)):
        obj = obj.item()
    if isinstance(obj, float):
        if math.isnan(obj):
            return None
        if math.isinf(obj):
            return "inf" if obj > 0 else "-inf"
    return obj


def report_json(result) -> dict:
    """Every number of the evaluation, JSON-ready (NaN as null)."""
    return _json_safe({
        "settings": result.settings, "protocol": result.protocol, "wall_s": round(result.wall_s, 2),
        "tables": {t.key: t.to_json() for t in result.tables},
        "skipped": {f"table{k}": v for k, v in sorted(result.skipped.items())},
        "error_vs_angle": result.angle_curves,
        "quality_targets": result.quality,
    })


def report_markdown(result) -> str:
    """report.md: title, protocol, settings, skipped tables, then every table."""
    s = result.settings
    lines = ["# deblur-rotate evaluation on SynthBMFD", "",
             (f"Model `{s['model']}` (preset {s.get('preset')}, {s['resolution']} px, F: {s.get('fusion') or 'none'}, "
             f"E_3D: {'yes' if s.get('face3d_encoder') else 'no'}; blur-consistency refinement: "
             f"{(s.get('refine') or {}).get('steps', 0)} steps"
             f"{', plus its residual on the input view' if (s.get('refine') or {}).get('residual') else ''}); "
             f"data `{s['data']}` split {s['split']}; "
             f"{s['instants']} instants of {s['instants_in_split']}; device {s['device']}; "
             f"wall time {result.wall_s:.1f} s."), "", "## Protocol", ""]
    lines += [f"- {p}" for p in result.protocol]
    if result.quality:
        lines += ["", quality_markdown(result.quality)]
    lines += ["", "## Tables", ""]
    lines.append(f"Requested: {', '.join(map(str, s['tables_requested']))}; computed: "
                 f"{', '.join(map(str, s['tables_run'])) or 'none'}.")
    if result.skipped:
        lines += ["", "Skipped:"]
        lines += [f"- Table {k} ({_title(k)}): {v}" for k, v in sorted(result.skipped.items())]
    lines.append("")
    for table in result.tables:
        lines += [table_markdown(table)]
    lines += ["## Figures", "", ("- `figure5.png`: per instant, the blurry input, ours without rotation and with F to "
              "another view (dlib landmarks drawn on the first and last frames), and the ground truth."),
              "- `error_vs_angle.png`: landmark error and PSNR against the true yaw change from the input view.", ""]
    return "\n".join(lines)


def quality_markdown(quality: list[dict]) -> str:
    """The quality-target section of report.md: one row per target (see ``tables.quality_targets``)."""
    lines = ["## Quality targets", "", "| figure | value | reference | goal | met | note |",
             "|---|---|---|---|---|---|"]
    for q in quality:
        if q["met"] is None:
            met = "not measurable"
        else:
            met = "yes" if q["met"] else f"no (short by {abs(q['margin']):.2f})"
        lines.append(f"| {q['name']} | {_short(q['value'])} | {_short(q['reference'])} | "
                     f"{q['rule']} {_short(q['goal'])} | {met} | {q['note']} |")
    return "\n".join(lines) + "\n"


def quality_lines(quality: list[dict]) -> list[str]:
    """``name: value`` lines of the quality targets (value, reference, goal, met), as the benchmarks print."""
    out = []
    for q in quality:
        out.append(f"{q['name']}: {_number(q['value'])}")
        if q["reference"] is not None:
            out.append(f"{q['name']}_reference: {_number(q['reference'])}")
        out.append(f"{q['name']}_goal: {_number(q['goal'])}")
        out.append(f"{q['name']}_met: {q['met']}")
    return out


def _title(number: int) -> str:
    from deblur_rotate.evaluate.tables import TABLE_TITLES

    return TABLE_TITLES.get(number, "")


# ------------------------------------------------------------------------------------------------ figures

def _png(image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def figure5_png(samples: list[dict]) -> bytes:
    """A Figure-5-like grid. Per sample (see ``collect._figure_sample``): rows ours without rotation, ground truth
    of the input view, ours turned to view k, ground truth of view k; columns the blurry input then frames 1..5;
    dlib landmarks (green dots) on the first and last generated frames, "no face" where dlib found none."""
    from PIL import Image, ImageDraw

    if not samples:
        canvas = Image.new("RGB", (480, 60), (24, 24, 24))
        ImageDraw.Draw(canvas).text((10, 20), "no instants were evaluated", fill=(230, 230, 230))
        return _png(canvas)
    r = samples[0]["blurry"].shape[0]
    t = samples[0]["recon"].shape[0]
    scale = max(1, math.ceil(FIGURE_MIN_CELL / r))
    cell, pad, top, left = r * scale, 4, 18, 200
    rows = []  # (label, first cell or None, frames [T, R, R, 3], landmarks or None)
    for s in samples:
        rows.append((f"{s['label']}", None, None, None))
        rows.append((f"view {s['input_view']}: ours, no rotation", s["blurry"], s["recon"], s["recon_landmarks"]))
        rows.append((f"view {s['input_view']}: ground truth", None, s["gt_input"], None))
        if "novel" in s:
            rows.append((f"view {s['view']} (dyaw {s['dyaw_deg']:+.0f} deg): ours with F", s["blurry"], s["novel"],
                         s["novel_landmarks"]))
            rows.append((f"view {s['view']}: ground truth", None, s["gt_view"], None))
    heights = [16 if frames is None else cell + pad for _, _, frames, _ in rows]
    canvas = Image.new("RGB", (left + (t + 1) * (cell + pad), top + sum(heights)), (24, 24, 24))
    draw = ImageDraw.Draw(canvas)
    for c, label in enumerate(["blurry input"] + [f"frame {j + 1}" for j in range(t)]):
        draw.text((left + c * (cell + pad) + 2, 3), label, fill=(230, 230, 230))

    def big(a: np.ndarray):
        return Image.fromarray(a).resize((cell, cell), Image.NEAREST)

    y = top
    for (label, first, frames, marks), h in zip(rows, heights):
        if frames is None:
            draw.text((4, y + 2), label, fill=(255, 210, 120))
            y += h
            continue
        draw.text((4, y + cell // 2 - 6), label, fill=(230, 230, 230))
        if first is not None:
            canvas.paste(big(first), (left, y))
        for j in range(t):
            x0 = left + (j + 1) * (cell + pad)
            canvas.paste(big(frames[j]), (x0, y))
            if marks is None or j not in (0, t - 1):
                continue
            points = marks[0] if j == 0 else marks[-1]
            if points is None:
                draw.text((x0 + 3, y + 3), "no face", fill=(255, 80, 80))
                continue
            for u, v in points:
                px, py = x0 + (u + 0.5) * scale - 0.5, y + (v + 0.5) * scale - 0.5
                draw.ellipse([px - 1.5, py - 1.5, px + 1.5, py + 1.5], fill=(60, 255, 60))
        y += h
    return _png(canvas)


def _ticks(lo: float, hi: float, count: int = 5) -> list[float]:
    """About ``count`` round tick values covering [lo, hi]."""
    span = max(hi - lo, 1e-9)
    raw = span / max(count - 1, 1)
    mag = 10 ** math.floor(math.log10(raw))
    step = next(m * mag for m in (1, 2, 2.5, 5, 10) if m * mag >= raw)
    start = math.floor(lo / step) * step
    return [start + i * step for i in range(math.ceil((hi - start) / step) + 1)]


def _line_plot(curves: dict[str, list[tuple[float, float]]], title: str, xlabel: str, ylabel: str,
               size: tuple[int, int] = (560, 440)):
    """A PIL line chart of ``{name: [(x, y), ...]}`` with axes, ticks, grid and a legend below (ASCII text only:
    PIL's built-in font has no Greek letters)."""
    from PIL import Image, ImageDraw

    w, h = size
    curves = {k: [(x, y) for x, y in v if math.isfinite(x) and math.isfinite(y)] for k, v in curves.items()}
    curves = {k: v for k, v in curves.items() if v}
    legend_h = 16 * max(1, len(curves)) + 10
    left, right, top, bottom = 60, 16, 28, 40 + legend_h
    image = Image.new("RGB", (w, h + legend_h), "white")
    draw = ImageDraw.Draw(image)
    draw.text((left, 6), title, fill="black")
    x0, y0, x1, y1 = left, top, w - right, h + legend_h - bottom  # plot area
    draw.rectangle([x0, y0, x1, y1], outline="black")
    if not curves:
        draw.text((x0 + 20, (y0 + y1) // 2), "no data: its tables did not run, or nothing could be measured",
                  fill="black")
        return image
    xs = [x for v in curves.values() for x, _ in v]
    ys = [y for v in curves.values() for _, y in v]
    xt, yt = _ticks(min(xs + [0.0]), max(xs + [0.0])), _ticks(min(ys), max(ys))
    xlo, xhi, ylo, yhi = xt[0], xt[-1], yt[0], yt[-1]
    if yhi == ylo:
        yhi = ylo + 1.0

    def px(x: float, y: float) -> tuple[float, float]:
        return (x0 + (x - xlo) / (xhi - xlo or 1.0) * (x1 - x0), y1 - (y - ylo) / (yhi - ylo) * (y1 - y0))

    for x in xt:
        u, _ = px(x, ylo)
        draw.line([u, y0, u, y1], fill=(225, 225, 225))
        draw.text((u - 10, y1 + 4), f"{x:g}", fill="black")
    for y in yt:
        _, v = px(xlo, y)
        draw.line([x0, v, x1, v], fill=(225, 225, 225))
        draw.text((4, v - 6), f"{y:.3g}", fill="black")
    draw.rectangle([x0, y0, x1, y1], outline="black")
    draw.text(((x0 + x1) // 2 - 60, y1 + 18), xlabel, fill="black")
    draw.text((x0 + 4, y0 + 4), ylabel, fill="black")
    for i, (name, points) in enumerate(curves.items()):
        colour = _COLOURS[i % len(_COLOURS)]
        coords = [px(x, y) for x, y in sorted(points)]
        if len(coords) > 1:
            draw.line(coords, fill=colour, width=2)
        for u, v in coords:
            draw.ellipse([u - 3, v - 3, u + 3, v + 3], fill=colour)
        ly = y1 + 38 + 16 * i
        draw.line([x0, ly + 6, x0 + 20, ly + 6], fill=colour, width=2)
        draw.text((x0 + 26, ly), name.replace("Δ", "d"), fill="black")
    return image


def error_vs_angle_png(curves: dict[str, dict[str, list[tuple[float, float]]]], input_view: int | None = None) -> bytes:
    """Side-by-side panels (one per key of ``curves``: landmark error, PSNR) against the true yaw change."""
    from PIL import Image

    xlabel = f"true yaw change from view {input_view} (deg)" if input_view else "true yaw change (deg)"
    panels = [_line_plot(series, name + " vs rotation angle", xlabel, name) for name, series in curves.items()]
    if not panels:
        panels = [_line_plot({}, "error vs rotation angle", xlabel, "")]
    width = sum(p.width for p in panels)
    canvas = Image.new("RGB", (width, max(p.height for p in panels)), "white")
    x = 0
    for p in panels:
        canvas.paste(p, (x, 0))
        x += p.width
    return _png(canvas)


# ------------------------------------------------------------------------------------------------ writing

def check_out_folder(out: str | os.PathLike) -> Path:
    """UserError when ``out`` is a file (a report is a folder)."""
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise UserError(f"--out {out} is a file; give a folder for the report (it will hold report.md, "
                        "table<k>.csv, report.json and the figures)")
    return out


def write_report(result, out: str | os.PathLike) -> list[Path]:
    """Write every report file of ``result`` into ``out`` (created if needed); returns the paths written.
    table<k>.csv files of tables that did not run this time are removed (they would be stale)."""
    from deblur_rotate.files import atomic_write_bytes, atomic_write_json

    out = check_out_folder(out)
    out.mkdir(parents=True, exist_ok=True)
    written = []
    ran = {t.number for t in result.tables}
    for t in result.tables:
        path = out / f"{t.key}.csv"
        atomic_write_bytes(path, table_csv(t).encode())
        written.append(path)
    for k in range(1, 6):
        if k not in ran:
            (out / f"table{k}.csv").unlink(missing_ok=True)
    files = {"figure5.png": figure5_png(result.figure_samples),
             "error_vs_angle.png": error_vs_angle_png(result.angle_curves, result.settings.get("input_view")),
             "report.md": report_markdown(result).encode()}
    for name, data in files.items():
        atomic_write_bytes(out / name, data)
        written.append(out / name)
    atomic_write_json(out / "report.json", report_json(result))
    written.append(out / "report.json")
    return written

