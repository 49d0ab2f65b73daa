"""bench/render.py: each renderer turns a tiny hand-made result into its tables; only the marked block changes."""

from __future__ import annotations

from typing import Any

import pytest

from bench import render

MACHINE = {"nproc": "2", "cpu": "test CPU", "kernel": "6.1", "python": "3.11.7"}


def run(**fields: Any) -> dict[str, Any]:
    head = {"when": "2026-01-01 00:00 UTC", "revision": "abc1234", "machine": MACHINE, "seconds": 60.0}
    return head | {"load_average": {"before": 0.5, "after": 1.5}} | fields


def thumbnails() -> dict[str, Any]:
    def contender(name: str, baseline: bool, best: float) -> dict[str, Any]:
        ms = {"JPEG": 100.0, "TIFF": 50.0} if baseline else {}
        rates = {"best_images_per_s": best, "median_images_per_s": best * 0.9, "median_ms_per_image": ms}
        return {"name": name, "label": f"{name} label", "baseline": baseline} | rates

    parameters = {"images": 4, "reps": 1, "default_images": 48, "default_reps": 5, "decode_reps": 1}
    parameters |= {"processes": 2, "thumb_width": 500, "original_width": 6000, "original_height": 4000}
    originals = {"JPEG": {"count": 2, "mean_bytes": 8e6, "chroma": "4:4:4"}, "TIFF": {"count": 2, "mean_bytes": 7.2e7}}
    decode = {"kind": "TIFF", "set": "default set", "keys": ["a", "b"], "alone": "b"}
    return run(
        parameters=parameters,
        targets={"service_vs_fastest_baseline_min": 0.9, "one_decode_max": 2.0},
        originals=originals,
        contenders=[contender("service", False, 8.0), contender("pyvips", True, 10.0)],
        service_peak_rss_bytes=300 * 2**20,
        one_decode=[decode | {"set_median_s": 0.5, "alone_median_s": 0.2}],
    )


def thumbnails_12mp() -> dict[str, Any]:
    """Issue 11's form: JPEGs only, no one-decode table, the target against the pyvips loop (not the fastest)."""
    data = thumbnails()
    data["parameters"] |= {"original_width": 4000, "original_height": 3000, "decode_reps": 0, "thumb_width": 525}
    data["originals"] = {"JPEG": {"count": 4, "mean_bytes": 4e6, "chroma": "4:4:4"}}
    data["targets"] = {"service_vs_pyvips_min": 0.95, "one_decode_max": 2.0}
    data["contenders"].append(data["contenders"][1] | {"name": "pillow", "best_images_per_s": 20.0})
    data["one_decode"] = []
    return data


def throughput() -> dict[str, Any]:
    def config(name: str, hosts: list[int], best: float, hosts_ms: float) -> dict[str, Any]:
        processes = sum(hosts)
        cpu = {"pool": 80.0, "hosts": hosts_ms, "server": 1.0, "postgres": 1.0}
        out = {"name": name, "label": f"{name} label", "hosts": hosts, "processes": processes}
        out |= {"cores_used": min(processes, 2), "oversubscribed": processes > 2, "seconds": [1.0]}
        out |= {"best_images_per_s": best, "median_images_per_s": best, "best_images_per_s_per_core": best / 2}
        out |= {"cpu_ms_per_image": cpu, "transactions_per_image": 0.5}
        return out | {"bookkeeping_share": (hosts_ms + 2.0) / 80.0}

    parameters: dict[str, Any] = {"images": 8, "reps": 1, "jobs": 40, "original_width": 4000, "original_height": 3000}
    parameters |= {"thumb_key": "thumb_large", "poll_ms": 50.0, "default_images": 48, "default_reps": 3}
    parameters |= {"default_jobs": 200}
    queue = {"count": 20, "mean_ms": 1.5, "median_ms": 1.4, "p99_ms": 3.0}
    return run(
        parameters=parameters,
        targets={"queue_overhead_ms_max": 2.0, "bookkeeping_share_max": 0.05},
        originals_mean_bytes=4e6,
        runs=[config("w1", [1], 12.0, 1.0), config("w2", [2], 22.0, 6.0), config("2hosts", [2, 2], 21.0, 2.0)],
        queue_direct={"claim_finish": queue, "claim_progress_finish": queue | {"mean_ms": 2.5}},
        queue_end_to_end={
            "jobs": 40,
            "seconds": 0.4,
            "ms_per_job": 10.0,
            "cpu_ms_per_job": {"hosts": 2.0, "server": 1.0, "postgres": 1.0},
        },
        load_average_scaling={"before": 0.5, "after": 1.5},
        load_average_queue={"before": 1.5, "after": 1.0},
    )


