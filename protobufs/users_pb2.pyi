from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class UserRequest(_message.Message):
    __slots__ = ("id", "user_name", "email", "first_name", "last_name", "ip_address", "gender", "country", "agent")
    ID_FIELD_NUMBER: _ClassVar[int]
    USER_NAME_FIELD_NUMBER: _ClassVar[int]
    EMAIL_FIELD_NUMBER: _ClassVar[int]
    FIRST_NAME_FIELD_NUMBER: _ClassVar[int]
    LAST_NAME_FIELD_NUMBER: _ClassVar[int]
    IP_ADDRESS_FIELD_NUMBER: _ClassVar[int]
    GENDER_FIELD_NUMBER: _ClassVar[int]
    COUNTRY_FIELD_NUMBER: _ClassVar[int]
    AGENT_FIELD_NUMBER: _ClassVar[int]
    id: int
    user_name: str
    email: str
    first_name: str
    last_name: str
    ip_address: str
    gender: str
    country: str
    agent: str
    def __init__(self, id: _Optional[int] = ..., user_name: _Optional[str] = ..., email: _Optional[str] = ..., first_name: _Optional[str] = ..., last_name: _Optional[str] = ..., ip_address: _Optional[str] = ..., gender: _Optional[str] = ..., country: _Optional[str] = ..., agent: _Optional[str] = ...) -> None: ...

class UserResponse(_message.Message):
    __slots__ = ("status", "message")
    STATUS_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    status: bool
    message: str
    def __init__(self, status: _Optional[bool] = ..., message: _Optional[str] = ...) -> None: ...

class UserBatch(_message.Message):
    __slots__ = ("users", "source", "file_id", "index", "first_record", "users_json", "record_count", "header", "trailer", "source_bytes", "raw")
    USERS_FIELD_NUMBER: _ClassVar[int]
    SOURCE_FIELD_NUMBER: _ClassVar[int]
    FILE_ID_FIELD_NUMBER: _ClassVar[int]
    INDEX_FIELD_NUMBER: _ClassVar[int]
    FIRST_RECORD_FIELD_NUMBER: _ClassVar[int]
    USERS_JSON_FIELD_NUMBER: _ClassVar[int]
    RECORD_COUNT_FIELD_NUMBER: _ClassVar[int]
    HEADER_FIELD_NUMBER: _ClassVar[int]
    TRAILER_FIELD_NUMBER: _ClassVar[int]
    SOURCE_BYTES_FIELD_NUMBER: _ClassVar[int]
    RAW_FIELD_NUMBER: _ClassVar[int]
    users: _containers.RepeatedCompositeFieldContainer[UserRequest]
    source: str
    file_id: str
    index: int
    first_record: int
    users_json: bytes
    record_count: int
    header: SourceHeader
    trailer: SourceTrailer
    source_bytes: int
    raw: bytes
    def __init__(self, users: _Optional[_Iterable[_Union[UserRequest, _Mapping]]] = ..., source: _Optional[str] = ..., file_id: _Optional[str] = ..., index: _Optional[int] = ..., first_record: _Optional[int] = ..., users_json: _Optional[bytes] = ..., record_count: _Optional[int] = ..., header: _Optional[_Union[SourceHeader, _Mapping]] = ..., trailer: _Optional[_Union[SourceTrailer, _Mapping]] = ..., source_bytes: _Optional[int] = ..., raw: _Optional[bytes] = ...) -> None: ...

class SourceHeader(_message.Message):
    __slots__ = ("name", "size", "fingerprint")
    NAME_FIELD_NUMBER: _ClassVar[int]
    SIZE_FIELD_NUMBER: _ClassVar[int]
    FINGERPRINT_FIELD_NUMBER: _ClassVar[int]
    name: str
    size: int
    fingerprint: str
    def __init__(self, name: _Optional[str] = ..., size: _Optional[int] = ..., fingerprint: _Optional[str] = ...) -> None: ...

class SourceTrailer(_message.Message):
    __slots__ = ("records", "damage", "rejected", "rejections")
    RECORDS_FIELD_NUMBER: _ClassVar[int]
    DAMAGE_FIELD_NUMBER: _ClassVar[int]
    REJECTED_FIELD_NUMBER: _ClassVar[int]
    REJECTIONS_FIELD_NUMBER: _ClassVar[int]
    records: int
    damage: str
    rejected: int
    rejections: _containers.RepeatedCompositeFieldContainer[Rejection]
    def __init__(self, records: _Optional[int] = ..., damage: _Optional[str] = ..., rejected: _Optional[int] = ..., rejections: _Optional[_Iterable[_Union[Rejection, _Mapping]]] = ...) -> None: ...

class Rejection(_message.Message):
    __slots__ = ("record", "reason")
    RECORD_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    record: int
    reason: str
    def __init__(self, record: _Optional[int] = ..., reason: _Optional[str] = ...) -> None: ...

class IngestReport(_message.Message):
    __slots__ = ("status", "message", "accepted", "rejected", "rejections", "batches", "file_id", "state")
    STATUS_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    ACCEPTED_FIELD_NUMBER: _ClassVar[int]
    REJECTED_FIELD_NUMBER: _ClassVar[int]
    REJECTIONS_FIELD_NUMBER: _ClassVar[int]
    BATCHES_FIELD_NUMBER: _ClassVar[int]
    FILE_ID_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    status: bool
    message: str
    accepted: int
    rejected: int
    rejections: _containers.RepeatedCompositeFieldContainer[Rejection]
    batches: int
    file_id: str
    state: str
    def __init__(self, status: _Optional[bool] = ..., message: _Optional[str] = ..., accepted: _Optional[int] = ..., rejected: _Optional[int] = ..., rejections: _Optional[_Iterable[_Union[Rejection, _Mapping]]] = ..., batches: _Optional[int] = ..., file_id: _Optional[str] = ..., state: _Optional[str] = ...) -> None: ...
