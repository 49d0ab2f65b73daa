"""The `derivatives` command line: bulk derivative creation with a progress bar, and friends."""

from __future__ import annotations

import argparse
import hashlib
import itertools
import os
import re
import secrets
import sys
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from google.protobuf import json_format
from tqdm import tqdm

from client.client import Client, ClientError
from client.links import sign_link
from derivatives.v1 import derivatives_pb2 as pb


def _batches(ids: Iterator[str], size: int) -> Iterator[list[str]]:
    batch: list[str] = []
    for asset_id in ids:
        batch.append(asset_id)
        if len(batch) == size:
            yield batch
            batch = []
    if batch:
        yield batch


def _split(values: list[str] | None) -> list[str]:
    return [k for v in values or [] for k in v.split(",") if k]


def create_all(client: Client, args: argparse.Namespace) -> int:
    """Queue derivative jobs over every matching asset and follow them to the end."""
    if args.asset:
        ids: Iterator[str] = iter(args.asset)
    elif args.work:
        ids = iter(client.work_members(args.work))
    else:
        ids = client.list_asset_ids()
    jobs: dict[str, pb.Job] = {}
    for batch in _batches(ids, args.batch):
        job = client.create_derivatives(batch, _split(args.only), _split(args.exclude), args.lazy)
        jobs[job.job_id] = job
        print(f"job {job.job_id}: {job.total} asset(s)", file=sys.stderr, flush=True)  # for `derivatives watch`
    total = sum(j.total for j in jobs.values())
    if total == 0:
        print("no assets matched")
        return 0
    with tqdm(total=total, unit="asset", desc="derivatives", disable=args.quiet) as bar:
        lock = threading.Lock()

        def follow(job_id: str) -> None:  # one server-pushed stream per job; the bar sums them
            for event in client.watch(job_id=job_id):
                with lock:
                    if event.snapshot and event.attempt > 1 and event.done < jobs[job_id].done:
                        bar.write(f"job {job_id}: restarted (attempt {event.attempt}) after {jobs[job_id].done} assets")
                    bar.update(event.done - jobs[job_id].done)
                    jobs[job_id].done = event.done
                    if event.WhichOneof("result") == "job":
                        jobs[job_id].CopyFrom(event.job)

        with ThreadPoolExecutor(max_workers=min(16, len(jobs))) as streams:
            for future in [streams.submit(follow, job_id) for job_id in jobs]:
                future.result()
    failures = [f for j in jobs.values() for f in j.failures]
    failed_jobs = [j for j in jobs.values() if j.stage == pb.STAGE_FAILED]
    for f in failures:
        print(f"  {f.asset_id} {f.key or '*'}: {f.reason}", file=sys.stderr)
    for j in failed_jobs:
        print(f"job {j.job_id} failed: {j.error.message}", file=sys.stderr)
    print(f"{total} assets in {len(jobs)} job(s); {len(failures)} derivative failure(s)")
    return 1 if failed_jobs else 0


def watch(client: Client, args: argparse.Namespace) -> int:
    """Follow a job or bundle with a progress bar; non-zero exit when it fails."""
    events = client.watch(bundle_id=args.id) if args.bundle else client.watch(job_id=args.id)
    first = next(events, None)  # an unknown id fails here, before a bar is drawn
    last: pb.ProgressEvent | None = None
    with tqdm(unit="item", desc=args.id[:8], disable=args.quiet) as bar:
        for event in itertools.chain([first] if first is not None else [], events):
            if event.total and bar.total != event.total:
                bar.total = event.total
                bar.refresh()
            _note_restart(bar, event)
            bar.update(event.done - bar.n)
            stage = pb.Stage.Name(event.stage).removeprefix("STAGE_").lower()
            bar.set_postfix_str("finishing…" if event.stage == pb.STAGE_FINISHING else stage, refresh=False)
            last = event
    if last is None or last.stage != pb.STAGE_SUCCEEDED:
        reason = last.error.message if last is not None else "stream ended without a final event"
        print(f"failed: {reason}", file=sys.stderr)
        return 1
    for f in last.job.failures:
        print(f"  {f.asset_id} {f.key or '*'}: {f.reason}", file=sys.stderr)
    if last.WhichOneof("result") == "bundle":
        print(last.bundle.url or last.bundle.filename)
    return 0


def _note_restart(bar: tqdm[object], event: pb.ProgressEvent) -> None:
    """A new attempt (a takeover, a retry) starts over from 0: say so rather than jump back silently."""
    if event.snapshot and event.attempt > 1 and event.done < bar.n:
        bar.write(f"restarted (attempt {event.attempt}): the previous run stopped at {bar.n}/{bar.total}")


