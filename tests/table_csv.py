"""Parse the experiments' CSV tables back into numbers: the tests check that each CSV a command writes
holds what its markdown table and JSON say (rald_fast/experiments/*)."""

from __future__ import annotations

import csv
import io


def read_ablation_csv(text: str) -> dict[str, list[float]]:
    """variant -> fine accuracies over seeds, parsed back from `ablation_csv`."""
    out: dict[str, list[float]] = {}
    for row in csv.DictReader(io.StringIO(text)):
        out.setdefault(row["variant"], []).append(float(row["accuracy"]))
    return out


def read_table1_csv(text: str) -> dict[str, dict[tuple[str, str], float]]:
    """model -> {(level, label): accuracy}, parsed back from `reports.table1_csv`."""
    rows = list(csv.reader(io.StringIO(text)))
    models = rows[0][2:]
    return {name: {(r[0], r[1]): float(r[2 + i]) for r in rows[1:]} for i, name in enumerate(models)}


def read_modes_csv(text: str) -> dict[tuple[str, int], float]:
    """(mode, batch size) -> accuracy, parsed back from `modes_csv`."""
    return {(r["itrr_mode"], int(r["batch_size"])): float(r["accuracy"])
            for r in csv.DictReader(io.StringIO(text))}


def read_fps_csv(text: str) -> dict[tuple[str, int], float]:
    """(model, image size) -> images/s, parsed back from `fps_csv`."""
    return {(r["model"], int(r["image_size"])): float(r["images_per_s"])
            for r in csv.DictReader(io.StringIO(text))}


def read_sweep_csv(text: str, key: str) -> dict[tuple[str, float], list[float]]:
    """(variant, swept value) -> accuracies over seeds, parsed back from `sweep_csv`."""
    out: dict[tuple[str, float], list[float]] = {}
    for row in csv.DictReader(io.StringIO(text)):
        out.setdefault((row["variant"], float(row[key])), []).append(float(row["accuracy"]))
    return out
