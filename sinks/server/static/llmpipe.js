// llmpipe.js: a small, dependency-free ES module for reading llmpipe's server-sent events.
//
//   import { streamChat } from "/llmpipe.js";
//   const chat = streamChat({ prompt: "Hello" }, { onReconnect: (n, id) => console.log(n, id) });
//   for await (const ev of chat) if (ev.type === "text") out.textContent += ev.text;
//   stopButton.onclick = () => chat.stop();   // aborts the fetch and DELETEs the stream
//
// Layers, each usable alone:
//   SSEParser        incremental parser of an event stream (WHATWG HTML "Parsing an event stream")
//   readSSE          async generator: a fetch Response body -> raw SSE events
//   followEvents     async generator: GET an events URL, resume after a dropped connection with
//                    Last-Event-ID, yield each llmpipe event exactly once (dedup by seq), stop at
//                    "done"/"error"
//   streamChat       POST /v1/streams, then followEvents; stop() cancels the generation upstream
//   streamEvents     one-shot POST /v1/stream (not resumable), for servers without the store
//   pcm16ToFloat32   s16le PCM bytes -> Float32Array samples in [-1, 1)
//   PlaybackCursor   where the next audio chunk starts on an AudioContext's clock (back to back)
//   PcmPlayer        schedules PCM chunks on an AudioContext; stopAll() silences them at once
//   ChatSocket       a conversation over WS /v1/ws, turn by turn (the server keeps the history);
//                    a turn with `speech` is also spoken; abort = interrupt (barge-in)
//   speakChat        one speech turn on its own connection
//   parseMetrics     Prometheus text (GET /metrics) -> Map of sample name -> value

/** The event types that end a stream. */
export const TERMINAL = new Set(["done", "error"]);

/**
 * Incremental parser for `text/event-stream`, fed decoded text in chunks of any size.
 * `feed(text)` returns the events completed by that chunk as `{type, data, id}` objects, where
 * `id` is the last event ID (it persists across events, as in EventSource). `retry` holds the
 * last valid `retry:` value (ms) or null.
 */
export class SSEParser {
  constructor() {
    this.lastEventId = ""; // the "last event ID buffer"; never reset between events
    this.retry = null;
    this._buf = ""; // an incomplete line
    this._data = "";
    this._type = "";
    this._hasData = false;
    this._start = true; // strip one BOM at the very start of the stream
    this._skipLF = false; // the previous chunk ended with CR: a leading LF belongs to it
  }

  /** Parse a chunk; return the events it completed. */
  feed(chunk) {
    if (this._start && chunk.length) {
      if (chunk.charCodeAt(0) === 0xfeff) chunk = chunk.slice(1);
      this._start = false;
    }
    if (this._skipLF && chunk.length) {
      if (chunk[0] === "\n") chunk = chunk.slice(1);
      this._skipLF = false;
    }
    const events = [];
    let text = this._buf + chunk;
    let pos = 0;
    for (;;) {
      // A line ends at CRLF, LF or CR (whichever comes first).
      const lf = text.indexOf("\n", pos);
      const cr = text.indexOf("\r", pos);
      let end = lf === -1 ? cr : cr === -1 ? lf : Math.min(lf, cr);
      if (end === -1) break;
      let next = end + 1;
      if (text[end] === "\r") {
        if (next === text.length) this._skipLF = true; // CR at chunk end: LF may follow later
        else if (text[next] === "\n") next++;
      }
      const ev = this._line(text.slice(pos, end));
      if (ev) events.push(ev);
      pos = next;
    }
    this._buf = text.slice(pos);
    return events;
  }

  /** End of stream: an incomplete event is discarded (per spec); resets for a new connection. */
  end() {
    this._buf = this._data = this._type = "";
    this._hasData = false;
    this._skipLF = false;
    this._start = true;
  }

