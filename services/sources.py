"""Source collections: an application's own notifications, read and written as the app stores them.

A source collection (`SOURCE_COLLECTION`) holds the app's documents: `MappedSchema` reads any shape
through dotted paths (`SOURCE_FIELDS`), `LaravelSchema` the database notifications laravel-mongodb
writes. Their ids may be anything (a Laravel notification's is a UUID string), so a source
notification's place in its user's stream is its creation time, then its id (`stream_key`). Both
subclass bellcast's own `NotificationSchema`, through which `NotificationService` builds every query,
so that the API, the streams' recoveries and the watcher agree with the app on each document.
"""

from __future__ import annotations

import datetime
import json
import re
import uuid
from collections.abc import Mapping
from typing import Any

from bson import ObjectId
from bson.errors import InvalidId

from services.errors import Invalid
from services.notifications import (
    DEFAULT_PATHS,
    DEFAULT_TYPE,
    MAX_BODY_LENGTH,
    MAX_DATA_BYTES,
    MAX_TAG_LENGTH,
    MAX_TAGS,
    MAX_TITLE_LENGTH,
    MAX_TYPE_LENGTH,
    MAX_URL_LENGTH,
    MAX_USER_ID_LENGTH,
    Notification,
    NotificationSchema,
    Unmapped,
    is_safe_link,
    stream_key,
)

SOURCE_SCHEMAS = ("laravel",)
# What Laravel's documents do not have, kept on them under these names unless mapped.
LARAVEL_MAPPABLE = ("seen_at", "archived_at", "tags", "expires_at")
LARAVEL_USER_MODEL = "App\\Models\\User"
MAX_SOURCE_ID_LENGTH = 200

_PATH = re.compile(r"^[A-Za-z0-9_-]+(\.[A-Za-z0-9_-]+)*$")
_TYPE_UNSAFE = re.compile(r"[^A-Za-z0-9_.:-]")
_OBJECT_ID = re.compile(r"^[0-9a-f]{24}$")


def source_fields(value: str) -> dict[str, str]:
    """`SOURCE_FIELDS`: comma-separated `field=path` pairs, each field one of `DEFAULT_PATHS`."""
    mapping: dict[str, str] = {}
    for pair in (part.strip() for part in value.split(",")):
        if not pair:
            continue
        field, separator, path = (text.strip() for text in pair.partition("="))
        if not separator or field not in DEFAULT_PATHS:
            raise ValueError(f"{pair!r}: use field=path with a field among {', '.join(DEFAULT_PATHS)}")
        if not _PATH.match(path) or path == "_id":
            raise ValueError(f"{path!r} is not a document path: dotted names of letters, digits, _ or -")
        mapping[field] = path
    return mapping


def source_filter(value: str) -> dict[str, Any]:
    """`SOURCE_FILTER`: a JSON object, a MongoDB query on the app's documents."""
    try:
        parsed = json.loads(value)
    except ValueError:
        raise ValueError(
            'must be a JSON object, a MongoDB query such as {"notifiable_type": "App\\\\Models\\\\User"}'
        ) from None
    if not isinstance(parsed, dict):
        raise ValueError("must be a JSON object")
    if "$where" in json.dumps(parsed) or "$function" in json.dumps(parsed):
        raise ValueError("may not run JavaScript ($where, $function)")
    return parsed


