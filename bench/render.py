"""Render benchmark results (bench/results/*.json) into the tables of docs/benchmarks.md.

    .venv/bin/python -m bench.render

Only the generated blocks change: each sits between `<!-- NAME:begin -->` and `<!-- NAME:end -->`
markers; the analysis around them is written by people. Benchmarks that still write their
section themselves (thumbnails, bundles, progress) are left as they are.
"""

from __future__ import annotations

import json
import re
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results"
DOCS = ROOT / "docs" / "benchmarks.md"

LABELS = {
    "check": "grpc.health.v1 Check (no database: the stack's ceiling)",
    "get_asset": "GetAsset (8 derivatives)",
    "hit_20": "FindOrCreateBundle, built 20-member PDF (cache hit)",
    "hit_1000": "FindOrCreateBundle, built 1,000-member PDF (cache hit)",
}


def table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


def hot_paths(data: dict[str, Any]) -> str:
    out = [
        f"Run {data['when']}: {data['clients']} concurrent clients (2 processes) for {data['seconds']:.0f} s per call, "
        f"{data['filler_assets']:,} filler assets and {5 * data['filler_assets']:,} derivatives loaded; "
        f"{data['machine']}. Targets: ≥ 0.50x Check's rate, p99 ≤ 2x Check's p99.",
    ]
    for storage, result in data["storage"].items():
        calls = result["calls"]
        check = calls["check"]
        rows = []
        for name, call in calls.items():
            rate = call["calls_per_second"] / check["calls_per_second"]
            p99 = call["p99_ms"] / check["p99_ms"]
            met = "—" if name == "check" else ("met" if rate >= 0.5 and p99 <= 2 else "**NOT MET**")
            rows.append(
                [
                    LABELS.get(name, name),
                    f"{call['calls_per_second']:,.0f}",
                    f"{call['p50_ms']:.1f}",
                    f"{call['p99_ms']:.1f}",
                    f"{rate:.2f}x",
                    f"{p99:.2f}x",
                    f"{call['server_cpu_us_per_call']:.0f} / {call['postgres_cpu_us_per_call']:.0f}"
                    f" / {call['clients_cpu_us_per_call']:.0f}",
                    met,
                ]
            )
        out += [
            "",
            f"**{storage} storage**",
            "",
            table(
                [
                    "call",
                    "calls/s",
                    "p50 ms",
                    "p99 ms",
                    "rate vs Check",
                    "p99 vs Check",
                    "CPU µs/call: server / Postgres / clients",
                    "target",
                ],
                rows,
            ),
        ]
        pools = result.get("pool_sizes", {})
        if pools:
            rows = [
                [
                    size,
                    *(
                        f"{pools[size][c]['calls_per_second'] / pools[size]['check']['calls_per_second']:.2f}x"
                        for c in ("get_asset", "hit_20")
                    ),
                ]
                for size in pools
            ]
            out += [
                "",
                table(
                    ["Postgres pool size (default 10: the table above)", "GetAsset vs Check", "hit_20 vs Check"], rows
                ),
            ]
        costs = result["costs"]
        out += [
            "",
            table(
                ["the stack's own cost, measured once", "µs"],
                [[name.removesuffix("_us").replace("_", " "), f"{value:.0f}"] for name, value in costs.items()],
            ),
        ]
    if "baseline" in data:
        base = data["baseline"]
        now = data["storage"]["file"]["calls"]
        rows = [
            [
                LABELS.get(name, name),
                f"{call['calls_per_second']:,.0f}",
                f"{now[name]['calls_per_second']:,.0f}",
                f"{call['calls_per_second'] / base['calls']['check']['calls_per_second']:.2f}x",
                f"{now[name]['calls_per_second'] / now['check']['calls_per_second']:.2f}x",
                f"{call['server_cpu_us_per_call']:.0f} -> {now[name]['server_cpu_us_per_call']:.0f}",
            ]
            for name, call in base["calls"].items()
        ]
        header = [
            "call (file storage)",
            f"calls/s at {base['revision']}",
            "calls/s now",
            "vs Check then",
            "vs Check now",
            "server CPU µs/call",
        ]
        out += [
            "",
            f"**Before and after** (the server of commit {base['revision']}, same run, same data)",
            "",
            table(header, rows),
        ]
    return "\n".join(out)


RENDERERS: dict[str, Callable[[dict[str, Any]], str]] = {"hot_paths": hot_paths}


def replace_block(text: str, name: str, block: str) -> str:
    pattern = re.compile(rf"(<!-- {name}:begin -->).*?(<!-- {name}:end -->)", re.DOTALL)
    if not pattern.search(text):
        raise SystemExit(f"{DOCS}: no <!-- {name}:begin --> ... <!-- {name}:end --> block")
    return pattern.sub(lambda m: f"{m.group(1)}\n{block}\n{m.group(2)}", text)


def main() -> int:
    text = DOCS.read_text()
    for name, render in RENDERERS.items():
        path = RESULTS / f"{name}.json"
        if path.exists():
            text = replace_block(text, name, render(json.loads(path.read_text())))
    DOCS.write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