  _line(line) {
    if (line === "") return this._dispatch();
    if (line[0] === ":") return null; // a comment (heartbeat)
    const colon = line.indexOf(":");
    let field = line, value = "";
    if (colon !== -1) {
      field = line.slice(0, colon);
      value = line.slice(colon + 1);
      if (value[0] === " ") value = value.slice(1);
    }
    switch (field) {
      case "event": this._type = value; break;
      case "data": this._data += value + "\n"; this._hasData = true; break;
      case "id": if (!value.includes("\0")) this.lastEventId = value; break;
      case "retry": if (/^[0-9]+$/.test(value)) this.retry = parseInt(value, 10); break;
      default: break; // unknown fields are ignored
    }
    return null;
  }

  _dispatch() {
    const type = this._type || "message";
    const data = this._data.slice(0, -1); // drop the last LF
    const had = this._hasData;
    this._data = this._type = "";
    this._hasData = false;
    return had ? { type, data, id: this.lastEventId } : null;
  }
}

/** Yield the SSE events of a fetch Response, decoding UTF-8 across chunk boundaries. */
export async function* readSSE(response, parser = new SSEParser()) {
  const reader = response.body.getReader();
  const decoder = new TextDecoder("utf-8");
  try {
    for (;;) {
      const { value, done } = await reader.read();
      if (done) break;
      yield* parser.feed(decoder.decode(value, { stream: true }));
    }
    yield* parser.feed(decoder.decode());
  } finally {
    parser.end();
    reader.releaseLock();
  }
}

/** An HTTP failure that retrying will not fix (4xx other than 408/429). */
export class StreamHTTPError extends Error {
  constructor(status, body) {
    super(`HTTP ${status}: ${body}`.slice(0, 500));
    this.status = status;
  }
}

const sleep = (ms, signal) => new Promise((resolve, reject) => {
  if (signal?.aborted) return reject(signal.reason);
  const t = setTimeout(() => { signal?.removeEventListener("abort", onAbort); resolve(); }, ms);
  const onAbort = () => { clearTimeout(t); reject(signal.reason); };
  signal?.addEventListener("abort", onAbort, { once: true });
});

/**
 * Follow an llmpipe events URL until a "done" or "error" event, reconnecting with backoff after
 * a dropped connection (network error, or the body ending before a terminal event). Each
 * reconnection sends the last seen id as the `Last-Event-ID` header (or as `?last_event_id=`
 * with `resumeWith: "query"`, which avoids a CORS preflight). Yields the decoded JSON events,
 * each `seq` at most once and in increasing order.
 *
 * Options: signal (AbortSignal), lastEventId, fetchImpl, headers, resumeWith ("header"|"query"),
 * retryMs (first backoff, default 250; a server `retry:` overrides it), maxRetryMs (5000),
 * maxRetries (consecutive failures before giving up, default 10), onReconnect(n, lastEventId).
 */
export async function* followEvents(url, opts = {}) {
  const {
    signal, fetchImpl = globalThis.fetch.bind(globalThis), headers = {},
    resumeWith = "header", maxRetryMs = 5000, maxRetries = 10, onReconnect,
  } = opts;
  let retryMs = opts.retryMs ?? 250;
  let lastId = opts.lastEventId ?? "";
  let lastSeq = Number.isFinite(+lastId) && lastId !== "" ? +lastId : -1;
  let failures = 0, reconnects = 0;
  for (;;) {
    const h = { Accept: "text/event-stream", ...headers };
    let target = url;
    if (lastId !== "") {
      if (resumeWith === "query") {
        const u = new URL(url, globalThis.location?.href);
        u.searchParams.set("last_event_id", lastId);
        target = u.href;
      } else h["Last-Event-ID"] = lastId;
    }
    const parser = new SSEParser();
    parser.lastEventId = lastId;
    let progressed = false;
    try {
      const res = await fetchImpl(target, { headers: h, signal, cache: "no-store" });
      if (res.status === 204) return; // the server says: do not reconnect
      if (!res.ok) {
        const body = await res.text().catch(() => "");
        if (res.status < 500 && res.status !== 408 && res.status !== 429) {
          throw new StreamHTTPError(res.status, body);
        }
        throw new Error(`HTTP ${res.status}`); // retryable
      }
      for await (const raw of readSSE(res, parser)) {
        if (signal?.aborted) throw signal.reason; // events already buffered are not delivered
        if (parser.retry !== null) retryMs = parser.retry;
        lastId = raw.id; // the last event ID: what we resume after, as EventSource does
        if (raw.type === "message" && raw.data === "") continue;
        const ev = JSON.parse(raw.data);
        const seq = typeof ev.seq === "number" ? ev.seq : null;
        if (seq !== null) {
          if (seq <= lastSeq) continue; // replayed: already delivered
          lastSeq = seq;
        }
        progressed = true;
        failures = 0;
        yield ev;
        if (TERMINAL.has(ev.type)) return;
      }
      // The body ended without a terminal event: the connection was dropped.
    } catch (err) {
      if (signal?.aborted || err instanceof StreamHTTPError || err instanceof SyntaxError) throw err;
      // a network error: fall through to reconnect
    }
    if (!progressed && ++failures > maxRetries) {
      throw new Error(`gave up after ${maxRetries} failed reconnections to ${url}`);
    }
    // Backoff: retryMs, doubling per consecutive failure, capped, with jitter.
    const delay = Math.min(maxRetryMs, retryMs * 2 ** Math.max(0, failures - 1));
    await sleep(delay * (0.75 + Math.random() / 2), signal);
    reconnects++;
    onReconnect?.(reconnects, lastId);
  }
}

