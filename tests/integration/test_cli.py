"""The `derivatives` CLI against the running server."""

from __future__ import annotations

import subprocess
import sys
import uuid
from pathlib import Path

from derivatives.v1 import derivatives_pb2 as pb
from tests import images
from tests.harness import ServerProcess
from tests.helpers import Stub

CLI = str(Path(sys.executable).parent / "derivatives")


def run(server: ServerProcess, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([CLI, "--address", server.address, *args], capture_output=True, text=True, timeout=300)


def test_create_all_for_a_work_shows_a_progress_bar(stub: Stub, server: ServerProcess, tmp_path: Path) -> None:
    ids = [f"cli-{uuid.uuid4().hex[:8]}" for _ in range(5)]
    original = tmp_path / "page.tif"
    original.write_bytes(images.tiff(700, 500))
    for asset_id in ids:
        put = run(server, "put", asset_id, str(original), "--skip-derivatives")
        assert put.returncode == 0, put.stderr
    work_id = f"w-{uuid.uuid4().hex[:8]}"
    stub.PutWork(pb.PutWorkRequest(work_id=work_id, title="CLI work", member_asset_ids=ids))
    out = run(server, "create-all", "--work", work_id, "--only", "thumb_mini,thumb_standard", "--batch", "2")
    assert out.returncode == 0, out.stderr
    assert "5/5" in out.stderr and "asset/s" in out.stderr  # tqdm: done/total and rate
    assert "5 assets in 3 job(s); 0 derivative failure(s)" in out.stdout
    for asset_id in ids:
        keys = {d.key for d in stub.GetAsset(pb.GetAssetRequest(asset_id=asset_id)).derivatives}
        assert keys == {"thumb_mini", "thumb_standard"}

    lazy = run(server, "create-all", "--asset", ids[0], "--lazy", "--quiet")
    assert lazy.returncode == 0 and "1 assets in 1 job(s)" in lazy.stdout


def test_cli_reports_errors_without_traceback(server: ServerProcess) -> None:
    out = run(server, "create-all", "--asset", "ghost-asset")
    assert out.returncode == 1
    assert "NOT_FOUND" in out.stderr and "Traceback" not in out.stderr
    out = run(server, "create-all", "--asset", "x", "--only", "nope")
    assert out.returncode == 1 and "INVALID_ARGUMENT" in out.stderr


def test_watch_follows_a_job_to_the_end(stub: Stub, server: ServerProcess) -> None:
    asset_id = f"cli-{uuid.uuid4().hex[:8]}"
    stub.PutAsset(pb.PutAssetRequest(asset_id=asset_id, data=images.jpeg(900, 600), skip_derivatives=True))
    job = stub.CreateDerivatives(pb.CreateDerivativesRequest(asset_ids=[asset_id]))
    out = run(server, "watch", job.job_id)
    assert out.returncode == 0, out.stderr
    assert "1/1" in out.stderr
    assert run(server, "watch", str(uuid.uuid4())).returncode == 1


def test_bundle_builds_with_a_bar_and_downloads(stub: Stub, server: ServerProcess, tmp_path: Path) -> None:
    import zipfile

    ids = [f"cb-{uuid.uuid4().hex[:8]}" for _ in range(3)]
    for asset_id in ids:
        stub.PutAsset(pb.PutAssetRequest(asset_id=asset_id, data=images.png(600, 400), skip_derivatives=True))
    work_id = f"w-{uuid.uuid4().hex[:8]}"
    stub.PutWork(pb.PutWorkRequest(work_id=work_id, title="CLI bundle", member_asset_ids=ids))
    target = tmp_path / "out.zip"
    out = run(server, "bundle", work_id, "--zip", "-o", str(target))
    assert out.returncode == 0, out.stderr
    assert "3/3" in out.stderr
    assert len(zipfile.ZipFile(target).namelist()) == 4
    again = run(server, "bundle", work_id, "--zip", "-o", str(tmp_path / "again.zip"), "--quiet")  # cached now
    assert again.returncode == 0 and (tmp_path / "again.zip").stat().st_size == target.stat().st_size
    assert run(server, "bundle", "no-such-work", "--pdf").returncode == 1


def test_put_prints_the_job_it_starts_and_watch_follows_it(server: ServerProcess, tmp_path: Path) -> None:
    original = tmp_path / "scan.jpg"
    original.write_bytes(images.jpeg(700, 500))
    asset_id = f"cli-{uuid.uuid4().hex[:8]}"
    put = run(server, "put", asset_id, str(original))
    assert put.returncode == 0, put.stderr
    job_id = put.stderr.split("job ", 1)[1].split(":", 1)[0]
    watched = run(server, "watch", job_id)
    assert watched.returncode == 0, watched.stderr
    assert "1/1" in watched.stderr


def test_watch_of_an_unknown_job_prints_the_error_without_a_bar(server: ServerProcess) -> None:
    out = run(server, "watch", str(uuid.uuid4()))
    assert out.returncode == 1
    assert out.stderr.startswith("error: NOT_FOUND: job ")
    assert "it/s" not in out.stderr and "item" not in out.stderr  # no tqdm bar was drawn


def test_invalid_arguments_list_each_field(server: ServerProcess) -> None:
    out = run(server, "create-all", "--asset", "x", "--only", "nope,also_nope")
    assert out.returncode == 1
    assert "  only[0]: unknown key 'nope'" in out.stderr and "  only[1]: unknown key 'also_nope'" in out.stderr
