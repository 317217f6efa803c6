"""The kitchen against OpenAI's official Python client (`pip install openai`).

Usage: `python3 tools/openai-clients/check.py PORT [MODEL] [--tools]` with a kitchen on PORT
(`run.sh` starts one in front of `bare_stream` and runs this with `--tools`). Lists the models,
asks for a JSON answer and for the same answer streamed with usage, checks they agree, and
checks that a bad request comes back as the client's `BadRequestError`. With `--tools` (an
upstream that calls the tool it is offered, as `bare_stream` does; the mock does not), it also
asks for a tool call, whole and streamed, and answers it with the tool's result.
"""
import json
import sys

import openai
from openai import OpenAI

args = [a for a in sys.argv[1:] if not a.startswith("--")]
port = args[0]
model = args[1] if len(args) > 1 else "kitchen-mock"
tools_too = "--tools" in sys.argv
client = OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="sk-test", max_retries=0)
ask = [{"role": "user", "content": "hello there"}]

models = client.models.list()
print("models:", [m.id for m in models.data])
r = client.chat.completions.create(model=model, messages=ask, max_tokens=8)
print("json:", repr(r.choices[0].message.content), "| finish:", r.choices[0].finish_reason,
      "| usage:", r.usage.prompt_tokens, r.usage.completion_tokens, r.usage.total_tokens)
parts = []
usage = None
finish = None
stream = client.chat.completions.create(model=model, messages=ask, max_tokens=8, stream=True,
                                        stream_options={"include_usage": True})
for chunk in stream:
    if chunk.usage:
        usage = chunk.usage
    for c in chunk.choices:
        if c.delta.content:
            parts.append(c.delta.content)
        if c.finish_reason:
            finish = c.finish_reason
print("stream:", repr("".join(parts)), "| finish:", finish,
      "| usage:", usage.completion_tokens if usage else None)
assert "".join(parts) == r.choices[0].message.content, "stream and json differ"
assert usage is not None and usage.completion_tokens == r.usage.completion_tokens, "usage differs"

if tools_too:
    tools = [{
        "type": "function",
        "function": {
            "name": "get_weather",
            "description": "The weather in a city.",
            "parameters": {"type": "object", "properties": {"city": {"type": "string"}},
                           "required": ["city"]},
        },
    }]
    weather = [{"role": "user", "content": "What is the weather in Paris?"}]
    r = client.chat.completions.create(model=model, messages=weather, tools=tools)
    choice = r.choices[0]
    assert choice.finish_reason == "tool_calls", choice.finish_reason
    call = choice.message.tool_calls[0]
    print("tool call (json):", call.id, call.function.name, json.loads(call.function.arguments))

    calls = {}
    finish = None
    stream = client.chat.completions.create(model=model, messages=weather, tools=tools,
                                            stream=True, stream_options={"include_usage": True})
    for chunk in stream:
        for c in chunk.choices:
            for delta in c.delta.tool_calls or []:
                got = calls.setdefault(delta.index, {"id": None, "name": "", "arguments": ""})
                got["id"] = delta.id or got["id"]
                if delta.function and delta.function.name:
                    got["name"] += delta.function.name
                if delta.function and delta.function.arguments:
                    got["arguments"] += delta.function.arguments
            if c.finish_reason:
                finish = c.finish_reason
    assert finish == "tool_calls", finish
    streamed = calls[0]
    print("tool call (stream):", streamed["id"], streamed["name"], json.loads(streamed["arguments"]))
    assert (streamed["name"], json.loads(streamed["arguments"])) == \
        (call.function.name, json.loads(call.function.arguments)), "stream and json differ"

    answered = weather + [
        {"role": "assistant", "content": None, "tool_calls": [call.model_dump()]},
        {"role": "tool", "tool_call_id": call.id, "content": "sunny, 21 degrees"},
    ]
    r = client.chat.completions.create(model=model, messages=answered, tools=tools)
    assert r.choices[0].finish_reason != "tool_calls" and r.choices[0].message.content
    print("after the tool:", repr(r.choices[0].message.content))

try:
    client.chat.completions.create(model=model, messages=[], max_tokens=8)
    raise SystemExit("an empty `messages` was accepted")
except openai.BadRequestError as e:
    print("error:", type(e).__name__, e.status_code, str(e)[:120])
print("ok")
