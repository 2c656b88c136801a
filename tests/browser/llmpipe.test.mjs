// Unit tests of sinks/server/static/llmpipe.js under Node (node --test): the SSE parser against
// the WHATWG rules, and followEvents' resume/dedup/abort against a throwaway local HTTP server.
// Speech: PCM decoding, the scheduling cursor and PcmPlayer (fake AudioContext), speakChat (fake
// WebSocket).
import assert from "node:assert/strict";
import http from "node:http";
import { test } from "node:test";

import {
  ChatSocket, PcmPlayer, PlaybackCursor, SSEParser, SpeechProtocolError, followEvents, parseMetrics,
  pcm16ToFloat32, speakChat, trimHistory,
  streamChat,
} from "../../sinks/server/static/llmpipe.js";

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

// ---- speech: PCM decoding, the scheduling cursor, the player, speakChat ---------------------

test("pcm16ToFloat32: little-endian signed 16-bit to [-1, 1)", () => {
  const bytes = new Uint8Array([0x00, 0x00, 0xff, 0x7f, 0x00, 0x80, 0x01, 0x00, 0xff, 0xff, 0x00, 0x40, 0x07]);
  const out = pcm16ToFloat32(bytes.buffer);
  assert.ok(out instanceof Float32Array);
  // The odd trailing byte is half a sample: ignored.
  assert.deepEqual([...out], [0, 32767 / 32768, -1, 1 / 32768, -1 / 32768, 0.5]);
  // A view on a larger buffer reads only its own bytes (a Node Buffer is such a view).
  const view = new Uint8Array([9, 9, 0x00, 0xc0, 9]).subarray(2, 4);
  assert.deepEqual([...pcm16ToFloat32(view)], [-0.5]);
  assert.equal(pcm16ToFloat32(new ArrayBuffer(0)).length, 0);
});

const near = (got, want) => assert.ok(Math.abs(got - want) < 1e-9, `${got} != ${want}`);

test("PlaybackCursor: back to back, lead at the start and after an underrun", () => {
  const c = new PlaybackCursor(0.1);
  near(c.place(5, 0.02), 5.1); // the first chunk starts lead seconds ahead
  near(c.place(5.01, 0.02), 5.12); // then back to back, whatever the clock says
  near(c.place(5.05, 0.5), 5.14);
  near(c.ahead(5.05), 0.59);
  assert.equal(c.underruns, 0);
  // Audio came late: the cursor is behind the clock; restart lead seconds ahead of it.
  near(c.place(10, 0.02), 10.1);
  assert.equal(c.underruns, 1);
  assert.equal(c.ahead(11), 0);
});

/** A fake AudioContext: records the buffers made and the sources started and stopped. */
function fakeContext() {
  const ctx = {
    currentTime: 2, destination: { name: "out" }, sources: [], buffers: [],
    createBuffer(channels, length, sampleRate) {
      const b = { channels, length, sampleRate, data: null, copyToChannel(d, ch) { assert.equal(ch, 0); this.data = d; } };
      ctx.buffers.push(b);
      return b;
    },
    createBufferSource() {
      const s = {
        buffer: null, startedAt: null, stopped: false, connected: null, onended: null,
        connect(d) { s.connected = s.connectedTo = d; }, disconnect() { s.connected = null; },
        start(t) { s.startedAt = t; }, stop() { s.stopped = true; },
      };
      ctx.sources.push(s);
      return s;
    },
  };
  return ctx;
}

