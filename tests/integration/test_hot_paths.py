"""The calls a site makes on every page view: a cache-hit FindOrCreateBundle and GetAsset.

A hit reads the stored inputs checksum instead of recomputing it, and writes an access at most
once per flush interval; these tests show that neither ever hands out a bundle of old inputs.
"""

from __future__ import annotations

import datetime as dt
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import psycopg

from core.bundles import checksum, fingerprint
from core.definitions import load_registry
from core.records import BundleKind, Member, Work
from derivatives.v1 import derivatives_pb2 as pb
from tests import images
from tests.harness import ServerProcess
from tests.helpers import ZIP, Stub, make_work, wait_bundle


def stored_inputs(server: ServerProcess, work_id: str) -> dict[str, tuple[str, str]]:
    with psycopg.connect(server.env["DATABASE_URL"]) as conn:
        rows = conn.execute(
            "SELECT kind, checksum, fingerprint FROM bundle_inputs WHERE work_id = %s", (work_id,)
        ).fetchall()
    return {kind: (sum_, fp) for kind, sum_, fp in rows}


def computed_checksum(server: ServerProcess, work_id: str, kind: BundleKind) -> str:
    """The checksum as FindOrCreateBundle computed it before it was stored: from the rows, now."""
    with psycopg.connect(server.env["DATABASE_URL"], row_factory=psycopg.rows.dict_row) as conn:
        work = conn.execute("SELECT * FROM works WHERE work_id = %s", (work_id,)).fetchone()
        rows = conn.execute(
            "SELECT m.position, a.asset_id, a.content_type, a.sha512, a.width, a.height, a.bucket, a.object_key"
            " FROM work_members m JOIN assets a USING (asset_id) WHERE m.work_id = %s ORDER BY m.position",
            (work_id,),
        ).fetchall()
    assert work is not None
    members = tuple(Member.from_row(r) for r in rows)
    return checksum(Work.from_row(work, [m.asset_id for m in members]), members, kind, load_registry(), server.settings)


def test_put_work_stores_the_inputs_checksum_of_both_kinds(stub: Stub, server: ServerProcess) -> None:
    work_id, _ = make_work(stub, [images.jpeg(300, 200), images.jpeg(200, 300)])
    stored = stored_inputs(server, work_id)
    assert set(stored) == {"pdf", "zip"}
    assert stored["zip"][0] == computed_checksum(server, work_id, BundleKind.ZIP)
    assert stored["pdf"][0] == computed_checksum(server, work_id, BundleKind.PDF)
    assert stored["zip"][1] == fingerprint(load_registry(), server.settings)


def test_a_member_replaced_during_a_burst_of_hits_gives_the_new_checksum_at_once(
    stub: Stub, server: ServerProcess
) -> None:
    work_id, ids = make_work(stub, [images.jpeg(400, 300), images.jpeg(300, 400)])
    old = wait_bundle(stub, work_id, ZIP)
    committed = threading.Event()
    stop = threading.Event()
    after_commit: list[str] = []

    def hammer() -> int:
        calls = 0
        while not stop.is_set():
            seen_commit = committed.is_set()  # read before the call: it started after PutAsset returned
            bundle = stub.FindOrCreateBundle(pb.FindOrCreateBundleRequest(work_id=work_id, kind=ZIP))
            calls += 1
            if seen_commit:
                after_commit.append(bundle.checksum)
        return calls

    with ThreadPoolExecutor(4) as pool:
        hammers = [pool.submit(hammer) for _ in range(4)]
        time.sleep(0.5)  # a burst of hits on the old bundle
        stub.PutAsset(pb.PutAssetRequest(asset_id=ids[1], data=images.jpeg(320, 400), skip_derivatives=True))
        committed.set()
        time.sleep(0.5)
        stop.set()
        calls = sum(h.result() for h in hammers)
    assert calls > 20, calls
    assert after_commit, "no call started after the replacement"
    assert old.checksum not in after_commit  # not one call after the commit saw the old inputs
    assert set(after_commit) == {computed_checksum(server, work_id, BundleKind.ZIP)}


def test_hits_write_the_access_at_most_once_per_flush_interval(stub: Stub, server: ServerProcess) -> None:
    work_id, _ = make_work(stub, [images.jpeg(300, 200)])
    bundle = wait_bundle(stub, work_id, ZIP)

    def last_access() -> dt.datetime:
        with psycopg.connect(server.env["DATABASE_URL"]) as conn:
            row = conn.execute(
                "SELECT last_accessed_at FROM bundles WHERE bundle_id = %s", (bundle.bundle_id,)
            ).fetchone()
        assert row is not None
        value: dt.datetime = row[0]
        return value

    with psycopg.connect(server.env["DATABASE_URL"]) as conn:  # accessed just now
        conn.execute("UPDATE bundles SET last_accessed_at = now() WHERE bundle_id = %s", (bundle.bundle_id,))
    before = last_access()
    deadline, hits = time.monotonic() + 1.0, 0
    while hits < 30 and time.monotonic() < deadline:  # well inside the flush interval (5 s)
        hit = stub.FindOrCreateBundle(pb.FindOrCreateBundleRequest(work_id=work_id, kind=ZIP))
        assert (hit.bundle_id, hit.status) == (bundle.bundle_id, pb.BUNDLE_STATUS_SUCCESS)
        hits += 1
    assert hits >= 5, hits
    assert last_access() == before  # no write for any of them
    with psycopg.connect(server.env["DATABASE_URL"]) as conn:  # as if the last access were long ago
        conn.execute(
            "UPDATE bundles SET last_accessed_at = now() - interval '1 hour' WHERE bundle_id = %s", (bundle.bundle_id,)
        )
    stub.FindOrCreateBundle(pb.FindOrCreateBundleRequest(work_id=work_id, kind=ZIP))
    assert dt.datetime.now(dt.UTC) - last_access() < dt.timedelta(minutes=1)  # an old access is written


