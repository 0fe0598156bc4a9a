"""Names as the databases hold them, and how manifests, run confs and plans write them.

A database name (schema, table, column, key, role) is any text the engine accepts: mixed case,
spaces, punctuation, reserved words, letters of any script. The project never pastes one into
SQL: an engine quotes the exact name. This module is the one place that reads and writes the
*written* form of a name, as a manifest, a run conf, a plan or a report spells it.

The grammar of a written name:

- a table is one or two parts separated by ``.`` (``table`` or ``schema.table``); a column, a
  key or a role is one part;
- a part is either **unquoted**: any characters except ``.`` and ``"``, not empty, without
  leading or trailing whitespace and without control characters; or **SQL-quoted**:
  ``"..."``, where ``""`` stands for one ``"``; a quoted part may hold dots, double quotes,
  spaces at its ends, anything but NUL.

So ``sales.orders``, ``Sales Data.Order Items``, ``"Sales Data"."Order.Items"`` and
``public."a""b"`` are table names; ``Display Name`` and ``"Display Name"`` are the same column.

Case: PostgreSQL, SQL Server and BigQuery take every part exactly as written. Snowflake and
Oracle fold an *unquoted* part that is a plain identifier (``[A-Za-z_][A-Za-z0-9_$]*``) to upper
case, as their SQL does; a quoted part, or an unquoted part that is not a plain identifier (it
can only exist quoted there), is exact. :func:`exact_part` applies that rule.

The canonical written form (:func:`format_name`) writes each part bare unless it must be quoted:
it holds ``.`` or ``"``, has whitespace at an end, holds a control character, or (on a folding
engine) its bare form would fold to something else. Plain names (``sales.orders``) are unchanged
by a round trip, and ``parse`` then ``format`` of a canonical form gives it back.

Plain Python: no Airflow, no database, no heavy imports.
"""

from __future__ import annotations

import hashlib
import re
import unicodedata
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

#: an identifier that Snowflake and Oracle fold to upper case when it is written unquoted.
PLAIN_IDENTIFIER = re.compile(r"[A-Za-z_][A-Za-z0-9_$]*\Z")
#: how many parts a table name may have (``schema.table``).
TABLE_PARTS = 2


@dataclass(frozen=True)
class Part:
    """One part of a written name: the text it stands for (quotes removed) and whether it was quoted."""

    text: str
    quoted: bool = False


def _control(text: str) -> str | None:
    """The first control character of ``text``, if any."""
    return next((c for c in text if unicodedata.category(c) == "Cc"), None)


def quote_part(text: str) -> str:
    """``text`` as a SQL-quoted part: ``"..."`` with every ``"`` doubled."""
    return '"' + text.replace('"', '""') + '"'


def _what(max_parts: int) -> str:
    return "table name" if max_parts > 1 else "name"


def _too_many(text: str, parts: Sequence[Part], max_parts: int) -> str:
    if max_parts == 1:
        return (
            f"{text!r} has {len(parts)} dot-separated parts, but a column, key or role name is one part: "
            f"quote it to keep the dot: {quote_part('.'.join(p.text for p in parts))}"
        )
    example = 'schema."Order.Items"'
    if len(parts) == 3:
        a, b, c = (p.text for p in parts)
        example = f"{quote_part(f'{a}.{b}')}.{write_part(c)} or {write_part(a)}.{quote_part(f'{b}.{c}')}"
    shape = "table or schema.table" if max_parts == 2 else "at most project.dataset.table"
    return (
        f"{text!r} has {len(parts)} dot-separated parts, but a table name is {shape}: "
        f"a part holding a dot must be quoted ({example})"
    )


def parse_name(text: str, max_parts: int = TABLE_PARTS) -> tuple[Part, ...]:
    """Read a written name into its parts.

    :param text: the name as written (``sales.orders``, ``"Sales Data"."Order.Items"``).
    :param max_parts: the most parts allowed: 2 for a table, 1 for a column, key or role.
    :raises ValueError: saying what is wrong and how to write it.
    """
    if not isinstance(text, str):
        raise ValueError(f"a {_what(max_parts)} must be text, got {type(text).__name__}")
    if text == "":
        raise ValueError(f"the {_what(max_parts)} is empty")
    parts: list[Part] = []
    i, n = 0, len(text)
    while True:
        if i < n and text[i] == '"':
            chars: list[str] = []
            i += 1
            while True:
                if i >= n:
                    raise ValueError(
                        f'{text!r} has an unterminated quote: close the quoted part with " '
                        '(a " inside it is written twice: "a""b")'
                    )
                if text[i] == '"':
                    if i + 1 < n and text[i + 1] == '"':
                        chars.append('"')
                        i += 2
                        continue
                    i += 1
                    break
                chars.append(text[i])
                i += 1
            part = Part("".join(chars), quoted=True)
            if part.text == "":
                raise ValueError(f'{text!r} has an empty quoted part (""): no database holds an empty name')
            if "\0" in part.text:
                raise ValueError(f"{text!r} holds a NUL character, which no database holds in a name")
            if i < n and text[i] != ".":
                raise ValueError(
                    f'{text!r} has text after a closing quote: a quoted part ends with " and is followed by '
                    '"." or the end (a " inside it is written twice: "a""b")'
                )
        else:
            end = text.find(".", i)
            end = n if end < 0 else end
            raw = text[i:end]
            i = end
            if raw == "":
                raise ValueError(
                    f"{text!r} has an empty part: each dot-separated part needs a name "
                    '(a name that holds a dot is quoted: "Order.Items")'
                )
            if '"' in raw:
                raise ValueError(
                    f"part {raw!r} of {text!r} holds a double quote: quote the part and write the quote "
                    f"twice: {quote_part(raw)}"
                )
            if raw != raw.strip():
                raise ValueError(
                    f"part {raw!r} of {text!r} starts or ends with whitespace: quote it to keep the spaces "
                    f"({quote_part(raw)}), or remove them"
                )
            control = _control(raw)
            if control is not None:
                raise ValueError(
                    f"part {raw!r} of {text!r} holds the control character U+{ord(control):04X}: quote it "
                    "if the database really holds that name"
                )
            part = Part(raw)
        parts.append(part)
        if i >= n:
            break
        i += 1  # the dot
        if i >= n:
            raise ValueError(f"{text!r} ends with a dot: each dot-separated part needs a name")
    if len(parts) > max_parts:
        raise ValueError(_too_many(text, parts, max_parts))
    return tuple(parts)


