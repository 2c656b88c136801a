// End-to-end run of the llmpipe page in headless Chromium (Debian's /usr/bin/chromium, driven
// by playwright-core). Usage: node e2e.mjs <base-url>. tests/test_browser.py starts the server
// (with a test wrapper that serves /__test/drop) and asserts on the JSON printed to stdout.
//
// Scenarios (each in a fresh browser context), keyed by the prompt the server's test producer
// factory recognises:
//   full  the whole answer streams over the page's WebSocket and renders (list, code fence,
//         inline markup)
//   drop  llmpipe.js's streamChat, run in the page (the page's chat is a WebSocket, which has
//         no resume), follows a resumable stream: the server ends the events response
//         mid-frame once (armed through /__test/drop), then a TCP proxy between browser and
//         server resets the connections mid-stream (a network error; Chromium's offline
//         emulation does not break a response in flight): it resumes both times
//   stop  Stop is clicked mid-answer: the page sends an interrupt on the WebSocket
import net from "node:net";

import { launch } from "./chromium.mjs";

const base = process.argv[2];
if (!base) throw new Error("usage: node e2e.mjs <base-url>");
const TIMEOUT = 20_000;

const browser = await launch();

const hooks = (page) => page.evaluate(() => ({ ...window.__llmpipe }));

/** Open the page in a new context, recording its errors. */
async function open(url = base) {
  const context = await browser.newContext();
  const page = await context.newPage();
  const problems = [];
  page.on("pageerror", (e) => problems.push(`pageerror: ${e.message}`));
  page.on("console", (m) => {
    // A reset connection is logged by Chromium as a failed resource: expected in "drop".
    if (m.type() === "error" && !/ERR_(EMPTY_RESPONSE|CONNECTION_RESET|INCOMPLETE_CHUNKED)/.test(m.text())) {
      problems.push(`console: ${m.text()}`);
    }
  });
  await page.goto(url, { waitUntil: "load" });
  return { context, page, problems };
}

/** Open the page in a new context, type the prompt and click Send. */
async function start(prompt) {
  const { context, page, problems } = await open();
  await page.fill("#prompt", prompt);
  await page.click("#send");
  return { context, page, problems };
}

/** Wait until the page's stream ended (done / error / stopped) and its text is rendered. */
async function finished(page) {
  await page.waitForFunction(
    () => ["done", "error", "stopped"].includes(window.__llmpipe.state)
      && window.__llmpipe.rendered === window.__llmpipe.text,
    null, { timeout: TIMEOUT, polling: 50 },
  );
}

async function full() {
  const { context, page, problems } = await start("full");
  await page.waitForFunction(() => window.__llmpipe.state === "streaming", null, { timeout: TIMEOUT });
  // Progressive rendering: some text is on screen before the answer is complete.
  await page.waitForFunction(() => window.__llmpipe.frames >= 2, null, { timeout: TIMEOUT, polling: 10 });
  const partial = await hooks(page);
  await finished(page);
  const h = await hooks(page);
  const dom = await page.evaluate(() => ({
    status: document.getElementById("status").textContent,
    li: [...document.querySelectorAll(".turn:last-child .answer li")].map((e) => e.textContent),
    code: [...document.querySelectorAll(".turn:last-child .answer pre code")].map((e) => e.textContent),
    strong: [...document.querySelectorAll(".turn:last-child .answer strong")].map((e) => e.textContent),
    h: [...document.querySelectorAll(".turn:last-child .answer h2")].map((e) => e.textContent),
    html: document.querySelector(".turn:last-child .answer").innerHTML,
  }));
  // The renderer escapes HTML: markup in model output stays text.
  const xss = await page.evaluate(async () => {
    const { renderMarkdown } = await import("./app.js");
    return renderMarkdown('<img src=x onerror="window.pwned=1"> **<b>b</b>** `<i>` \n```\n<script>\n```');
  });
  await context.close();
  return { ...h, partialLength: partial.rendered.length, dom, xss, problems };
}

