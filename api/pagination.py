"""Cursor pagination for every list: `?limit=` (default 100, at most 1000) and `?cursor=`, answered
with `{"items": [...], "next_cursor": null | "..."}`.

Pages are keyset pages: the cursor is an opaque token for "after key K" (an id, or a text key:
partners by id, periods by month), so a page costs the same however deep it is and no row is
repeated. A row added meanwhile after the cursor's key is on a later page; one added before it (a
partner whose id sorts before the last one read) is not: lists by sequence (transactions, payouts)
lose none, as their new rows come last. A route asks the domain for `limit + 1` rows; `page()`
keeps `limit` and makes the next cursor if there was one more.

Each list is a `Listing`, and takes `page_query(listing)` (subclass it to add filters) and
`page(..., encode=listing.cursor)`. A cursor names its list and holds a key of it: one of another
list, or one whose key the list does not order by, is refused like any text this API did not hand
out, not read as a place in this list. It also holds a check of its content and of the filters of
the request it was handed out to (the query but `cursor` and `limit`): a cursor cut short, as a
copy and paste can, read "transactions:after:103" as "...:after:10", and the list started again
93 rows back with no error; one sent with other filters listed after a key no page of those
filters ended on. Either is refused now. The check is a checksum, not a secret: a cursor made by
hand lists only what its key's filters let the caller see, as any page does.

The path converters live here too: integer ids (`IdConverter`), and text ids that hold no NUL
(`TEXT_CONVERTERS`).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
import re
from typing import Any, Callable, NamedTuple, Sequence

import marshmallow as ma
from flask import has_request_context, request
from werkzeug.routing import IntegerConverter, PathConverter, UnicodeConverter

from api.schemas import Schema
from ledger.errors import InvalidInput

LIMIT_DEFAULT = 100
LIMIT_MAX = 1000
ID_MAX = 2**63 - 1
# URL converter for integer ids (`IdConverter`, registered by `api.create_app`).
ID_CONVERTER = "id"
_CURSOR_TEXT_MAX = 128
_ID_KEY = re.compile(r"[0-9]{1,19}")
NOT_A_CURSOR = "is not a cursor returned by this API"
_CHECK_HEX = 12  # 48 bits: a cursor cut or altered by mistake passes with a chance of 2**-48
_NOT_FILTERS = ("cursor", "limit")


class IdConverter(IntegerConverter):
    """An id in the path: ASCII digits, 1 to ID_MAX; anything else is a 404 from routing, never a
    database overflow. Werkzeug's `int` matches any Unicode digit (`/transactions/\uff11` is 1)."""

    regex = r"[0-9]+"

    def __init__(self, map, *args, **kwargs) -> None:
        super().__init__(map, min=1, max=ID_MAX)

    @staticmethod
    def openapi(_converter) -> dict:
        return {"type": "integer", "minimum": 1, "maximum": ID_MAX}


class TextConverter(UnicodeConverter):
    """Werkzeug's `string` converter (the default), matching no NUL: no id of ours holds one, and
    PostgreSQL refuses a NUL in a text parameter, so `/v1/plans/x%00` looked up was a 500 there (a 404
    on SQLite). A path with one is a 404 from routing, on both engines."""

    def __init__(self, map, *args, **kwargs) -> None:
        super().__init__(map, *args, **kwargs)
        self.regex = self.regex.replace("[^/]", r"[^/\x00]", 1)


class TextPathConverter(PathConverter):
    """Werkzeug's `path` converter (customer ids may hold a `/`), matching no NUL, as `TextConverter`."""

    regex = r"[^/\x00][^\x00]*?"


# Installed in the app's URL map over Werkzeug's converters of the same names (`api.create_app`).
TEXT_CONVERTERS = {"default": TextConverter, "string": TextConverter, "path": TextPathConverter}


def _content(text: str) -> str:
    try:
        return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4)).decode("ascii")
    except (binascii.Error, UnicodeDecodeError, ValueError):
        return ""


def _filters() -> list[list[str]]:
    """The filters of the request being answered, as a cursor is bound to them: its query parameters
    but the cursor and the page size, in order ([] outside a request)."""
    if not has_request_context():
        return []
    return sorted([name, value] for name, value in request.args.items(multi=True) if name not in _NOT_FILTERS)


def _check(content: str) -> str:
    return hashlib.sha256(json.dumps([_filters(), content]).encode()).hexdigest()[:_CHECK_HEX]