/**
 * Start a resumable generation and follow it. `body` is the request JSON (`{prompt}` or
 * `{messages}`). Returns an async iterable of events with:
 *   ready     Promise of {id, events_url} once the stream exists
 *   stop()    abort the fetch and DELETE the stream (cancels the generation upstream)
 * Options: baseUrl (default: same origin), headers, fetchImpl, plus followEvents' options.
 */
export function streamChat(body, opts = {}) {
  const { baseUrl = "", headers = {}, fetchImpl = globalThis.fetch.bind(globalThis) } = opts;
  const ctl = new AbortController();
  if (opts.signal?.aborted) ctl.abort(opts.signal.reason);
  else opts.signal?.addEventListener("abort", () => ctl.abort(opts.signal.reason), { once: true });
  const base = baseUrl.replace(/\/$/, "");
  const ready = (async () => {
    const res = await fetchImpl(`${base}/v1/streams`, {
      method: "POST", signal: ctl.signal,
      headers: { "Content-Type": "application/json", ...headers },
      body: JSON.stringify(body),
    });
    if (!res.ok) throw new StreamHTTPError(res.status, await res.text().catch(() => ""));
    return res.json();
  })();
  ready.catch(() => {}); // reported through iteration
  let stopped = null;
  return {
    ready,
    async *[Symbol.asyncIterator]() {
      const { events_url } = await ready;
      const url = new URL(events_url, base || globalThis.location?.href).href;
      try {
        yield* followEvents(url, { ...opts, signal: ctl.signal, headers, fetchImpl });
      } catch (err) {
        if (!ctl.signal.aborted) throw err; // stop() ends the iteration quietly
      }
    },
    /** Abort reading and cancel the generation on the server. Idempotent. */
    stop() {
      stopped ??= (async () => {
        ctl.abort(new DOMException("stopped", "AbortError"));
        const info = await ready.catch(() => null);
        if (!info) return;
        await fetchImpl(`${base}/v1/streams/${encodeURIComponent(info.id)}`, {
          method: "DELETE", headers, keepalive: true,
        }).catch(() => {});
      })();
      return stopped;
    },
  };
}

/**
 * One-shot `POST /v1/stream`: yields the events of a single response (no resume: a dropped
 * connection throws). Options: signal, headers, fetchImpl.
 */
export async function* streamEvents(url, { body, signal, headers = {}, fetchImpl = globalThis.fetch.bind(globalThis) } = {}) {
  const res = await fetchImpl(url, {
    method: "POST", signal, body: JSON.stringify(body),
    headers: { "Content-Type": "application/json", Accept: "text/event-stream", ...headers },
  });
  if (!res.ok) throw new StreamHTTPError(res.status, await res.text().catch(() => ""));
  for await (const raw of readSSE(res)) {
    if (raw.data === "") continue;
    const ev = JSON.parse(raw.data);
    yield ev;
    if (TERMINAL.has(ev.type)) return;
  }
  throw new Error("the stream ended before a done or error event");
}


