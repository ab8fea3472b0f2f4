"""An agent loop with trimail's tool definitions, against a local ``trimail serve --dev``.

No model and no network: ``ScriptedModel`` plays the LLM. It is handed the
tools (``trimail.agent.openai_tools()``, the JSON Schema of the request), makes
a typical first mistake, reads the ``validation_error`` details trimail
answers, fixes exactly the fields named, and then follows the job until it
is sent. Swap ``ScriptedModel`` for a real model client to use it for real.

    trimail serve --dev &
    python examples/agent_loop.py
"""

from __future__ import annotations

import json
import os
import sys
import time
from typing import Any

from trimail.agent import openai_tools
from trimail.client import DEFAULT_URL, Client
from trimail.errors import HTTPError

ToolCall = dict[str, Any]


class ScriptedModel:
    """Stands in for an LLM: decides the next tool call from the last tool result."""

    def __init__(self, tools: list[dict[str, Any]]) -> None:
        self.tool_names = [tool["function"]["name"] for tool in tools]
        self.draft = {  # the first try: a wrong address and `body` instead of `text`
            "from": "Deploy bot <deploy@example.com>",
            "to": "the ops team",
            "subject": "Deploy 42 finished",
            "body": "Version 42 is live.",
        }

    def next_call(self, last_result: dict[str, Any] | None) -> ToolCall | None:
        if last_result is None:
            return {"name": "send_email", "arguments": self.draft}
        error = last_result.get("error")
        if error and error["code"] == "validation_error":
            for detail in error["details"]:  # fix what the API named, nothing else
                if detail["rule"] == "unknown_field" and detail["field"] == "body":
                    self.draft["text"] = self.draft.pop("body")
                elif detail["field"].startswith("to"):
                    self.draft["to"] = "ops@example.com"
            return {"name": "send_email", "arguments": self.draft}
        if error:
            return None  # something the model cannot fix: stop and report
        if last_result.get("status") in {"queued", "sending", "retrying"}:
            return {"name": "email_status", "arguments": {"id": last_result["id"]}}
        return None  # sent, failed or undelivered: done


def run_tool(client: Client, call: ToolCall) -> dict[str, Any]:
    """Execute one tool call; errors come back as data the model can read."""
    try:
        if call["name"] == "send_email":
            return client.send(call["arguments"]).model_dump()
        time.sleep(0.2)  # give delivery a moment before looking again
        return client.status(call["arguments"]["id"]).model_dump(exclude_none=True)
    except HTTPError as exc:
        return {"error": {"code": exc.code, "message": exc.message, "details": exc.details}}


def main() -> int:
    tools = openai_tools()
    model = ScriptedModel(tools)
    url = os.environ.get("TRIMAIL_URL", DEFAULT_URL)
    result: dict[str, Any] | None = None
    with Client(url, os.environ.get("TRIMAIL_API_KEY")) as client:
        for _turn in range(20):  # an agent loop is bounded too
            call = model.next_call(result)
            if call is None:
                break
            print(f"-> {call['name']}({json.dumps(call['arguments'])})")
            result = run_tool(client, call)
            print(f"<- {json.dumps(result)}")
    return 0 if result is not None and result.get("status") == "sent" else 1


if __name__ == "__main__":
    sys.exit(main())
