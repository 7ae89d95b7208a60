from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable
from typing import ClassVar as _ClassVar, Optional as _Optional

DESCRIPTOR: _descriptor.FileDescriptor

class Empty(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class Json(_message.Message):
    __slots__ = ("json",)
    JSON_FIELD_NUMBER: _ClassVar[int]
    json: str
    def __init__(self, json: _Optional[str] = ...) -> None: ...

class Name(_message.Message):
    __slots__ = ("name",)
    NAME_FIELD_NUMBER: _ClassVar[int]
    name: str
    def __init__(self, name: _Optional[str] = ...) -> None: ...

class RegisterRequest(_message.Message):
    __slots__ = ("name", "locations", "format", "parser", "parser_options_json", "on_error", "replace", "workers")
    NAME_FIELD_NUMBER: _ClassVar[int]
    LOCATIONS_FIELD_NUMBER: _ClassVar[int]
    FORMAT_FIELD_NUMBER: _ClassVar[int]
    PARSER_FIELD_NUMBER: _ClassVar[int]
    PARSER_OPTIONS_JSON_FIELD_NUMBER: _ClassVar[int]
    ON_ERROR_FIELD_NUMBER: _ClassVar[int]
    REPLACE_FIELD_NUMBER: _ClassVar[int]
    WORKERS_FIELD_NUMBER: _ClassVar[int]
    name: str
    locations: _containers.RepeatedScalarFieldContainer[str]
    format: str
    parser: str
    parser_options_json: str
    on_error: str
    replace: bool
    workers: int
    def __init__(self, name: _Optional[str] = ..., locations: _Optional[_Iterable[str]] = ..., format: _Optional[str] = ..., parser: _Optional[str] = ..., parser_options_json: _Optional[str] = ..., on_error: _Optional[str] = ..., replace: _Optional[bool] = ..., workers: _Optional[int] = ...) -> None: ...

class RegisterProgress(_message.Message):
    __slots__ = ("files_done", "files_total", "path", "report_json")
    FILES_DONE_FIELD_NUMBER: _ClassVar[int]
    FILES_TOTAL_FIELD_NUMBER: _ClassVar[int]
    PATH_FIELD_NUMBER: _ClassVar[int]
    REPORT_JSON_FIELD_NUMBER: _ClassVar[int]
    files_done: int
    files_total: int
    path: str
    report_json: str
    def __init__(self, files_done: _Optional[int] = ..., files_total: _Optional[int] = ..., path: _Optional[str] = ..., report_json: _Optional[str] = ...) -> None: ...

class ExecuteRequest(_message.Message):
    __slots__ = ("spec_json",)
    SPEC_JSON_FIELD_NUMBER: _ClassVar[int]
    spec_json: str
    def __init__(self, spec_json: _Optional[str] = ...) -> None: ...

class ExecuteProgress(_message.Message):
    __slots__ = ("stage", "job_id", "done")
    STAGE_FIELD_NUMBER: _ClassVar[int]
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    DONE_FIELD_NUMBER: _ClassVar[int]
    stage: str
    job_id: str
    done: bool
    def __init__(self, stage: _Optional[str] = ..., job_id: _Optional[str] = ..., done: _Optional[bool] = ...) -> None: ...

class JobRequest(_message.Message):
    __slots__ = ("job_id",)
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    job_id: str
    def __init__(self, job_id: _Optional[str] = ...) -> None: ...

class JobDescription(_message.Message):
    __slots__ = ("job_json", "index", "files")
    JOB_JSON_FIELD_NUMBER: _ClassVar[int]
    INDEX_FIELD_NUMBER: _ClassVar[int]
    FILES_FIELD_NUMBER: _ClassVar[int]
    job_json: bytes
    index: bytes
    files: bytes
    def __init__(self, job_json: _Optional[bytes] = ..., index: _Optional[bytes] = ..., files: _Optional[bytes] = ...) -> None: ...

class ChunkRequest(_message.Message):
    __slots__ = ("job_id", "index", "snapshot_json")
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    INDEX_FIELD_NUMBER: _ClassVar[int]
    SNAPSHOT_JSON_FIELD_NUMBER: _ClassVar[int]
    job_id: str
    index: int
    snapshot_json: str
    def __init__(self, job_id: _Optional[str] = ..., index: _Optional[int] = ..., snapshot_json: _Optional[str] = ...) -> None: ...

class ChunkReply(_message.Message):
    __slots__ = ("ended", "index", "comps", "file_ids", "starts", "stops", "before_json", "pending", "spans")
    ENDED_FIELD_NUMBER: _ClassVar[int]
    INDEX_FIELD_NUMBER: _ClassVar[int]
    COMPS_FIELD_NUMBER: _ClassVar[int]
    FILE_IDS_FIELD_NUMBER: _ClassVar[int]
    STARTS_FIELD_NUMBER: _ClassVar[int]
    STOPS_FIELD_NUMBER: _ClassVar[int]
    BEFORE_JSON_FIELD_NUMBER: _ClassVar[int]
    PENDING_FIELD_NUMBER: _ClassVar[int]
    SPANS_FIELD_NUMBER: _ClassVar[int]
    ended: bool
    index: int
    comps: bytes
    file_ids: bytes
    starts: bytes
    stops: bytes
    before_json: str
    pending: bool
    spans: bytes
    def __init__(self, ended: _Optional[bool] = ..., index: _Optional[int] = ..., comps: _Optional[bytes] = ..., file_ids: _Optional[bytes] = ..., starts: _Optional[bytes] = ..., stops: _Optional[bytes] = ..., before_json: _Optional[str] = ..., pending: _Optional[bool] = ..., spans: _Optional[bytes] = ...) -> None: ...

class MixtureRequest(_message.Message):
    __slots__ = ("job_id", "since")
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    SINCE_FIELD_NUMBER: _ClassVar[int]
    job_id: str
    since: int
    def __init__(self, job_id: _Optional[str] = ..., since: _Optional[int] = ...) -> None: ...

class ReadRequest(_message.Message):
    __slots__ = ("job_id", "file_id", "starts", "stops")
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    FILE_ID_FIELD_NUMBER: _ClassVar[int]
    STARTS_FIELD_NUMBER: _ClassVar[int]
    STOPS_FIELD_NUMBER: _ClassVar[int]
    job_id: str
    file_id: int
    starts: _containers.RepeatedScalarFieldContainer[int]
    stops: _containers.RepeatedScalarFieldContainer[int]
    def __init__(self, job_id: _Optional[str] = ..., file_id: _Optional[int] = ..., starts: _Optional[_Iterable[int]] = ..., stops: _Optional[_Iterable[int]] = ...) -> None: ...

class ReadReply(_message.Message):
    __slots__ = ("sample_index", "records_json")
    SAMPLE_INDEX_FIELD_NUMBER: _ClassVar[int]
    RECORDS_JSON_FIELD_NUMBER: _ClassVar[int]
    sample_index: _containers.RepeatedScalarFieldContainer[int]
    records_json: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, sample_index: _Optional[_Iterable[int]] = ..., records_json: _Optional[_Iterable[str]] = ...) -> None: ...