def is_plain(text: str) -> bool:
    """Whether ``text`` is a plain identifier (what Snowflake and Oracle fold when unquoted)."""
    return PLAIN_IDENTIFIER.match(text) is not None


def exact_part(part: Part, *, folds: bool = False) -> str:
    """The name a part stands for on an engine; ``folds``: the engine upper-cases unquoted plain identifiers."""
    if folds and not part.quoted and is_plain(part.text):
        return part.text.upper()
    return part.text


def _must_quote(text: str) -> bool:
    return text == "" or "." in text or '"' in text or text != text.strip() or _control(text) is not None


def write_part(text: str, *, folds: bool = False) -> str:
    """The canonical written form of one exact name: bare unless it must be quoted."""
    if _must_quote(text) or (folds and is_plain(text) and text != text.upper()):
        return quote_part(text)
    return text


def format_name(parts: Iterable[str], *, folds: bool = False) -> str:
    """The canonical written form of an exact (possibly qualified) name, for an engine.

    :param parts: the exact names (``("Sales Data", "Order.Items")``).
    :param folds: the engine folds unquoted plain identifiers to upper case (Snowflake, Oracle).
    """
    return ".".join(write_part(p, folds=folds) for p in parts)


def _neutral(part: Part) -> str:
    """A part written so that it means the same on every engine (folding or not)."""
    if _must_quote(part.text) or (part.quoted and is_plain(part.text) and part.text != part.text.upper()):
        return quote_part(part.text)
    return part.text


def canonical(text: str, max_parts: int = TABLE_PARTS) -> str:
    """The canonical written form of a written name, the same on every engine.

    Quotes that make no difference on any engine are dropped (``"Display Name"`` becomes
    ``Display Name``); a quoted plain identifier that is not upper case keeps them (``"orders"``:
    on Snowflake and Oracle it is not ``orders``, which folds to ``ORDERS``).

    :raises ValueError: for a name that does not follow the grammar.
    """
    return ".".join(_neutral(p) for p in parse_name(text, max_parts))


def canonical_table(text: str) -> str:
    """:func:`canonical` for a table name (``table`` or ``schema.table``)."""
    return canonical(text, TABLE_PARTS)


def canonical_part(text: str) -> str:
    """:func:`canonical` for a one-part name (column, key, role)."""
    return canonical(text, 1)


def last_part(text: str) -> str:
    """The unqualified part of a written table name, in canonical form (``orders`` for ``sales.orders``)."""
    return _neutral(parse_name(text, TABLE_PARTS)[-1])


def texts(text: str, max_parts: int = TABLE_PARTS) -> tuple[str, ...]:
    """The parts' texts, quotes removed (for a comparison that ignores how a part was quoted)."""
    return tuple(p.text for p in parse_name(text, max_parts))


def split_list(text: str) -> list[str]:
    """Split a comma-separated list of written names; a comma inside a quoted part does not split.

    ``orders, "Sales, EU".items`` gives ``["orders", '"Sales, EU".items']``. Items are stripped of
    surrounding whitespace; empty items are dropped.
    """
    items: list[str] = []
    current: list[str] = []
    quoted = False
    for char in text:
        if char == '"':
            quoted = not quoted  # a doubled "" toggles twice: still inside
        if char == "," and not quoted:
            items.append("".join(current))
            current = []
            continue
        current.append(char)
    items.append("".join(current))
    return [item.strip() for item in items if item.strip()]


def file_stem(name: str) -> str:
    """A file-name-safe, unique stem for a (qualified, canonical) table name.

    A readable ASCII form of the name (letters, digits, ``_``, ``-``, single dots; never a path
    separator, never ``..``) plus a short hash of the exact name, so two names that read alike
    still get two files and no name escapes its folder.
    """
    readable = re.sub(r"[^A-Za-z0-9_.\-]+", "_", name)
    readable = re.sub(r"\.{2,}", ".", readable).strip("._-")[:60] or "table"
    digest = hashlib.sha256(name.encode("utf-8")).hexdigest()[:12]
    return f"{readable}-{digest}"


def markdown_cell(value: object) -> str:
    """A value as one Markdown table cell: ``|`` escaped, line breaks turned into spaces."""
    text = "" if value is None else str(value)
    return text.replace("\\", "\\\\").replace("|", "\\|").replace("\r", " ").replace("\n", " ")