test("PcmPlayer: buffers at the audio's rate, back to back; stopAll is barge-in", async () => {
  const ctx = fakeContext();
  const p = new PcmPlayer(ctx, { lead: 0.05 });
  const chunk = new Float32Array(441).fill(0.25); // 20 ms at 22050 Hz
  const first = p.play(chunk, 22050);
  near(first.start, 2.05);
  near(first.duration, 0.02);
  assert.equal(first.sampleRate, 22050);
  ctx.currentTime = 2.03;
  near(p.play(chunk, 22050).start, 2.07);
  assert.equal(p.play(new Float32Array(0), 22050), null);
  assert.deepEqual(ctx.buffers.map((b) => [b.channels, b.length, b.sampleRate]), [[1, 441, 22050], [1, 441, 22050]]);
  assert.equal(ctx.buffers[0].data, chunk);
  assert.ok(ctx.sources.every((s) => s.connected === ctx.destination));
  assert.equal(p.samplesScheduled, 882);
  assert.equal(p.sourcesStarted, 2);
  // The first source ends by itself; the second is still scheduled when Stop comes.
  ctx.sources[0].onended();
  let idle = false;
  p.whenIdle().then(() => { idle = true; });
  await null;
  assert.equal(idle, false);
  assert.equal(p.stopAll(), 1);
  assert.deepEqual(ctx.sources.map((s) => s.stopped), [false, true]);
  await null;
  assert.equal(idle, true);
  // After the barge-in nothing more is scheduled: late audio is counted as dropped.
  assert.equal(p.play(chunk, 22050), null);
  assert.equal(ctx.sources.length, 2);
  assert.deepEqual([p.samplesScheduled, p.samplesDropped, p.sourcesStopped], [882, 441, 1]);
});

/** A fake WebSocket: the test plays the server, through `serve` and `sent`. */
class FakeSocket {
  static last = null;
  constructor(url, protocols) {
    Object.assign(this, { url, protocols, sent: [], readyState: 0, closed: null });
    FakeSocket.last = this;
    setTimeout(() => { this.readyState = 1; this.onopen?.(); });
  }
  send(data) { this.sent.push(JSON.parse(data)); }
  close(code) { this.readyState = 2; this.closed = code; }
  serve(msg) { this.onmessage?.({ data: typeof msg === "string" || msg instanceof ArrayBuffer ? msg : JSON.stringify(msg) }); }
}
const opened = async () => { while (FakeSocket.last?.readyState !== 1) await new Promise((r) => setTimeout(r)); return FakeSocket.last; };
const FORMAT = { type: "audio_format", turn: 1, encoding: "pcm_s16le", sample_rate: 22050, channels: 1 };

test("speakChat: request with speech, text/words/audio delivered, done after playback", async () => {
  FakeSocket.last = null;
  const ctx = fakeContext();
  const got = { text: "", words: [], audio: [], formats: [] };
  const turn = speakChat("ws://x/v1/ws", { prompt: "Hi", speech: { voice: "en" } }, {
    WebSocketImpl: FakeSocket, audioContext: ctx, token: "s3cret",
    onText: (t) => { got.text += t; }, onWord: (w) => got.words.push(w.text),
    onFormat: (f, player) => got.formats.push([f.sample_rate, player.context === ctx]),
    onAudio: (s, placed) => got.audio.push([s.length, placed && placed.duration]),
  });
  const ws = await opened();
  assert.deepEqual(ws.protocols, ["llmpipe", "bearer.s3cret"]);
  assert.deepEqual(ws.sent, [{ type: "request", prompt: "Hi", speech: { voice: "en" } }]);
  ws.serve({ type: "text", turn: 1, seq: 1, text: "Hello there." });
  ws.serve(FORMAT);
  ws.serve(new Uint8Array(882).buffer);
  ws.serve({ type: "word", turn: 1, text: "Hello", sample: 0 });
  ws.serve(new Uint8Array(882).buffer);
  ws.serve({ type: "done", turn: 1, seq: 2 });
  let end = null;
  turn.then((ev) => { end = ev; });
  await new Promise((r) => setTimeout(r, 5));
  assert.equal(end, null, "resolved before its audio played");
  for (const s of ctx.sources) s.onended();
  assert.equal((await turn).type, "done");
  assert.equal(ws.closed, 1000); // its own connection, closed after the turn
  assert.deepEqual(got, { text: "Hello there.", words: ["Hello"], audio: [[441, 0.02], [441, 0.02]], formats: [[22050, true]] });
});