class MappedSchema(NotificationSchema):
    """An app's collection, read through dotted paths (`SOURCE_FIELDS`): any id, stream order by creation time.

    A `read_at` that holds a boolean means read when true; marking read writes `true` where it holds
    `false`, and the time where it is unset.
    """

    watched = True

    # -- ids and order ------------------------------------------------------------------------------

    def id_value(self, text: str, field: str) -> Any:
        if not isinstance(text, str) or not 1 <= len(text) <= MAX_SOURCE_ID_LENGTH:
            raise Invalid(f"{field} must be a notification id (1 to {MAX_SOURCE_ID_LENGTH} characters)")
        return ObjectId(text) if _OBJECT_ID.match(text) else text

    def by_id(self, text: str, field: str = "id") -> dict[str, Any]:
        value = self.id_value(text, field)
        # An app may keep 24 hexadecimal digits as a string as well as an ObjectId.
        return {"_id": {"$in": [value, text]}} if isinstance(value, ObjectId) else {"_id": value}

    def newest_first(self) -> list[tuple[str, int]]:
        return [(self.paths["created_at"], -1), ("_id", -1)]

    def oldest_first(self) -> list[tuple[str, int]]:
        return [(self.paths["created_at"], 1), ("_id", 1)]

    def before(self, document: Mapping[str, Any]) -> dict[str, Any]:
        created = self.paths["created_at"]
        created_at = _path(document, created)
        return {"$or": [{created: {"$lt": created_at}}, {created: created_at, "_id": {"$lt": document["_id"]}}]}

    def after_key(self, key: str) -> dict[str, Any] | None:
        created = self.paths["created_at"]
        if len(key) > 12 and key[11] == "|":  # a notification's key: its millisecond, then its id
            try:
                milliseconds = int(key[:8], 16) * 1000 + int(key[8:11], 16)
            except ValueError:
                return None
            moment = datetime.datetime.fromtimestamp(milliseconds / 1000, datetime.UTC)
            text = key[12:]
            last_id = ObjectId(text) if _OBJECT_ID.match(text) else text
            return {"$or": [{created: {"$gt": moment}}, {created: moment, "_id": {"$gt": last_id}}]}
        try:  # the start of a second, as an ObjectId's hex
            return {created: {"$gte": ObjectId(key).generation_time}}
        except (InvalidId, TypeError):
            return None

    # -- users and states --------------------------------------------------------------------------

    def user(self, user_id: str) -> dict[str, Any]:
        path = self.paths["user_id"]
        if _OBJECT_ID.match(user_id):  # the app may keep a user id as an ObjectId
            return {**self.filter, path: {"$in": [user_id, ObjectId(user_id)]}}
        return {**self.filter, path: user_id}

    def unset(self, field: str) -> dict[str, Any]:
        if field == "read_at":
            return {self.paths[field]: {"$in": [None, False]}}
        return super().unset(field)

    def is_set(self, field: str) -> dict[str, Any]:
        if field == "read_at":
            return {self.paths[field]: {"$nin": [None, False]}}
        return super().is_set(field)

    def set_now(self, field: str, now: datetime.datetime) -> list[tuple[dict[str, Any], dict[str, Any]]]:
        path = self.paths[field]
        if field == "read_at":
            return [({path: False}, {"$set": {path: True}}), ({path: None}, {"$set": {path: now}})]
        return super().set_now(field, now)

    # -- documents ---------------------------------------------------------------------------------

    def from_document(self, document: Mapping[str, Any]) -> Notification:
        """A notification from the app's document; Unmapped if it has no user, title or creation time."""
        user_id = _path(document, self.paths["user_id"])
        if isinstance(user_id, ObjectId | int) and not isinstance(user_id, bool):
            user_id = str(user_id)
        if not isinstance(user_id, str) or not user_id.strip() or len(user_id) > MAX_USER_ID_LENGTH:
            raise Unmapped("no user")
        title = self._title(document)
        if not title:
            raise Unmapped("no title")
        created_at = _path(document, self.paths["created_at"])
        if not isinstance(created_at, datetime.datetime):  # its place in the stream
            raise Unmapped("no creation time")
        notification = Notification(
            id=document["_id"],
            user_id=user_id,
            type=_short_type(self._type(document)),
            title=title[:MAX_TITLE_LENGTH],
            body=_text(self._body(document))[:MAX_BODY_LENGTH],
            data_json=_data_json(self._data(document)),
            url=_link(self._url(document)),
            created_at=_utc(created_at),
            read_at=_state(_path(document, self.paths["read_at"])),
            tags=_tags(_path(document, self.paths["tags"])),
            expires_at=_date(_path(document, self.paths["expires_at"])),
            seen_at=_date(_path(document, self.paths["seen_at"])),
            archived_at=_date(_path(document, self.paths["archived_at"])),
        )
        return self.keyed(notification)

    def keyed(self, notification: Notification) -> Notification:
        return notification.with_key(stream_key(notification.created_at, str(notification.id)))

    def key_of(self, document: Mapping[str, Any]) -> str | None:
        created_at = _path(document, self.paths["created_at"])
        if isinstance(created_at, datetime.datetime):
            return stream_key(_utc(created_at), str(document["_id"]))
        return None

    def _title(self, document: Mapping[str, Any]) -> str:
        return _text(_path(document, self.paths["title"])).strip()

    def _body(self, document: Mapping[str, Any]) -> Any:
        return _path(document, self.paths["body"])

    def _url(self, document: Mapping[str, Any]) -> Any:
        return _path(document, self.paths["url"])

    def _type(self, document: Mapping[str, Any]) -> Any:
        return _path(document, self.paths["type"])

    def _data(self, document: Mapping[str, Any]) -> Any:
        return _path(document, self.paths["data"])

    def to_document(self, notification: Notification) -> dict[str, Any]:
        """The app's document for a notification created through bellcast's API (SOURCE_FILTER's equalities
        included, so that the watcher sees it as the app's own)."""
        document: dict[str, Any] = {"_id": notification.id}
        for key, value in self.filter.items():
            if not key.startswith("$") and not isinstance(value, dict):
                _set_path(document, key, value)
        values = {
            "user_id": notification.user_id,
            "title": notification.title,
            "body": notification.body,
            "type": notification.type,
            "url": notification.url,
            "data": json.loads(notification.data_json),
            "created_at": notification.created_at,
            "read_at": None,
            "seen_at": None,
            "archived_at": None,
            "tags": list(notification.tags),
            "expires_at": notification.expires_at,
        }
        for field, value in values.items():
            _set_path(document, self.paths[field], value)
        return document

    def indexes(self) -> list[list[tuple[str, int]]]:
        return [
            [(self.paths["user_id"], 1), (self.paths["created_at"], -1), ("_id", -1)],
            [(self.paths["expires_at"], 1)],  # the expiry sweep's, every few seconds
        ]

    def new_id(self) -> Any:
        return ObjectId()


