"""The HTTP face through a real server, without a browser: signed links, the bundle JSON, server-sent
events with Last-Event-ID, the file with Range, errors as JSON, the no-JavaScript page, CORS."""

from __future__ import annotations

import hashlib
import io
import json
import time
import urllib.error
import urllib.parse
import urllib.request
import uuid
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from derivatives.v1 import derivatives_pb2 as pb
from derivatives.v1 import derivatives_pb2_grpc as pb_grpc
from server.links import sign_link
from tests import images
from tests.harness import Postgres, ServerProcess, free_port, server_env

KEY_ID, SECRET = "k1", "test-secret-for-links"
TOKEN = "tok-http-" + uuid.uuid4().hex


@dataclass
class Http:
    server: ServerProcess
    base: str
    stub: pb_grpc.DerivativeServiceStub

    def link(self, work_id: str, kind: str, expires: int | None = None) -> str:
        return sign_link(self.base, work_id, kind, KEY_ID, SECRET, expires or int(time.time()) + 600)


@pytest.fixture(scope="module")
def http(postgres: Postgres, work_dir: Path) -> Iterator[Http]:
    port = free_port()
    tokens = work_dir / "tokens-http.toml"
    digest = hashlib.sha256(TOKEN.encode()).hexdigest()
    tokens.write_text(f'[[token]]\nname = "site"\nscopes = ["read", "write"]\nsha256 = "{digest}"\n')
    env = server_env(
        "file",
        postgres.new_database("http"),
        work_dir / "data-http",
        None,
        DERIVATIVES_HTTP_LISTEN=f"127.0.0.1:{port}",
        DERIVATIVES_LINK_KEYS=f"old=an-older-secret-key-1234,{KEY_ID}={SECRET}",
        DERIVATIVES_HTTP_CORS_ORIGINS="https://site.example",
        DERIVATIVES_TOKENS_FILE=str(tokens),
    )
    server = ServerProcess(env, work_dir / "server-http.log").start()
    try:
        with server.channel() as channel:
            yield Http(server, f"http://127.0.0.1:{port}", pb_grpc.DerivativeServiceStub(channel))
    finally:
        assert server.stop() == 0, server.tail()


def call(url: str, method: str = "GET", headers: dict[str, str] | None = None) -> tuple[int, dict[str, str], bytes]:
    request = urllib.request.Request(url, method=method, headers=headers or {}, data=b"" if method == "POST" else None)

    class NoRedirect(urllib.request.HTTPRedirectHandler):
        def redirect_request(self, *args: Any, **kwargs: Any) -> None:
            return None

    opener = urllib.request.build_opener(NoRedirect)
    try:
        with opener.open(request, timeout=60) as response:
            return response.status, dict(response.headers), response.read()
    except urllib.error.HTTPError as err:
        return err.code, dict(err.headers), err.read()


def make_work(h: Http, members: int, broken: bool = False) -> str:
    md = {"authorization": f"Bearer {TOKEN}"}
    ids = []
    for i in range(members):
        asset_id = f"h-{uuid.uuid4().hex[:8]}"
        data = images.png(300 + i, 200)
        if broken and i == members - 1:
            data = data[:200]
        h.stub.PutAsset(pb.PutAssetRequest(asset_id=asset_id, data=data, skip_derivatives=True), metadata=md.items())
        ids.append(asset_id)
    work_id = f"hw-{uuid.uuid4().hex[:8]}"
    h.stub.PutWork(pb.PutWorkRequest(work_id=work_id, title="Field notes", member_asset_ids=ids), metadata=md.items())
    return work_id


def events(url: str, last_event_id: str = "", stop_after: int = 0) -> list[tuple[str, dict[str, Any]]]:
    """(id, data) of each event of the stream, until it ends (or after `stop_after` events)."""
    headers = {"accept": "text/event-stream"} | ({"last-event-id": last_event_id} if last_event_id else {})
    out: list[tuple[str, dict[str, Any]]] = []
    with urllib.request.urlopen(urllib.request.Request(url, headers=headers), timeout=120) as response:
        assert response.headers["content-type"].startswith("text/event-stream")
        event_id, data = "", ""
        for raw in response:
            line = raw.decode().rstrip("\n")
            if line.startswith("id: "):
                event_id = line[4:]
            elif line.startswith("data: "):
                data = line[6:]
            elif line == "" and data:
                out.append((event_id, json.loads(data)))
                data = ""
                if stop_after and len(out) >= stop_after:
                    break
    return out


