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
        if "backend" in e:
            ips[e["backend"], e["model"], e["batch"]] = e["images_per_s"]
    size = next(b["extra_info"]["image_size"] for b in data["benchmarks"] if "image_size" in b["extra_info"])
    batches = sorted({k[2] for k in ips})
    lines = [f"Input {size}x{size}, {data['machine_info'].get('cpu', {}).get('brand_raw', 'CPU')}; "
             f"median images/s.", "",
             "| backend | batch | ResNet18 | RALD | RALD / ResNet18 |", "|---|---:|---:|---:|---:|"]
    for backend in dict.fromkeys(k[0] for k in ips):
        for n in batches:
            r, a = ips.get((backend, "rald", n)), ips.get((backend, "resnet18", n))
            if r and a:
                lines.append(f"| {backend} | {n} | {a:.1f} | {r:.1f} | {r / a:.3f} |")
    return "\n".join(lines)


if __name__ == "__main__":
    print(table(sys.argv[1]))