// ---- speech over the WebSocket --------------------------------------------------------------

/**
 * Decode 16-bit little-endian mono PCM (an ArrayBuffer, or a view on one) into Float32 samples
 * in [-1, 1): each sample divided by 32768. A trailing odd byte (half a sample) is ignored.
 */
export function pcm16ToFloat32(data) {
  const bytes = ArrayBuffer.isView(data)
    ? new DataView(data.buffer, data.byteOffset, data.byteLength)
    : new DataView(data);
  const out = new Float32Array(bytes.byteLength >> 1);
  for (let i = 0; i < out.length; i++) out[i] = bytes.getInt16(2 * i, true) / 32768;
  return out;
}

/**
 * The scheduling cursor of a player: chunks are placed back to back (`nextTime` is where the
 * previous one ends). The first chunk, and the first after an underrun (the cursor fell behind
 * the clock because audio arrived late), starts `lead` seconds after the current time, so that
 * it is never scheduled in the past (which would clip its start).
 */
export class PlaybackCursor {
  constructor(lead = 0.1) {
    this.lead = lead;
    this.nextTime = 0;
    this.underruns = 0;
    this._started = false;
  }

  /** Place a chunk of `duration` seconds when the clock reads `now`; return its start time. */
  place(now, duration) {
    let start = this.nextTime;
    if (!this._started || start < now) {
      if (this._started) this.underruns++;
      this._started = true;
      start = now + this.lead;
    }
    this.nextTime = start + duration;
    return start;
  }

  /** Seconds of audio scheduled ahead of `now` (0 when nothing is queued). */
  ahead(now) {
    return Math.max(0, this.nextTime - now);
  }
}

/**
 * Plays PCM chunks on an AudioContext, one AudioBufferSourceNode per chunk, scheduled back to
 * back with a PlaybackCursor. The buffers are made at the audio's own sample rate (the context
 * resamples if its rate differs). `stopAll()` stops every scheduled source at once (barge-in)
 * and makes later `play()` calls no-ops. Counters, for tests and meters: `samplesScheduled`,
 * `sourcesStarted`, `sourcesStopped`, `samplesDropped` (played after stopAll: ignored).
 */
export class PcmPlayer {
  constructor(context, { lead = 0.1, destination = context.destination } = {}) {
    this.context = context;
    this.destination = destination;
    this.cursor = new PlaybackCursor(lead);
    this.samplesScheduled = 0;
    this.sourcesStarted = 0;
    this.sourcesStopped = 0;
    this.samplesDropped = 0;
    this.stopped = false;
    this._live = new Set();
    this._idle = []; // resolvers of whenIdle()
  }

  /**
   * Schedule `samples` (Float32Array) at `sampleRate`; returns {start, duration, sampleRate} (the
   * buffer's own rate, as the context made it), or null when nothing was scheduled.
   */
  play(samples, sampleRate) {
    if (this.stopped) {
      this.samplesDropped += samples.length;
      return null;
    }
    if (!samples.length) return null;
    const buffer = this.context.createBuffer(1, samples.length, sampleRate);
    buffer.copyToChannel(samples, 0);
    const source = this.context.createBufferSource();
    source.buffer = buffer;
    source.connect(this.destination);
    const duration = samples.length / sampleRate;
    const start = this.cursor.place(this.context.currentTime, duration);
    this._live.add(source);
    source.onended = () => {
      this._live.delete(source);
      if (!this._live.size) this._wake();
    };
    source.start(start);
    this.sourcesStarted++;
    this.samplesScheduled += samples.length;
    return { start, duration, sampleRate: buffer.sampleRate };
  }