def test_a_signed_link_starts_the_bundle_and_events_end_with_it(http: Http) -> None:
    work_id = make_work(http, 3)
    status, headers, body = call(http.link(work_id, "zip"), "POST")
    assert status == 200, body
    bundle = json.loads(body)
    assert bundle["workId"] == work_id and bundle["kind"] == "BUNDLE_KIND_ZIP"
    stream = events(f"{http.base}/v1/bundles/{bundle['bundleId']}/events")
    ids = [event_id for event_id, _ in stream]
    assert all(i.split(":")[0] == ids[0].split(":")[0] for i in ids)  # {job_id}:{seq}
    assert stream[0][1].get("snapshot") is True
    final = stream[-1][1]
    assert final["stage"] == "STAGE_SUCCEEDED" and final["bundle"]["status"] == "BUNDLE_STATUS_SUCCESS"
    status, _, body = call(f"{http.base}/v1/bundles/{bundle['bundleId']}")
    assert status == 200 and json.loads(body)["status"] == "BUNDLE_STATUS_SUCCESS"
    # The file: attachment with its name; ranges work.
    status, headers, data = call(f"{http.base}/v1/bundles/{bundle['bundleId']}/file")
    assert (
        status == 200
        and "attachment" in headers["content-disposition"]
        and final["bundle"]["filename"] in (urllib.parse.unquote(headers["content-disposition"]))
    )
    assert int(headers["content-length"]) == len(data)
    assert len(zipfile.ZipFile(io.BytesIO(data)).namelist()) == 4  # 3 pages + about.txt
    status, headers, part = call(f"{http.base}/v1/bundles/{bundle['bundleId']}/file", headers={"range": "bytes=10-19"})
    assert status == 206 and part == data[10:20]


def test_last_event_id_resumes_without_a_gap(http: Http) -> None:
    work_id = make_work(http, 8)
    bundle = json.loads(call(http.link(work_id, "pdf"), "POST")[2])
    url = f"{http.base}/v1/bundles/{bundle['bundleId']}/events"
    first = events(url, stop_after=2)  # the snapshot and one more, then the connection drops
    rest = events(url, last_event_id=first[-1][0])
    seqs = [int(d["seq"]) for _, d in first + rest if not d.get("heartbeat")]
    changes = sorted(set(seqs))
    assert changes == list(range(changes[0], changes[-1] + 1)), seqs  # nothing skipped
    assert rest[-1][1]["stage"] == "STAGE_SUCCEEDED"


@pytest.mark.parametrize(
    "mutate,reason",
    [
        (lambda url: url.replace("sig=", "sig=x"), "LINK_INVALID"),
        (lambda url: url.replace("/bundles/pdf", "/bundles/zip"), "LINK_INVALID"),  # signed for the PDF only
        (lambda url: url.split("?")[0], "LINK_INVALID"),  # unsigned
        (lambda url: url.replace("kid=k1", "kid=nope"), "LINK_INVALID"),
    ],
)
def test_unsigned_tampered_or_foreign_links_are_403(http: Http, mutate: Any, reason: str) -> None:
    status, _, body = call(mutate(http.link("w-any", "pdf")), "POST")
    error = json.loads(body)["error"]
    assert (status, error["code"], error["reason"], error["status"]) == (403, "PERMISSION_DENIED", reason, 403)


def test_an_expired_link_is_403_and_an_older_key_still_signs(http: Http) -> None:
    status, _, body = call(http.link("w-any", "pdf", expires=int(time.time()) - 1), "POST")
    assert status == 403 and json.loads(body)["error"]["reason"] == "LINK_EXPIRED"
    old = sign_link(http.base, "w-none", "pdf", "old", "an-older-secret-key-1234", int(time.time()) + 60)
    status, _, body = call(old, "POST")  # rotation: both keys are valid; the work does not exist
    assert status == 404 and json.loads(body)["error"]["reason"] == "WORK_NOT_FOUND"


