"""Nothing left behind: a server killed at each step between an upload and its commit leaves bytes no
row references; after a restart and a storage sweep, the bucket listings equal the rows exactly.
And the sweep never takes an upload whose commit is still on its way."""

from __future__ import annotations

import os
import signal
import threading
import time
import uuid
from pathlib import Path

import grpc
import psycopg
import pytest

from client.client import Client, ClientError
from core.failpoints import ENV as FAILPOINTS
from core.reclaim import MARKER
from derivatives.v1 import derivatives_pb2 as pb
from derivatives.v1 import derivatives_pb2_grpc
from tests import images
from tests.harness import Postgres, S3Endpoint, ServerProcess, server_env
from tests.helpers import wait_bundle

Objects = set[tuple[str, str]]


def _env(
    request: pytest.FixtureRequest, postgres: Postgres, tmp_path: Path, backend: str, grace: str = "", **extra: str
) -> dict[str, str]:
    """A server's environment; `grace` sets the sweep's grace period below its production floor (test-only)."""
    s3: S3Endpoint | None = request.getfixturevalue("s3") if backend == "s3" else None
    return server_env(
        backend,
        postgres.new_database("gc"),
        tmp_path / "data",
        s3,
        DERIVATIVES_WORKERS="1",
        DERIVATIVES_JOB_LEASE_SECONDS="2",
        DERIVATIVES_GC_INTERVAL="0",  # sweeps only when the test asks
        **({FAILPOINTS: f"gc_grace={grace}"} if grace else {}),
        **extra,
    )


def _with(env: dict[str, str], failpoint: str) -> dict[str, str]:
    """`env` with one more failpoint armed."""
    armed = ",".join(filter(None, (env.get(FAILPOINTS, ""), failpoint)))
    return {**env, FAILPOINTS: armed}


def noise_jpeg(width: int, height: int, seed: int) -> bytes:
    """A JPEG that does not compress: random pixels (about 1.7 MB at 1000 x 700)."""
    import random

    rnd = random.Random(seed)
    data: bytes = rnd.randbytes(width * height * 3)
    import pyvips

    image = pyvips.Image.new_from_memory(data, width, height, 3, "uchar")
    return bytes(image.jpegsave_buffer(Q=95))


def _rows(env: dict[str, str]) -> Objects:
    """Every object a row says exists: originals, derivatives, built bundles."""
    with psycopg.connect(env["DATABASE_URL"]) as conn:
        rows = conn.execute(
            "SELECT bucket, object_key FROM assets UNION ALL SELECT bucket, object_key FROM derivatives"
            " UNION ALL SELECT bucket, object_key FROM bundles WHERE status = 'success'"
        ).fetchall()
    return {(b, k) for b, k in rows}


def _stored(server: ServerProcess) -> tuple[Objects, Objects]:
    """(complete objects, partial uploads) in the service's buckets."""
    storage, settings = server.storage(), server.settings
    objects: Objects = set()
    partial: Objects = set()
    for bucket in settings.buckets:
        objects |= {(bucket, o.key) for o in storage.list(bucket) if o.key != MARKER}
        partial |= {(bucket, u.key) for u in storage.list_partial(bucket)}
    return objects, partial


def _sweep(server: ServerProcess, dry_run: bool = False) -> pb.ReclaimStorageResponse:
    with Client(server.address) as client:
        reports = list(client.reclaim_storage(dry_run))
    assert reports[-1].done and reports[-1].bucket == ""
    return reports[-1]


def _start(env: dict[str, str], log: Path) -> ServerProcess:
    return ServerProcess(env, log).start()


def _killed(server: ServerProcess, timeout: float = 120) -> None:
    """The failpoint killed the server: wait for the process to be gone."""
    assert server.proc is not None
    server.proc.wait(timeout)
    assert server.proc.returncode == -signal.SIGKILL, server.tail()
    server.proc = None


@pytest.fixture(params=["file", "s3"])
def backend(request: pytest.FixtureRequest) -> str:
    return str(request.param)


def test_killed_after_an_original_is_stored_before_its_commit(
    request: pytest.FixtureRequest, postgres: Postgres, tmp_path: Path, backend: str
) -> None:
    env = _env(request, postgres, tmp_path, backend, grace="0")
    first = _start(_with(env, "original_stored"), tmp_path / "first.log")
    with first.channel() as channel, pytest.raises(grpc.RpcError):
        derivatives_pb2_grpc.DerivativeServiceStub(channel).PutAsset(
            pb.PutAssetRequest(asset_id="lost", data=images.jpeg(400, 300)), timeout=60
        )
    _killed(first)
    second = _start(env, tmp_path / "second.log")
    try:
        objects, _ = _stored(second)
        assert objects - _rows(env), "the kill left nothing: the drill proves nothing"
        total = _sweep(second)
        assert total.orphans >= 1 and total.foreign == 0
        assert _stored(second) == (_rows(env), set())
    finally:
        assert second.stop() == 0, second.tail()


