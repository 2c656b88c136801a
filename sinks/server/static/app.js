// The llmpipe page: a small chat. The conversation goes over one WebSocket (WS /v1/ws, a
// ChatSocket from llmpipe.js), turn by turn: the server keeps the history, so each message is
// answered in the light of the previous ones. Each answer is rendered as markdown while it
// streams, with its time to first token and tokens per second. With "Speak" on, a turn is also
// spoken (Web Audio) and Stop interrupts the voice (barge-in) and shows what was heard; Stop
// on a text turn interrupts it (the server keeps only what was delivered). A side panel polls
// GET /metrics once a second: streams, buffer occupancy and blocked time, with sparklines.
import { ChatSocket, parseMetrics, webSocketUrl } from "./llmpipe.js";

// ---- a tiny progressive markdown renderer -------------------------------------------------
// Everything is HTML-escaped before any markup is added, so model output cannot inject HTML.
// An unterminated construct (an open code fence, a half-written **bold**) renders sensibly and
// is re-rendered when the rest arrives.

const ESC = { "&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#39;" };
const esc = (s) => s.replace(/[&<>"']/g, (c) => ESC[c]);

/** Inline markup: `code`, **bold**, *italic* (code spans are taken out first). */
function inline(src) {
  return src.split(/(`[^`\n]+`)/).map((part, i) => {
    if (i % 2) return `<code>${esc(part.slice(1, -1))}</code>`;
    return esc(part)
      .replace(/\*\*(?=\S)(.+?)(?<=\S)\*\*/g, "<strong>$1</strong>")
      .replace(/(?<![*\w])\*(?=[^\s*])(.+?)(?<=[^\s*])\*(?![*\w])/g, "<em>$1</em>");
  }).join("");
}

/** Markdown subset -> HTML: headings, paragraphs, lists, fenced code, inline markup. */
export function renderMarkdown(src) {
  const out = [];
  const lines = src.split("\n");
  let para = [];
  let list = null; // { tag: "ul" | "ol", items: [string] }
  const flush = () => {
    if (para.length) out.push(`<p>${inline(para.join("\n")).replace(/\n/g, "<br>")}</p>`);
    if (list) out.push(`<${list.tag}>${list.items.map((t) => `<li>${inline(t)}</li>`).join("")}</${list.tag}>`);
    para = [];
    list = null;
  };
  for (let i = 0; i < lines.length; i++) {
    const line = lines[i];
    let m;
    if ((m = /^\s*(```|~~~)\s*([\w+-]*)/.exec(line))) {
      flush();
      const body = [];
      while (++i < lines.length && !lines[i].trimStart().startsWith(m[1])) body.push(lines[i]);
      const cls = m[2] ? ` class="language-${m[2]}"` : "";
      out.push(`<pre><code${cls}>${esc(body.join("\n"))}</code></pre>`);
    } else if ((m = /^(#{1,6})\s+(.*)$/.exec(line))) {
      flush();
      out.push(`<h${m[1].length}>${inline(m[2])}</h${m[1].length}>`);
    } else if ((m = /^\s*([-*+]|\d+[.)])\s+(.*)$/.exec(line))) {
      const tag = /\d/.test(m[1]) ? "ol" : "ul";
      if (para.length || (list && list.tag !== tag)) flush();
      list ??= { tag, items: [] };
      list.items.push(m[2]);
    } else if (line.trim() === "") {
      flush();
    } else if (list && /^\s+\S/.test(line)) {
      list.items[list.items.length - 1] += " " + line.trim(); // a wrapped list item
    } else {
      if (list) flush();
      para.push(line);
    }
  }
  flush();
  return out.join("\n");
}

// ---- the page -------------------------------------------------------------------------------

const $ = (id) => document.getElementById(id);
const form = $("form"), prompt = $("prompt"), send = $("send"), stop = $("stop");
const turns = $("turns"), status = $("status"), speak = $("speak"), newChat = $("new");

/**
 * The bearer token of a server started with `--auth-token`: open the page as
 * `http://host:port/#token=<token>` (a fragment is never sent to the server, so it stays out of
 * its logs and of Referer headers); it is kept for the tab's session and removed from the address.
 */