  /** Barge-in: stop every scheduled or playing source now; returns how many were stopped. */
  stopAll() {
    this.stopped = true;
    const n = this._live.size;
    for (const source of this._live) {
      source.onended = null;
      try { source.stop(); } catch { /* already ended */ }
      source.disconnect();
    }
    this._live.clear();
    this.sourcesStopped += n;
    this._wake();
    return n;
  }

  /** Resolves when nothing is scheduled any more (all played, or stopAll()). */
  whenIdle() {
    if (!this._live.size) return Promise.resolve();
    return new Promise((resolve) => this._idle.push(resolve));
  }

  _wake() {
    for (const resolve of this._idle.splice(0)) resolve();
  }
}

/** The WebSocket URL of a path on the page's server: `/v1/ws` -> `ws://host/v1/ws`. */
export function webSocketUrl(path = "/v1/ws", base = globalThis.location?.href) {
  const url = new URL(path, base);
  if (url.protocol === "http:") url.protocol = "ws:";
  else if (url.protocol === "https:") url.protocol = "wss:";
  return url.href;
}

/** A message of the server that is no turn's event (an invalid request, a busy connection). */
export class SpeechProtocolError extends Error {
  constructor(error) {
    super(error?.message || "protocol error");
    this.field = error?.field;
  }
}

/** Bounds of the conversation a ChatSocket keeps (the server's defaults, `_ws.py`). */
export const MAX_HISTORY_MESSAGES = 64;
export const MAX_HISTORY_CHARS = 200_000;

/**
 * Bound a conversation as the server does (`trim_history` in `_ws.py`): leading `system`
 * messages are pinned; of the rest the oldest go first until at most `maxMessages` messages and
 * `maxChars` characters of content remain (the newest is always kept), then `assistant`
 * messages left at the front are dropped too. Returns a new array.
 */
export function trimHistory(messages, { maxMessages = MAX_HISTORY_MESSAGES, maxChars = MAX_HISTORY_CHARS } = {}) {
  let i = 0;
  while (i < messages.length && messages[i].role === "system") i++;
  const pinned = messages.slice(0, i), rest = messages.slice(i);
  let count = messages.length;
  let chars = messages.reduce((n, m) => n + (m.content ?? "").length, 0);
  let start = 0;
  while (rest.length - start > 1 && (count > maxMessages || chars > maxChars)) {
    count--;
    chars -= (rest[start].content ?? "").length;
    start++;
  }
  while (rest.length - start > 1 && rest[start].role === "assistant") start++;
  return [...pinned, ...rest.slice(start)];
}

/**
 * A conversation over one `WS /v1/ws` connection, turn by turn. The server keeps the
 * conversation's history per connection, so each `turn()` sends only its new message(s); the
 * ChatSocket keeps the same history (`history`: the turn's messages, then the answer as
 * delivered, or as heard after a spoken turn was interrupted; bounded as the server bounds it)
 * so that, when the connection was lost, the first turn on the next connection (opened on
 * demand) carries the conversation so far and the model still sees it.
 *
 * Options: token (bearer token, sent as the `bearer.<token>` subprotocol since browsers cannot
 * set headers), WebSocketImpl, lead (seconds of scheduling lead for audio, 0.1).
 */
export class ChatSocket {
  constructor(url, { token, WebSocketImpl = globalThis.WebSocket, lead = 0.1 } = {}) {
    this.url = url;
    this.protocols = token ? ["llmpipe", `bearer.${token}`] : ["llmpipe"];
    this.WebSocketImpl = WebSocketImpl;
    this.lead = lead;
    this.history = [];
    this.busy = false;
    this._ws = null; // the open connection, or null
    this._fresh = true; // the server's history is empty (a new connection, or after reset)
    this._reset = false; // the next request forgets the server's history
  }

  /** Forget the conversation: the next turn starts a new one (on the same connection). */
  reset() {
    if (this.busy) throw new Error("a turn is in progress");
    this.history = [];
    this._reset = this._ws !== null && !this._fresh;
  }

  /** Close the connection (the server forgets its history; `history` is kept). Idempotent. */
  close() {
    const ws = this._ws;
    this._ws = null;
    if (!ws) return;
    ws.onclose = ws.onerror = ws.onmessage = null;
    try { ws.close(1000); } catch { /* closing already */ }
  }

