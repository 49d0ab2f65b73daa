"""The metrics follow Prometheus conventions and are all in docs/metrics.md; each failure gets its bounded class
where it is made, and the metric counts that class; multiprocess mode is set up whatever was imported first
(core/metrics.py)."""

from __future__ import annotations

import asyncio
import dataclasses
import datetime as dt
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import pyvips
from prometheus_client.metrics import MetricWrapperBase
from prometheus_client.metrics_core import Metric

from core import metrics, pids
from core.config import load_settings
from core.definitions import Definition, load_registry
from core.derivatives import Failed
from core.metrics import ActiveJobs, DatabaseCollector, StoredBundles
from core.plan import plan
from core.records import Asset, AssetFailure, FailureClass, Location
from tests import images
from worker import tasks
from worker.imaging import Limits, render_all
from worker.pool import WorkerPool

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


def failure_classes(results: list[object]) -> set[FailureClass]:
    failed = [r for r in results if isinstance(r, Failed)]
    assert failed and len(failed) == len(results), results
    return {f.failure_class for f in failed}


def test_imaging_and_the_plan_class_each_failure_where_they_make_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The real code paths of worker/imaging.py and core/plan.py, one per class they make."""
    out = tmp_path / "out"
    out.mkdir()
    limits = Limits(max_pixels=10**8, max_decoded_bytes=2**30, stream_above_bytes=2**28)
    jpeg, truncated = tmp_path / "o.jpg", tmp_path / "t.jpg"
    jpeg.write_bytes(images.jpeg(600, 400))
    truncated.write_bytes(images.jpeg(600, 400)[:5000])
    thumb = [Definition("thumb", max_width=100)]

    def made(
        original: Path, definitions: list[Definition], limits: Limits = limits, kind: str = "image/jpeg"
    ) -> set[FailureClass]:
        return failure_classes(list(render_all(original, kind, definitions, out, limits)))

    assert made(truncated, thumb) == {FailureClass.UNDECODABLE}
    assert made(tmp_path / "none.pdf", [Definition("p", "pdf_page_jpeg")], kind="application/pdf") == {
        FailureClass.UNDECODABLE
    }
    assert made(jpeg, thumb, dataclasses.replace(limits, max_pixels=1000)) == {FailureClass.TOO_LARGE}
    assert made(jpeg, thumb, dataclasses.replace(limits, max_decoded_bytes=1000)) == {FailureClass.TOO_LARGE}
    assert made(jpeg, [Definition("wide", max_width=1000)]) == {FailureClass.TOO_NARROW}
    assert made(jpeg, [Definition("none", transformer="none")]) == {FailureClass.NO_DEFINITION}
    # A bug (here: a limit of the wrong type) is caught, and classed as such.
    assert made(jpeg, thumb, dataclasses.replace(limits, max_pixels="many")) == {FailureClass.INTERNAL}  # type: ignore[arg-type]
    (out / "blocked.jpg").mkdir()  # the encoder cannot write its file
    assert made(jpeg, [Definition("blocked", max_width=100)]) == {FailureClass.ENCODE_FAILED}
    with monkeypatch.context() as patched:  # libvips refusing an allocation, as under the pool's ceiling
        refused = pyvips.Error("unable to call copy_memory", "vips_tracked: out of memory -- size == 1495MB\n")

        def copy_memory(image: pyvips.Image) -> pyvips.Image:
            raise refused

        patched.setattr(pyvips.Image, "copy_memory", copy_memory)
        assert made(jpeg, thumb) == {FailureClass.OUT_OF_MEMORY}

    asset = original_of("image/jpeg", Location("originals", "x/original"))
    asked = plan(load_registry(), asset, only=["no_such_key"])
    assert [(f.key, f.failure_class) for f in asked.failures] == [("no_such_key", FailureClass.NO_DEFINITION)]


def original_of(content_type: str, location: Location) -> Asset:
    now = dt.datetime.now(dt.UTC)
    return Asset("m-1", content_type, 1, "0" * 128, 1000, 800, "", location, (), now, now)


def test_a_pool_task_classes_a_missing_original(tmp_path: Path) -> None:
    """worker/tasks.py, in a real pool process: the original is gone from storage."""
    settings = load_settings({"DERIVATIVES_DATA_DIR": str(tmp_path / "data"), "DERIVATIVES_WORKERS": "1"})
    pool = WorkerPool(settings, 1)
    try:
        definition = load_registry().resolve("thumb_mini", "image/jpeg")
        assert definition is not None
        asset = original_of("image/jpeg", Location(settings.bucket_originals, "gone/original"))
        results = asyncio.run(pool.run(tasks.make_derivatives, asset, (definition,)))
    finally:
        pool.shutdown()
    assert failure_classes(list(results)) == {FailureClass.ORIGINAL_MISSING}


def test_the_failure_metric_counts_the_class_not_the_reason() -> None:
    def count(failure_class: FailureClass) -> float:
        found = metrics.REGISTRY.get_sample_value("derivatives_derivative_failures_total", {"reason": failure_class})
        return found or 0.0

    before = {c: count(c) for c in FailureClass}
    metrics.derivative_failures(
        [FailureClass.TOO_LARGE, FailureClass.TOO_LARGE, AssetFailure("m-1", "k", "a reason").failure_class]
    )
    after = {c: count(c) for c in FailureClass}
    assert {c: after[c] - before[c] for c in FailureClass if after[c] != before[c]} == {
        FailureClass.TOO_LARGE: 2,
        FailureClass.OTHER: 1,  # the default of a failure made without a class
    }


def test_stored_failures_keep_their_class_and_old_ones_read_as_other() -> None:
    failure = AssetFailure("m-1", "thumb_mini", "original is 300 px wide, ...", FailureClass.TOO_NARROW)
    assert failure.as_json()["failure_class"] == "too_narrow"
    assert AssetFailure.from_json(failure.as_json()) == failure
    old = {"asset_id": "m-1", "key": "thumb_mini", "reason": "stored before classes were"}  # jobs.failures of old
    assert AssetFailure.from_json(old).failure_class is FailureClass.OTHER
    assert AssetFailure.from_json({**old, "failure_class": "a class since dropped"}).failure_class is FailureClass.OTHER


def test_a_zombie_is_not_alive() -> None:
    """core/pids.py: an exited child not yet reaped still answers kill(pid, 0); it is dead all the same."""
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    try:
        os.waitid(os.P_PID, child.pid, os.WEXITED | os.WNOWAIT)  # exited, left unreaped: a zombie
        os.kill(child.pid, 0)  # which the kernel still finds
        assert not pids.alive(child.pid)
    finally:
        child.wait()
    assert not pids.alive(child.pid) and pids.alive(os.getpid())


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


def test_directories_of_hosts_that_died_go_at_the_next_start(tmp_path: Path) -> None:
    """A host killed with SIGKILL never runs its atexit: the next start removes its directory, not a live one's."""
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    orphan = tmp_path / f"derivatives-metrics-{int(dead.stdout)}-abc"
    living = tmp_path / f"derivatives-metrics-{os.getpid()}-def"
    for path in (orphan, living):
        path.mkdir()
        (path / "counter_1.db").write_bytes(b"")
    done = subprocess.run(
        [sys.executable, "-c", "from core import metrics; print(metrics.prepare_multiprocess())"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "TMPDIR": str(tmp_path)},
    )
    assert done.returncode == 0, done.stderr
    assert not orphan.exists() and living.exists()
    assert not Path(done.stdout.strip()).exists()  # its own, removed at its exit