function readToken() {
  const m = /^#(?:.*&)?token=([^&]*)/.exec(location.hash);
  if (m) {
    sessionStorage.setItem("llmpipe.token", decodeURIComponent(m[1]));
    history.replaceState(null, "", location.pathname + location.search);
  }
  return sessionStorage.getItem("llmpipe.token") || undefined;
}
const token = readToken();
const authHeaders = token ? { Authorization: `Bearer ${token}` } : {};
const chat = new ChatSocket(webSocketUrl("/v1/ws"), { token });

// Test hooks (read by tests/browser/e2e*.mjs); also handy in the devtools console. `text`,
// `rendered`, `events`, `seqs` and `frames` are the current (last) turn's; `turns` has one
// entry per answer: {prompt, text, spoken, ttftMs, tokens, tokensPerSecond, end}.
const hooks = (window.__llmpipe = {
  state: "idle", text: "", rendered: "", events: 0, seqs: [], frames: 0, error: null,
  turns: [], history: chat.history, metrics: { polls: 0, errors: 0, error: null, last: null, polling: true },
});
// The audio of the last speech turn, as data (read by tests/browser/e2e_speech.mjs).
let audio = null;
function resetAudio() {
  audio = window.llmpipeAudio = {
    format: null, contextRate: null, bufferRates: [], framesReceived: 0, bytesReceived: 0,
    samplesReceived: 0, samplesScheduled: 0, samplesDropped: 0, sourcesStarted: 0,
    sourcesStopped: 0, underruns: 0, contextState: null, words: [], stopped: false, scheduledAtStop: null,
    interrupted: null,
  };
}
resetAudio();

function setState(state, detail = "") {
  hooks.state = state;
  status.dataset.state = state;
  status.textContent = detail ? `${state}: ${detail}` : state;
}

// Text arrives per token; the DOM is updated at most once per animation frame.
let answer = null; // the current turn's <article>
let pending = "", frame = 0;
function renderNow() {
  frame = 0;
  if (!pending) return;
  hooks.rendered += pending;
  pending = "";
  hooks.frames++;
  answer.innerHTML = renderMarkdown(hooks.rendered);
}
function appendText(t) {
  pending += t;
  frame ||= requestAnimationFrame(renderNow);
}
function flushText() {
  if (frame) cancelAnimationFrame(frame);
  renderNow();
}

let current = null; // the running turn ({stop()}), for Stop
let audioContext = null; // made on the first Send with Speak on: a user gesture may start audio
let tap = null; // an AnalyserNode between the voice and the loudspeaker: the output, as data

/** The peak level (0..1) of the last ~90 ms the page played (0 when silent or no audio yet). */
window.llmpipeAudioPeak = () => {
  if (!tap) return 0;
  const data = new Float32Array(tap.fftSize);
  tap.getFloatTimeDomainData(data);
  return data.reduce((m, x) => Math.max(m, Math.abs(x)), 0);
};

/** A new turn in the transcript: the user's message, then (filled as it streams) the answer. */
function addTurn(text, spoken) {
  const li = document.createElement("li");
  li.className = "turn";
  li.dataset.turn = String(hooks.turns.length + 1);
  li.innerHTML = `<p class="user"></p><article class="answer" aria-live="off"></article>
    <p class="heard" hidden></p><p class="stats"><span class="ttft"></span><span class="tps"></span></p>`;
  li.querySelector(".user").textContent = text;
  if (spoken) li.classList.add("spoken");
  turns.append(li);
  li.scrollIntoView({ block: "nearest" });
  return li;
}

const ms = (x) => `${Math.round(x)} ms`;

/** Show an answer's figures: time to first token, and tokens per second after the first. */
function showStats(li, t) {
  li.querySelector(".ttft").textContent = t.ttftMs === null ? "no text" : `first token ${ms(t.ttftMs)}`;
  li.querySelector(".tps").textContent = t.tokensPerSecond === null
    ? `${t.tokens} token${t.tokens === 1 ? "" : "s"}`
    : `${t.tokensPerSecond.toFixed(1)} tok/s (${t.tokens} tokens)`;
}