  _connect(signal) {
    if (this._ws) return Promise.resolve(this._ws);
    return new Promise((resolve, reject) => {
      const ws = new this.WebSocketImpl(this.url, this.protocols);
      ws.binaryType = "arraybuffer";
      const fail = (err) => {
        signal?.removeEventListener("abort", onAbort);
        ws.onopen = ws.onclose = ws.onerror = null;
        try { ws.close(1000); } catch { /* not open */ }
        reject(err);
      };
      const onAbort = () => fail(signal.reason);
      signal?.addEventListener("abort", onAbort, { once: true });
      ws.onerror = () => fail(new Error(`WebSocket error on ${this.url}`));
      ws.onclose = (e) => fail(new Error(`the connection closed before it opened (code ${e.code})`));
      ws.onopen = () => {
        signal?.removeEventListener("abort", onAbort);
        this._idle(ws);
        this._ws = ws;
        this._fresh = true;
        this._reset = false;
        resolve(ws);
      };
    });
  }

  /** Between turns: nothing to deliver; a close or error means the connection is gone. */
  _idle(ws) {
    const gone = () => { if (this._ws === ws) this._ws = null; };
    ws.onmessage = null;
    ws.onclose = ws.onerror = gone;
  }

  /**
   * One turn: sends `body` (`{prompt}` or `{messages}` with this turn's new messages, plus the
   * fields of `POST /v1/stream`; with `speech` (`{}` = the server's voice and rate) a spoken
   * turn whose audio is played through a PcmPlayer as it arrives) and delivers its events.
   *
   * Resolves with the turn's end: the `done` or `error` event (a spoken turn: once its audio
   * has finished playing here), or, after `signal` aborts, the server's `interrupted` answer
   * (`heard`: the text the listener heard, in a spoken turn). Aborting sends
   * `{"type": "interrupt"}` and stops every scheduled audio source at once (barge-in). Rejects
   * on a protocol error (SpeechProtocolError, e.g. an invalid request; the connection stays
   * open) or a lost connection (the next turn reconnects).
   *
   * Options: signal, audioContext (else one is made at the audio's sample rate; make it in a
   * user gesture, or autoplay policy keeps it suspended), destination (an AudioNode of that
   * context; default its destination), and callbacks onSent(request) (the request frame just
   * went out), onText(text, ev), onEvent(ev) (every JSON event of the turn), onWord(ev),
   * onFormat(ev, player), onAudio(samples, placed) (`placed` null when dropped), onDone(ev) (as
   * the terminal event arrives).
   */
  async turn(body, opts = {}) {
    if (this.busy) throw new Error("a turn is in progress");
    if (opts.signal?.aborted) throw opts.signal.reason;
    this.busy = true;
    try {
      const ws = await this._connect(opts.signal);
      return await this._turn(ws, body, opts);
    } finally {
      this.busy = false;
    }
  }

