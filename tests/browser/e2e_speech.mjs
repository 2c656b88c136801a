// End-to-end run of the page's "Speak" switch in headless Chromium (Debian's /usr/bin/chromium,
// driven by playwright-core). Usage: node e2e_speech.mjs <base-url>. tests/test_browser.py
// starts the real app (scripted producer, real espeak-ng) and asserts on the JSON printed to
// stdout. Audio is checked as data: the page's window.llmpipeAudio counters, against the
// WebSocket frames as Chromium's network layer saw them (playwright's websocket events).
//
// Scenarios (each in a fresh browser context), keyed by the prompt the test's producer knows:
//   speak    the answer is shown and spoken to the end
//   bargein  Stop is clicked after ~0.5 s of audio: the voice stops, the page shows what was heard
import { launch } from "./chromium.mjs";

const base = process.argv[2];
if (!base) throw new Error("usage: node e2e_speech.mjs <base-url>");
const TIMEOUT = 20_000;
const RATE = 22050;

const browser = await launch(["--autoplay-policy=no-user-gesture-required"]);

const snapshot = (page) => page.evaluate(() => ({
  ...window.__llmpipe, audio: structuredClone(window.llmpipeAudio),
  heardLine: ((el) => (el.hidden ? null : el.textContent))(document.querySelector(".turn:last-child .heard")),
  status: document.getElementById("status").textContent,
}));

/** Open the page, switch Speak on, send the prompt; record the WebSocket's frames. */
async function start(prompt) {
  const context = await browser.newContext();
  const page = await context.newPage();
  const problems = [];
  page.on("pageerror", (e) => problems.push(`pageerror: ${e.message}`));
  page.on("console", (m) => { if (m.type() === "error") problems.push(`console: ${m.text()}`); });
  const ws = { urls: [], received: [], sent: [] }; // received: byte length (binary) or JSON type
  page.on("websocket", (socket) => {
    ws.urls.push(socket.url());
    socket.on("framereceived", ({ payload }) => {
      ws.received.push(typeof payload === "string" ? JSON.parse(payload).type : payload.length);
    });
    socket.on("framesent", ({ payload }) => { ws.sent.push(JSON.parse(payload)); });
  });
  await page.goto(base, { waitUntil: "load" });
  await page.check("#speak");
  await page.fill("#prompt", prompt);
  const t0 = Date.now();
  await page.click("#send");
  return { context, page, problems, ws, t0 };
}

const ended = (page) => page.waitForFunction(
  () => ["done", "error", "stopped"].includes(window.__llmpipe.state),
  null, { timeout: TIMEOUT, polling: 20 },
);

/** The page's output level (window.llmpipeAudioPeak) every 20 ms for `ms`. */
async function levels(page, ms) {
  const out = [];
  for (const end = Date.now() + ms; Date.now() < end;) {
    out.push(await page.evaluate(() => window.llmpipeAudioPeak()));
    await page.waitForTimeout(20);
  }
  return out;
}

async function speak() {
  const { context, page, problems, ws, t0 } = await start("speak");
  await page.waitForFunction(() => window.llmpipeAudio.samplesScheduled > 0, null, { timeout: TIMEOUT, polling: 10 });
  const firstAudio = await snapshot(page);
  const playing = await levels(page, 1000); // the voice comes out of the audio graph
  await ended(page);
  const ms = Date.now() - t0;
  const end = await snapshot(page);
  await context.close();
  return { ...end, firstAudio, ms, ws, playing, problems };
}

async function bargein() {
  const { context, page, problems, ws } = await start("bargein");
  await page.waitForFunction(
    (n) => window.llmpipeAudio.samplesScheduled >= n, 0.5 * RATE, { timeout: TIMEOUT, polling: 10 },
  );
  const before = await levels(page, 200);
  await page.click("#stop");
  await ended(page);
  const atEnd = await snapshot(page);
  await page.waitForTimeout(150); // the analyser's window (93 ms) is past the Stop
  const after = await levels(page, 550); // silence: every source stopped at once
  const later = await snapshot(page); // nothing may be scheduled after Stop
  await context.close();
  return { ...later, atEnd, ws, before, after, problems };
}

const results = {};
try {
  for (const [name, fn] of Object.entries({ speak, bargein })) {
    const t0 = Date.now();
    try {
      results[name] = await fn();
    } catch (err) {
      results[name] = { failed: String(err && err.stack || err) };
    }
    results[name].ms ??= Date.now() - t0;
  }
} finally {
  await browser.close();
}
process.stdout.write(JSON.stringify(results) + "\n");