def test_killed_after_a_derivative_is_stored_before_it_is_attached(
    request: pytest.FixtureRequest, postgres: Postgres, tmp_path: Path, backend: str
) -> None:
    """The pool process kills its server after uploading the 3rd derivative of an asset: 3 uploads no row
    references; the job is taken over after the lease and makes them again under new keys."""
    env = _env(request, postgres, tmp_path, backend, grace="0")
    first = _start(_with(env, "derivative_stored@3"), tmp_path / "first.log")
    with first.channel() as channel:
        derivatives_pb2_grpc.DerivativeServiceStub(channel).PutAsset(
            pb.PutAssetRequest(asset_id="d1", data=images.jpeg(3000, 2000))
        )
    _killed(first)
    second = _start(env, tmp_path / "second.log")
    try:
        objects, _ = _stored(second)
        assert objects - _rows(env), "the kill left nothing: the drill proves nothing"
        with second.channel() as channel:
            stub = derivatives_pb2_grpc.DerivativeServiceStub(channel)
            deadline = time.monotonic() + 180
            while not stub.GetAsset(pb.GetAssetRequest(asset_id="d1")).derivatives_created:
                assert time.monotonic() < deadline, "the job was never taken over"
                time.sleep(0.2)
        total = _sweep(second)
        assert total.orphans >= 3
        assert _stored(second) == (_rows(env), set())
    finally:
        assert second.stop() == 0, second.tail()


def test_killed_mid_stream_of_a_bundle(
    request: pytest.FixtureRequest, postgres: Postgres, tmp_path: Path, backend: str
) -> None:
    """On the filesystem a `.tmp-*` file stays; on S3 an incomplete multipart upload (the ZIP passes
    the 16 MiB part size before the kill)."""
    env = _env(request, postgres, tmp_path, backend, grace="0")
    first = _start(_with(env, "bundle_member_written@14"), tmp_path / "first.log")
    ids = [f"m{i}" for i in range(16)]
    with first.channel() as channel:
        stub = derivatives_pb2_grpc.DerivativeServiceStub(channel)
        for i, asset_id in enumerate(ids):  # about 1.7 MB each, incompressible
            data = noise_jpeg(1000, 700, seed=i)
            stub.PutAsset(pb.PutAssetRequest(asset_id=asset_id, data=data, skip_derivatives=True))
        stub.PutWork(pb.PutWorkRequest(work_id="w", title="Killed mid-stream", member_asset_ids=ids))
        stub.FindOrCreateBundle(pb.FindOrCreateBundleRequest(work_id="w", kind=pb.BUNDLE_KIND_ZIP))
    _killed(first)
    second = _start(env, tmp_path / "second.log")
    try:
        _, partial = _stored(second)
        assert partial, "the kill left no partial upload: the drill proves nothing"
        with second.channel() as channel:
            stub = derivatives_pb2_grpc.DerivativeServiceStub(channel)
            bundle = wait_bundle(stub, "w", pb.BUNDLE_KIND_ZIP)  # taken over after the lease, built
            assert bundle.status == pb.BUNDLE_STATUS_SUCCESS, bundle.error
        total = _sweep(second)
        assert total.partial_uploads >= 1
        assert _stored(second) == (_rows(env), set())
    finally:
        assert second.stop() == 0, second.tail()


def test_a_server_on_another_database_does_not_sweep_these_buckets(
    request: pytest.FixtureRequest, postgres: Postgres, tmp_path: Path
) -> None:
    """The first server's buckets carry its database's id; a second server on the same storage but a fresh
    database (an empty embedded one, a staging copy) refuses to sweep them, and deletes nothing."""
    first_env = _env(request, postgres, tmp_path, "file", grace="0")
    first = _start(first_env, tmp_path / "first.log")
    with first.channel() as channel:
        derivatives_pb2_grpc.DerivativeServiceStub(channel).PutAsset(
            pb.PutAssetRequest(asset_id="kept", data=images.png(40, 30), skip_derivatives=True)
        )
    before = _stored(first)[0]
    assert first.stop() == 0
    second = _start(_env(request, postgres, tmp_path, "file", grace="0"), tmp_path / "second.log")  # a new database
    try:
        with Client(second.address) as client, pytest.raises(ClientError) as info:
            list(client.reclaim_storage())
        assert (info.value.code, info.value.reason) == (grpc.StatusCode.FAILED_PRECONDITION, "STORAGE_NOT_OURS")
        assert _stored(second)[0] == before and before
        assert "belong to another installation" in second.log_path.read_text()
    finally:
        assert second.stop() == 0, second.tail()