class LaravelSchema(MappedSchema):
    """Laravel's database notifications as laravel-mongodb stores them.

    `_id` a UUID string, `type` the notification's class, `notifiable_id` the user (a string or an
    ObjectId), `data` the notification's array (a document, or its JSON text), `read_at` null or a
    date, `created_at` and `updated_at`. Title: `data.title`, else `data.subject`, else the class's
    short name; body: `data.body`, else `data.message`; link: `data.url`, else `data.action_url`.
    """

    def __init__(self, paths: Mapping[str, str] = {}, filter: Mapping[str, Any] | None = None) -> None:
        super().__init__(
            {**paths, "user_id": "notifiable_id", "created_at": "created_at", "read_at": "read_at", "type": "type"},
            filter,
        )

    def _title(self, document: Mapping[str, Any]) -> str:
        data = self._data(document)
        class_name = _text(document.get("type")).rsplit("\\", 1)[-1]
        for candidate in (data.get("title"), data.get("subject"), class_name):
            text = _text(candidate).strip()
            if text:
                return text
        return ""

    def _body(self, document: Mapping[str, Any]) -> Any:
        data = self._data(document)
        return data.get("body") if data.get("body") is not None else data.get("message")

    def _url(self, document: Mapping[str, Any]) -> Any:
        data = self._data(document)
        return data.get("url") if data.get("url") is not None else data.get("action_url")

    def _data(self, document: Mapping[str, Any]) -> dict[str, Any]:
        data = document.get("data")
        if isinstance(data, str):  # Eloquent's `array` cast may store the JSON text
            try:
                data = json.loads(data)
            except ValueError:
                return {}
        return data if isinstance(data, dict) else {}

    def to_document(self, notification: Notification) -> dict[str, Any]:
        data = {**json.loads(notification.data_json), "title": notification.title, "body": notification.body}
        if notification.url is not None:
            data["url"] = notification.url
        document: dict[str, Any] = {
            "_id": notification.id,
            "type": notification.type,
            "notifiable_type": self.filter.get("notifiable_type", LARAVEL_USER_MODEL),
            "notifiable_id": notification.user_id,
            "data": data,
            "read_at": None,
            "created_at": notification.created_at,
            "updated_at": notification.created_at,
        }
        for field in LARAVEL_MAPPABLE:
            value = {"tags": list(notification.tags), "expires_at": notification.expires_at}.get(field)
            if value not in (None, []):
                _set_path(document, self.paths[field], value)
        return document

    def new_id(self) -> Any:
        return str(uuid.uuid4())


