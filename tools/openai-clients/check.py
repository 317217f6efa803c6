"""The kitchen against OpenAI's official Python client (`pip install openai`).

Usage: start the kitchen (`cargo run --release --example kitchen -- --addr 127.0.0.1:8080`),
then `python3 tools/openai-clients/check.py 8080`. Lists the models, asks for a JSON answer and
for the same answer streamed with usage, checks they agree, and checks that a bad request comes
back as the client's `BadRequestError`.
"""
import sys
import openai
from openai import OpenAI
port = sys.argv[1]
client = OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="sk-test", max_retries=0)
models = client.models.list()
print("models:", [m.id for m in models.data])
r = client.chat.completions.create(model="kitchen-mock", messages=[{"role": "user", "content": "hello there"}], max_tokens=8)
print("json:", r.choices[0].message.content, "| finish:", r.choices[0].finish_reason, "| usage:", r.usage.prompt_tokens, r.usage.completion_tokens, r.usage.total_tokens)
parts = []
usage = None
stream = client.chat.completions.create(model="kitchen-mock", messages=[{"role": "user", "content": "hello there"}], max_tokens=8, stream=True, stream_options={"include_usage": True})
finish = None
for chunk in stream:
    if chunk.usage:
        usage = chunk.usage
    for c in chunk.choices:
        if c.delta.content:
            parts.append(c.delta.content)
        if c.finish_reason:
            finish = c.finish_reason
print("stream:", "".join(parts), "| finish:", finish, "| usage:", usage.completion_tokens if usage else None)
assert "".join(parts) == r.choices[0].message.content, "stream and json differ"
try:
    client.chat.completions.create(model="kitchen-mock", messages=[], max_tokens=8)
    raise SystemExit("an empty `messages` was accepted")
except openai.BadRequestError as e:
    print("error:", type(e).__name__, e.status_code, str(e)[:120])
print("ok")