def bundles() -> dict[str, Any]:
    def row(kind: str, members: int, contender: str, best: float, rss: int) -> dict[str, Any]:
        out = {"kind": kind, "members": members, "contender": contender, "label": contender, "best_s": best}
        out |= {"median_s": best, "size_bytes": 10**6 * members, "peak_rss_bytes": rss * 2**20, "cpu_median_s": None}
        if contender == "service":
            out["each"] = [{"rss_before": 2**28, "peak_rss": rss * 2**20, "peak_rss_main": 2**27}]
            out["phases_median_s"] = {"to_running": 0.01, "members": 0.1, "finishing": 0.005}
        return out

    parameters = {"sizes": [10, 40], "reps": 1, "default_sizes": [100, 1000], "default_reps": 3}
    pages = {"distinct": 10, "width": 1200, "height": 1600, "quality": 88, "mean_bytes": 5e5}
    rows = [row("pdf", 10, "service", 0.1, 200), row("pdf", 10, "img2pdf", 0.2, 50)]
    rows += [row("pdf", 40, "service", 0.5, 300), row("pdf", 40, "img2pdf", 0.4, 60)]
    return run(
        parameters=parameters,
        targets={"time_vs_baseline_max": 1.2, "rss_largest_vs_smallest_max": 1.2},
        pages=pages,
        tools={"img2pdf": "img2pdf 0", "zip": "Zip 3.0"},
        rows=rows,
    )


def progress() -> dict[str, Any]:
    def case(label: str, watchers: int, live: int, p99: float | None) -> dict[str, Any]:
        latency = {"p50": None if p99 is None else p99 / 2, "p99": p99, "max": p99}
        out: dict[str, Any] = {"label": label, "watchers": watchers, "finals_ok": watchers, "live_events": live}
        out["messages"] = live + 10
        out |= {"latency_ms": latency, "final_after_completion_ms": {"first": 5.0, "last": 50.0}}
        out |= {"first_snapshot_s": 0.01, "all_subscribed_s": 0.5, "opened_s": 0.1, "completed_s": 2.0}
        out |= {"distinct_events": 3, "first_delivery_ms": {"p50": 1.0, "max": 2.0}}
        out |= {"fan_out_spread_ms": {"p50": 3.0, "max": 4.0}, "client_loop_lag_ms": {"p99": 1.0, "max": 2.0}}
        out |= {"wall_s": 2.0, "rss_before_bytes": {"tree": 2**28, "process": 2**27}}
        out |= {"rss_peak_bytes": {"tree": 2**28, "process": 2**27}, "new_connections": None}
        out |= {"cpu_s": {"server": 1.0, "pool": 2.0, "postgres": 0.1, "client": 0.2}}
        out["queued_to_running_ms"] = {"p50": 10.0, "p90": 20.0, "max": 30.0, "jobs": 5}
        out["timeline"] = [{"from_s": 0.0, "to_s": 1.0, "subscribed": watchers, "events": live, "p50": 1.0}]
        out["timeline"][0] |= {"p99": p99, "max": p99}
        out |= {"latency_after_subscribed_ms": latency, "coalesced_snapshots": 0}
        out["rss_serving_bytes"] = {"before": 2**27, "peak": 2**27 + 2**24}
        return out

    defaults = {"watchers": 1000, "channels": 10, "members": 160, "jobs": 200, "reps": 3}
    parameters = defaults | {"watchers": 100, "defaults": defaults, "heartbeat_s": 5.0}
    cases = {
        "control": case("(a0)", 1, 5, 10.0),
        "bundle1": case("(a)", 100, 500, 150.0),
        "finished": case("(a1)", 100, 0, None),
        "jobs": case("(b)", 20, 60, 20.0),
        "big": case("(c)", 1000, 5000, 300.0) | {"server_processes": 1, "client_processes": 4, "load_before": 1.5},
    }
    cases["big"] |= {"coalesced_snapshots": 1234, "rss_serving_per_1000_watchers_bytes": 2**24}
    parameters |= {"big_watchers": 1000, "big_channels": 20, "client_processes": 4, "server_processes": 1}
    scans = {"distinct": 20, "width": 2400, "height": 3200, "mean_bytes": 1.7e6}
    targets = {"p99_ms_max": 100.0, "all_final_s_max": 1.0, "big_p99_ms_max": 250.0}
    return run(
        parameters=parameters,
        targets=targets,
        scan_pages=scans,
        conversion_us=6.0,
        cached_message_us=0.5,
        cases=cases,
    )