def make_schema(schema: str | None, fields: Mapping[str, str], filter: Mapping[str, Any] | None) -> MappedSchema:
    """The schema of a source collection: `SOURCE_SCHEMA` (laravel) or `SOURCE_FIELDS` paths."""
    if schema == "laravel":
        refused = sorted(set(fields) - set(LARAVEL_MAPPABLE))
        if refused:
            mappable = ", ".join(LARAVEL_MAPPABLE)
            raise ValueError(f"with SOURCE_SCHEMA=laravel, SOURCE_FIELDS may only map {mappable} (not {refused[0]})")
        return LaravelSchema(fields, filter)
    return MappedSchema(fields, filter)


def _path(document: Mapping[str, Any], path: str) -> Any:
    value: Any = document
    for name in path.split("."):
        if not isinstance(value, Mapping):
            return None
        value = value.get(name)
    return value


def _set_path(document: dict[str, Any], path: str, value: Any) -> None:
    *parents, last = path.split(".")
    for name in parents:
        document = document.setdefault(name, {})
    document[last] = value


def _text(value: Any) -> str:
    return value if isinstance(value, str) else ""


def _short_type(value: Any) -> str:
    """A class name's last part (`App\\Notifications\\InvoicePaid`: InvoicePaid), as a type bellcast accepts."""
    text = _text(value).rsplit("\\", 1)[-1]
    return _TYPE_UNSAFE.sub("_", text)[:MAX_TYPE_LENGTH] or DEFAULT_TYPE


def _link(value: Any) -> str | None:
    """The app's link, if it is one the bell may open (never `javascript:` or another site disguised)."""
    text = _text(value)
    return text if text and len(text) <= MAX_URL_LENGTH and is_safe_link(text) else None


def _data_json(value: Any) -> str:
    """The document's data as compact JSON: an object (BSON types as strings), `{}` if it has none or too much."""
    if not isinstance(value, Mapping):
        return "{}"
    text = json.dumps(value, separators=(",", ":"), default=str)
    return text if len(text) <= MAX_DATA_BYTES else "{}"


def _tags(value: Any) -> tuple[str, ...]:
    if not isinstance(value, list):
        return ()
    tags = [tag for tag in value if isinstance(tag, str) and tag.strip() and len(tag) <= MAX_TAG_LENGTH]
    return tuple(dict.fromkeys(tags))[:MAX_TAGS]


def _utc(value: datetime.datetime) -> datetime.datetime:
    utc = value.replace(tzinfo=datetime.UTC) if value.tzinfo is None else value.astimezone(datetime.UTC)
    return utc.replace(microsecond=utc.microsecond // 1000 * 1000)


def _date(value: Any) -> datetime.datetime | None:
    return _utc(value) if isinstance(value, datetime.datetime) else None


def _state(value: Any) -> datetime.datetime | None:
    """A read state: a date, or `true` (read, at a time the app did not keep: shown as the epoch)."""
    if value is True:
        return datetime.datetime.fromtimestamp(0, datetime.UTC)
    return _date(value)