def bundle(client: Client, args: argparse.Namespace) -> int:
    """Find or build a work's PDF or ZIP, with a progress bar while it builds, then download it."""
    found = client.find_or_create_bundle(args.work_id, "pdf" if args.pdf else "zip")
    if found.status != pb.BUNDLE_STATUS_SUCCESS:
        last = None
        with tqdm(total=found.total or None, unit="page", desc=found.filename, disable=args.quiet) as bar:
            for event in client.watch(bundle_id=found.bundle_id):
                _note_restart(bar, event)
                bar.update(event.done - bar.n)
                if event.stage == pb.STAGE_FINISHING:
                    bar.set_postfix_str("finishing…")
                last = event
        if last is None or last.stage != pb.STAGE_SUCCEEDED:
            print(f"failed: {last.error.message if last else 'no final event'}", file=sys.stderr)
            return 1
        found = last.bundle
    target = Path(args.output or found.filename)
    client.download_bundle(found, target)
    print(target)
    return 0


def gc(client: Client, args: argparse.Namespace) -> int:
    """Run a storage sweep on the server and wait for it: a line per bucket, then the total."""
    verb = "would delete" if args.dry_run else "deleted"
    for report in client.reclaim_storage(args.dry_run):
        name = "total" if report.done else report.bucket
        print(
            f"{name}: {report.listed} listed, {report.referenced} referenced; {verb} {report.orphans} orphans"
            f" ({report.orphan_bytes:,} bytes) and {report.partial_uploads} partial uploads;"
            f" {report.young} too young, {report.foreign} not the service's"
        )
        if not report.done:
            for key in report.sample_keys:
                print(f"  {key}")
    return 0


def put(client: Client, args: argparse.Namespace) -> int:
    """Upload, then queue its derivatives as a job of its own, so the job id can be printed (and watched)."""
    asset = client.upload(args.asset_id, Path(args.file), args.content_type, skip_derivatives=True)
    print(json_format.MessageToJson(asset, preserving_proto_field_name=True))
    if not args.skip_derivatives:
        job = client.create_derivatives([asset.asset_id], lazy=True)  # same bytes again: nothing to redo
        print(f"job {job.job_id}: derivatives of {asset.asset_id} (derivatives watch {job.job_id})", file=sys.stderr)
    return 0


def get(client: Client, args: argparse.Namespace) -> int:
    asset = client.get_asset(args.asset_id)
    print(json_format.MessageToJson(asset, preserving_proto_field_name=True))
    return 0


SCOPES = ("read", "write", "admin")


def new_token(name: str, scopes: list[str]) -> int:
    """Print a random token (to give the caller) and the [[token]] table (for DERIVATIVES_TOKENS_FILE).

    Only the token's SHA-256 goes into the file; the token itself is shown once, here.
    """
    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._@-]{0,127}", name):
        print("name: letters, digits, . _ @ - (at most 128)", file=sys.stderr)
        return 2
    unknown = [s for s in scopes if s not in SCOPES]
    if unknown or not scopes:
        print(f"--scopes: each of {', '.join(SCOPES)}; got {','.join(scopes) or 'nothing'}", file=sys.stderr)
        return 2
    token = "dsk_" + secrets.token_urlsafe(32)
    digest = hashlib.sha256(token.encode()).hexdigest()
    print(f"token (give it to {name}; it is not stored anywhere): {token}", file=sys.stderr)
    listed = ", ".join(f'"{s}"' for s in dict.fromkeys(scopes))
    print(f'[[token]]\nname = "{name}"\nscopes = [{listed}]\nsha256 = "{digest}"')
    return 0