test("speakChat: abort sends interrupt, stops the audio, resolves with heard", async () => {
  FakeSocket.last = null;
  const ctx = fakeContext();
  const ctl = new AbortController();
  const placed = [];
  const tap = { name: "analyser" };
  const turn = speakChat("ws://x/v1/ws", { prompt: "Count" }, {
    WebSocketImpl: FakeSocket, audioContext: ctx, signal: ctl.signal, destination: tap,
    onAudio: (s, p) => placed.push(p !== null),
  });
  const ws = await opened();
  assert.deepEqual(ws.protocols, ["llmpipe"]);
  assert.deepEqual(ws.sent[0].speech, {}); // the server's default voice and rate
  ws.serve(FORMAT);
  ws.serve(new Uint8Array(882).buffer);
  ws.serve(new Uint8Array(882).buffer);
  ctl.abort();
  assert.deepEqual(ws.sent.at(-1), { type: "interrupt" });
  assert.ok(ctx.sources.every((s) => s.stopped), "a source played on after Stop");
  assert.equal(ctx.sources.length, 2);
  assert.ok(ctx.sources.every((s) => s.connectedTo === tap && s.connected === null));
  ws.serve(new Uint8Array(882).buffer); // in flight when the interrupt was sent: dropped
  ws.serve({ type: "interrupted", turn: 1, delivered_chars: 9, heard: "One two ", heard_exact: true });
  const end = await turn;
  assert.equal(end.heard, "One two ");
  assert.deepEqual(placed, [true, true, false]);
  assert.equal(ctx.sources.length, 2);
  assert.equal(ws.closed, 1000);
});

test("speakChat: a protocol error rejects", async () => {
  FakeSocket.last = null;
  const turn = speakChat("ws://x/v1/ws", { prompt: "x", speech: { rate: 1000 } }, { WebSocketImpl: FakeSocket });
  const ws = await opened();
  ws.serve({ type: "error", error: { type: "invalid_request", field: "speech.rate", message: "too fast" } });
  await assert.rejects(turn, (err) => err instanceof SpeechProtocolError && err.field === "speech.rate");
});

// ---- the chat: a conversation over one WebSocket -------------------------------------------

test("ChatSocket: one connection, each turn sends only its new message; history as delivered", async () => {
  FakeSocket.last = null;
  const chat = new ChatSocket("ws://x/v1/ws", { WebSocketImpl: FakeSocket });
  const sent = [];
  const first = chat.turn({ prompt: "Remember 7" }, { onSent: (r) => sent.push(r) });
  const ws = await opened();
  ws.serve({ type: "text", turn: 1, seq: 1, text: "Noted: " });
  ws.serve({ type: "text", turn: 1, seq: 2, text: "7." });
  ws.serve({ type: "done", turn: 1, seq: 3, stop_reason: "stop" });
  assert.equal((await first).type, "done");
  assert.equal(ws.closed, null, "the connection stays open between turns");
  // Turn 2 on the same socket, interrupted after some text: the history keeps what was delivered.
  const ctl = new AbortController();
  const second = chat.turn({ prompt: "Which number?" }, { signal: ctl.signal });
  await null;
  assert.equal(FakeSocket.last, ws);
  ws.serve({ type: "text", turn: 2, seq: 1, text: "It was" });
  ctl.abort();
  ws.serve({ type: "text", turn: 2, seq: 2, text: " 7" }); // in flight: delivered, then interrupted
  ws.serve({ type: "interrupted", turn: 2, delivered_chars: 8 });
  assert.equal((await second).type, "interrupted");
  assert.deepEqual(ws.sent, [
    { type: "request", prompt: "Remember 7" },
    { type: "request", prompt: "Which number?" },
    { type: "interrupt" },
  ]);
  assert.deepEqual(sent, [{ type: "request", prompt: "Remember 7" }]);
  assert.deepEqual(chat.history, [
    { role: "user", content: "Remember 7" }, { role: "assistant", content: "Noted: 7." },
    { role: "user", content: "Which number?" }, { role: "assistant", content: "It was 7" },
  ]);
});

