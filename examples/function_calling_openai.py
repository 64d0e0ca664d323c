"""Function calling with the OpenAI SDK: CalMesh's 19 tools from `GET /api/v1/tools?format=openai`,
each call the model makes sent to `POST /api/v1/tools/{name}/call` with your CalMesh key.

    pip install openai httpx
    export CALMESH_API_KEY=cm_live_...   OPENAI_API_KEY=sk-...
    python examples/function_calling_openai.py "When am I free tomorrow on my work calendar?"

CALMESH_API_URL (default https://calmesh.xyz/api/v1) points it at another CalMesh, e.g.
http://127.0.0.1:8080/api/v1 for `make up`; OPENAI_MODEL picks the model.
"""

from __future__ import annotations

import json
import os
import sys
from typing import Any

import httpx


def calmesh_client(api_url: str, api_key: str) -> httpx.Client:
    return httpx.Client(base_url=api_url.rstrip("/") + "/", headers={"Authorization": f"Bearer {api_key}"}, timeout=60)


def call_tool(calmesh: httpx.Client, name: str, arguments: str) -> str:
    """Run one tool call of the model; what comes back is the text the model reads next."""
    try:
        args = json.loads(arguments or "{}")
    except ValueError:
        return "ERROR: the arguments were not valid JSON; send a JSON object."
    answer = calmesh.post(f"tools/{name}/call", json={"arguments": args})
    if answer.status_code != 200:  # unknown tool (404) or arguments outside the schema (422): say why
        problem = answer.json()
        fields = "; ".join(f"{e['field']}: {e['message']}" for e in problem.get("errors", []))
        return f"ERROR: {problem.get('detail')} {fields}".strip()
    result = answer.json()
    text = result["content"][0]["text"]
    return f"ERROR: {text}" if result["is_error"] else text


def run(question: str, *, client: Any, calmesh: httpx.Client, model: str = "gpt-4o-mini", max_turns: int = 8) -> str:
    """Ask `question`; let the model call CalMesh's tools until it answers."""
    tools = calmesh.get("tools", params={"format": "openai"}).json()["data"]
    messages: list[dict[str, Any]] = [
        {"role": "system", "content": "You manage the user's calendars with the CalMesh tools."},
        {"role": "user", "content": question},
    ]
    for _ in range(max_turns):
        response = client.chat.completions.create(model=model, messages=messages, tools=tools)
        message = response.choices[0].message
        if not message.tool_calls:
            return message.content or ""
        messages.append({"role": "assistant", "content": message.content, "tool_calls": [
            {"id": c.id, "type": "function", "function": {"name": c.function.name, "arguments": c.function.arguments}}
            for c in message.tool_calls]})
        for c in message.tool_calls:
            messages.append({"role": "tool", "tool_call_id": c.id,
                             "content": call_tool(calmesh, c.function.name, c.function.arguments)})
    return "(stopped after too many tool calls)"


def main() -> None:
    from openai import OpenAI

    question = " ".join(sys.argv[1:]) or "What is on my calendars today?"
    with calmesh_client(os.environ.get("CALMESH_API_URL", "https://calmesh.xyz/api/v1"), os.environ["CALMESH_API_KEY"]) as cm:
        print(run(question, client=OpenAI(), calmesh=cm, model=os.environ.get("OPENAI_MODEL", "gpt-4o-mini")))


if __name__ == "__main__":
    main()