async function runTurn(text, spoken) {
  const li = addTurn(text, spoken);
  answer = li.querySelector(".answer");
  hooks.text = hooks.rendered = pending = "";
  hooks.events = hooks.frames = 0;
  hooks.seqs = [];
  hooks.error = null;
  // The answer's timing, from the request frame (performance.now(), ms). Tokens: the usage
  // event's output_tokens when the provider reports it, else the text deltas received.
  const t = { prompt: text, text: "", spoken, ttftMs: null, tokens: 0, tokensPerSecond: null, end: null };
  let sentAt = 0, firstAt = 0, lastAt = 0, deltas = 0, usage = null;
  hooks.turns.push(t);
  send.disabled = newChat.disabled = true;
  stop.disabled = false;
  setState("streaming");
  if (spoken) resetAudio();

  const ctl = new AbortController();
  const turn = (current = { stop: () => ctl.abort() });
  let player = null;
  const count = () => {
    if (!player) return;
    audio.samplesScheduled = player.samplesScheduled;
    audio.samplesDropped = player.samplesDropped;
    audio.sourcesStarted = player.sourcesStarted;
    audio.sourcesStopped = player.sourcesStopped;
    audio.underruns = player.cursor.underruns;
    audio.contextState = player.context.state;
  };
  if (spoken) {
    ctl.signal.addEventListener("abort", () => {
      count(); // from here on the player schedules nothing (the turn stops it on the same abort)
      audio.stopped = true;
      audio.scheduledAtStop = audio.samplesScheduled;
    }, { once: true });
  }
  const figures = () => {
    t.tokens = usage ?? deltas;
    t.ttftMs = deltas ? firstAt - sentAt : null;
    t.tokensPerSecond = t.tokens > 1 && lastAt > firstAt ? (t.tokens - 1) / ((lastAt - firstAt) / 1000) : null;
    showStats(li, t);
  };
  try {
    const end = await chat.turn(spoken ? { prompt: text, speech: {} } : { prompt: text }, {
      signal: ctl.signal,
      audioContext,
      destination: tap ?? undefined,
      onSent: () => { sentAt = performance.now(); },
      onEvent: (ev) => {
        if (ev.type === "usage") usage = ev.output_tokens;
        if (ev.type === "text" || ev.type === "done" || ev.type === "error") {
          hooks.events++;
          hooks.seqs.push(ev.seq);
        }
      },
      onText: (s) => {
        lastAt = performance.now();
        if (!deltas++) firstAt = lastAt;
        hooks.text += s;
        t.text += s;
        appendText(s);
      },
      onWord: (w) => { audio.words.push({ text: w.text, sample: w.sample }); },
      onFormat: (fmt, p) => {
        player = p;
        audio.format = fmt;
        audio.contextRate = p.context.sampleRate;
      },
      onAudio: (samples, placed) => {
        if (placed && !audio.bufferRates.includes(placed.sampleRate)) audio.bufferRates.push(placed.sampleRate);
        audio.framesReceived++;
        audio.samplesReceived += samples.length;
        audio.bytesReceived += samples.length * 2;
        count();
      },
      onDone: figures, // a spoken answer's figures show before its audio has finished playing
    });
    count();
    flushText();
    figures();
    t.end = end;
    if (end.type === "interrupted") {
      if (spoken) {
        audio.interrupted = end;
        const heard = li.querySelector(".heard");
        heard.textContent = `heard: ${end.heard ?? ""}`;
        heard.hidden = false;
      }
      setState("stopped", "interrupted");
    } else if (end.type === "done") setState("done", end.stop_reason || "");
    else setState("error", end.message);
  } catch (err) {
    count();
    flushText();
    figures();
    hooks.error = String(err);
    setState("error", String(err.message || err));
  } finally {
    if (current === turn) current = null;
    send.disabled = newChat.disabled = false;
    stop.disabled = true;
    hooks.history = chat.history;
  }
}

form.addEventListener("submit", (e) => {
  e.preventDefault();
  const text = prompt.value;
  if (current || !text.trim()) return;
  prompt.value = "";
  if (speak.checked) {
    // In the click's user gesture, so that autoplay policy lets it play.
    if (!audioContext) {
      audioContext = new AudioContext({ sampleRate: 22050, latencyHint: "interactive" });
      tap = audioContext.createAnalyser();
      tap.fftSize = 2048;
      tap.connect(audioContext.destination);
    }
    audioContext.resume();
  }
  runTurn(text, speak.checked);
});
prompt.addEventListener("keydown", (e) => {
  if (e.key === "Enter" && (e.ctrlKey || e.metaKey)) form.requestSubmit();
});
stop.addEventListener("click", () => {
  if (!current) return;
  stop.disabled = true;
  current.stop(); // sends {"type": "interrupt"}; a spoken turn's audio stops at once
  hooks.stopSent = true;
});
newChat.addEventListener("click", () => {
  if (current) return;
  chat.reset(); // the next turn starts a new conversation (the server forgets the history)
  hooks.turns = [];
  hooks.history = chat.history;
  turns.replaceChildren();
  setState("idle");
  prompt.focus();
});