def test_a_read_token_also_starts_a_bundle_and_errors_are_json(http: Http) -> None:
    work_id = make_work(http, 1)
    url = f"{http.base}/v1/works/{work_id}/bundles/pdf"
    status, _, body = call(url, "POST", {"authorization": f"Bearer {TOKEN}"})
    assert status == 200 and json.loads(body)["workId"] == work_id
    status, _, body = call(url, "POST", {"authorization": "Bearer wrong"})
    assert status == 401 and json.loads(body)["error"]["reason"] == "CREDENTIALS_INVALID"
    status, _, body = call(f"{http.base}/v1/bundles/not-a-uuid")
    error = json.loads(body)["error"]
    assert status == 400 and error["code"] == "INVALID_ARGUMENT" and error["violations"][0]["field"] == "bundle_id"
    status, _, body = call(f"{http.base}/v1/bundles/{uuid.uuid4()}/file")
    assert status == 404 and json.loads(body)["error"]["reason"] == "BUNDLE_NOT_FOUND"
    status, _, body = call(http.link("not a valid id!", "pdf"), "POST")
    assert status == 400


def test_a_member_that_cannot_be_rendered_fails_with_its_reason(http: Http) -> None:
    work_id = make_work(http, 2, broken=True)
    bundle = json.loads(call(http.link(work_id, "pdf"), "POST")[2])
    final = events(f"{http.base}/v1/bundles/{bundle['bundleId']}/events")[-1][1]
    assert final["stage"] == "STAGE_FAILED" and "member 2" in final["error"]["message"]
    status, _, body = call(f"{http.base}/v1/bundles/{bundle['bundleId']}/file")
    assert status == 409 and json.loads(body)["error"]["reason"] == "BUNDLE_NOT_READY"


def test_without_javascript_the_link_refreshes_then_redirects_to_the_file(http: Http) -> None:
    work_id = make_work(http, 2)
    link = http.link(work_id, "zip")
    status, headers, body = call(link)
    assert status == 200 and b'http-equiv="refresh"' in body  # preparing: refresh
    deadline = time.monotonic() + 120
    while status == 200:
        assert time.monotonic() < deadline, "never ready"
        time.sleep(0.5)
        status, headers, body = call(link)
    assert status == 303 and headers["location"].endswith("/file")
    status, _, data = call(http.base + headers["location"])
    assert status == 200 and zipfile.ZipFile(io.BytesIO(data)).testzip() is None


def test_the_script_cors_and_the_demo_page(http: Http) -> None:
    status, headers, _ = call(f"{http.base}/downloader.js")
    assert status == 200 and headers["access-control-allow-origin"] == "*"
    assert headers["content-type"].startswith("text/javascript")
    preflight = {"origin": "https://site.example", "access-control-request-method": "POST"}
    status, headers, _ = call(f"{http.base}/v1/works/w/bundles/pdf", "OPTIONS", preflight)
    assert status == 200 and headers["access-control-allow-origin"] == "https://site.example"
    status, headers, _ = call(f"{http.base}/v1/bundles/{uuid.uuid4()}", headers={"origin": "https://other.example"})
    assert "access-control-allow-origin" not in {k.lower() for k in headers}
    work_id = make_work(http, 1)
    status, _, page = call(f"{http.base}/")
    assert (status == 200 and work_id.encode() in page) or b"Field notes" in page
    assert b'src="/downloader.js"' in page and b"data-derivatives-download" in page


def test_on_s3_the_file_is_a_redirect_to_a_presigned_download(
    request: pytest.FixtureRequest, postgres: Postgres, tmp_path: Path
) -> None:
    port = free_port()
    env = server_env(
        "s3",
        postgres.new_database("https3"),
        tmp_path / "data",
        request.getfixturevalue("s3"),
        DERIVATIVES_HTTP_LISTEN=f"127.0.0.1:{port}",
        DERIVATIVES_LINK_KEYS=f"{KEY_ID}={SECRET}",
    )
    server = ServerProcess(env, tmp_path / "server.log").start()
    try:
        with server.channel() as channel:
            h = Http(server, f"http://127.0.0.1:{port}", pb_grpc.DerivativeServiceStub(channel))
            work_id = make_work(h, 2)
            bundle = json.loads(call(h.link(work_id, "zip"), "POST")[2])
            assert events(f"{h.base}/v1/bundles/{bundle['bundleId']}/events")[-1][1]["stage"] == "STAGE_SUCCEEDED"
            status, headers, _ = call(f"{h.base}/v1/bundles/{bundle['bundleId']}/file")
            assert status == 302 and headers["location"].startswith("http://127.0.0.1")
            with urllib.request.urlopen(headers["location"], timeout=60) as response:
                data = response.read()
                assert "attachment" in response.headers["content-disposition"]
            assert zipfile.ZipFile(io.BytesIO(data)).testzip() is None
    finally:
        assert server.stop() == 0, server.tail()
