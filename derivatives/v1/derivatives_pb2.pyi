import datetime

from google.protobuf import empty_pb2 as _empty_pb2
from google.protobuf import timestamp_pb2 as _timestamp_pb2
from google.rpc import status_pb2 as _status_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class Stage(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    STAGE_UNSPECIFIED: _ClassVar[Stage]
    STAGE_QUEUED: _ClassVar[Stage]
    STAGE_RUNNING: _ClassVar[Stage]
    STAGE_FINISHING: _ClassVar[Stage]
    STAGE_SUCCEEDED: _ClassVar[Stage]
    STAGE_FAILED: _ClassVar[Stage]

class JobKind(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    JOB_KIND_UNSPECIFIED: _ClassVar[JobKind]
    JOB_KIND_CREATE_DERIVATIVES: _ClassVar[JobKind]
    JOB_KIND_BUILD_BUNDLE: _ClassVar[JobKind]

class BundleKind(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    BUNDLE_KIND_UNSPECIFIED: _ClassVar[BundleKind]
    BUNDLE_KIND_PDF: _ClassVar[BundleKind]
    BUNDLE_KIND_ZIP: _ClassVar[BundleKind]

class BundleStatus(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    BUNDLE_STATUS_UNSPECIFIED: _ClassVar[BundleStatus]
    BUNDLE_STATUS_IN_PROGRESS: _ClassVar[BundleStatus]
    BUNDLE_STATUS_SUCCESS: _ClassVar[BundleStatus]
    BUNDLE_STATUS_ERROR: _ClassVar[BundleStatus]
STAGE_UNSPECIFIED: Stage
STAGE_QUEUED: Stage
STAGE_RUNNING: Stage
STAGE_FINISHING: Stage
STAGE_SUCCEEDED: Stage
STAGE_FAILED: Stage
JOB_KIND_UNSPECIFIED: JobKind
JOB_KIND_CREATE_DERIVATIVES: JobKind
JOB_KIND_BUILD_BUNDLE: JobKind
BUNDLE_KIND_UNSPECIFIED: BundleKind
BUNDLE_KIND_PDF: BundleKind
BUNDLE_KIND_ZIP: BundleKind
BUNDLE_STATUS_UNSPECIFIED: BundleStatus
BUNDLE_STATUS_IN_PROGRESS: BundleStatus
BUNDLE_STATUS_SUCCESS: BundleStatus
BUNDLE_STATUS_ERROR: BundleStatus

class StorageRef(_message.Message):
    __slots__ = ("bucket", "key")
    BUCKET_FIELD_NUMBER: _ClassVar[int]
    KEY_FIELD_NUMBER: _ClassVar[int]
    bucket: str
    key: str
    def __init__(self, bucket: _Optional[str] = ..., key: _Optional[str] = ...) -> None: ...

class PutAssetRequest(_message.Message):
    __slots__ = ("asset_id", "content_type", "storage_ref", "data", "skip_derivatives", "filename")
    ASSET_ID_FIELD_NUMBER: _ClassVar[int]
    CONTENT_TYPE_FIELD_NUMBER: _ClassVar[int]
    STORAGE_REF_FIELD_NUMBER: _ClassVar[int]
    DATA_FIELD_NUMBER: _ClassVar[int]
    SKIP_DERIVATIVES_FIELD_NUMBER: _ClassVar[int]
    FILENAME_FIELD_NUMBER: _ClassVar[int]
    asset_id: str
    content_type: str
    storage_ref: StorageRef
    data: bytes
    skip_derivatives: bool
    filename: str
    def __init__(self, asset_id: _Optional[str] = ..., content_type: _Optional[str] = ..., storage_ref: _Optional[_Union[StorageRef, _Mapping]] = ..., data: _Optional[bytes] = ..., skip_derivatives: _Optional[bool] = ..., filename: _Optional[str] = ...) -> None: ...

class UploadOriginalHeader(_message.Message):
    __slots__ = ("asset_id", "content_type", "skip_derivatives", "filename", "expected_sha512")
    ASSET_ID_FIELD_NUMBER: _ClassVar[int]
    CONTENT_TYPE_FIELD_NUMBER: _ClassVar[int]
    SKIP_DERIVATIVES_FIELD_NUMBER: _ClassVar[int]
    FILENAME_FIELD_NUMBER: _ClassVar[int]
    EXPECTED_SHA512_FIELD_NUMBER: _ClassVar[int]
    asset_id: str
    content_type: str
    skip_derivatives: bool
    filename: str
    expected_sha512: str
    def __init__(self, asset_id: _Optional[str] = ..., content_type: _Optional[str] = ..., skip_derivatives: _Optional[bool] = ..., filename: _Optional[str] = ..., expected_sha512: _Optional[str] = ...) -> None: ...

class UploadOriginalRequest(_message.Message):
    __slots__ = ("header", "chunk")
    HEADER_FIELD_NUMBER: _ClassVar[int]
    CHUNK_FIELD_NUMBER: _ClassVar[int]
    header: UploadOriginalHeader
    chunk: bytes
    def __init__(self, header: _Optional[_Union[UploadOriginalHeader, _Mapping]] = ..., chunk: _Optional[bytes] = ...) -> None: ...

class GetAssetRequest(_message.Message):
    __slots__ = ("asset_id",)
    ASSET_ID_FIELD_NUMBER: _ClassVar[int]
    asset_id: str
    def __init__(self, asset_id: _Optional[str] = ...) -> None: ...

class ListAssetsRequest(_message.Message):
    __slots__ = ("page_size", "page_token")
    PAGE_SIZE_FIELD_NUMBER: _ClassVar[int]
    PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    page_size: int
    page_token: str
    def __init__(self, page_size: _Optional[int] = ..., page_token: _Optional[str] = ...) -> None: ...

class ListAssetsResponse(_message.Message):
    __slots__ = ("asset_ids", "next_page_token")
    ASSET_IDS_FIELD_NUMBER: _ClassVar[int]
    NEXT_PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    asset_ids: _containers.RepeatedScalarFieldContainer[str]
    next_page_token: str
    def __init__(self, asset_ids: _Optional[_Iterable[str]] = ..., next_page_token: _Optional[str] = ...) -> None: ...

class DeleteAssetRequest(_message.Message):
    __slots__ = ("asset_id",)
    ASSET_ID_FIELD_NUMBER: _ClassVar[int]
    asset_id: str
    def __init__(self, asset_id: _Optional[str] = ...) -> None: ...

class Asset(_message.Message):
    __slots__ = ("asset_id", "content_type", "size_bytes", "sha512", "width", "height", "filename", "original", "created_at", "updated_at", "derivatives_created", "derivatives", "derivative_failures")
    ASSET_ID_FIELD_NUMBER: _ClassVar[int]
    CONTENT_TYPE_FIELD_NUMBER: _ClassVar[int]
    SIZE_BYTES_FIELD_NUMBER: _ClassVar[int]
    SHA512_FIELD_NUMBER: _ClassVar[int]
    WIDTH_FIELD_NUMBER: _ClassVar[int]
    HEIGHT_FIELD_NUMBER: _ClassVar[int]
    FILENAME_FIELD_NUMBER: _ClassVar[int]
    ORIGINAL_FIELD_NUMBER: _ClassVar[int]
    CREATED_AT_FIELD_NUMBER: _ClassVar[int]
    UPDATED_AT_FIELD_NUMBER: _ClassVar[int]
    DERIVATIVES_CREATED_FIELD_NUMBER: _ClassVar[int]
    DERIVATIVES_FIELD_NUMBER: _ClassVar[int]
    DERIVATIVE_FAILURES_FIELD_NUMBER: _ClassVar[int]
    asset_id: str
    content_type: str
    size_bytes: int
    sha512: str
    width: int
    height: int
    filename: str
    original: StorageRef
    created_at: _timestamp_pb2.Timestamp
    updated_at: _timestamp_pb2.Timestamp
    derivatives_created: bool
    derivatives: _containers.RepeatedCompositeFieldContainer[Derivative]
    derivative_failures: _containers.RepeatedCompositeFieldContainer[DerivativeFailure]
    def __init__(self, asset_id: _Optional[str] = ..., content_type: _Optional[str] = ..., size_bytes: _Optional[int] = ..., sha512: _Optional[str] = ..., width: _Optional[int] = ..., height: _Optional[int] = ..., filename: _Optional[str] = ..., original: _Optional[_Union[StorageRef, _Mapping]] = ..., created_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., updated_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., derivatives_created: _Optional[bool] = ..., derivatives: _Optional[_Iterable[_Union[Derivative, _Mapping]]] = ..., derivative_failures: _Optional[_Iterable[_Union[DerivativeFailure, _Mapping]]] = ...) -> None: ...

class DerivativeFailure(_message.Message):
    __slots__ = ("key", "reason", "failed_at")
    KEY_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    FAILED_AT_FIELD_NUMBER: _ClassVar[int]
    key: str
    reason: str
    failed_at: _timestamp_pb2.Timestamp
    def __init__(self, key: _Optional[str] = ..., reason: _Optional[str] = ..., failed_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ...) -> None: ...

class Derivative(_message.Message):
    __slots__ = ("asset_id", "key", "content_type", "size_bytes", "width", "height", "sha512", "original_sha512", "created_at", "location", "url", "filename", "metadata", "url_expires_at")
    class MetadataEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    ASSET_ID_FIELD_NUMBER: _ClassVar[int]
    KEY_FIELD_NUMBER: _ClassVar[int]
    CONTENT_TYPE_FIELD_NUMBER: _ClassVar[int]
    SIZE_BYTES_FIELD_NUMBER: _ClassVar[int]
    WIDTH_FIELD_NUMBER: _ClassVar[int]
    HEIGHT_FIELD_NUMBER: _ClassVar[int]
    SHA512_FIELD_NUMBER: _ClassVar[int]
    ORIGINAL_SHA512_FIELD_NUMBER: _ClassVar[int]
    CREATED_AT_FIELD_NUMBER: _ClassVar[int]
    LOCATION_FIELD_NUMBER: _ClassVar[int]
    URL_FIELD_NUMBER: _ClassVar[int]
    FILENAME_FIELD_NUMBER: _ClassVar[int]
    METADATA_FIELD_NUMBER: _ClassVar[int]
    URL_EXPIRES_AT_FIELD_NUMBER: _ClassVar[int]
    asset_id: str
    key: str
    content_type: str
    size_bytes: int
    width: int
    height: int
    sha512: str
    original_sha512: str
    created_at: _timestamp_pb2.Timestamp
    location: StorageRef
    url: str
    filename: str
    metadata: _containers.ScalarMap[str, str]
    url_expires_at: _timestamp_pb2.Timestamp
    def __init__(self, asset_id: _Optional[str] = ..., key: _Optional[str] = ..., content_type: _Optional[str] = ..., size_bytes: _Optional[int] = ..., width: _Optional[int] = ..., height: _Optional[int] = ..., sha512: _Optional[str] = ..., original_sha512: _Optional[str] = ..., created_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., location: _Optional[_Union[StorageRef, _Mapping]] = ..., url: _Optional[str] = ..., filename: _Optional[str] = ..., metadata: _Optional[_Mapping[str, str]] = ..., url_expires_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ...) -> None: ...

class PutWorkRequest(_message.Message):
    __slots__ = ("work_id", "title", "member_asset_ids", "creator", "url")
    WORK_ID_FIELD_NUMBER: _ClassVar[int]
    TITLE_FIELD_NUMBER: _ClassVar[int]
    MEMBER_ASSET_IDS_FIELD_NUMBER: _ClassVar[int]
    CREATOR_FIELD_NUMBER: _ClassVar[int]
    URL_FIELD_NUMBER: _ClassVar[int]
    work_id: str
    title: str
    member_asset_ids: _containers.RepeatedScalarFieldContainer[str]
    creator: str
    url: str
    def __init__(self, work_id: _Optional[str] = ..., title: _Optional[str] = ..., member_asset_ids: _Optional[_Iterable[str]] = ..., creator: _Optional[str] = ..., url: _Optional[str] = ...) -> None: ...

class GetWorkRequest(_message.Message):
    __slots__ = ("work_id",)
    WORK_ID_FIELD_NUMBER: _ClassVar[int]
    work_id: str
    def __init__(self, work_id: _Optional[str] = ...) -> None: ...

class Work(_message.Message):
    __slots__ = ("work_id", "title", "member_asset_ids", "creator", "url", "created_at", "updated_at")
    WORK_ID_FIELD_NUMBER: _ClassVar[int]
    TITLE_FIELD_NUMBER: _ClassVar[int]
    MEMBER_ASSET_IDS_FIELD_NUMBER: _ClassVar[int]
    CREATOR_FIELD_NUMBER: _ClassVar[int]
    URL_FIELD_NUMBER: _ClassVar[int]
    CREATED_AT_FIELD_NUMBER: _ClassVar[int]
    UPDATED_AT_FIELD_NUMBER: _ClassVar[int]
    work_id: str
    title: str
    member_asset_ids: _containers.RepeatedScalarFieldContainer[str]
    creator: str
    url: str
    created_at: _timestamp_pb2.Timestamp
    updated_at: _timestamp_pb2.Timestamp
    def __init__(self, work_id: _Optional[str] = ..., title: _Optional[str] = ..., member_asset_ids: _Optional[_Iterable[str]] = ..., creator: _Optional[str] = ..., url: _Optional[str] = ..., created_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., updated_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ...) -> None: ...

class ListDerivativeDefinitionsRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class ListDerivativeDefinitionsResponse(_message.Message):
    __slots__ = ("definitions",)
    DEFINITIONS_FIELD_NUMBER: _ClassVar[int]
    definitions: _containers.RepeatedCompositeFieldContainer[DerivativeDefinition]
    def __init__(self, definitions: _Optional[_Iterable[_Union[DerivativeDefinition, _Mapping]]] = ...) -> None: ...

class DerivativeDefinition(_message.Message):
    __slots__ = ("key", "content_types", "default_create", "bucket", "transformer", "max_width", "thumbnail_mode", "quality", "options")
    class OptionsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    KEY_FIELD_NUMBER: _ClassVar[int]
    CONTENT_TYPES_FIELD_NUMBER: _ClassVar[int]
    DEFAULT_CREATE_FIELD_NUMBER: _ClassVar[int]
    BUCKET_FIELD_NUMBER: _ClassVar[int]
    TRANSFORMER_FIELD_NUMBER: _ClassVar[int]
    MAX_WIDTH_FIELD_NUMBER: _ClassVar[int]
    THUMBNAIL_MODE_FIELD_NUMBER: _ClassVar[int]
    QUALITY_FIELD_NUMBER: _ClassVar[int]
    OPTIONS_FIELD_NUMBER: _ClassVar[int]
    key: str
    content_types: _containers.RepeatedScalarFieldContainer[str]
    default_create: bool
    bucket: str
    transformer: str
    max_width: int
    thumbnail_mode: bool
    quality: int
    options: _containers.ScalarMap[str, str]
    def __init__(self, key: _Optional[str] = ..., content_types: _Optional[_Iterable[str]] = ..., default_create: _Optional[bool] = ..., bucket: _Optional[str] = ..., transformer: _Optional[str] = ..., max_width: _Optional[int] = ..., thumbnail_mode: _Optional[bool] = ..., quality: _Optional[int] = ..., options: _Optional[_Mapping[str, str]] = ...) -> None: ...

class CreateDerivativesRequest(_message.Message):
    __slots__ = ("asset_ids", "only", "exclude", "lazy")
    ASSET_IDS_FIELD_NUMBER: _ClassVar[int]
    ONLY_FIELD_NUMBER: _ClassVar[int]
    EXCLUDE_FIELD_NUMBER: _ClassVar[int]
    LAZY_FIELD_NUMBER: _ClassVar[int]
    asset_ids: _containers.RepeatedScalarFieldContainer[str]
    only: _containers.RepeatedScalarFieldContainer[str]
    exclude: _containers.RepeatedScalarFieldContainer[str]
    lazy: bool
    def __init__(self, asset_ids: _Optional[_Iterable[str]] = ..., only: _Optional[_Iterable[str]] = ..., exclude: _Optional[_Iterable[str]] = ..., lazy: _Optional[bool] = ...) -> None: ...

class GetJobRequest(_message.Message):
    __slots__ = ("job_id",)
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    job_id: str
    def __init__(self, job_id: _Optional[str] = ...) -> None: ...

class Job(_message.Message):
    __slots__ = ("job_id", "kind", "stage", "done", "total", "created_at", "updated_at", "failures", "error", "attempts")
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    KIND_FIELD_NUMBER: _ClassVar[int]
    STAGE_FIELD_NUMBER: _ClassVar[int]
    DONE_FIELD_NUMBER: _ClassVar[int]
    TOTAL_FIELD_NUMBER: _ClassVar[int]
    CREATED_AT_FIELD_NUMBER: _ClassVar[int]
    UPDATED_AT_FIELD_NUMBER: _ClassVar[int]
    FAILURES_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    ATTEMPTS_FIELD_NUMBER: _ClassVar[int]
    job_id: str
    kind: JobKind
    stage: Stage
    done: int
    total: int
    created_at: _timestamp_pb2.Timestamp
    updated_at: _timestamp_pb2.Timestamp
    failures: _containers.RepeatedCompositeFieldContainer[AssetFailure]
    error: _status_pb2.Status
    attempts: int
    def __init__(self, job_id: _Optional[str] = ..., kind: _Optional[_Union[JobKind, str]] = ..., stage: _Optional[_Union[Stage, str]] = ..., done: _Optional[int] = ..., total: _Optional[int] = ..., created_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., updated_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., failures: _Optional[_Iterable[_Union[AssetFailure, _Mapping]]] = ..., error: _Optional[_Union[_status_pb2.Status, _Mapping]] = ..., attempts: _Optional[int] = ...) -> None: ...

class AssetFailure(_message.Message):
    __slots__ = ("asset_id", "key", "reason")
    ASSET_ID_FIELD_NUMBER: _ClassVar[int]
    KEY_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    asset_id: str
    key: str
    reason: str
    def __init__(self, asset_id: _Optional[str] = ..., key: _Optional[str] = ..., reason: _Optional[str] = ...) -> None: ...

class UpdateDerivativeHeader(_message.Message):
    __slots__ = ("asset_id", "key", "content_type", "metadata", "expected_original_sha512")
    class MetadataEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    ASSET_ID_FIELD_NUMBER: _ClassVar[int]
    KEY_FIELD_NUMBER: _ClassVar[int]
    CONTENT_TYPE_FIELD_NUMBER: _ClassVar[int]
    METADATA_FIELD_NUMBER: _ClassVar[int]
    EXPECTED_ORIGINAL_SHA512_FIELD_NUMBER: _ClassVar[int]
    asset_id: str
    key: str
    content_type: str
    metadata: _containers.ScalarMap[str, str]
    expected_original_sha512: str
    def __init__(self, asset_id: _Optional[str] = ..., key: _Optional[str] = ..., content_type: _Optional[str] = ..., metadata: _Optional[_Mapping[str, str]] = ..., expected_original_sha512: _Optional[str] = ...) -> None: ...

class UpdateDerivativeRequest(_message.Message):
    __slots__ = ("header", "chunk")
    HEADER_FIELD_NUMBER: _ClassVar[int]
    CHUNK_FIELD_NUMBER: _ClassVar[int]
    header: UpdateDerivativeHeader
    chunk: bytes
    def __init__(self, header: _Optional[_Union[UpdateDerivativeHeader, _Mapping]] = ..., chunk: _Optional[bytes] = ...) -> None: ...

class RemoveDerivativeRequest(_message.Message):
    __slots__ = ("asset_id", "key")
    ASSET_ID_FIELD_NUMBER: _ClassVar[int]
    KEY_FIELD_NUMBER: _ClassVar[int]
    asset_id: str
    key: str
    def __init__(self, asset_id: _Optional[str] = ..., key: _Optional[str] = ...) -> None: ...

class FindOrCreateBundleRequest(_message.Message):
    __slots__ = ("work_id", "kind")
    WORK_ID_FIELD_NUMBER: _ClassVar[int]
    KIND_FIELD_NUMBER: _ClassVar[int]
    work_id: str
    kind: BundleKind
    def __init__(self, work_id: _Optional[str] = ..., kind: _Optional[_Union[BundleKind, str]] = ...) -> None: ...

class Bundle(_message.Message):
    __slots__ = ("bundle_id", "work_id", "kind", "status", "stage", "done", "total", "checksum", "size_bytes", "filename", "url", "url_expires_at", "error", "created_at", "updated_at", "last_accessed_at")
    BUNDLE_ID_FIELD_NUMBER: _ClassVar[int]
    WORK_ID_FIELD_NUMBER: _ClassVar[int]
    KIND_FIELD_NUMBER: _ClassVar[int]
    STATUS_FIELD_NUMBER: _ClassVar[int]
    STAGE_FIELD_NUMBER: _ClassVar[int]
    DONE_FIELD_NUMBER: _ClassVar[int]
    TOTAL_FIELD_NUMBER: _ClassVar[int]
    CHECKSUM_FIELD_NUMBER: _ClassVar[int]
    SIZE_BYTES_FIELD_NUMBER: _ClassVar[int]
    FILENAME_FIELD_NUMBER: _ClassVar[int]
    URL_FIELD_NUMBER: _ClassVar[int]
    URL_EXPIRES_AT_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    CREATED_AT_FIELD_NUMBER: _ClassVar[int]
    UPDATED_AT_FIELD_NUMBER: _ClassVar[int]
    LAST_ACCESSED_AT_FIELD_NUMBER: _ClassVar[int]
    bundle_id: str
    work_id: str
    kind: BundleKind
    status: BundleStatus
    stage: Stage
    done: int
    total: int
    checksum: str
    size_bytes: int
    filename: str
    url: str
    url_expires_at: _timestamp_pb2.Timestamp
    error: str
    created_at: _timestamp_pb2.Timestamp
    updated_at: _timestamp_pb2.Timestamp
    last_accessed_at: _timestamp_pb2.Timestamp
    def __init__(self, bundle_id: _Optional[str] = ..., work_id: _Optional[str] = ..., kind: _Optional[_Union[BundleKind, str]] = ..., status: _Optional[_Union[BundleStatus, str]] = ..., stage: _Optional[_Union[Stage, str]] = ..., done: _Optional[int] = ..., total: _Optional[int] = ..., checksum: _Optional[str] = ..., size_bytes: _Optional[int] = ..., filename: _Optional[str] = ..., url: _Optional[str] = ..., url_expires_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., error: _Optional[str] = ..., created_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., updated_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., last_accessed_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ...) -> None: ...

class ReadBundleRequest(_message.Message):
    __slots__ = ("bundle_id", "offset")
    BUNDLE_ID_FIELD_NUMBER: _ClassVar[int]
    OFFSET_FIELD_NUMBER: _ClassVar[int]
    bundle_id: str
    offset: int
    def __init__(self, bundle_id: _Optional[str] = ..., offset: _Optional[int] = ...) -> None: ...

class ReadBundleResponse(_message.Message):
    __slots__ = ("chunk", "offset", "total_size")
    CHUNK_FIELD_NUMBER: _ClassVar[int]
    OFFSET_FIELD_NUMBER: _ClassVar[int]
    TOTAL_SIZE_FIELD_NUMBER: _ClassVar[int]
    chunk: bytes
    offset: int
    total_size: int
    def __init__(self, chunk: _Optional[bytes] = ..., offset: _Optional[int] = ..., total_size: _Optional[int] = ...) -> None: ...

class WatchProgressRequest(_message.Message):
    __slots__ = ("job_id", "bundle_id", "after_seq")
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    BUNDLE_ID_FIELD_NUMBER: _ClassVar[int]
    AFTER_SEQ_FIELD_NUMBER: _ClassVar[int]
    job_id: str
    bundle_id: str
    after_seq: int
    def __init__(self, job_id: _Optional[str] = ..., bundle_id: _Optional[str] = ..., after_seq: _Optional[int] = ...) -> None: ...

class ProgressEvent(_message.Message):
    __slots__ = ("seq", "stage", "done", "total", "updated_at", "snapshot", "heartbeat", "job", "bundle", "error", "attempt")
    SEQ_FIELD_NUMBER: _ClassVar[int]
    STAGE_FIELD_NUMBER: _ClassVar[int]
    DONE_FIELD_NUMBER: _ClassVar[int]
    TOTAL_FIELD_NUMBER: _ClassVar[int]
    UPDATED_AT_FIELD_NUMBER: _ClassVar[int]
    SNAPSHOT_FIELD_NUMBER: _ClassVar[int]
    HEARTBEAT_FIELD_NUMBER: _ClassVar[int]
    JOB_FIELD_NUMBER: _ClassVar[int]
    BUNDLE_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    ATTEMPT_FIELD_NUMBER: _ClassVar[int]
    seq: int
    stage: Stage
    done: int
    total: int
    updated_at: _timestamp_pb2.Timestamp
    snapshot: bool
    heartbeat: bool
    job: Job
    bundle: Bundle
    error: _status_pb2.Status
    attempt: int
    def __init__(self, seq: _Optional[int] = ..., stage: _Optional[_Union[Stage, str]] = ..., done: _Optional[int] = ..., total: _Optional[int] = ..., updated_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., snapshot: _Optional[bool] = ..., heartbeat: _Optional[bool] = ..., job: _Optional[_Union[Job, _Mapping]] = ..., bundle: _Optional[_Union[Bundle, _Mapping]] = ..., error: _Optional[_Union[_status_pb2.Status, _Mapping]] = ..., attempt: _Optional[int] = ...) -> None: ...

class ReclaimStorageRequest(_message.Message):
    __slots__ = ("dry_run",)
    DRY_RUN_FIELD_NUMBER: _ClassVar[int]
    dry_run: bool
    def __init__(self, dry_run: _Optional[bool] = ...) -> None: ...

class ReclaimStorageResponse(_message.Message):
    __slots__ = ("bucket", "listed", "referenced", "foreign", "young", "orphans", "orphan_bytes", "partial_uploads", "sample_keys", "done", "dry_run")
    BUCKET_FIELD_NUMBER: _ClassVar[int]
    LISTED_FIELD_NUMBER: _ClassVar[int]
    REFERENCED_FIELD_NUMBER: _ClassVar[int]
    FOREIGN_FIELD_NUMBER: _ClassVar[int]
    YOUNG_FIELD_NUMBER: _ClassVar[int]
    ORPHANS_FIELD_NUMBER: _ClassVar[int]
    ORPHAN_BYTES_FIELD_NUMBER: _ClassVar[int]
    PARTIAL_UPLOADS_FIELD_NUMBER: _ClassVar[int]
    SAMPLE_KEYS_FIELD_NUMBER: _ClassVar[int]
    DONE_FIELD_NUMBER: _ClassVar[int]
    DRY_RUN_FIELD_NUMBER: _ClassVar[int]
    bucket: str
    listed: int
    referenced: int
    foreign: int
    young: int
    orphans: int
    orphan_bytes: int
    partial_uploads: int
    sample_keys: _containers.RepeatedScalarFieldContainer[str]
    done: bool
    dry_run: bool
    def __init__(self, bucket: _Optional[str] = ..., listed: _Optional[int] = ..., referenced: _Optional[int] = ..., foreign: _Optional[int] = ..., young: _Optional[int] = ..., orphans: _Optional[int] = ..., orphan_bytes: _Optional[int] = ..., partial_uploads: _Optional[int] = ..., sample_keys: _Optional[_Iterable[str]] = ..., done: _Optional[bool] = ..., dry_run: _Optional[bool] = ...) -> None: ...