// ---- the server panel: GET /metrics once a second ------------------------------------------

const POLL_MS = 1000;
const SAMPLES = 60; // a minute of history per sparkline
const series = { streams: [], buffer: [], blocked: [] };
let previous = null; // the last sample: {at, blockedSeconds}

/** Draw `values` as a sparkline into `svg` (viewBox 0 0 120 28), newest at the right. */
function sparkline(svg, values) {
  const W = 120, H = 28, step = W / (SAMPLES - 1);
  const top = Math.max(...values, 0) || 1; // all zero: a flat line at the bottom
  const points = values.map((v, i) => {
    const x = W - (values.length - 1 - i) * step;
    const y = H - 1 - (Math.max(v, 0) / top) * (H - 2);
    return `${x.toFixed(1)},${y.toFixed(1)}`;
  });
  svg.querySelector("polyline").setAttribute("points", points.join(" "));
  svg.dataset.max = String(top);
}

function push(name, value) {
  const values = series[name];
  values.push(value);
  if (values.length > SAMPLES) values.shift();
  sparkline($(`spark-${name}`), values);
}

const bytes = (n) => (n < 1024 ? `${n} B` : n < 1 << 20 ? `${(n / 1024).toFixed(1)} KiB` : `${(n / (1 << 20)).toFixed(1)} MiB`);

function showMetrics(m, at) {
  const get = (name) => m.get(name) ?? 0;
  const last = {
    streamsActive: get("llmpipe_streams_active"),
    streamsServed: get("llmpipe_streams_total"),
    bufferBytes: get("llmpipe_buffer_bytes"),
    bufferItems: get("llmpipe_buffer_items"),
    bufferFill: get("llmpipe_buffer_fill_ratio_max"),
    blockedSeconds: get("llmpipe_producer_blocked_seconds_total"),
    blockedPerSecond: 0, // seconds of backpressure per second since the last poll, summed over streams
  };
  if (previous && at > previous.at) {
    last.blockedPerSecond = Math.max(0, last.blockedSeconds - previous.blockedSeconds) / ((at - previous.at) / 1000);
  }
  previous = { at, blockedSeconds: last.blockedSeconds };
  $("m-streams").textContent = `${last.streamsActive} now · ${last.streamsServed} served`;
  $("m-buffer").textContent = `${bytes(last.bufferBytes)} · ${last.bufferItems} events · fullest ${Math.round(last.bufferFill * 100)}%`;
  $("m-blocked").textContent = `${ms(last.blockedPerSecond * 1000)}/s · ${last.blockedSeconds.toFixed(2)} s total`;
  push("streams", last.streamsActive);
  push("buffer", last.bufferBytes);
  push("blocked", last.blockedPerSecond);
  return last;
}

/** A refusal that polling again will not change: the panel stops and says why. */
class Refused extends Error {}

async function pollMetrics() {
  const panel = $("metrics");
  let again = true;
  try {
    const res = await fetch("/metrics", { headers: authHeaders, cache: "no-store" });
    if (res.status === 401 || res.status === 403) {
      throw new Refused(`HTTP ${res.status}${token ? "" : ": open the page as /#token=<token>"}`);
    }
    if (!res.ok) throw new Error(`HTTP ${res.status}`);
    const text = await res.text();
    hooks.metrics.last = showMetrics(parseMetrics(text), performance.now());
    hooks.metrics.polls++;
    hooks.metrics.error = null;
    panel.dataset.state = "ok";
    $("m-status").textContent = `updated ${new Date().toLocaleTimeString()}`;
  } catch (err) {
    hooks.metrics.errors++;
    hooks.metrics.error = String(err.message || err);
    panel.dataset.state = "error";
    $("m-status").textContent = `/metrics: ${hooks.metrics.error}`;
    again = !(err instanceof Refused); // reload the page (with its token) to start again
  } finally {
    if (again) setTimeout(pollMetrics, POLL_MS);
    hooks.metrics.polling = again;
  }
}
pollMetrics();
