"""Contact sheets: one row per input, one column per image set (input | base | LoRA ...).

Two formats, both written next to the images they show:

* HTML (``write_html``): links the image files by relative path, so it stays
  small and shows every row at full resolution; open it in a browser.
* PNG (``write_png``): one self-contained picture, every cell scaled to the same
  height, a header with the column titles and the file name on the left.
  Capped at ``max_rows`` rows so that a 1,000-image folder does not make a
  gigapixel PNG (the HTML has them all).
"""
from __future__ import annotations

import html
import os
from pathlib import Path
from typing import Sequence

from common.images import ImageLoadError, load_image, to_pil

Row = tuple[str, Sequence[Path | None]]  # (row label, one path per column; None = missing)


def write_html(path: str | Path, columns: Sequence[str], rows: Sequence[Row],
               title: str = "Contact sheet", notes: Sequence[str] = ()) -> Path:
    """Write an HTML table of images; paths are made relative to the HTML file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    base = path.parent.resolve()

    def cell(p: Path | None) -> str:
        if p is None:
            return "<td class=missing>missing</td>"
        rel = os.path.relpath(Path(p).resolve(), base).replace(os.sep, "/")
        src = html.escape(rel, quote=True)
        return f'<td><a href="{src}"><img src="{src}" loading="lazy"></a></td>'

    out = [
        "<!doctype html><meta charset=utf-8>",
        f"<title>{html.escape(title)}</title>",
        "<style>body{font-family:sans-serif;margin:1em}table{border-collapse:collapse}"
        "td,th{border:1px solid #ccc;padding:4px;vertical-align:top;text-align:center}"
        "img{max-height:320px;max-width:420px}td.name{text-align:left;font-family:monospace}"
        ".missing{color:#b00}</style>",
        f"<h1>{html.escape(title)}</h1>",
    ]
    out += [f"<p>{html.escape(n)}</p>" for n in notes]
    out.append("<table><tr><th>name</th>" + "".join(f"<th>{html.escape(c)}</th>" for c in columns)
               + "</tr>")
    for label, paths in rows:
        out.append(f"<tr><td class=name>{html.escape(label)}</td>" + "".join(cell(p) for p in paths)
                   + "</tr>")
    out.append("</table>")
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    tmp.write_text("\n".join(out) + "\n", encoding="utf-8")
    os.replace(tmp, path)
    return path


def write_png(path: str | Path, columns: Sequence[str], rows: Sequence[Row],
              cell_height: int = 256, max_rows: int = 64, label_width: int = 160) -> Path:
    """Write one PNG grid: a header row of column titles, then one row per input.

    Every image is scaled (aspect kept) to ``cell_height`` px high; a column is
    as wide as its widest cell. Unreadable or missing images become grey cells.
    """
    from PIL import Image, ImageDraw


    if cell_height < 16:
        raise ValueError(f"cell_height must be >= 16, got {cell_height}")
    rows = list(rows)[:max_rows]
    thumbs: list[list[Image.Image | None]] = []
    for _, paths in rows:
        line = []
        for p in paths:
            try:
                img = to_pil(load_image(p, min_size=1)) if p is not None else None
            except (ImageLoadError, FileNotFoundError):
                img = None
            if img is not None:
                w = max(1, round(img.width * cell_height / img.height))
                img = img.resize((w, cell_height), Image.BICUBIC)
            line.append(img)
        thumbs.append(line)
    ncol = len(columns)
    widths = [max([cell_height] + [t[c].width for t in thumbs if t[c] is not None]) for c in range(ncol)]
    header, pad = 24, 4
    W = label_width + sum(widths) + pad * (ncol + 1)
    H = header + len(rows) * (cell_height + pad) + pad
    sheet = Image.new("RGB", (W, H), (255, 255, 255))
    draw = ImageDraw.Draw(sheet)
    x = label_width + pad
    for c, title in enumerate(columns):
        draw.text((x + 2, 6), title, fill=(0, 0, 0))
        x += widths[c] + pad
    for r, ((label, _), line) in enumerate(zip(rows, thumbs)):
        y = header + r * (cell_height + pad)
        draw.text((4, y + cell_height // 2 - 6), label[:24], fill=(0, 0, 0))
        x = label_width + pad
        for c, img in enumerate(line):
            if img is None:
                draw.rectangle([x, y, x + widths[c] - 1, y + cell_height - 1], fill=(200, 200, 200))
                draw.text((x + 4, y + 4), "missing", fill=(160, 0, 0))
            else:
                sheet.paste(img, (x, y))
            x += widths[c] + pad
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    sheet.save(tmp, format="PNG")
    os.replace(tmp, path)
    return path