def test_inputs_stored_under_another_configuration_are_recomputed(stub: Stub, server: ServerProcess) -> None:
    work_id, ids = make_work(stub, [images.jpeg(300, 200), images.jpeg(200, 300)])
    old = wait_bundle(stub, work_id, ZIP)
    stub.PutAsset(pb.PutAssetRequest(asset_id=ids[1], data=images.jpeg(210, 300), skip_derivatives=True))
    new = wait_bundle(stub, work_id, ZIP)
    assert new.checksum != old.checksum
    # A row naming the superseded bundle, stored under another configuration: never trusted.
    with psycopg.connect(server.env["DATABASE_URL"]) as conn:
        conn.execute(
            "UPDATE bundle_inputs SET checksum = %s, fingerprint = 'another configuration'"
            " WHERE work_id = %s AND kind = 'zip'",
            (old.checksum, work_id),
        )
    hit = stub.FindOrCreateBundle(pb.FindOrCreateBundleRequest(work_id=work_id, kind=ZIP))
    assert (hit.bundle_id, hit.checksum) == (new.bundle_id, new.checksum)
    assert stored_inputs(server, work_id)["zip"] == (new.checksum, fingerprint(load_registry(), server.settings))
    with psycopg.connect(server.env["DATABASE_URL"]) as conn:  # a work stored before the table existed
        conn.execute("DELETE FROM bundle_inputs WHERE work_id = %s", (work_id,))
    hit = stub.FindOrCreateBundle(pb.FindOrCreateBundleRequest(work_id=work_id, kind=ZIP))
    assert (hit.bundle_id, hit.status) == (new.bundle_id, pb.BUNDLE_STATUS_SUCCESS)
    assert stored_inputs(server, work_id)["zip"][0] == new.checksum


def test_concurrent_put_work_and_replacements_keep_the_stored_checksum_exact(stub: Stub, server: ServerProcess) -> None:
    work_id, ids = make_work(stub, [images.jpeg(200 + i, 150) for i in range(4)])
    request = pb.PutWorkRequest(work_id=work_id, title="Races", member_asset_ids=ids)

    def replace(i: int) -> None:
        for n in range(3):
            data = images.jpeg(220 + 10 * n + i, 150)
            stub.PutAsset(pb.PutAssetRequest(asset_id=ids[i], data=data, skip_derivatives=True))

    def put_work() -> None:
        for n in range(6):
            stub.PutWork(pb.PutWorkRequest(work_id=work_id, title=f"Races {n}", member_asset_ids=ids[::-1]))

    with ThreadPoolExecutor(5) as pool:  # no deadlock, no error: assets are always locked before works
        for future in [*(pool.submit(replace, i) for i in range(4)), pool.submit(put_work)]:
            future.result(timeout=60)
    # What the racing transactions left behind, before anything recomputes it.
    for kind, name in ((BundleKind.ZIP, "zip"), (BundleKind.PDF, "pdf")):
        assert stored_inputs(server, work_id)[name][0] == computed_checksum(server, work_id, kind)
    stub.PutWork(request)
    assert stored_inputs(server, work_id)["zip"][0] == computed_checksum(server, work_id, BundleKind.ZIP)


def test_get_asset_reports_each_url_and_its_real_expiry(stub: Stub, server: ServerProcess) -> None:
    asset_id = f"url-{time.monotonic_ns()}"
    stub.PutAsset(pb.PutAssetRequest(asset_id=asset_id, data=images.jpeg(900, 600)))
    deadline = time.monotonic() + 60
    while not (asset := stub.GetAsset(pb.GetAssetRequest(asset_id=asset_id))).derivatives_created:
        assert time.monotonic() < deadline
        time.sleep(0.2)
    again = stub.GetAsset(pb.GetAssetRequest(asset_id=asset_id))
    assert asset.derivatives and len(again.derivatives) == len(asset.derivatives)
    expiry = dt.timedelta(seconds=server.settings.url_expiry_seconds)
    for first, second in zip(asset.derivatives, again.derivatives, strict=True):
        if server.settings.storage == "file":
            assert (first.url, first.HasField("url_expires_at")) == ("", False)
            continue
        expires = first.url_expires_at.ToDatetime(dt.UTC)
        assert abs(expires - (dt.datetime.now(dt.UTC) + expiry)) < dt.timedelta(minutes=1)
        # Reused while more than half its lifetime is left: the same URL and the same expiry.
        assert (second.url, second.url_expires_at) == (first.url, first.url_expires_at)
