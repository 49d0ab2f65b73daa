"""Render benchmark results (bench/results/*.json) into the tables of docs/benchmarks.md.

    .venv/bin/python -m bench.render

Only the generated blocks change: each sits between `<!-- NAME:begin -->` and `<!-- NAME:end -->`
markers; the analysis around them is written by people. One function per result file makes its
block: tables of the numbers, and a met / NOT MET cell where a row has a target. No prose.
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


def columns(text: str) -> list[str]:
    return text.split(" | ")


# Table headers (the columns that depend on the data are added where the tables are made).
THUMBNAILS = columns(
    "contender | img/s best | img/s median | ms/JPEG | ms/TIFF | core ms/image | peak RSS | vs fastest"
)
DECODE = columns("vs one size alone | set (s) | alone (s) | ratio")
BUNDLE_TIMES = columns(
    "bundle | members | contender | best (s) | median (s) | MB/s (best) | peak RSS | CPU user + sys (s) | vs baseline"
)
BUNDLE_MEMORY = columns(
    "bundle | members | server tree before | server tree peak | server process peak"
    " | until RUNNING seen (s) | members written (s) | FINISHING → final (s)"
)
PROGRESS_LATENCY = columns(
    "case | watchers | live events | p50 (ms) | p99 (ms) | max (ms) | final: first / last after completion (ms)"
    " | final SUCCEEDED"
)
PROGRESS_LOAD = columns(
    "case | wall (s) | build (s) | server RSS before → peak: process / tree | new conns"
    " | server CPU beyond (a0)'s, per message sent (µs)"
)
THROUGHPUT = columns(
    "worker processes | cores used | img/s best | img/s median | img/s per core (best) | vs 1 process"
    " | CPU ms/image: pool | worker hosts | gRPC server | Postgres | DB transactions/image"
)
QUEUE = columns("queue, per job | jobs | mean (ms) | median (ms) | p99 (ms)")
PROGRESS_TIMELINE = columns(
    "(a) rep. 1, written at (s after request) | watchers subscribed | events | p50 (ms) | p99 (ms) | max (ms)"
)


def met(ok: bool) -> str:
    return "met" if ok else "**NOT MET**"


def mib(n_bytes: float | None) -> str:
    return "—" if not n_bytes else f"{n_bytes / 2**20:.0f} MiB"


def run_line(data: dict[str, Any], what: str) -> str:
    """The first line of a block: when, which commit, what ran, on which machine, how loaded it was."""
    m, load = data["machine"], data["load_average"]
    return (
        f"Run {data['when']} at {data['revision']}, {data['seconds']:.0f} s: {what}; {m['nproc']} cores "
        f"({m['cpu']}), Linux {m['kernel']}, Python {m['python']}; 1-minute load average {load['before']:.2f} "
        f"before, {load['after']:.2f} after."
    )


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
        serving = result.get("serving_processes", {})
        if serving:
            one = serving.get("1", {}).get("get_asset", {}).get("calls_per_second")
            rows = [
                [
                    count,
                    *(
                        f"{serving[count][c]['calls_per_second']:,.0f} ({serving[count][c]['p99_ms']:.0f} ms)"
                        for c in ("check", "get_asset", "hit_20")
                    ),
                    f"{serving[count]['get_asset']['calls_per_second'] / one:.2f}x" if one else "—",
                ]
                for count in serving
            ]
            header = columns("serving processes | Check calls/s (p99) | GetAsset | hit_20 | GetAsset vs 1 process")
            out += ["", table(header, rows)]
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


def thumbnails(data: dict[str, Any]) -> str:
    p, t, o = data["parameters"], data["targets"], data["originals"]
    default = (p["default_images"], p["default_reps"])
    size = "" if (p["images"], p["reps"]) == default else " (default {} x {})".format(*default)
    kinds = [f"{o['JPEG']['count']} JPEG, {o['JPEG']['chroma']}, mean {o['JPEG']['mean_bytes'] / 1e6:.1f} MB"]
    kinds += [f"{o['TIFF']['count']} TIFF, mean {o['TIFF']['mean_bytes'] / 1e6:.1f} MB"] if "TIFF" in o else []
    what = (
        f"{p['images']} originals of {p['original_width']}x{p['original_height']} ({'; '.join(kinds)}) x "
        f"{p['reps']} repetitions{size}; {p['thumb_width']} px thumbnails"
    )
    contenders = data["contenders"]
    fastest = max((c for c in contenders if c["baseline"]), key=lambda c: c["best_images_per_s"])
    # Issue 11: against the bare pyvips loop; issue 3's runs: against the fastest baseline.
    target = t.get("service_vs_pyvips_min", t.get("service_vs_fastest_baseline_min"))
    against = next(c for c in contenders if c["name"] == "pyvips") if "service_vs_pyvips_min" in t else fastest
    rows = []
    for c in contenders:
        ratio = c["best_images_per_s"] / fastest["best_images_per_s"]
        versus = c["best_images_per_s"] / against["best_images_per_s"]
        ms = c["median_ms_per_image"]
        rows.append(
            [
                c["label"],
                f"{c['best_images_per_s']:.2f}",
                f"{c['median_images_per_s']:.2f}",
                *(f"{ms[k]:.0f}" if k in ms else "—" for k in ("JPEG", "TIFF")),
                f"{p['processes'] * 1000 / c['best_images_per_s']:.0f}",
                mib(data["service_peak_rss_bytes"]) if c["name"] == "service" else "—",
                f"{ratio:.2f}x",
                f"{met(versus >= target)} ({versus:.3f}x ≥ {target}x {against['name']})"
                if c["name"] == "service"
                else "—",
            ]
        )
    decode = [
        [
            f"{d['kind']}, {d['set']} ({len(d['keys'])} sizes)",
            d["alone"],
            f"{d['set_median_s']:.3f}",
            f"{d['alone_median_s']:.3f}",
            f"{d['set_median_s'] / d['alone_median_s']:.2f}x",
            met(d["set_median_s"] / d["alone_median_s"] <= t["one_decode_max"]),
        ]
        for d in data["one_decode"]
    ]
    decode_header = [f"one render_all of (median of {p['decode_reps']})", *DECODE, f"≤ {t['one_decode_max']:.0f}x"]
    out = [run_line(data, what), "", table([*THUMBNAILS, "target"], rows)]
    return "\n".join(out + (["", table(decode_header, decode)] if decode else []))


def bundles(data: dict[str, Any]) -> str:
    p, t, pages, tools = data["parameters"], data["targets"], data["pages"], data["tools"]
    size = "" if p["sizes"] == p["default_sizes"] and p["reps"] == p["default_reps"] else " (reduced)"
    what = (
        f"works of {' and '.join(f'{n:,}' for n in p['sizes'])} members x {p['reps']} repetitions{size}, "
        f"{pages['distinct']} distinct {pages['width']}x{pages['height']} JPEG pages (Q={pages['quality']}, mean "
        f"{pages['mean_bytes'] / 1e3:.0f} KB) in turn; {tools['img2pdf']}, {tools['zip']}"
    )
    rows = data["rows"]
    baseline = {(r["kind"], r["members"]): r for r in rows if r["contender"] in ("img2pdf", "zip")}
    timing = []
    for r in rows:
        ratio = r["best_s"] / baseline[r["kind"], r["members"]]["best_s"]
        cpu = r["cpu_median_s"]
        timing.append(
            [
                r["kind"].upper(),
                f"{r['members']:,}",
                r["label"],
                f"{r['best_s']:.3f}",
                f"{r['median_s']:.3f}",
                f"{r['size_bytes'] / 1e6 / r['best_s']:.0f}",
                mib(r["peak_rss_bytes"]),
                f"{cpu['user']:.2f} + {cpu['system']:.2f}" if cpu else "—",
                f"{ratio:.2f}x",
                f"{met(ratio <= t['time_vs_baseline_max'])} (≤ {t['time_vs_baseline_max']}x)"
                if r["contender"] == "service"
                else "—",
            ]
        )
    service = [r for r in rows if r["contender"] == "service"]
    memory = []
    for r in service:
        smallest = next(s for s in service if s["kind"] == r["kind"] and s["members"] == min(p["sizes"]))
        ratio = r["peak_rss_bytes"] / smallest["peak_rss_bytes"]
        memory.append(
            [
                r["kind"].upper(),
                f"{r['members']:,}",
                *(" / ".join(mib(e[k]) for e in r["each"]) for k in ("rss_before", "peak_rss", "peak_rss_main")),
                f"{ratio:.2f}x" + ("" if r is smallest else f" {met(ratio <= t['rss_largest_vs_smallest_max'])}"),
                *(f"{r['phases_median_s'][k]:.3f}" for k in ("to_running", "members", "finishing")),
            ]
        )
    memory_header = [*BUNDLE_MEMORY[:5], f"peak vs {min(p['sizes']):,} (≤ {t['rss_largest_vs_smallest_max']}x)"]
    memory_header += BUNDLE_MEMORY[5:]
    return "\n".join(
        [run_line(data, what), "", table([*BUNDLE_TIMES, "target"], timing), "", table(memory_header, memory)]
    )


def ms(value: float | None, digits: int = 1) -> str:
    return "—" if value is None else f"{value:.{digits}f}"


def progress(data: dict[str, Any]) -> str:
    p, t, scans, cases = data["parameters"], data["targets"], data["scan_pages"], data["cases"]
    size = "" if all(p[k] == v for k, v in p["defaults"].items()) else " (reduced)"
    what = (
        f"{p['watchers']:,} watchers over {p['channels']} channels on a {p['members']}-member PDF build of "
        f"{scans['distinct']} distinct {scans['width']}x{scans['height']} JPEG scans (mean "
        f"{scans['mean_bytes'] / 1e6:.1f} MB), {p['reps']} repetitions; {p['jobs']} one-asset jobs{size}; "
        f"heartbeat {p['heartbeat_s']:g} s"
    )
    if "big" in cases:
        big = cases["big"]
        what += (
            f"; (c) {big['watchers']:,} watchers over {p['big_channels']} channels from {big['client_processes']} "
            f"client processes, {big['server_processes']} serving process(es), a server of its own"
        )
    latency, load = [], []
    for name, c in cases.items():
        lat, final = c["latency_ms"], c.get("final_after_completion_ms")
        if final:
            finals = f"{ms(final['first'], 0)} / {ms(final['last'], 0)}"
        else:  # opened on a finished bundle: from opening the streams instead
            finals = f"{1000 * c['first_snapshot_s']:.0f} / {1000 * c['all_subscribed_s']:.0f} after opening"
        target = "—"
        if name.startswith("bundle") or name == "jobs":
            target = met(lat["p99"] is not None and lat["p99"] < t["p99_ms_max"])
        if name == "big":  # (c): its own p99 target
            target = met(lat["p99"] is not None and lat["p99"] < t["big_p99_ms_max"])
        if name.startswith("bundle") or name == "big":
            everyone = bool(final) and c["finals_ok"] == c["watchers"] and final["last"] < 1000 * t["all_final_s_max"]
            target += f" / {met(everyone)}"
        latency.append(
            [
                c["label"],
                f"{c['watchers']:,}",
                f"{c['live_events']:,}",
                *(ms(lat[k]) for k in ("p50", "p99", "max")),
                finals,
                f"{c['finals_ok']:,}/{c['watchers']:,}",
                target,
            ]
        )
        before, peak, wall = c["rss_before_bytes"], c["rss_peak_bytes"], c["wall_s"]
        load.append(
            [
                c["label"],
                f"{wall:.1f}",
                f"{c['completed_s']:.1f}" if "completed_s" in c else "—",
                f"{mib(before['process'])} → {mib(peak['process'])} / {mib(before['tree'])} → {mib(peak['tree'])}",
                "—" if c["new_connections"] is None else str(c["new_connections"]),
                " / ".join(f"{sec:.1f} ({sec / wall:.2f})" for sec in c["cpu_s"].values()),
                _marginal(c, cases["control"]) if name.startswith(("bundle", "niced", "split")) else "—",
            ]
        )
    first = cases["bundle1"]
    timeline = [
        [f"{s['from_s']:.1f}-{s['to_s']:.1f}", f"{s['subscribed']:,}", f"{s['events']:,}"]
        + [ms(s[k]) for k in ("p50", "p99", "max")]
        for s in first["timeline"]
    ]
    jobs = cases["jobs"]
    other = [
        ["(a) rep. 1: distinct events written", f"{first['distinct_events']}"],
        ["(a) rep. 1: first watcher's delivery after the write, p50 / max (ms)", _pair(first["first_delivery_ms"])],
        ["(a) rep. 1: last watcher's delivery after the first's, p50 / max (ms)", _pair(first["fan_out_spread_ms"])],
        [
            "(a) rep. 1: all streams had their snapshot, after FindOrCreateBundle (s)",
            f"{first['all_subscribed_s']:.2f}",
        ],
        ["(a) rep. 1: client event loop late, p99 / max (ms, 10 ms ticks)", _pair(first["client_loop_lag_ms"])],
        [
            "(a1): server CPU per stream opened (ms)",
            f"{1000 * cases['finished']['cpu_s']['server'] / p['watchers']:.2f}",
        ],
        ["(b): jobs created, one after another (s)", f"{jobs['opened_s']:.1f}"],
        ["(b): all jobs completed, after the first was created (s)", f"{jobs['completed_s']:.1f}"],
        [
            f"(b): QUEUED → RUNNING, p50 / p90 / max (ms; {jobs['queued_to_running_ms']['jobs']} jobs seen queued)",
            " / ".join(ms(jobs["queued_to_running_ms"][k], 0) for k in ("p50", "p90", "max")),
        ],
        ["convert.progress_event + serialization alone, per message (µs)", f"{data['conversion_us']:.1f}"],
    ]
    if "cached_message_us" in data:
        cached = f"{data['cached_message_us']:.2f}"
        other.append(["finding the bytes another watcher's message already made, per message (µs)", cached])
    if "latency_after_subscribed_ms" in first:
        steady = first["latency_after_subscribed_ms"]
        other.insert(1, ["(a) rep. 1: p50 / p99 / max once every stream had its snapshot (ms)", _pair(steady)])
    if "big" in cases:
        big = cases["big"]
        other += [
            ["(c): all streams had their snapshot, after FindOrCreateBundle (s)", f"{big['all_subscribed_s']:.2f}"],
            ["(c): p50 / p99 / max once every stream had its snapshot (ms)", _pair(big["latency_after_subscribed_ms"])],
            ["(c): coalesced snapshots sent (busy watchers)", f"{big['coalesced_snapshots']:,}"],
            [
                "(c): serving processes' RSS, before → peak; per 1,000 watchers",
                f"{mib(big['rss_serving_bytes']['before'])} → {mib(big['rss_serving_bytes']['peak'])}; "
                f"{big['rss_serving_per_1000_watchers_bytes'] / 2**20:.1f} MiB",
            ],
            ["(c): client event loops late, p99 / max (ms, 10 ms ticks)", _pair(big["client_loop_lag_ms"])],
            ["(c): 1-minute load average before", f"{big['load_before']:.2f}"],
        ]
    final = f"p99 < {t['p99_ms_max']:.0f} ms / all finals < {t['all_final_s_max']:.0f} s"
    cpu = f"CPU s (share of a core): {' / '.join(first['cpu_s'])}"
    return "\n".join(
        [
            run_line(data, what),
            "",
            table([*PROGRESS_LATENCY, final], latency),
            "",
            table([*PROGRESS_LOAD[:5], cpu, *PROGRESS_LOAD[5:]], load),
            "",
            table(PROGRESS_TIMELINE, timeline),
            "",
            table(["measured once", "value"], other),
        ]
    )


def _marginal(case: dict[str, Any], control: dict[str, Any]) -> str:
    cpu = case["cpu_s"]["server"] - control["cpu_s"]["server"]
    return f"{1e6 * cpu / (case['messages'] - control['messages']):.0f}"


def _pair(values: dict[str, float | None]) -> str:
    return " / ".join(ms(v) for v in values.values())


def soak(data: dict[str, Any]) -> str:
    p, bounds = data["parameters"], data["bounds"]
    what = f"{p['clients']} clients for {p['minutes']:g} minutes, writes held to {p['writes_per_second']:g}/s"
    rows = [
        [
            op,
            f"{row['calls']:,}",
            ms(row["p50_ms"]),
            ms(row["p99_ms"]),
            ", ".join(f"{code} {n:,}" for code, n in sorted(row["codes"].items())),
        ]
        for op, row in data["rpcs"].items()
    ]
    out = [run_line(data, what), "", table(["RPC", "calls", "p50 (ms)", "p99 (ms)", "answers"], rows)]
    unexpected = data["unexpected_errors"]
    out += [
        "",
        f"Unexpected errors: {', '.join(f'{k} {v}' for k, v in unexpected.items()) or 'none'} ({met(not unexpected)}).",
    ]
    first = {proc["pid"]: proc for proc in data["samples"][0]["processes"]}
    last = {proc["pid"]: proc for proc in data["samples"][-1]["processes"]}
    rows = []
    for i, (pid, start) in enumerate(first.items()):
        end = last.get(pid)
        if end is None:
            rows.append([str(pid), mib(start["rss"]), "gone", str(start["open_files"]), "gone", "—"])
            continue
        grew = (end["rss"] - start["rss"]) / 2**20
        files = end["open_files"] - start["open_files"]
        ok = grew <= bounds["rss_growth_mib"] and files <= bounds["open_files_growth"]
        role = "server" if i == 0 else "child"
        rows.append(
            [
                f"{role} {pid}",
                mib(start["rss"]),
                mib(end["rss"]),
                str(start["open_files"]),
                str(end["open_files"]),
                met(ok),
            ]
        )
    header = ["process", "RSS after warm-up", "RSS at the end", "open files after warm-up", "at the end"]
    bound = f"growth ≤ {bounds['rss_growth_mib']} MiB and ≤ {bounds['open_files_growth']} files"
    out += ["", table([*header, bound], rows)]
    return "\n".join(out)


def throughput(data: dict[str, Any]) -> str:
    p, t = data["parameters"], data["targets"]
    default = (p["default_images"], p["default_reps"], p["default_jobs"])
    size = "" if (p["images"], p["reps"], p["jobs"]) == default else " (default {} x {}, {} jobs)".format(*default)
    what = (
        f"{p['images']} JPEGs of {p['original_width']}x{p['original_height']} (mean "
        f"{data['originals_mean_bytes'] / 1e6:.1f} MB) x {p['reps']} repetitions, {p['thumb_key']}; "
        f"{p['jobs']} jobs for the queue{size}"
    )
    runs = data["runs"]
    one = next((r for r in runs if r["processes"] == 1), runs[0])
    share_max = t["bookkeeping_share_max"]
    rows = []
    for r in runs:
        cpu = r["cpu_ms_per_image"]
        share = r["bookkeeping_share"]
        rows.append(
            [
                r["label"] + (" — oversubscribed" if r["oversubscribed"] else ""),
                f"{r['cores_used']}",
                f"{r['best_images_per_s']:.2f}",
                f"{r['median_images_per_s']:.2f}",
                f"{r['best_images_per_s_per_core']:.2f}",
                f"{r['best_images_per_s'] / one['best_images_per_s']:.2f}x",
                *(f"{cpu[k]:.1f}" for k in ("pool", "hosts", "server", "postgres")),
                f"{r['transactions_per_image']:.2f}" if "transactions_per_image" in r else "—",
                "—" if share is None else f"{100 * share:.1f}% {met(share <= share_max)}",
            ]
        )
    limit = t["queue_overhead_ms_max"]
    queue = []
    for name, label in (("claim_finish", "claim + finish"), ("claim_progress_finish", "claim + progress + finish")):
        q = data["queue_direct"][name]
        queue.append(
            [
                f"direct, {label}",
                str(q["count"]),
                f"{q['mean_ms']:.2f}",
                f"{q['median_ms']:.2f}",
                f"{q['p99_ms']:.2f}",
                f"{met(q['mean_ms'] < limit)} (mean < {limit:g} ms)",
            ]
        )
    e2e = data["queue_end_to_end"]
    cpu = e2e["cpu_ms_per_job"]
    queue.append(
        [
            "end to end, no-op job (request → SUCCEEDED, back to back; 1 host of 2)",
            str(e2e["jobs"]),
            f"{e2e['ms_per_job']:.2f}",
            "—",
            "—",
            f"CPU ms/job: host {cpu['hosts']:.2f}, server {cpu['server']:.2f}, Postgres {cpu['postgres']:.2f}",
        ]
    )
    loads = data["load_average_scaling"], data["load_average_queue"]
    load_line = (
        "Load average (1 min) around the scaling runs {:.2f} → {:.2f}, around the queue runs {:.2f} → {:.2f}.".format(
            loads[0]["before"], loads[0]["after"], loads[1]["before"], loads[1]["after"]
        )
    )
    return "\n".join(
        [
            run_line(data, what),
            "",
            table([*THROUGHPUT, f"bookkeeping / pool CPU (≤ {100 * share_max:.0f}%)"], rows),
            "",
            table([*QUEUE, "target"], queue),
            "",
            load_line,
        ]
    )


RENDERERS: dict[str, Callable[[dict[str, Any]], str]] = {
    "hot_paths": hot_paths,
    "thumbnails": thumbnails,
    "thumbnails_12mp": thumbnails,  # bench/thumbnails.py --size 4000x3000 --formats jpeg
    "bundles": bundles,
    "progress": progress,
    "soak": soak,
    "throughput": throughput,
}


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