def sealed(content: str) -> str:
    """A cursor of `content` ("<list>:after:<key>") for the request being answered: base64url of
    "<check>:<content>"."""
    return base64.urlsafe_b64encode(f"{_check(content)}:{content}".encode()).decode().rstrip("=")


def parse_id_key(text: str) -> int:
    """The id key of a cursor of a list ordered by id; ValueError for any other text."""
    if _ID_KEY.fullmatch(text) is None or int(text) > ID_MAX:
        raise ValueError(text)
    return int(text)


class Listing(NamedTuple):
    """A list as its cursors name it: "<name>:after:<key>", checked with the request's filters
    (`sealed`)."""

    name: str
    # The key as the list orders by it (an id, a partner id, a period); InvalidInput or ValueError
    # for any other text.
    parse_key: Callable[[str], Any]
    first_key: Any = None  # the key a list without a cursor starts after: None, or 0 for ids

    def cursor(self, last_key: Any) -> str:
        return sealed(f"{self.name}:after:{last_key}")

    def key(self, text: Any) -> Any:
        """The key a cursor of this list points after; ValidationError for anything else: a cursor of
        another list or of other filters, one cut short or altered, one made before cursors named
        their list or held a check, a key the list does not hold."""
        check, _, content = (_content(text) if isinstance(text, str) and len(text) <= _CURSOR_TEXT_MAX
                             else "").partition(":")
        prefix = f"{self.name}:after:"
        if content.startswith(prefix) and hmac.compare_digest(check, _check(content)):
            try:
                return self.parse_key(content.removeprefix(prefix))
            except (InvalidInput, ValueError):
                pass
        raise ma.ValidationError(NOT_A_CURSOR)


class Cursor(ma.fields.String):
    """An opaque cursor of a `Listing`, loaded as the key to continue after."""

    def __init__(self, listing: Listing, **kwargs) -> None:
        super().__init__(metadata={"maxLength": _CURSOR_TEXT_MAX,
                                   "description": "`next_cursor` of the previous page, sent with the same "
                                                  "filters"}, **kwargs)
        self.listing = listing

    def _deserialize(self, value, attr, data, **kwargs) -> Any:
        return self.listing.key(value)


class _Limit(ma.fields.Integer):
    """A page size in ASCII digits: marshmallow's `Integer` would take "\uff15" (a fullwidth 5) as 5.
    A negative or long integer is one, refused by the range it is outside, not as "not an integer"."""

    def _deserialize(self, value, attr, data, **kwargs) -> int:
        if not (isinstance(value, str) and re.fullmatch(r"-?[0-9]{1,30}", value)):
            raise self.make_error("invalid")
        return super()._deserialize(value, attr, data, **kwargs)


def _limit() -> ma.fields.Integer:
    return _Limit(load_default=LIMIT_DEFAULT, validate=ma.validate.Range(1, LIMIT_MAX),
                  metadata={"description": f"page size, default {LIMIT_DEFAULT}, at most {LIMIT_MAX}"})


def page_query(listing: Listing) -> type[Schema]:
    """Query parameters of a list; subclass it to add filters."""
    # Without a cursor a list starts at its first key, which is no cursor (an id list's 0 is refused as
    # one): given as a function, so that the document shows no default for it.
    cursor = Cursor(listing, load_default=lambda: listing.first_key)
    return Schema.from_dict({"limit": _limit(), "cursor": cursor},
                            name=listing.name.title() + "PageQuery")


def page(rows: Sequence[Any], limit: int, render: Callable[[Any], dict], *,
         encode: Callable[[Any], str], id_of: Callable[[Any], Any] = lambda row: row.id) -> dict[str, Any]:
    """`{"items", "next_cursor"}` from up to `limit + 1` rows fetched in key order."""
    kept = rows[:limit]
    more = len(rows) > limit
    return {"items": [render(row) for row in kept], "next_cursor": encode(id_of(kept[-1])) if more else None}


def page_schema(item_schema: type[Schema]) -> type[Schema]:
    """The response schema of a page of `item_schema` items."""
    name = item_schema.__name__.removesuffix("Schema") + "PageSchema"
    return Schema.from_dict({
        "items": ma.fields.List(ma.fields.Nested(item_schema), required=True),
        "next_cursor": ma.fields.String(required=True, allow_none=True, metadata={
            "description": "pass as `cursor` for the next page; null at the end"}),
    }, name=name)
