"""Domain errors name domain fields; the server reports the request's field paths."""

from __future__ import annotations

from google.rpc import code_pb2, error_details_pb2, status_pb2

from core.errors import InvalidArgument, NotFound, Reason, ResourceExhausted, quote
from server.status import ERROR_DOMAIN, MAX_MESSAGE, MAX_VIOLATIONS, request_path, to_status


def violations(status: status_pb2.Status) -> list[tuple[str, str]]:
    bad = error_details_pb2.BadRequest()
    assert any(d.Unpack(bad) for d in status.details)
    return [(v.field, v.description) for v in bad.field_violations]


def error_info(status: status_pb2.Status) -> error_details_pb2.ErrorInfo:
    infos = [error_details_pb2.ErrorInfo() for d in status.details if d.Is(error_details_pb2.ErrorInfo.DESCRIPTOR)]
    assert len(infos) == 1, "exactly one ErrorInfo"
    assert next(d for d in status.details if d.Is(infos[0].DESCRIPTOR)).Unpack(infos[0])
    return infos[0]


def test_domain_fields_map_to_request_paths() -> None:
    paths = {"content_type": "header.content_type", "location": "storage_ref"}
    assert request_path("content_type", paths) == "header.content_type"
    assert request_path("location.bucket", paths) == "storage_ref.bucket"
    assert request_path("only[3]", paths) == "only[3]"  # no entry: the same name in the request
    assert request_path("content_types", paths) == "content_types"  # a prefix of a name is not a match


def test_invalid_argument_details_and_message_use_the_request_paths() -> None:
    exc = InvalidArgument([("content_type", "declared image/png but the bytes are image/jpeg"), ("only[0]", "bad")])
    status = to_status(exc, {"content_type": "header.content_type"})
    assert status.code == code_pb2.INVALID_ARGUMENT
    assert violations(status) == [
        ("header.content_type", "declared image/png but the bytes are image/jpeg"),
        ("only[0]", "bad"),
    ]
    assert status.message.startswith("header.content_type: declared image/png")


def test_other_domain_errors_keep_their_code_and_reason() -> None:
    status = to_status(NotFound("asset 'a' not found", Reason.ASSET_NOT_FOUND, asset_id="a"))
    assert status.code == code_pb2.NOT_FOUND
    info = error_info(status)
    assert (info.reason, info.domain, dict(info.metadata)) == ("ASSET_NOT_FOUND", ERROR_DOMAIN, {"asset_id": "a"})
    internal = to_status(ValueError("boom"))
    assert internal.code == code_pb2.INTERNAL and "boom" not in internal.message
    assert error_info(internal).reason == "INTERNAL"
    assert error_info(to_status(InvalidArgument.one("a", "b"))).reason == "INVALID_FIELD"


def test_resource_exhausted_says_when_to_retry() -> None:
    status = to_status(ResourceExhausted("too many jobs", Reason.TOO_MANY_JOBS, 2.5, principal="p"))
    assert status.code == code_pb2.RESOURCE_EXHAUSTED
    retry = error_details_pb2.RetryInfo()
    assert any(d.Unpack(retry) for d in status.details)
    assert retry.retry_delay.ToMilliseconds() == 2500
    assert error_info(status).metadata["principal"] == "p"


def test_a_flood_of_violations_gives_a_short_reply() -> None:
    """100,000 bogus keys of 10 KB each: at most MAX_VIOLATIONS listed, each clipped; a small trailer."""
    huge = "x" * 10_000
    exc = InvalidArgument([(f"only[{i}]", f"unknown key {quote(huge)}") for i in range(100_000)])
    status = to_status(exc)
    listed = violations(status)
    assert len(listed) == MAX_VIOLATIONS + 1 and listed[-1][1] == "and 99,980 more violations"
    assert all(len(f) + len(d) < 400 for f, d in listed)
    assert len(status.message.encode()) <= MAX_MESSAGE
    assert len(status.SerializeToString()) < 8 * 1024


def test_non_ascii_input_counts_in_bytes() -> None:
    """Keys made of emoji: 4 bytes a character, and percent- or base64-encoded in the trailer."""
    emoji = "\U0001f600" * 5_000
    exc = InvalidArgument([(f"only[{i}]", f"unknown key {quote(emoji)}; {emoji[:300]}") for i in range(50)])
    status = to_status(exc)
    assert len(status.message.encode()) <= MAX_MESSAGE
    assert len(status.SerializeToString()) < 5 * 1024
    assert violations(status)[-1][1].startswith("and ")
    assert quote(emoji).isascii()