class FeedbackRequest(_message.Message):
    __slots__ = ("job_id", "step", "losses", "counts", "position")
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    STEP_FIELD_NUMBER: _ClassVar[int]
    LOSSES_FIELD_NUMBER: _ClassVar[int]
    COUNTS_FIELD_NUMBER: _ClassVar[int]
    POSITION_FIELD_NUMBER: _ClassVar[int]
    job_id: str
    step: int
    losses: _containers.RepeatedScalarFieldContainer[float]
    counts: _containers.RepeatedScalarFieldContainer[float]
    position: int
    def __init__(self, job_id: _Optional[str] = ..., step: _Optional[int] = ..., losses: _Optional[_Iterable[float]] = ..., counts: _Optional[_Iterable[float]] = ..., position: _Optional[int] = ...) -> None: ...

class StepRequest(_message.Message):
    __slots__ = ("job_id", "step", "position")
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    STEP_FIELD_NUMBER: _ClassVar[int]
    POSITION_FIELD_NUMBER: _ClassVar[int]
    job_id: str
    step: int
    position: int
    def __init__(self, job_id: _Optional[str] = ..., step: _Optional[int] = ..., position: _Optional[int] = ...) -> None: ...

class DeliveredRequest(_message.Message):
    __slots__ = ("job_id", "counts")
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    COUNTS_FIELD_NUMBER: _ClassVar[int]
    job_id: str
    counts: _containers.RepeatedScalarFieldContainer[int]
    def __init__(self, job_id: _Optional[str] = ..., counts: _Optional[_Iterable[int]] = ...) -> None: ...

