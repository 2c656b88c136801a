// The llmpipe page: a prompt box, the answer rendered as markdown while it streams, Stop, and
// automatic resume after a dropped connection (all of that in llmpipe.js). With "Speak" on, the
// prompt goes over the WebSocket as a speech turn: the answer is shown as it arrives and spoken
// (Web Audio), and Stop interrupts the voice (barge-in) and shows what was heard.
import { speakChat, streamChat, webSocketUrl } from "./llmpipe.js";

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
const answer = $("answer"), status = $("status"), speak = $("speak"), heard = $("heard");

// Test hooks (read by tests/browser/e2e.mjs); also handy in the devtools console.
const hooks = (window.__llmpipe = {
  state: "idle", text: "", rendered: "", events: 0, seqs: [], reconnects: 0,
  resumedFrom: [], frames: 0, streamId: null, error: null,
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

let current = null; // the running chat (or speech turn: {stop()}), for Stop
let audioContext = null; // made on the first Send with Speak on: a user gesture may start audio
let tap = null; // an AnalyserNode between the voice and the loudspeaker: the output, as data

/** The peak level (0..1) of the last ~90 ms the page played (0 when silent or no audio yet). */
window.llmpipeAudioPeak = () => {
  if (!tap) return 0;
  const data = new Float32Array(tap.fftSize);
  tap.getFloatTimeDomainData(data);
  return data.reduce((m, x) => Math.max(m, Math.abs(x)), 0);
};

function startRun() {
  hooks.text = hooks.rendered = pending = "";
  hooks.events = hooks.reconnects = hooks.frames = 0;
  hooks.seqs = [];
  hooks.resumedFrom = [];
  hooks.error = hooks.streamId = null;
  answer.innerHTML = "";
  heard.hidden = true;
  heard.textContent = "";
  send.disabled = true;
  stop.disabled = false;
  setState("streaming");
}

function endRun(chat) {
  if (current === chat) current = null;
  send.disabled = false;
  stop.disabled = true;
}

async function run(text) {
  startRun();
  const chat = (current = streamChat({ prompt: text }, {
    onReconnect: (n, lastId) => {
      hooks.reconnects = n;
      hooks.resumedFrom.push(lastId);
      setState("resumed", `reconnected after event ${lastId || "(none)"}`);
    },
  }));
  chat.ready.then((info) => { hooks.streamId = info.id; }, () => {});
  let end = null;
  try {
    for await (const ev of chat) {
      hooks.events++;
      hooks.seqs.push(ev.seq);
      if (ev.type === "text") {
        hooks.text += ev.text;
        appendText(ev.text);
      } else if (ev.type === "done" || ev.type === "error") {
        end = ev;
      } else if (ev.type === "dropped") {
        hooks.droppedChars = (hooks.droppedChars || 0) + ev.text_chars;
      }
    }
    if (frame) cancelAnimationFrame(frame);
    renderNow();
    if (end?.type === "done") setState("done", end.stop_reason || "");
    else if (end?.type === "error") setState("error", end.message);
    else setState("stopped");
  } catch (err) {
    renderNow();
    hooks.error = String(err);
    setState("error", String(err.message || err));
  } finally {
    endRun(chat);
  }
}

/** A speech turn over WS /v1/ws: text rendered as it comes, audio played, Stop = barge-in. */
async function runSpeech(text) {
  startRun();
  resetAudio();
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
  ctl.signal.addEventListener("abort", () => {
    count(); // from here on the player schedules nothing (speakChat stops it on the same abort)
    audio.stopped = true;
    audio.scheduledAtStop = audio.samplesScheduled;
  }, { once: true });
  try {
    const end = await speakChat(webSocketUrl("/v1/ws"), { prompt: text, speech: {} }, {
      signal: ctl.signal,
      audioContext,
      destination: tap,
      onText: (t, ev) => {
        hooks.events++;
        hooks.seqs.push(ev.seq);
        hooks.text += t;
        appendText(t);
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
      onDone: (ev) => { hooks.events++; hooks.seqs.push(ev.seq); },
    });
    count();
    if (frame) cancelAnimationFrame(frame);
    renderNow();
    if (end.type === "interrupted") {
      audio.interrupted = end;
      heard.textContent = `heard: ${end.heard ?? ""}`;
      heard.hidden = false;
      setState("stopped", "interrupted");
    } else if (end.type === "done") setState("done", end.stop_reason || "");
    else setState("error", end.message);
  } catch (err) {
    count();
    renderNow();
    hooks.error = String(err);
    setState("error", String(err.message || err));
  } finally {
    endRun(turn);
  }
}

form.addEventListener("submit", (e) => {
  e.preventDefault();
  if (current || !prompt.value.trim()) return;
  if (!speak.checked) return run(prompt.value);
  // In the click's user gesture, so that autoplay policy lets it play.
  if (!audioContext) {
    audioContext = new AudioContext({ sampleRate: 22050, latencyHint: "interactive" });
    tap = audioContext.createAnalyser();
    tap.fftSize = 2048;
    tap.connect(audioContext.destination);
  }
  audioContext.resume();
  runSpeech(prompt.value);
});
prompt.addEventListener("keydown", (e) => {
  if (e.key === "Enter" && (e.ctrlKey || e.metaKey)) form.requestSubmit();
});
stop.addEventListener("click", async () => {
  const chat = current;
  if (!chat) return;
  stop.disabled = true;
  await chat.stop(); // aborts the fetch, then DELETE /v1/streams/{id}; or interrupts the voice
  hooks.stopSent = true;
});