def sign_link_command(args: argparse.Namespace) -> int:
    """A link signed with the first key of DERIVATIVES_LINK_KEYS (KEY_ID=SECRET,...), as the server reads it."""
    keys = [k.strip() for k in os.environ.get("DERIVATIVES_LINK_KEYS", "").split(",") if k.strip()]
    if not keys or "=" not in keys[0]:
        print("set DERIVATIVES_LINK_KEYS=KEY_ID=SECRET (the server's setting) to sign links", file=sys.stderr)
        return 2
    key_id, _, secret = keys[0].partition("=")
    expires = int(time.time() + args.hours * 3600)
    print(sign_link(args.base, args.work_id, "pdf" if args.pdf else "zip", key_id, secret, expires))
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="derivatives", description=__doc__)
    parser.add_argument(
        "--address",
        default=os.environ.get("DERIVATIVES_ADDRESS", "127.0.0.1:50051"),
        help="server address (env DERIVATIVES_ADDRESS; default %(default)s)",
    )
    env = os.environ.get
    parser.add_argument("--token", default=env("DERIVATIVES_TOKEN", ""), help="bearer token (env DERIVATIVES_TOKEN)")
    parser.add_argument(
        "--ca",
        default=env("DERIVATIVES_CA_FILE", ""),
        help="CA of the server's TLS certificate (env DERIVATIVES_CA_FILE)",
    )
    parser.add_argument("--tls", action="store_true", help="TLS with the system's CAs")
    parser.add_argument(
        "--cert",
        default=env("DERIVATIVES_CLIENT_CERT", ""),
        help="client certificate, mTLS (env DERIVATIVES_CLIENT_CERT)",
    )
    parser.add_argument(
        "--key", default=env("DERIVATIVES_CLIENT_KEY", ""), help="its private key (env DERIVATIVES_CLIENT_KEY)"
    )
    commands = parser.add_subparsers(dest="command", required=True)

    p = commands.add_parser("token", help="print a new random bearer token and its line for the tokens file")
    p.add_argument("name", help="the principal's name (shown in the server's logs)")
    p.add_argument("--scopes", default="read", help="comma-separated: read, write, admin (default %(default)s)")
    p.set_defaults(func=None)

    p = commands.add_parser("create-all", help="create derivatives for all (or some) assets, with a progress bar")
    p.add_argument("--lazy", action="store_true", help="skip keys that already exist for the current original")
    p.add_argument("--only", action="append", metavar="KEYS", help="comma-separated keys (may name non-defaults)")
    p.add_argument("--exclude", action="append", metavar="KEYS", help="comma-separated keys to leave out")
    p.add_argument("--asset", action="append", metavar="ID", help="this asset (repeatable)")
    p.add_argument("--work", metavar="ID", help="the member assets of this work")
    p.add_argument("--batch", type=int, default=500, help="assets per job (default %(default)s)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=create_all)

    p = commands.add_parser("watch", help="follow a job (or --bundle) with a progress bar")
    p.add_argument("id")
    p.add_argument("--bundle", action="store_true", help="the id is a bundle id")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=watch)

    p = commands.add_parser("bundle", help="find or build a work's PDF or ZIP and download it")
    p.add_argument("work_id")
    which = p.add_mutually_exclusive_group(required=True)
    which.add_argument("--pdf", action="store_true")
    which.add_argument("--zip", action="store_true")
    p.add_argument("-o", "--output", help="file to write (default: the bundle's filename)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=bundle)

    p = commands.add_parser("put", help="upload a file as an asset's original")
    p.add_argument("asset_id")
    p.add_argument("file")
    p.add_argument("--content-type", default="")
    p.add_argument("--skip-derivatives", action="store_true")
    p.set_defaults(func=put)

    p = commands.add_parser("sign-link", help="print a signed browser download link for a work (docs/browser.md)")
    p.add_argument("work_id")
    which = p.add_mutually_exclusive_group(required=True)
    which.add_argument("--pdf", action="store_true")
    which.add_argument("--zip", action="store_true")
    p.add_argument("--base", default=env("DERIVATIVES_HTTP_BASE", "http://127.0.0.1:8080"), help="the HTTP face's URL")
    p.add_argument("--hours", type=float, default=24.0, help="valid for this long (default %(default)s)")
    p.set_defaults(func=None)

    p = commands.add_parser("gc", help="delete stored objects no row references (admin scope), and wait")
    p.add_argument("--dry-run", action="store_true", help="report what would be deleted, delete nothing")
    p.set_defaults(func=gc)

    p = commands.add_parser("get", help="show an asset and its derivatives as JSON")
    p.add_argument("asset_id")
    p.set_defaults(func=get)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if getattr(args, "batch", 1) < 1:
        print("--batch must be at least 1", file=sys.stderr)
        return 2
    if args.command == "token":
        return new_token(args.name, _split([args.scopes]))
    if args.command == "sign-link":
        return sign_link_command(args)
    try:
        with Client(
            args.address, token=args.token, ca_file=args.ca, cert_file=args.cert, key_file=args.key, tls=args.tls
        ) as client:
            code: int = args.func(client, args)
            return code
    except ClientError as exc:
        print(f"error: {exc}", file=sys.stderr)
        for path, description in exc.violations:
            print(f"  {path}: {description}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    raise SystemExit(main())
