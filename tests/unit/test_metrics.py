"""The metrics follow Prometheus conventions and are all in docs/metrics.md; failure reasons map to bounded
classes; multiprocess mode is set up whatever was imported first (core/metrics.py)."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

from prometheus_client.metrics import MetricWrapperBase
from prometheus_client.metrics_core import Metric

from core import metrics
from core.metrics import ActiveJobs, DatabaseCollector, StoredBundles, failure_class
from worker.imaging import OUT_OF_MEMORY
from worker.render import DISCARDED

ROOT = Path(__file__).resolve().parents[2]
LABELS = {"service", "method", "type", "code", "kind", "outcome", "stage", "reason", "result", "state", "role"}


def every_metric() -> list[Metric]:
    """Every family the endpoint can show, each with a sample (a labelled metric shows none until used)."""
    for made in vars(metrics.get()).values():
        if isinstance(made, MetricWrapperBase) and made._labelnames:
            made.labels(*["sample"] * len(made._labelnames))
    db = DatabaseCollector()
    db.jobs = [ActiveJobs("create_derivatives", "queued", 2, 1.5)]
    db.bundles = [StoredBundles("pdf", 1, 1000)]
    return [*metrics.REGISTRY.collect(), *db.collect()]


def test_names_units_and_labels_follow_the_conventions() -> None:
    found = every_metric()
    assert len(found) >= 25
    for metric in found:
        name = metric.name
        assert name.startswith("derivatives_") and name == name.lower(), name
        if metric.type == "counter":
            assert {s.name for s in metric.samples} >= {f"{name}_total"}, name
        else:
            assert not name.endswith("_total"), name
        if metric.type == "histogram":
            assert name.endswith("_seconds"), f"{name}: a histogram here is a duration, in seconds"
        for unit in ("seconds", "bytes"):
            if unit in name:
                assert name.endswith(f"_{unit}"), f"{name}: the unit goes last"
        for word in ("milliseconds", "ms", "kb", "mb", "memory"):
            assert word not in name.split("_") or name.endswith("_bytes"), f"{name}: base units only"
        for sample in metric.samples:
            assert set(sample.labels) - {"le"} <= LABELS, (name, sample.labels)
            assert not any(label.endswith("id") for label in sample.labels), (name, sample.labels)


def test_every_metric_is_in_the_catalogue() -> None:
    catalogue = (ROOT / "docs" / "metrics.md").read_text()
    missing = [m.name for m in every_metric() if f"`{m.name}" not in catalogue]
    assert not missing, f"not in docs/metrics.md: {missing}"


def test_failure_reasons_map_to_bounded_classes() -> None:
    assert failure_class(OUT_OF_MEMORY) == "out_of_memory"
    assert failure_class("original is 60000x60000 = 3600000000 pixels, over the limit of 200000000") == "too_large"
    assert failure_class("original decodes to 1.46 GiB (...), over the limit of 1.00 GiB") == "too_large"
    assert failure_class("original is 300 px wide, not wider than max_width 640") == "too_narrow"
    assert failure_class("not a decodable image: VipsJpeg: premature end of JPEG file") == "undecodable"
    assert failure_class("PDF is password-protected") == "undecodable"
    assert failure_class("no definition of 'thumb_mini' applies to application/octet-stream") == "no_definition"
    assert failure_class("the original is missing from storage") == "original_missing"
    assert failure_class("the worker process died (out of memory or a decoder crash)") == "worker_crashed"
    assert failure_class(DISCARDED) == "original_replaced"
    assert failure_class("asset was deleted") == "asset_deleted"
    assert failure_class("could not make thumb_mini: VipsForeignSave: write failed") == "encode_failed"
    assert failure_class("internal error: KeyError: 'x'") == "internal"
    assert failure_class("anything else, with an id m-123 in it") == "other"


def run(script: str) -> str:
    done = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(script)], cwd=ROOT, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr
    return done.stdout


def test_processes_of_a_host_share_their_metrics_and_the_directory_goes_at_exit() -> None:
    """prometheus_client imported before the directory exists (the trap): the values are shared anyway; a live
    gauge goes with its process; the directory is the top process's, removed when it exits."""
    out = run(
        """
        import os, subprocess, sys
        import prometheus_client  # first: its value class is chosen now, without the directory
        from core import metrics
        from core.records import JobKind
        from prometheus_client import CollectorRegistry
        from prometheus_client.multiprocess import MultiProcessCollector

        path = metrics.prepare_multiprocess()
        assert metrics.prepare_multiprocess() == path  # once per process
        metrics.job_claimed(JobKind.CREATE_DERIVATIVES, 0.5)
        child = "from core import metrics; from core.records import JobKind; import sys; "
        child += "metrics.job_claimed(JobKind.CREATE_DERIVATIVES, None); metrics.get().rss.labels('pool').set(7); "
        child += "print(__import__('os').getpid())"
        pid = int(subprocess.run([sys.executable, "-c", child], capture_output=True, text=True, check=True).stdout)

        def scrape():
            registry = CollectorRegistry()
            MultiProcessCollector(registry, str(path))
            return {(s.name, tuple(sorted(s.labels.items()))): s.value for m in registry.collect() for s in m.samples}

        got = scrape()
        assert got[("derivatives_jobs_claimed_total", (("kind", "create_derivatives"),))] == 2, got
        assert got[("derivatives_process_resident_memory_bytes", (("pid", str(pid)), ("role", "pool")))] == 7, got
        metrics.sweep_dead_processes()  # the child is gone: its live gauge goes, its counts stay
        got = scrape()
        assert not [k for k in got if k[0] == "derivatives_process_resident_memory_bytes"], got
        assert got[("derivatives_jobs_claimed_total", (("kind", "create_derivatives"),))] == 2, got
        print(path)
        """
    )
    assert not Path(out.strip()).exists()


def test_prepare_after_a_metric_was_made_refuses() -> None:
    out = run(
        """
        from core import metrics
        metrics.get()
        try:
            metrics.prepare_multiprocess()
        except RuntimeError as exc:
            print("refused:", exc)
        """
    )
    assert out.startswith("refused:")
