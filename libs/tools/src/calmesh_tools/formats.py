"""The tools in each face's format: MCP, and the function-calling formats of OpenAI, Anthropic and
Gemini. All are made from `definitions.TOOLS`; Gemini's schema is converted, not written by hand."""

from __future__ import annotations

import copy
from collections.abc import Callable
from typing import Any

from .definitions import TOOLS, Tool

FORMATS = ("mcp", "openai", "anthropic", "gemini")

#: The keywords of Gemini's schema (an OpenAPI 3.0 subset); everything else is dropped or rewritten.
_GEMINI_KEYS = frozenset({
    "type", "format", "title", "description", "nullable", "enum", "items", "properties", "required",
    "minItems", "maxItems", "minProperties", "maxProperties", "minLength", "maxLength", "pattern",
    "minimum", "maximum", "default", "anyOf", "propertyOrdering", "example",
})
_GEMINI_FORMATS = {"string": {"date-time", "enum"}, "integer": {"int32", "int64"}, "number": {"float", "double"}}


def to_gemini_schema(schema: dict[str, Any]) -> dict[str, Any]:
    """JSON Schema → Gemini's OpenAPI-subset schema: `$ref`s inlined from `$defs`, no
    `additionalProperties`, no `$schema`, a type list with "null" as `nullable`, unknown keywords out."""
    defs = schema.get("$defs", {})

    def convert(node: Any, seen: tuple[str, ...] = ()) -> Any:
        if isinstance(node, list):
            return [convert(n, seen) for n in node]
        if not isinstance(node, dict):
            return node
        if "$ref" in node:
            name = str(node["$ref"]).rsplit("/", 1)[-1]
            if name in seen or name not in defs:
                raise ValueError(f"cannot inline {node['$ref']!r} for Gemini")
            merged = {**copy.deepcopy(defs[name]), **{k: v for k, v in node.items() if k != "$ref"}}
            return convert(merged, (*seen, name))
        out: dict[str, Any] = {}
        for key, value in node.items():
            if key == "type" and isinstance(value, list):
                kinds = [t for t in value if t != "null"]
                out["type"] = kinds[0] if len(kinds) == 1 else "string"
                if "null" in value:
                    out["nullable"] = True
            elif key == "properties":
                out["properties"] = {name: convert(sub, seen) for name, sub in value.items()}
            elif key in ("items", "anyOf"):
                out[key] = convert(value, seen)
            elif key in _GEMINI_KEYS:
                out[key] = copy.deepcopy(value)
        kind = out.get("type")
        if "format" in out and out["format"] not in _GEMINI_FORMATS.get(str(kind), set()):
            del out["format"]
        if kind == "object" and "properties" in out:
            out["propertyOrdering"] = list(out["properties"])
            if not out["properties"]:
                # Gemini refuses an object with no properties as parameters; say "no parameters" instead.
                del out["properties"], out["propertyOrdering"]
        return out

    converted: dict[str, Any] = convert(schema)  # an object schema converts to an object
    return converted


def as_mcp(tool: Tool, key_scope: str | None) -> dict[str, Any]:
    return {"name": tool.name, "title": tool.title, "description": tool.describe(key_scope),
            "inputSchema": copy.deepcopy(tool.input_schema), "annotations": tool.annotations()}


def as_openai(tool: Tool, key_scope: str | None) -> dict[str, Any]:
    return {"type": "function", "function": {"name": tool.name, "description": tool.describe(key_scope),
                                             "parameters": copy.deepcopy(tool.input_schema)}}


def as_anthropic(tool: Tool, key_scope: str | None) -> dict[str, Any]:
    return {"name": tool.name, "description": tool.describe(key_scope), "input_schema": copy.deepcopy(tool.input_schema)}


def as_gemini(tool: Tool, key_scope: str | None) -> dict[str, Any]:
    return {"name": tool.name, "description": tool.describe(key_scope), "parameters": to_gemini_schema(tool.input_schema)}


_MAKERS: dict[str, Callable[[Tool, str | None], dict[str, Any]]] = {
    "mcp": as_mcp, "openai": as_openai, "anthropic": as_anthropic, "gemini": as_gemini,
}


def tool_list(fmt: str, key_scope: str | None = None) -> list[dict[str, Any]]:
    """Every tool in format `fmt` (one of FORMATS), described for a key of `key_scope`."""
    make = _MAKERS.get(fmt)
    if make is None:
        raise ValueError(f"unknown format {fmt!r}; one of {', '.join(FORMATS)}")
    return [make(tool, key_scope) for tool in TOOLS]
