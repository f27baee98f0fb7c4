"""The JSON Schemas of the OpenAPI document's bodies: Cube's query (as Cube checks it), answers and errors."""

from __future__ import annotations

from typing import Any

from proxy.settings import CUBE_MAX_LIMIT

_MEMBER = {
    "type": "string",
    "pattern": r"^[a-zA-Z0-9_]+\.[a-zA-Z0-9_]+(\.(second|minute|hour|day|week|month|year))?$",
    "description": "A cube member, `Cube.member` (a time dimension may add `.granularity`), as Cube checks it.",
}  # fmt: skip
_GRANULARITY = {"type": "string", "enum": ["second", "minute", "hour", "day", "week", "month", "quarter", "year"]}
_DATE_RANGE = {
    "oneOf": [
        {"type": "string", "description": "Relative (`last 7 days`, `this month`) or one date."},
        {"type": "array", "items": {"type": "string"}, "minItems": 1, "maxItems": 2},
    ]
}
_OPERATORS = [
    "equals", "notEquals", "contains", "notContains", "startsWith", "notStartsWith", "endsWith", "notEndsWith",
    "gt", "gte", "lt", "lte", "set", "notSet", "inDateRange", "notInDateRange", "beforeDate", "beforeOrOnDate",
    "afterDate", "afterOrOnDate", "measureFilter",
]  # fmt: skip
_DIRECTION = {"type": "string", "enum": ["asc", "desc"]}


def schemas() -> dict[str, Any]:
    """The document's ``components/schemas``."""
    filter_ref = {"$ref": "#/components/schemas/Filter"}
    return {
        "QueryRequest": {
            "type": "object",
            "required": ["query"],
            "properties": {
                "query": {"$ref": "#/components/schemas/Query"},
                "queryType": {"type": "string", "default": "multi", "minLength": 1},
                "include_token": {
                    "oneOf": [{"type": "boolean"}, {"type": "string", "enum": ["true", "false", "1", "0"]}],
                    "description": "Sign a one-day project access token into the security context (Maintainers).",
                },
            },
            "description": "Any other key is ignored.",
        },
        "Query": {
            "type": "object",
            "description": "A Cube query (cube.dev's REST API). Unknown keys go to Cube as they are.",
            "properties": {
                "measures": {"type": "array", "items": _MEMBER},
                "dimensions": {"type": "array", "items": _MEMBER},
                "segments": {"type": "array", "items": _MEMBER},
                "timeDimensions": {"type": "array", "items": {"$ref": "#/components/schemas/TimeDimension"}},
                "filters": {"type": "array", "items": filter_ref},
                "order": {
                    "oneOf": [
                        {"type": "object", "additionalProperties": _DIRECTION},
                        {
                            "type": "array",
                            "items": {
                                "type": "array",
                                "prefixItems": [_MEMBER, _DIRECTION],
                                "minItems": 2,
                                "maxItems": 2,
                            },
                        },
                    ]
                },
                "limit": {"type": "integer", "minimum": 0, "maximum": CUBE_MAX_LIMIT},
                "offset": {"type": "integer", "minimum": 0},
                "timezone": {"type": "string"},
                "ungrouped": {"type": "boolean"},
                "total": {"type": "boolean"},
                "renewQuery": {"type": "boolean"},
            },
        },
        "TimeDimension": {
            "type": "object",
            "required": ["dimension"],
            "properties": {
                "dimension": _MEMBER,
                "granularity": _GRANULARITY,
                "dateRange": _DATE_RANGE,
                "compareDateRange": {"type": "array", "items": _DATE_RANGE},
            },
        },
        "Filter": {
            "oneOf": [
                {
                    "type": "object",
                    "required": ["operator"],
                    "properties": {
                        "member": _MEMBER,
                        "dimension": _MEMBER,
                        "operator": {"type": "string", "enum": _OPERATORS},
                        "values": {"type": "array", "items": {"type": "string"}},
                    },
                },
                {"type": "object", "required": ["and"], "properties": {"and": {"type": "array", "items": filter_ref}}},
                {"type": "object", "required": ["or"], "properties": {"or": {"type": "array", "items": filter_ref}}},
            ]
        },
        "LoadAnswer": {
            "type": "object",
            "required": ["results"],
            "properties": {
                "queryType": {"type": "string"},
                "results": {
                    "type": "array",
                    "items": {
                        "type": "object",
                        "properties": {
                            "query": {"type": "object"},
                            "data": {"type": "array", "items": {"type": "object"}},
                            "annotation": {"type": "object"},
                            "lastRefreshTime": {"type": "string"},
                            "slowQuery": {"type": "boolean"},
                        },
                    },
                },
                "pivotQuery": {"type": "object"},
                "slowQuery": {"type": "boolean"},
            },
        },
        "DryRunAnswer": {
            "type": "object",
            "properties": {
                "queryType": {"type": "string"},
                "normalizedQueries": {"type": "array", "items": {"type": "object"}},
                "queryOrder": {"type": "array"},
                "pivotQuery": {"type": "object"},
            },
        },
        "MetaAnswer": {
            "type": "object",
            "required": ["cubes"],
            "properties": {"cubes": {"type": "array", "items": {"type": "object"}}},
        },
        "ContinueWait": {
            "type": "object",
            "required": ["error"],
            "properties": {"error": {"const": "Continue wait"}},
        },
        "Error": {
            "type": "object",
            "required": ["message"],
            "properties": {
                "message": {"type": "string"},
                "error": {"type": "string"},
            },
        },
    }
