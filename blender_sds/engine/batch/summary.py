"""What a batch leaves beside its job folders: summary.json (per job: status, time, message, files)
and contact_sheet.png (every preview in a grid, labelled with its prompt and seed).

summary.json is the batch's contract with the add-on's importer (docs/SCALING.md): `version`,
`jobs` (each `index`, `folder`, `prompt`, `seed`, `status` complete | failed | skipped, `seconds`,
`message`, `files`), `complete` and `failed`; keys may be added, none renamed. `complete`
counts every job whose folder holds a finished result now, made by this run or skipped
because an earlier one made it, so `complete + failed` is the number of jobs.

The summary is written as the batch goes (`finished` false, only the jobs that have ended, at
most every SAVE_EVERY seconds), so a batch that is still running, or was killed, can be
imported for what it has; the last write (`finished` true) lists every job and the sheet.
"""
from __future__ import annotations

import io
import math
import time
from pathlib import Path

from ...results import BATCH_SUMMARY, PREVIEW_FILE, PREVIEW_SIZES, finished_files
from .files import write_atomic, write_json

SUMMARY_FILE = BATCH_SUMMARY
CONTACT_SHEET = "contact_sheet.png"
SUMMARY_VERSION = 1
CELL = (2 * PREVIEW_SIZES[0], PREVIEW_SIZES[0])  # the smallest preview: the least a cell is
LABEL_HEIGHT = 32  # two lines of 12 px text under each preview
GAP = 4
SAVE_EVERY = 5.0  # seconds between the summaries written while the batch runs
MAX_SHEET_PIXELS = 40_000_000  # past this the previews are scaled down (a 10,000-job sheet stays openable)


def job_entry(item, out_dir: Path, status: str, *, seconds: float = 0.0, message: str = "", **extra) -> dict:
    """One job's record in summary.json; `item` is a plan.Planned."""
    return {"index": item.index, "folder": item.folder, "line": item.line, "prompt": item.job["prompt"],
            "seed": item.job["seed"], "status": status, "seconds": round(float(seconds), 3), "message": message,
            "files": finished_files(Path(out_dir) / item.folder), **extra}


def build(entries: list[dict], **extra) -> dict:
    jobs = sorted(entries, key=lambda e: e["index"])
    failed = sum(e["status"] == "failed" for e in jobs)
    skipped = sum(e["status"] == "skipped" for e in jobs)
    return {"version": SUMMARY_VERSION, "jobs": jobs, "complete": len(jobs) - failed, "failed": failed,
            "skipped": skipped, **extra}


def write_summary(out_dir: Path, summary: dict) -> Path:
    path = Path(out_dir) / SUMMARY_FILE
    write_json(path, summary)
    return path


class Ledger:
    """The entries of the jobs that have ended, and summary.json written from them as they come."""

    def __init__(self, out_dir: Path, **extra):
        self.out_dir = Path(out_dir)
        self.extra = extra  # manifest, ran, cluster ...: keys of the summary besides the jobs
        self.entries: dict[int, dict] = {}
        self.started = time.monotonic()
        self.saved = 0.0

    def add(self, entry: dict) -> None:
        self.entries[entry["index"]] = entry
        if time.monotonic() - self.saved >= SAVE_EVERY:
            self.save()

    def save(self, final: bool = False) -> tuple[dict, Path]:
        """Write summary.json (with the contact sheet when `final`) and return it and its path."""
        entries = list(self.entries.values())
        summary = build(entries, finished=final, seconds=round(time.monotonic() - self.started, 3), **self.extra)
        if final:
            summary["contact_sheet"] = contact_sheet(self.out_dir, entries)
        self.saved = time.monotonic()
        return summary, write_summary(self.out_dir, summary)


def _labels(entry: dict, font, width: int) -> list[str]:
    first = f"{entry['index']:03d} {entry['prompt']}"
    while first and font.getlength(first) > width:
        first = first[:-2] + "…"
    second = f"seed {entry['seed']}" + ("  FAILED" if entry["status"] == "failed" else "")
    return [first, second]


def contact_sheet(out_dir: Path, entries: list[dict]) -> dict:
    """Write contact_sheet.png: one cell a job (its preview, or a blank for a job without one) with
    its index, prompt and seed under it. Returns the layout (cell boxes and labels) for summary.json."""
    from PIL import Image, ImageDraw, ImageFont

    out_dir = Path(out_dir)
    jobs = sorted(entries, key=lambda e: e["index"])
    previews = {}
    for entry in jobs:
        path = out_dir / entry["folder"] / PREVIEW_FILE
        if entry["status"] != "failed" and path.is_file():
            with Image.open(path) as image:
                previews[entry["index"]] = image.convert("RGB")
    width, height = max([CELL] + [p.size for p in previews.values()], key=lambda s: s[0] * s[1])
    n = max(len(jobs), 1)
    scale = min(1.0, math.sqrt(MAX_SHEET_PIXELS / (n * (width + GAP) * (height + LABEL_HEIGHT + GAP))))
    width, height = max(int(width * scale), 16), max(int(height * scale), 8)
    columns = max(1, min(n, math.ceil(math.sqrt(n * (height + LABEL_HEIGHT) / width))))
    rows = math.ceil(n / columns)
    sheet = Image.new("RGB", (GAP + columns * (width + GAP), GAP + rows * (height + LABEL_HEIGHT + GAP)), "white")
    draw = ImageDraw.Draw(sheet)
    font = ImageFont.load_default(size=12)
    cells = []
    for k, entry in enumerate(jobs):
        x = GAP + (k % columns) * (width + GAP)
        y = GAP + (k // columns) * (height + LABEL_HEIGHT + GAP)
        preview = previews.get(entry["index"])
        if preview is not None:
            if preview.size != (width, height):
                preview = preview.resize((width, height), Image.Resampling.LANCZOS)
            sheet.paste(preview, (x, y))
        else:
            draw.rectangle([x, y, x + width - 1, y + height - 1], fill=(225, 225, 225))
        labels = _labels(entry, font, width)
        for line, text in enumerate(labels):
            fill = (190, 0, 0) if line == 1 and entry["status"] == "failed" else (0, 0, 0)
            draw.text((x + 2, y + height + 2 + 15 * line), text, fill=fill, font=font)
        cells.append({"index": entry["index"], "box": [x, y, width, height], "preview": preview is not None,
                      "label": labels})
    buffer = io.BytesIO()
    sheet.save(buffer, format="PNG")
    write_atomic(out_dir / CONTACT_SHEET, buffer.getvalue())
    return {"file": CONTACT_SHEET, "columns": columns, "cell": [width, height], "label_height": LABEL_HEIGHT,
            "cells": cells}