def hot_paths() -> dict[str, Any]:
    call = {"calls_per_second": 1000.0, "p50_ms": 10.0, "p99_ms": 20.0, "server_cpu_us_per_call": 300.0}
    call |= {"postgres_cpu_us_per_call": 10.0, "clients_cpu_us_per_call": 200.0}
    calls = {"check": call, "get_asset": call | {"calls_per_second": 400.0}}
    serving = {"1": calls | {"hit_20": call}, "2": calls | {"hit_20": call}}
    storage = {"file": {"calls": calls, "costs": {"hot_query_us": 150.0}, "pool_sizes": {}}}
    storage["file"]["serving_processes"] = serving
    head = {"when": "2026-01-01 00:00 UTC", "machine": "2 cores", "clients": 64, "seconds": 10.0}
    return head | {"filler_assets": 100, "storage": storage}


def soak() -> dict[str, Any]:
    def sample(at: float, server_rss_mib: int) -> dict[str, Any]:
        processes = [{"pid": 1, "rss": server_rss_mib * 2**20, "open_files": 30}]
        processes.append({"pid": 2, "rss": 70 * 2**20, "open_files": 11})
        return {"at_seconds": at, "processes": processes}

    parameters = {"minutes": 1, "clients": 4, "writes_per_second": 2.0, "mix": {"GetAsset": 100}}
    rpcs = {"GetAsset": {"calls": 100, "p50_ms": 1.0, "p99_ms": 5.0, "codes": {"OK": 99, "INTERNAL": 1}}}
    return run(
        parameters=parameters,
        rpcs=rpcs,
        samples=[sample(0, 100), sample(60, 200)],  # the server grew past the bound
        bounds={"rss_growth_mib": 64, "open_files_growth": 10},
        unexpected_errors={"GetAsset INTERNAL": 1},
    )


RESULTS = {
    "thumbnails": thumbnails,
    "thumbnails_12mp": thumbnails_12mp,
    "bundles": bundles,
    "progress": progress,
    "hot_paths": hot_paths,
    "soak": soak,
    "throughput": throughput,
}


def test_every_renderer_has_a_hand_made_result() -> None:
    assert set(RESULTS) == set(render.RENDERERS)


@pytest.mark.parametrize("name", sorted(RESULTS))
def test_renderer_makes_tables_and_marks_missed_targets(name: str) -> None:
    text = render.RENDERERS[name](RESULTS[name]())
    tables = [line for line in text.splitlines() if line.startswith("|")]
    assert tables, text
    assert all(line.endswith("|") for line in tables)
    assert "**NOT MET**" in text  # each hand-made result misses one target
    assert "<!--" not in text


def test_thumbnails_of_issue_11_compare_with_the_pyvips_loop() -> None:
    text = render.thumbnails(thumbnails_12mp())
    assert "0.800x ≥ 0.95x pyvips" in text  # 8 img/s against pyvips' 10, though Pillow (20) is the fastest
    assert "TIFF" not in text.splitlines()[0] and "one render_all" not in text


def test_throughput_marks_oversubscription_and_each_target() -> None:
    text = render.throughput(throughput())
    assert "2hosts label — oversubscribed" in text and "w2 label —" not in text
    assert "10.0% **NOT MET**" in text and "3.8% met" in text  # bookkeeping share of w2 and w1
    assert "met (mean < 2 ms)" in text and "**NOT MET** (mean < 2 ms)" in text


def test_reduced_runs_say_so() -> None:
    assert "(default 48 x 5)" in render.thumbnails(thumbnails())
    assert "(default 48 x 3, 200 jobs)" in render.throughput(throughput())
    assert "(reduced)" in render.bundles(bundles())
    assert "(reduced)" in render.progress(progress())


def test_the_progress_fan_out_case_has_its_own_targets() -> None:
    text = render.progress(progress())
    big = next(line for line in text.splitlines() if line.startswith("| (c) |"))
    assert big.endswith("| **NOT MET** / met |")  # p99 300 ms against 250; the last final 50 ms after completion
    assert "| (c): coalesced snapshots sent (busy watchers) | 1,234 |" in text
    assert "| (c): serving processes' RSS, before → peak; per 1,000 watchers | 128 MiB → 144 MiB; 16.0 MiB |" in text
    # A result file from before (c) existed still renders.
    old = progress()
    del old["cases"]["big"], old["cached_message_us"]
    assert "(c)" not in render.progress(old)


def test_only_the_marked_block_changes() -> None:
    doc = "intro\n<!-- a:begin -->\nold a\n<!-- a:end -->\nanalysis\n<!-- b:begin -->\nold b\n<!-- b:end -->\n"
    new = render.replace_block(doc, "a", "| new |")
    assert new == doc.replace("old a", "| new |")
    assert render.replace_block(new, "a", "| new |") == new


def test_a_missing_block_is_an_error() -> None:
    with pytest.raises(SystemExit):
        render.replace_block("no markers here\n", "thumbnails", "| x |")


def test_the_docs_have_a_block_for_every_renderer() -> None:
    text = render.DOCS.read_text()
    for name in render.RENDERERS:
        assert f"<!-- {name}:begin -->" in text and f"<!-- {name}:end -->" in text
