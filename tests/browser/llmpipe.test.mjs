// Unit tests of sinks/server/static/llmpipe.js under Node (node --test): the SSE parser against
// the WHATWG rules, and followEvents' resume/dedup/abort against a throwaway local HTTP server.
import assert from "node:assert/strict";
import http from "node:http";
import { test } from "node:test";

import { SSEParser, followEvents, streamChat } from "../../sinks/server/static/llmpipe.js";

const parse = (...chunks) => {
  const p = new SSEParser();
  const out = chunks.flatMap((c) => p.feed(c));
  return { events: out.map(({ type, data, id }) => [type, data, id]), retry: p.retry };
};

// [input, expected events as [type, data, lastEventId]]
const CASES = [
  ["data: a\n\n", [["message", "a", ""]]],
  ["data: a\r\n\r\ndata: b\r\rdata: c\n\n", [["message", "a", ""], ["message", "b", ""], ["message", "c", ""]]],
  ["\uFEFFdata: bom\n\n", [["message", "bom", ""]]],
  ["\uFEFF\uFEFFdata: x\n\n", []], // only one BOM is stripped: the field is "\uFEFFdata"
  [": comment\n:\ndata: x\n\n", [["message", "x", ""]]],
  ["data\n\n", [["message", "", ""]]],
  ["data:\ndata:\n\n", [["message", "\n", ""]]],
  ["data:  two\n\n", [["message", " two", ""]]],
  ["data:a\ndata: b\n\n", [["message", "a\nb", ""]]],
  ["event: text\nid: 7\ndata: {}\n\n", [["text", "{}", "7"]]],
  ["id: 1\ndata: a\n\ndata: b\n\n", [["message", "a", "1"], ["message", "b", "1"]]], // id persists
  ["id: 1\ndata: a\n\nid\ndata: b\n\n", [["message", "a", "1"], ["message", "b", ""]]],
  ["id: 1\ndata: a\n\nid: 2\0\ndata: b\n\n", [["message", "a", "1"], ["message", "b", "1"]]],
  ["event: x\n\ndata: y\n\n", [["message", "y", ""]]], // no data: nothing dispatched, type reset
  ["data: end\n", []], // EOF before the blank line: discarded
  ["Data: x\n\nfoo: bar\ndata: ok\n\n", [["message", "ok", ""]]], // names are case-sensitive
  ["data: é€😀\n\n", [["message", "é€😀", ""]]],
];

test("SSEParser: WHATWG cases, whole and split at every position", () => {
  for (const [input, expected] of CASES) {
    assert.deepEqual(parse(input).events, expected, JSON.stringify(input));
    for (let i = 0; i <= input.length; i++) {
      const got = parse(input.slice(0, i), input.slice(i)).events;
      assert.deepEqual(got, expected, `${JSON.stringify(input)} split at ${i}`);
    }
    assert.deepEqual(parse(...input).events, expected, `${JSON.stringify(input)} char by char`);
  }
});

test("SSEParser: retry takes only ASCII digits", () => {
  assert.equal(parse("retry: 1500\n\n").retry, 1500);
  assert.equal(parse("retry: 15x\n\n").retry, null);
  assert.equal(parse("retry:\n\n").retry, null);
  assert.equal(parse("retry: 10\nretry: -1\n\n").retry, 10);
});

// ---- followEvents against a local server ---------------------------------------------------

const frame = (seq, ev) => `event: ${ev.type}\nid: ${seq}\ndata: ${JSON.stringify({ ...ev, seq })}\n\n`;
const WORDS = Array.from({ length: 30 }, (_, i) => `w${i} `);

/** A server of one stream of WORDS + done. Each connection is cut after `cutAfter` frames (in
 * the middle of the next frame), and replays `overlap` already-sent events (duplicates). */
function server({ cutAfter = 7, overlap = 2 } = {}) {
  const seen = [];
  const srv = http.createServer((req, res) => {
    if (req.method === "DELETE") { seen.push(`DELETE ${req.url}`); res.writeHead(204).end(); return; }
    if (req.method === "POST") {
      res.writeHead(201, { "Content-Type": "application/json" });
      res.end(JSON.stringify({ id: "s1", events_url: "/v1/streams/s1/events" }));
      return;
    }
    const last = req.headers["last-event-id"];
    seen.push(last ?? null);
    res.writeHead(200, { "Content-Type": "text/event-stream; charset=utf-8" });
    const all = [...WORDS.map((text) => ({ type: "text", text })), { type: "done", stop_reason: "stop" }];
    const from = Math.max(0, (last === undefined ? 0 : +last) - overlap);
    let out = ": hello\n\n";
    let n = 0;
    for (let seq = from + 1; seq <= all.length; seq++) {
      const f = frame(seq, all[seq - 1]);
      if (n++ === cutAfter) { out += f.slice(0, f.length >> 1); res.write(out, () => setTimeout(() => res.destroy(), 20)); return; }
      out += f;
    }
    res.end(out);
  });
  return new Promise((resolve) => srv.listen(0, "127.0.0.1", () =>
    resolve({ url: `http://127.0.0.1:${srv.address().port}`, seen, close: () => srv.close() })));
}

test("followEvents resumes with Last-Event-ID and yields every event exactly once", async () => {
  const s = await server();
  try {
    const got = [];
    let reconnects = 0;
    for await (const ev of followEvents(`${s.url}/v1/streams/s1/events`, {
      retryMs: 5, onReconnect: (n) => { reconnects = n; },
    })) got.push(ev);
    assert.deepEqual(got.map((e) => e.seq), Array.from({ length: 31 }, (_, i) => i + 1));
    assert.equal(got.filter((e) => e.type === "text").map((e) => e.text).join(""), WORDS.join(""));
    assert.ok(reconnects >= 3, `reconnects: ${reconnects}`);
    assert.deepEqual(s.seen.slice(0, 3), [null, "7", "12"]); // the id of the last whole frame
  } finally {
    s.close();
  }
});

test("streamChat: stop() aborts the read and DELETEs the stream", async () => {
  const s = await server({ cutAfter: 1000 });
  try {
    const chat = streamChat({ prompt: "hi" }, { baseUrl: s.url });
    const got = [];
    for await (const ev of chat) {
      got.push(ev);
      if (got.length === 3) await chat.stop(); // the loop then ends quietly
    }
    assert.equal(got.length, 3);
    assert.ok(s.seen.includes("DELETE /v1/streams/s1"), JSON.stringify(s.seen));
  } finally {
    s.close();
  }
});
