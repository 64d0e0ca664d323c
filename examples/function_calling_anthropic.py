"""Function calling (tool use) with the Anthropic SDK: CalMesh's 19 tools from
`GET /api/v1/tools?format=anthropic`, each `tool_use` block sent to `POST /api/v1/tools/{name}/call`.

    pip install anthropic httpx
    export CALMESH_API_KEY=cm_live_...   ANTHROPIC_API_KEY=sk-ant-...
    python examples/function_calling_anthropic.py "Find the conflicts on my work calendar this week"

CALMESH_API_URL (default https://calmesh.xyz/api/v1) points it at another CalMesh, e.g.
http://127.0.0.1:8080/api/v1 for `make up`; ANTHROPIC_MODEL picks the model.
"""

from __future__ import annotations

import os
import sys
from typing import Any

import httpx


def calmesh_client(api_url: str, api_key: str) -> httpx.Client:
    return httpx.Client(base_url=api_url.rstrip("/") + "/", headers={"Authorization": f"Bearer {api_key}"}, timeout=60)


def call_tool(calmesh: httpx.Client, block: Any) -> dict[str, Any]:
    """Run one `tool_use` block; the answer is the `tool_result` block the model reads next."""
    answer = calmesh.post(f"tools/{block.name}/call", json={"arguments": block.input or {}})
    if answer.status_code != 200:  # unknown tool (404) or arguments outside the schema (422): say why
        problem = answer.json()
        fields = "; ".join(f"{e['field']}: {e['message']}" for e in problem.get("errors", []))
        return {"type": "tool_result", "tool_use_id": block.id, "is_error": True,
                "content": f"{problem.get('detail')} {fields}".strip()}
    result = answer.json()
    return {"type": "tool_result", "tool_use_id": block.id, "is_error": result["is_error"],
            "content": result["content"][0]["text"]}


def run(question: str, *, client: Any, calmesh: httpx.Client, model: str = "claude-sonnet-4-5",
        max_turns: int = 8) -> str:
    """Ask `question`; let the model use CalMesh's tools until it answers."""
    tools = calmesh.get("tools", params={"format": "anthropic"}).json()["data"]
    messages: list[dict[str, Any]] = [{"role": "user", "content": question}]
    for _ in range(max_turns):
        response = client.messages.create(model=model, max_tokens=1024, tools=tools, messages=messages,
                                          system="You manage the user's calendars with the CalMesh tools.")
        if response.stop_reason != "tool_use":
            return "".join(b.text for b in response.content if b.type == "text")
        messages.append({"role": "assistant", "content": response.content})
        messages.append({"role": "user", "content": [call_tool(calmesh, b) for b in response.content if b.type == "tool_use"]})
    return "(stopped after too many tool calls)"


def main() -> None:
    from anthropic import Anthropic

    question = " ".join(sys.argv[1:]) or "What is on my calendars today?"
    with calmesh_client(os.environ.get("CALMESH_API_URL", "https://calmesh.xyz/api/v1"), os.environ["CALMESH_API_KEY"]) as cm:
        print(run(question, client=Anthropic(), calmesh=cm, model=os.environ.get("ANTHROPIC_MODEL", "claude-sonnet-4-5")))


if __name__ == "__main__":
    main()
