"""Domain errors name domain fields; the server reports the request's field paths."""

from __future__ import annotations

from google.rpc import code_pb2, error_details_pb2, status_pb2

from core.errors import InvalidArgument, NotFound
from server.status import request_path, to_status


def violations(status: status_pb2.Status) -> list[tuple[str, str]]:
    bad = error_details_pb2.BadRequest()
    assert status.details[0].Unpack(bad)
    return [(v.field, v.description) for v in bad.field_violations]


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


def test_other_domain_errors_keep_their_code() -> None:
    assert to_status(NotFound("asset 'a' not found")).code == code_pb2.NOT_FOUND
    internal = to_status(ValueError("boom"))
    assert internal.code == code_pb2.INTERNAL and "boom" not in internal.message