/** A TCP proxy to the server whose open connections can be reset at will. */
function proxy() {
  const { hostname, port } = new URL(base);
  const sockets = new Set();
  const srv = net.createServer((client) => {
    const upstream = net.connect(+port, hostname);
    for (const s of [client, upstream]) {
      sockets.add(s);
      s.on("close", () => sockets.delete(s));
      s.on("error", () => {});
    }
    client.pipe(upstream).pipe(client);
  });
  return new Promise((resolve) => srv.listen(0, "127.0.0.1", () => resolve({
    url: `http://127.0.0.1:${srv.address().port}/`,
    reset: () => { const n = sockets.size; for (const s of sockets) s.resetAndDestroy(); return n; },
    close: () => { for (const s of sockets) s.destroy(); srv.close(); },
  })));
}

/** streamChat in the page, recording into window.__resume what the page's hooks used to. */
function followInPage(page) {
  return page.evaluate(() => {
    const h = (window.__resume = {
      state: "streaming", text: "", events: 0, seqs: [], reconnects: 0, resumedFrom: [], streamId: null, error: null,
    });
    import("./llmpipe.js").then(async ({ streamChat }) => {
      const chat = streamChat({ prompt: "drop" }, {
        onReconnect: (n, lastId) => { h.reconnects = n; h.resumedFrom.push(lastId); },
      });
      chat.ready.then((info) => { h.streamId = info.id; }, () => {});
      try {
        for await (const ev of chat) {
          h.events++;
          h.seqs.push(ev.seq);
          if (ev.type === "text") h.text += ev.text;
          else if (ev.type === "done" || ev.type === "error") h.state = ev.type;
        }
      } catch (err) {
        h.error = String(err);
        h.state = "error";
      }
    });
  });
}

async function drop() {
  // Arm the server: end the next first-time events response after 10 frames, mid-frame.
  const armed = await fetch(`${base}__test/drop?after=10`, { method: "POST" });
  if (!armed.ok) throw new Error(`could not arm the drop: ${armed.status}`);
  const px = await proxy();
  try {
    const { context, page, problems } = await open(px.url);
    const resume = () => page.evaluate(() => ({ ...window.__resume }));
    await followInPage(page);
    // First drop (server side): streamChat reconnects on its own.
    await page.waitForFunction(() => window.__resume.reconnects >= 1, null, { timeout: TIMEOUT, polling: 10 });
    const afterServerDrop = await resume();
    // Second drop (network): reset every connection while the answer is still arriving.
    await page.waitForFunction(() => window.__resume.events >= 40, null, { timeout: TIMEOUT, polling: 10 });
    const beforeReset = await resume();
    const resetSockets = px.reset();
    await page.waitForFunction(() => window.__resume.state !== "streaming", null, { timeout: TIMEOUT, polling: 10 });
    const h = await resume();
    await context.close();
    return { ...h, afterServerDrop, beforeReset, resetSockets, problems };
  } finally {
    px.close();
  }
}

async function stop() {
  const { context, page, problems } = await start("stop");
  await page.waitForFunction(() => window.__llmpipe.text.length > 40, null, { timeout: TIMEOUT, polling: 10 });
  await page.click("#stop");
  await finished(page);
  const atStop = await hooks(page);
  await page.waitForFunction(() => window.__llmpipe.stopSent === true, null, { timeout: TIMEOUT });
  await page.waitForTimeout(500); // nothing more may arrive after Stop
  const later = await hooks(page);
  const status = await page.textContent("#status");
  await context.close();
  return { ...later, textAtStop: atStop.text, status, problems };
}

const results = {};
try {
  for (const [name, fn] of Object.entries({ full, drop, stop })) {
    const t0 = Date.now();
    try {
      results[name] = await fn();
    } catch (err) {
      results[name] = { failed: String(err && err.stack || err) };
    }
    results[name].ms = Date.now() - t0;
  }
} finally {
  await browser.close();
}
process.stdout.write(JSON.stringify(results) + "\n");
