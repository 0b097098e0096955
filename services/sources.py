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
_WHOLE_NUMBER = re.compile(r"^[1-9][0-9]{0,17}$")
# How Eloquent keeps dates in MongoDB through laravel-mongodb's query grammar: text, to the second, in UTC.
LARAVEL_DATE_FORMAT = "%Y-%m-%d %H:%M:%S"
_LARAVEL_DATE = re.compile(r"^\d{4}-\d{2}-\d{2} \d{2}:\d{2}:\d{2}$")


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

    def after_key(self, key: str, look_back: bool = False) -> list[dict[str, Any]] | None:
        """What comes after a stream key: later creation times, then later ids within the same time.

        Ids need not grow (Laravel's random UUIDs), so within one creation time they order notifications
        arbitrarily. Dates tell the millisecond, which one user's notifications rarely share; text (Laravel's
        `Y-m-d H:i:s`) only the second, which they often do: with `look_back` (a client resuming) the rest of
        that second is given whole, so that nothing created later within it is lost, at the cost of sending
        again what the client had of it (the bell leaves out what it has).
        """
        created = self.paths["created_at"]
        if len(key) > 12 and key[11] == "|":  # a notification's key: its millisecond, then its id
            try:
                milliseconds = int(key[:8], 16) * 1000 + int(key[8:11], 16)
            except ValueError:
                return None
            moment = datetime.datetime.fromtimestamp(milliseconds / 1000, datetime.UTC)
            text = key[12:]
            last_id = ObjectId(text) if _OBJECT_ID.match(text) else text
            as_text = moment.strftime(LARAVEL_DATE_FORMAT)
            same_second = {"$ne": last_id} if look_back else {"$gt": last_id}
            # BSON compares a date only with dates and a text only with texts: queries of each kind.
            # In stream order: BSON sorts every text before every date.
            return [
                {created: as_text, "_id": same_second},
                {created: {"$gt": as_text}},
                {created: moment, "_id": {"$gt": last_id}},
                {created: {"$gt": moment}},
            ]
        try:  # the start of a second, as an ObjectId's hex
            second = ObjectId(key).generation_time
        except (InvalidId, TypeError):
            return None
        return [
            {created: {"$gte": second.strftime(LARAVEL_DATE_FORMAT)}},
            {created: {"$gte": second}},
        ]

    # -- users and states --------------------------------------------------------------------------

    def user(self, user_id: str) -> dict[str, Any]:
        variants = _user_id_values(user_id)
        return {**self.filter, self.paths["user_id"]: variants[0] if len(variants) == 1 else {"$in": variants}}

    def users(self, user_ids: list[str]) -> dict[str, Any]:
        variants = [value for user_id in user_ids for value in _user_id_values(user_id)]
        return {**self.filter, self.paths["user_id"]: {"$in": variants}}

    def unset(self, field: str) -> dict[str, Any]:
        if field == "read_at":
            return {self.paths[field]: {"$in": [None, False]}}
        return super().unset(field)

    def unset_expression(self, field: str) -> dict[str, Any]:
        if field == "read_at":
            return {"$in": [{"$ifNull": ["$" + self.paths[field], None]}, [None, False]]}
        return super().unset_expression(field)

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
        created_at = _date(_path(document, self.paths["created_at"]))
        if created_at is None:  # its place in the stream
            raise Unmapped("no creation time")
        notification = Notification(
            id=document["_id"],
            user_id=user_id,
            type=_short_type(self._type(document)),
            title=title[:MAX_TITLE_LENGTH],
            body=_text(self._body(document))[:MAX_BODY_LENGTH],
            data_json=_data_json(self._data(document)),
            url=_link(self._url(document)),
            created_at=created_at,
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
        created_at = _date(_path(document, self.paths["created_at"]))
        return stream_key(created_at, str(document["_id"])) if created_at is not None else None

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
        """The document stock Laravel would write for it: `data` as JSON text, the dates as text to the second."""
        data = {**json.loads(notification.data_json), "title": notification.title, "body": notification.body}
        if notification.url is not None:
            data["url"] = notification.url
        created_at = notification.created_at.strftime(LARAVEL_DATE_FORMAT)
        document: dict[str, Any] = {
            "_id": notification.id,
            "type": notification.type,
            "notifiable_type": self.filter.get("notifiable_type", LARAVEL_USER_MODEL),
            "notifiable_id": notification.user_id,
            "data": json.dumps(data, separators=(",", ":")),
            "read_at": None,
            "created_at": created_at,
            "updated_at": created_at,
        }
        for field in LARAVEL_MAPPABLE:
            value = {"tags": list(notification.tags), "expires_at": notification.expires_at}.get(field)
            if value not in (None, []):
                _set_path(document, self.paths[field], value)
        return document

    def new_id(self) -> Any:
        return str(uuid.uuid4())

    def set_now(self, field: str, now: datetime.datetime) -> list[tuple[dict[str, Any], dict[str, Any]]]:
        """Marking read as `markAsRead()` does (`read_at` and `updated_at`), as text where the app keeps its dates as
        text, else as dates."""
        if field != "read_at":
            return super().set_now(field, now)
        text = now.strftime(LARAVEL_DATE_FORMAT)
        return [
            ({"read_at": None, "created_at": {"$type": "string"}}, {"$set": {"read_at": text, "updated_at": text}}),
            ({"read_at": None}, {"$set": {"read_at": now, "updated_at": now}}),
        ]


def make_schema(schema: str | None, fields: Mapping[str, str], filter: Mapping[str, Any] | None) -> MappedSchema:
    """The schema of a source collection: `SOURCE_SCHEMA` (laravel) or `SOURCE_FIELDS` paths."""
    if schema == "laravel":
        refused = sorted(set(fields) - set(LARAVEL_MAPPABLE))
        if refused:
            mappable = ", ".join(LARAVEL_MAPPABLE)
            raise ValueError(f"with SOURCE_SCHEMA=laravel, SOURCE_FIELDS may only map {mappable} (not {refused[0]})")
        return LaravelSchema(fields, filter)
    return MappedSchema(fields, filter)


def _user_id_values(user_id: str) -> list[Any]:
    """The values the app may keep a user id as: the text, and an ObjectId (a MongoDB user) or a number (a user
    in SQL) where it reads as one."""
    if _OBJECT_ID.match(user_id):
        return [user_id, ObjectId(user_id)]
    if _WHOLE_NUMBER.match(user_id):
        return [user_id, int(user_id)]
    return [user_id]


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
    """A date, or Laravel's text of one (`Y-m-d H:i:s`, UTC, as Eloquent stores dates through laravel-mongodb)."""
    if isinstance(value, datetime.datetime):
        return _utc(value)
    if isinstance(value, str) and _LARAVEL_DATE.match(value):
        return datetime.datetime.strptime(value, LARAVEL_DATE_FORMAT).replace(tzinfo=datetime.UTC)
    return None


def _state(value: Any) -> datetime.datetime | None:
    """A read state: unset (null, missing, false) or when it was set; set at a time bellcast cannot read (`true`,
    another format) is shown as the epoch, so the notification reads as read, as the counts have it."""
    if value is None or value is False:
        return None
    return _date(value) or datetime.datetime.fromtimestamp(0, datetime.UTC)
