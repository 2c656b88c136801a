// The Vercel AI SDK's own client code reading llmpipe's POST /api/chat: the `ai` package's
// DefaultChatTransport (what useChat uses: it posts the UI messages and parses the UI message
// stream against the SDK's chunk schema) and readUIMessageStream (which assembles the
// assistant message as useChat does). No browser needed. tests/test_ui_chat.py runs it.
//
// Usage: node ai_sdk_chat.mjs <api-url> <user text> [<headers JSON>]
// Prints one JSON line: the chunk types in order, the final message's parts, the errors the
// SDK reported, and the response's x-vercel-ai-ui-message-stream header.
import { DefaultChatTransport, readUIMessageStream } from "ai";

const [api, prompt, rawHeaders] = process.argv.slice(2);
if (!api || prompt === undefined) throw new Error("usage: node ai_sdk_chat.mjs <api-url> <text>");

let protocol = null;
const fetchAndNote = async (url, init) => {
  const response = await fetch(url, init);
  protocol = response.headers.get("x-vercel-ai-ui-message-stream");
  return response;
};

const transport = new DefaultChatTransport({
  api,
  fetch: fetchAndNote,
  headers: rawHeaders ? JSON.parse(rawHeaders) : undefined,
});
const messages = [
  { id: "u1", role: "user", parts: [{ type: "text", text: prompt }] },
];
const result = { protocol, chunks: [], errors: [], message: null };
try {
  const chunks = await transport.sendMessages({
    chatId: "chat-1",
    messages,
    trigger: "submit-message",
    messageId: undefined,
    abortSignal: undefined,
  });
  // Tee: the chunk types as parsed by the SDK, and the message as the SDK assembles it.
  const [forTypes, forMessage] = chunks.tee();
  const types = (async () => {
    for await (const chunk of forTypes) result.chunks.push(chunk.type);
  })();
  for await (const message of readUIMessageStream({
    stream: forMessage,
    onError: (error) => result.errors.push(String(error.message ?? error)),
  })) {
    result.message = message;
  }
  await types;
} catch (error) {
  result.errors.push(`thrown: ${error.message ?? error}`);
}
result.protocol = protocol;
console.log(JSON.stringify(result));