test("ChatSocket: after a lost connection the next turn reconnects and carries the history", async () => {
  FakeSocket.last = null;
  const chat = new ChatSocket("ws://x/v1/ws", { WebSocketImpl: FakeSocket, token: "t" });
  const first = chat.turn({ prompt: "A" });
  const ws1 = await opened();
  assert.deepEqual(ws1.protocols, ["llmpipe", "bearer.t"]);
  ws1.serve({ type: "text", turn: 1, seq: 1, text: "a" });
  ws1.serve({ type: "done", turn: 1, seq: 2 });
  await first;
  const second = chat.turn({ prompt: "B" });
  await null;
  ws1.serve({ type: "text", turn: 2, seq: 1, text: "b, partly" });
  ws1.onclose({ code: 1006 }); // the connection drops mid-answer
  await assert.rejects(second, /closed before the turn ended \(code 1006\)/);
  FakeSocket.last = null;
  const third = chat.turn({ prompt: "C" });
  const ws2 = await opened();
  assert.notEqual(ws2, ws1);
  assert.deepEqual(ws2.sent, [{
    type: "request",
    messages: [
      { role: "user", content: "A" }, { role: "assistant", content: "a" },
      { role: "user", content: "B" }, { role: "assistant", content: "b, partly" },
      { role: "user", content: "C" },
    ],
  }]);
  ws2.serve({ type: "done", turn: 1, seq: 1 });
  await third;
  // New chat: the server is told to forget; only the new message goes.
  chat.reset();
  const fourth = chat.turn({ messages: [{ role: "user", content: "D" }] });
  await null;
  assert.deepEqual(ws2.sent.at(-1), { type: "request", messages: [{ role: "user", content: "D" }], reset: true });
  ws2.serve({ type: "error", turn: 2, seq: 1, kind: "upstream", message: "boom" });
  assert.equal((await fourth).type, "error");
  assert.deepEqual(chat.history, [], "a turn that failed before any text is not kept");
});

test("ChatSocket: a refused request keeps the connection and what the next request must carry", async () => {
  FakeSocket.last = null;
  const chat = new ChatSocket("ws://x/v1/ws", { WebSocketImpl: FakeSocket });
  chat.history = [{ role: "user", content: "A" }, { role: "assistant", content: "a" }];
  const first = chat.turn({ prompt: "B", max_tokens: -1 });
  const ws = await opened();
  assert.equal(ws.sent[0].messages.length, 3);
  ws.serve({ type: "error", error: { type: "invalid_request", field: "max_tokens", message: "must be > 0" } });
  await assert.rejects(first, (err) => err instanceof SpeechProtocolError && err.field === "max_tokens");
  const second = chat.turn({ prompt: "B" });
  await null;
  assert.equal(FakeSocket.last, ws);
  assert.deepEqual(ws.sent[1].messages.map((m) => m.content), ["A", "a", "B"]);
  ws.serve({ type: "done", turn: 1, seq: 1 });
  await second;
  assert.equal(chat.busy, false);
  await assert.rejects(chat.turn({ prompt: "x" }, { signal: AbortSignal.abort() }));
});

test("trimHistory bounds as the server does: system pinned, oldest first, no leading assistant", () => {
  const m = (role, content) => ({ role, content });
  const conv = [m("system", "be brief"), m("user", "1"), m("assistant", "one"), m("user", "2"), m("assistant", "two"), m("user", "3")];
  assert.deepEqual(trimHistory(conv, { maxMessages: 4 }), [m("system", "be brief"), m("user", "2"), m("assistant", "two"), m("user", "3")]);
  assert.deepEqual(trimHistory(conv, { maxMessages: 3 }), [m("system", "be brief"), m("user", "3")]);
  assert.deepEqual(trimHistory(conv, { maxChars: 14 }), [m("system", "be brief"), m("user", "2"), m("assistant", "two"), m("user", "3")]);
  assert.deepEqual(trimHistory([m("user", "x".repeat(500))], { maxChars: 10 }), [m("user", "x".repeat(500))]);
});

test("parseMetrics sums each sample over its labels and skips comments", () => {
  const m = parseMetrics([
    "# HELP llmpipe_streams_total Event streams served.",
    "# TYPE llmpipe_streams_total counter",
    'llmpipe_streams_total{kind="sse"} 3.0',
    'llmpipe_streams_total{kind="ws",x="a b"} 2.0',
    "llmpipe_streams_active 1.0",
    "llmpipe_buffer_fill_ratio_max 2.5e-01",
    'llmpipe_time_to_first_token_seconds_bucket{le="+Inf"} 4.0',
    "garbage line",
    "",
  ].join("\n"));
  assert.equal(m.get("llmpipe_streams_total"), 5);
  assert.equal(m.get("llmpipe_streams_active"), 1);
  assert.equal(m.get("llmpipe_buffer_fill_ratio_max"), 0.25);
  assert.equal(m.get("llmpipe_time_to_first_token_seconds_bucket"), 4);
  assert.equal(m.has("garbage"), false);
});
