"""CalMesh's agent tools, defined once (see `definitions`), run by `executor.Executor`, listed in
every function-calling format by `formats.tool_list`."""

from .definitions import BY_NAME, TOOLS, ApiCall, Tool
from .executor import Executor, FieldError, ToolResult, validate
from .formats import FORMATS, tool_list, to_gemini_schema

__all__ = ["BY_NAME", "FORMATS", "TOOLS", "ApiCall", "Executor", "FieldError", "Tool", "ToolResult", "to_gemini_schema",
           "tool_list", "validate"]
