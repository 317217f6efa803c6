// The kitchen against OpenAI's official Node client (`npm install openai`).
//
// Usage: `node check.mjs PORT [MODEL] [--tools]` from a directory where `openai` is installed,
// with a kitchen on PORT (`run.sh` does both, in front of `bare_stream`, with `--tools`). A
// JSON answer, the same answer streamed with usage (they must agree), a bad request as the
// client's `BadRequestError`; with `--tools` (an upstream that calls the tool it is offered, as
// `bare_stream` does; the mock does not), a tool call whole and streamed, then its result sent
// back.
import OpenAI from "openai";

const args = process.argv.slice(2).filter((a) => !a.startsWith("--"));
const port = args[0];
const model = args[1] ?? "kitchen-mock";
const toolsToo = process.argv.includes("--tools");
const client = new OpenAI({ baseURL: `http://127.0.0.1:${port}/v1`, apiKey: "sk-test", maxRetries: 0 });
const ask = [{ role: "user", content: "hello there" }];
function check(ok, what) {
  if (!ok) {
    console.error("failed:", what);
    process.exit(1);
  }
}

const r = await client.chat.completions.create({ model, messages: ask, max_tokens: 8 });
console.log("json:", JSON.stringify(r.choices[0].message.content), r.choices[0].finish_reason, r.usage);
const stream = await client.chat.completions.create({
  model, messages: ask, max_tokens: 8, stream: true, stream_options: { include_usage: true },
});
let text = "";
let usage = null;
for await (const chunk of stream) {
  if (chunk.usage) usage = chunk.usage;
  for (const c of chunk.choices) text += c.delta?.content ?? "";
}
console.log("stream:", JSON.stringify(text), usage);
check(text === r.choices[0].message.content, "stream and json differ");
check(usage?.completion_tokens === r.usage.completion_tokens, "usage differs");

if (toolsToo) {
  const tools = [{
    type: "function",
    function: {
      name: "get_weather",
      description: "The weather in a city.",
      parameters: { type: "object", properties: { city: { type: "string" } }, required: ["city"] },
    },
  }];
  const weather = [{ role: "user", content: "What is the weather in Paris?" }];
  const whole = await client.chat.completions.create({ model, messages: weather, tools });
  check(whole.choices[0].finish_reason === "tool_calls", "a whole tool call");
  const call = whole.choices[0].message.tool_calls[0];
  console.log("tool call (json):", call.id, call.function.name, JSON.parse(call.function.arguments));

  const calls = [];
  let finish = null;
  const streamed = await client.chat.completions.create({
    model, messages: weather, tools, stream: true, stream_options: { include_usage: true },
  });
  for await (const chunk of streamed) {
    for (const c of chunk.choices) {
      for (const delta of c.delta?.tool_calls ?? []) {
        const got = (calls[delta.index] ??= { id: null, name: "", arguments: "" });
        got.id = delta.id ?? got.id;
        got.name += delta.function?.name ?? "";
        got.arguments += delta.function?.arguments ?? "";
      }
      if (c.finish_reason) finish = c.finish_reason;
    }
  }
  check(finish === "tool_calls", "a streamed tool call");
  console.log("tool call (stream):", calls[0].id, calls[0].name, JSON.parse(calls[0].arguments));
  check(calls[0].name === call.function.name && calls[0].arguments === call.function.arguments,
    "stream and json differ");

  const answered = [
    ...weather,
    { role: "assistant", content: null, tool_calls: [call] },
    { role: "tool", tool_call_id: call.id, content: "sunny, 21 degrees" },
  ];
  const after = await client.chat.completions.create({ model, messages: answered, tools });
  check(after.choices[0].finish_reason !== "tool_calls" && after.choices[0].message.content, "the answer after the tool");
  console.log("after the tool:", JSON.stringify(after.choices[0].message.content));
}

try {
  await client.chat.completions.create({ model, messages: [], max_tokens: 8 });
  console.error("an empty `messages` was accepted");
  process.exit(1);
} catch (e) {
  if (!(e instanceof OpenAI.BadRequestError)) throw e;
  console.log("error:", e.constructor.name, e.status, e.message);
}
console.log("ok");
