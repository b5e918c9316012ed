"""Models as JSON-ready builtins: :func:`to_builtins`, for web responses, logs and caches."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import msgspec

from ._state import JobModel

__all__ = ["to_builtins"]

#: What every job model offers beside its fields (DESIGN: ``.id``, ``.job_state``,
#: ``.is_terminal``, ``.progress``, ``.error``); added where a model has no field of the name.
_DERIVED = ("id", "job_state", "is_terminal", "progress", "error")


def to_builtins(obj: Any, *, derived: bool = True, omit_defaults: bool = False) -> Any:
    """``obj`` (a model, a :class:`~async_jobs.Page`, an event, or a list, tuple or dict of
    them) as plain dicts, lists, strings, numbers, bools and None, ready for ``json.dumps``,
    a FastAPI response or ``aiohttp.web.json_response``.

    Like ``msgspec.to_builtins``: fields under their wire names, enums as their values
    (``"running"``), datetimes as ISO 8601 / RFC 3339 strings (``"2024-01-01T00:00:00Z"``),
    bytes as base64. Datetimes a model keeps as raw wire strings (Metafold's RFC 1123
    ``created``, ``started``, ``finished``) come out in ISO 8601 too.

    With ``derived`` (the default) every job model also carries what it works out from its
    fields: ``id``, ``job_state`` (the value), ``is_terminal``, ``progress`` and ``error``
    (each only where the model has no field of that name). The result still decodes back
    into the model (``msgspec.convert(data, aj.AsyncOperation)``): unknown keys are ignored.
    ``omit_defaults=True`` leaves out the fields equal to their defaults, as the models'
    reprs do.
    """
    return _convert(obj, derived, omit_defaults)


def _convert(obj: Any, derived: bool, omit_defaults: bool) -> Any:
    if isinstance(obj, msgspec.Struct):
        return _struct(obj, derived, omit_defaults)
    if isinstance(obj, Mapping):
        return {
            msgspec.to_builtins(key, str_keys=True): _convert(value, derived, omit_defaults)
            for key, value in obj.items()
        }
    if isinstance(obj, (list, tuple, set, frozenset)):
        return [_convert(item, derived, omit_defaults) for item in obj]
    return msgspec.to_builtins(obj)


def _struct(obj: msgspec.Struct, derived: bool, omit_defaults: bool) -> dict[str, Any]:
    config = obj.__struct_config__
    out: dict[str, Any] = {}
    if config.tag is not None and config.tag_field is not None:
        out[config.tag_field] = config.tag
    raw_datetimes: Mapping[str, str] = getattr(obj, "raw_datetimes", {})
    fields = msgspec.structs.fields(obj)
    for field in fields:
        value = getattr(obj, field.name)
        if omit_defaults and _is_default(field, value):
            continue
        if field.name in raw_datetimes and value is not None:
            value = getattr(obj, raw_datetimes[field.name])  # the parsed, timezone-aware one
        out[field.encode_name] = _convert(value, derived, omit_defaults)
    if derived and isinstance(obj, JobModel):
        names = {field.name for field in fields} | {field.encode_name for field in fields}
        for name in _DERIVED:
            if name not in names:
                out[name] = _convert(getattr(obj, name), derived, omit_defaults)
    return out


def _is_default(field: msgspec.structs.FieldInfo, value: Any) -> bool:
    if field.default is not msgspec.NODEFAULT:
        return bool(value == field.default)
    if field.default_factory is not msgspec.NODEFAULT:
        return bool(value == field.default_factory())
    return False