  _turn(ws, body, opts) {
    const { signal } = opts;
    const messages = body.messages ?? [{ role: "user", content: body.prompt }];
    const request = { type: "request", ...body };
    if (this._fresh && this.history.length) {
      delete request.prompt;
      request.messages = [...this.history, ...messages]; // a new connection: the conversation so far
    }
    if (this._reset) request.reset = true;
    const spoken = body.speech != null;
    const state = [this._fresh, this._reset]; // restored if the server refuses the request
    let text = "";
    return new Promise((resolve, reject) => {
      if (signal?.aborted) return reject(signal.reason);
      let player = null, format = null;
      let aborted = false, ending = false, ended = false; // ending: the turn ended, audio plays on
      const remember = (answer, failed) => {
        if (failed && !answer) return; // the server keeps nothing either
        this.history.push(...messages);
        if (answer) this.history.push({ role: "assistant", content: answer });
        this.history = trimHistory(this.history);
      };
      const finish = (fn, value) => {
        if (ended) return;
        ended = true;
        signal?.removeEventListener("abort", onAbort);
        if (fn === reject) player?.stopAll();
        if (this._ws === ws) this._idle(ws);
        fn(value);
      };
      const lost = (err) => {
        if (this._ws === ws) this._ws = null;
        remember(text, true);
        finish(reject, err);
      };
      const onAbort = () => {
        aborted = true;
        player?.stopAll(); // barge-in: silence first, then tell the server
        if (ending) return; // the turn is over: whenIdle() resolves, finish with its end
        try { ws.send(JSON.stringify({ type: "interrupt" })); } catch (err) { lost(err); }
      };
      signal?.addEventListener("abort", onAbort, { once: true });
      ws.onerror = () => lost(new Error(`WebSocket error on ${this.url}`));
      ws.onclose = (e) => lost(new Error(`the connection closed before the turn ended (code ${e.code})`));
      ws.onmessage = async (e) => {
        if (typeof e.data !== "string") {
          if (!player) return; // audio before its format: not in the protocol
          const samples = pcm16ToFloat32(e.data);
          opts.onAudio?.(samples, player.play(samples, format.sample_rate)); // dropped after abort
          return;
        }
        const ev = JSON.parse(e.data);
        if (ev.type === "error" && !("turn" in ev)) {
          // A protocol error: this request was refused; the connection stays usable.
          [this._fresh, this._reset] = state;
          finish(reject, new SpeechProtocolError(ev.error));
          return;
        }
        if (ev.type !== "pong") opts.onEvent?.(ev);
        switch (ev.type) {
          case "text": text += ev.text; opts.onText?.(ev.text, ev); break;
          case "word": opts.onWord?.(ev); break;
          case "audio_format": {
            format = ev;
            const ctx = opts.audioContext ?? new AudioContext({ sampleRate: ev.sample_rate });
            player = new PcmPlayer(ctx, { lead: this.lead, destination: opts.destination ?? ctx.destination });
            if (aborted) player.stopAll();
            opts.onFormat?.(ev, player);
            break;
          }
          case "interrupted":
            remember(spoken ? ev.heard ?? "" : text, false);
            finish(resolve, ev);
            break;
          case "done":
          case "error":
            // The turn's end (also when an interrupt crossed it: the server ignores that one).
            remember(text, ev.type === "error");
            opts.onDone?.(ev);
            ending = true;
            this._idle(ws);
            if (player) await player.whenIdle();
            finish(resolve, ev);
            break;
          default: break; // metadata, usage, heartbeat, pong
        }
      };
      ws.send(JSON.stringify(request));
      this._fresh = this._reset = false;
      opts.onSent?.(request);
    });
  }
}

/**
 * One speech turn on its own connection (a ChatSocket used once, then closed): sends `body`
 * (`{prompt}` or `{messages}`, plus `speech`, default `{}`: the server's voice and rate) and
 * plays the answer; resolves and rejects as `ChatSocket.turn`. Options: those of the
 * ChatSocket (token, WebSocketImpl, lead) and of `turn` (signal, audioContext, callbacks).
 */
export async function speakChat(url, body, opts = {}) {
  const chat = new ChatSocket(url, opts);
  try {
    return await chat.turn({ ...body, speech: body.speech ?? {} }, opts);
  } finally {
    chat.close();
  }
}

/**
 * Parse Prometheus text exposition (what `GET /metrics` answers) into a Map from each sample's
 * name (`llmpipe_streams_total`) to the sum of its values over all label sets. Comments,
 * `# HELP`/`# TYPE` lines and unparsable lines are skipped.
 */
export function parseMetrics(text) {
  const out = new Map();
  for (const line of text.split("\n")) {
    if (!line || line[0] === "#") continue;
    const m = /^([a-zA-Z_:][\w:]*)(\{.*\})?\s+(\S+)/.exec(line);
    if (!m) continue;
    const value = Number(m[3]); // "+Inf", "NaN" included
    if (Number.isNaN(value) && m[3] !== "NaN") continue;
    out.set(m[1], (out.get(m[1]) ?? 0) + value);
  }
  return out;
}