def test_the_sweep_leaves_foreign_and_young_objects_alone(
    request: pytest.FixtureRequest, postgres: Postgres, tmp_path: Path
) -> None:
    env = _env(request, postgres, tmp_path, "file")
    server = _start(env, tmp_path / "server.log")
    try:
        storage, settings = server.storage(), server.settings
        import io

        # Of the service's shape but unreferenced and young (grace is an hour here); and a key it never writes.
        young = ("lost-asset", uuid.uuid4().hex)
        storage.put(settings.bucket_originals, "/".join(young), io.BytesIO(b"x"), length=1)
        storage.put(settings.bucket_originals, "notes/readme.txt", io.BytesIO(b"x"), length=1)
        old = f"old-asset/{uuid.uuid4().hex}"
        storage.put(settings.bucket_originals, old, io.BytesIO(b"old"), length=3)
        path = settings.data_path / "storage" / settings.bucket_originals / old
        os.utime(path, (time.time() - 7200, time.time() - 7200))  # two hours old: past the grace
        dry = _sweep(server, dry_run=True)
        assert (dry.orphans, dry.young, dry.foreign, dry.dry_run) == (1, 1, 1, True)
        assert storage.stat(settings.bucket_originals, old) is not None  # a dry run deletes nothing
        done = _sweep(server)
        assert (done.orphans, done.young, done.foreign) == (1, 1, 1)
        assert storage.stat(settings.bucket_originals, old) is None
        assert storage.stat(settings.bucket_originals, "/".join(young)) is not None
        assert storage.stat(settings.bucket_originals, "notes/readme.txt") is not None
    finally:
        assert server.stop() == 0, server.tail()


@pytest.mark.parametrize("grace", ["60", "0"])
def test_a_sweep_racing_uploads_takes_none_of_them_within_the_grace(
    request: pytest.FixtureRequest, postgres: Postgres, tmp_path: Path, grace: str
) -> None:
    """Uploads held 5 s between their upload and their commit while sweeps run back to back (counted: the
    sweeps between the first object seen in storage and the first commit). With the
    grace period, every asset keeps its original; with none, the race is real: the sweep takes
    uploads whose rows were on their way (the reason the grace exists, and has a floor of 10 minutes)."""
    env = _with(_env(request, postgres, tmp_path, "file", grace=grace), "original_stored~5")
    server = _start(env, tmp_path / "server.log")
    try:
        ids = [f"race-{i}" for i in range(6)]
        storage, settings = server.storage(), server.settings
        stored = threading.Event()  # an upload's object is in storage, its commit held back
        committed = threading.Event()  # the first commit is done: the window is over
        done = threading.Event()
        during: list[pb.ReclaimStorageResponse] = []  # sweeps wholly inside the window
        errors: list[BaseException] = []

        def sweeping() -> None:
            try:
                with Client(server.address) as client:
                    while not done.is_set():
                        started_in_window = stored.is_set() and not committed.is_set()
                        reports = list(client.reclaim_storage())
                        if (reports[-1].young or reports[-1].orphans) and not committed.is_set():
                            stored.set()  # a held upload, seen by the sweep (with no grace it is gone already)
                        if started_in_window and not committed.is_set():
                            during.append(reports[-1])
                        time.sleep(0.05)
            except BaseException as exc:  # shown by the test, not lost in the thread
                errors.append(exc)

        sweeper = threading.Thread(target=sweeping)
        sweeper.start()
        with server.channel() as channel:
            stub = derivatives_pb2_grpc.DerivativeServiceStub(channel)

            def upload(asset_id: str) -> None:
                request = pb.PutAssetRequest(asset_id=asset_id, data=images.png(64, 48), skip_derivatives=True)
                stub.PutAsset(request, timeout=60)
                committed.set()

            uploads = [threading.Thread(target=upload, args=(a,)) for a in ids]
            for t in uploads:
                t.start()
            deadline = time.monotonic() + 60
            while not stored.is_set() and not any(storage.list(settings.bucket_originals, "race-")):
                assert time.monotonic() < deadline and not committed.is_set(), "no upload was ever held"
                time.sleep(0.01)  # seen, not assumed
            stored.set()
            for t in uploads:
                t.join(90)
            assert not any(t.is_alive() for t in uploads)
        done.set()
        sweeper.join(60)
        assert not errors, errors
        assert len(during) >= 3, f"only {len(during)} sweeps ran while the uploads were held"
        missing = [asset_id for asset_id in ids if not any(storage.list(settings.bucket_originals, asset_id + "/"))]
        if grace == "0":
            assert missing, "no upload was taken: the race never happened, the drill proves nothing"
        else:
            assert missing == [] and all(r.young >= 1 for r in during)
            assert _stored(server)[0] == _rows(env)
    finally:
        assert server.stop() == 0, server.tail()


def test_a_file_name_that_is_not_utf8_is_foreign_not_a_crash(
    request: pytest.FixtureRequest, postgres: Postgres, tmp_path: Path
) -> None:
    server = _start(_env(request, postgres, tmp_path, "file", grace="0"), tmp_path / "server.log")
    try:
        with server.channel() as channel:  # a referenced key, so the walk compares the odd name with it
            derivatives_pb2_grpc.DerivativeServiceStub(channel).PutAsset(
                pb.PutAssetRequest(asset_id="a", data=images.png(20, 20), skip_derivatives=True)
            )
        settings = server.settings
        folder = settings.data_path / "storage" / settings.bucket_originals / "x"
        folder.mkdir(parents=True, exist_ok=True)
        (folder / os.fsdecode(b"caf\xe9.bin")).write_bytes(b"latin-1 name")
        total = _sweep(server)
        assert total.foreign == 1 and total.orphans == 0
        assert (folder / os.fsdecode(b"caf\xe9.bin")).exists()
    finally:
        assert server.stop() == 0, server.tail()
