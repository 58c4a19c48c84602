"""Markdown table of a bench_deploy.py run: images/s per backend and batch, and RALD / ResNet18.

    python bench/deploy_table.py bench/results/<run>.json
"""

from __future__ import annotations

import json
import sys


def table(path: str) -> str:
    data = json.load(open(path, encoding="utf-8"))
    ips = {}
    for b in data["benchmarks"]:
        e = b["extra_info"]
        if "ratio" in e:  # interleaved rounds: both models timed in alternation
            ips[e["backend"], "resnet18", e["batch"]] = e["resnet18_images_per_s"]
            ips[e["backend"], "rald", e["batch"]] = e["rald_images_per_s"]
            ips[e["backend"], "ratio", e["batch"]] = e["ratio"]
        elif "backend" in e:
            ips[e["backend"], e["model"], e["batch"]] = e["images_per_s"]
    size = next(b["extra_info"]["image_size"] for b in data["benchmarks"] if "image_size" in b["extra_info"])
    batches = sorted({k[2] for k in ips})
    lines = [f"Input {size}x{size}, {data['machine_info'].get('cpu', {}).get('brand_raw', 'CPU')}; "
             f"median images/s.", "",
             "| backend | batch | ResNet18 | RALD | RALD / ResNet18 |", "|---|---:|---:|---:|---:|"]
    # interleaved rows give the median of per-round ratios; the others the ratio of medians
    for backend in dict.fromkeys(k[0] for k in ips):
        for n in batches:
            r, a = ips.get((backend, "rald", n)), ips.get((backend, "resnet18", n))
            if r and a:
                ratio = ips.get((backend, "ratio", n), r / a)
                lines.append(f"| {backend} | {n} | {a:.1f} | {r:.1f} | {ratio:.3f} |")
    return "\n".join(lines)


if __name__ == "__main__":
    print(table(sys.argv[1]))
