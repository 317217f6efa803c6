// The kitchen against OpenAI's official Node client (`npm install openai`).
//
// Usage: start the kitchen, then `node tools/openai-clients/check.mjs 8080` from a directory
// where `openai` is installed. A JSON answer, the same answer streamed with usage (they must
// agree), and a bad request as the client's `BadRequestError`.
import OpenAI from "openai";
const port = process.argv[2];
const client = new OpenAI({ baseURL: `http://127.0.0.1:${port}/v1`, apiKey: "sk-test", maxRetries: 0 });
const r = await client.chat.completions.create({ model: "kitchen-mock", messages: [{ role: "user", content: "hello there" }], max_tokens: 8 });
console.log("json:", r.choices[0].message.content, r.usage);
const stream = await client.chat.completions.create({ model: "kitchen-mock", messages: [{ role: "user", content: "hello there" }], max_tokens: 8, stream: true, stream_options: { include_usage: true } });
let text = ""; let usage = null;
for await (const chunk of stream) { if (chunk.usage) usage = chunk.usage; for (const c of chunk.choices) text += c.delta?.content ?? ""; }
console.log("stream:", text, usage);
if (text !== r.choices[0].message.content) { console.error("differ"); process.exit(1); }
try {
  await client.chat.completions.create({ model: "kitchen-mock", messages: [], max_tokens: 8 });
  console.error("an empty `messages` was accepted");
  process.exit(1);
} catch (e) {
  if (!(e instanceof OpenAI.BadRequestError)) throw e;
  console.log("error:", e.constructor.name, e.status, e.message);
}
console.log("ok");
