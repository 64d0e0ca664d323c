"""`python -m calmesh_tools [FORMAT]` prints the tools in FORMAT (default mcp) as JSON.

It writes the bundled list of `@calmesh/mcp-server` (clients/mcp-node/tools.json):
    python -m calmesh_tools mcp > clients/mcp-node/tools.json
"""

from __future__ import annotations

import json
import sys

from .formats import tool_list


def render(fmt: str = "mcp") -> str:
    return json.dumps(tool_list(fmt), indent=2, ensure_ascii=False) + "\n"


if __name__ == "__main__":
    sys.stdout.write(render(sys.argv[1] if len(sys.argv) > 1 else "mcp"))