class RestoreRequest(_message.Message):
    __slots__ = ("job_id", "state_json")
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    STATE_JSON_FIELD_NUMBER: _ClassVar[int]
    job_id: str
    state_json: str
    def __init__(self, job_id: _Optional[str] = ..., state_json: _Optional[str] = ...) -> None: ...

class TokenizeRequest(_message.Message):
    __slots__ = ("datasets", "tokenizer", "tokenizer_source", "tokenizer_options_json", "add_bos", "add_eos", "text_field", "workers")
    DATASETS_FIELD_NUMBER: _ClassVar[int]
    TOKENIZER_FIELD_NUMBER: _ClassVar[int]
    TOKENIZER_SOURCE_FIELD_NUMBER: _ClassVar[int]
    TOKENIZER_OPTIONS_JSON_FIELD_NUMBER: _ClassVar[int]
    ADD_BOS_FIELD_NUMBER: _ClassVar[int]
    ADD_EOS_FIELD_NUMBER: _ClassVar[int]
    TEXT_FIELD_FIELD_NUMBER: _ClassVar[int]
    WORKERS_FIELD_NUMBER: _ClassVar[int]
    datasets: _containers.RepeatedScalarFieldContainer[str]
    tokenizer: str
    tokenizer_source: str
    tokenizer_options_json: str
    add_bos: bool
    add_eos: bool
    text_field: str
    workers: int
    def __init__(self, datasets: _Optional[_Iterable[str]] = ..., tokenizer: _Optional[str] = ..., tokenizer_source: _Optional[str] = ..., tokenizer_options_json: _Optional[str] = ..., add_bos: _Optional[bool] = ..., add_eos: _Optional[bool] = ..., text_field: _Optional[str] = ..., workers: _Optional[int] = ...) -> None: ...

class TokenizeProgress(_message.Message):
    __slots__ = ("files_done", "files_total", "samples_done", "samples_total", "tokens", "path", "report_json")
    FILES_DONE_FIELD_NUMBER: _ClassVar[int]
    FILES_TOTAL_FIELD_NUMBER: _ClassVar[int]
    SAMPLES_DONE_FIELD_NUMBER: _ClassVar[int]
    SAMPLES_TOTAL_FIELD_NUMBER: _ClassVar[int]
    TOKENS_FIELD_NUMBER: _ClassVar[int]
    PATH_FIELD_NUMBER: _ClassVar[int]
    REPORT_JSON_FIELD_NUMBER: _ClassVar[int]
    files_done: int
    files_total: int
    samples_done: int
    samples_total: int
    tokens: int
    path: str
    report_json: str
    def __init__(self, files_done: _Optional[int] = ..., files_total: _Optional[int] = ..., samples_done: _Optional[int] = ..., samples_total: _Optional[int] = ..., tokens: _Optional[int] = ..., path: _Optional[str] = ..., report_json: _Optional[str] = ...) -> None: ...
