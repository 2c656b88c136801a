// End-to-end run of the page as a chat in headless Chromium (Debian's /usr/bin/chromium, driven
// by playwright-core). Usage: node e2e_chat.mjs <base-url> <token> <screenshot.png>.
// tests/test_browser.py starts the real app (scripted producers that answer from the
// conversation they are given, `--auth-token` on) and asserts on the JSON printed to stdout.
//
// One scenario: the page is opened with `#token=<token>`; the metrics panel is read once it has
// polled; two turns are sent on the page's WebSocket, the second answerable only from the
// first; the panel is read again by a poll made after both turns; a screenshot is saved.
import { launch } from "./chromium.mjs";

const [base, token, screenshot] = process.argv.slice(2);
if (!screenshot) throw new Error("usage: node e2e_chat.mjs <base-url> <token> <screenshot.png>");
const TIMEOUT = 20_000;

const browser = await launch();

/** What the panel shows, as the user sees it and as the page's hooks hold it. */
const panel = (page) => page.evaluate(() => ({
  streams: document.getElementById("m-streams").textContent,
  buffer: document.getElementById("m-buffer").textContent,
  blocked: document.getElementById("m-blocked").textContent,
  status: document.getElementById("m-status").textContent,
  points: ["streams", "buffer", "blocked"].map(
    (n) => document.querySelector(`#spark-${n} polyline`).getAttribute("points").split(" ").filter(Boolean).length,
  ),
  ...structuredClone(window.__llmpipe.metrics),
}));

async function ask(page, prompt) {
  const before = await page.evaluate(() => window.__llmpipe.turns.length);
  await page.fill("#prompt", prompt);
  await page.click("#send");
  await page.waitForFunction(
    (n) => window.__llmpipe.turns.length === n + 1 && window.__llmpipe.turns[n].end !== null
      && ["done", "error", "stopped"].includes(window.__llmpipe.state),
    before, { timeout: TIMEOUT, polling: 20 },
  );
}

async function chat() {
  const context = await browser.newContext({ viewport: { width: 1100, height: 760 } });
  const page = await context.newPage();
  const problems = [];
  page.on("pageerror", (e) => problems.push(`pageerror: ${e.message}`));
  page.on("console", (m) => { if (m.type() === "error") problems.push(`console: ${m.text()}`); });
  const metricsAuth = new Set(); // the Authorization header of each GET /metrics
  page.on("request", (r) => { if (new URL(r.url()).pathname === "/metrics") metricsAuth.add(r.headers().authorization ?? null); });
  const ws = { urls: [], sent: [] };
  page.on("websocket", (socket) => {
    ws.urls.push(socket.url());
    socket.on("framesent", ({ payload }) => { ws.sent.push(JSON.parse(payload)); });
  });
  await page.goto(`${base}#token=${encodeURIComponent(token)}`, { waitUntil: "load" });
  const address = page.url(); // the token is taken out of the address bar
  await page.waitForFunction(() => window.__llmpipe.metrics.polls >= 1, null, { timeout: TIMEOUT, polling: 50 });
  const first = await panel(page);

  await ask(page, "Remember the word ostrich.");
  await ask(page, "Which word did I ask you to remember?");

  // The panel catches up: the second poll that completes from now on was started after both
  // turns had ended (the first might have been in flight already).
  const polls = await page.evaluate(() => window.__llmpipe.metrics.polls);
  await page.waitForFunction((n) => window.__llmpipe.metrics.polls >= n + 2, polls, { timeout: TIMEOUT, polling: 50 });
  const second = await panel(page);
  const dom = await page.evaluate(() => [...document.querySelectorAll(".turn")].map((li) => ({
    user: li.querySelector(".user").textContent,
    answer: li.querySelector(".answer").textContent,
    ttft: li.querySelector(".ttft").textContent,
    tps: li.querySelector(".tps").textContent,
  })));
  const hooks = await page.evaluate(() => structuredClone({ ...window.__llmpipe, metrics: undefined }));
  await page.screenshot({ path: screenshot, fullPage: true });
  await context.close();
  return { ...hooks, address, first, second, dom, ws, metricsAuth: [...metricsAuth], problems };
}

/** Without its token, a server whose /metrics needs one answers 401: the panel says how to
 * give the token and stops polling (the 401 is played by playwright's router). */
async function refused() {
  const context = await browser.newContext();
  const page = await context.newPage();
  const problems = [];
  page.on("pageerror", (e) => problems.push(`pageerror: ${e.message}`));
  let requests = 0;
  await page.route("**/metrics", (route) => { requests++; route.fulfill({ status: 401, body: "{}" }); });
  await page.goto(base, { waitUntil: "load" });
  await page.waitForFunction(() => window.__llmpipe.metrics.errors >= 1, null, { timeout: TIMEOUT, polling: 50 });
  await page.waitForTimeout(2500); // two more polls, had it not stopped
  const out = await page.evaluate(() => ({
    ...structuredClone(window.__llmpipe.metrics),
    status: document.getElementById("m-status").textContent,
    state: document.getElementById("metrics").dataset.state,
  }));
  await context.close();
  return { ...out, requests, problems };
}

const results = {};
try {
  for (const [name, fn] of Object.entries({ chat, refused })) {
    try {
      results[name] = await fn();
    } catch (err) {
      results[name] = { failed: String(err && err.stack || err) };
    }
  }
} finally {
  await browser.close();
}
process.stdout.write(JSON.stringify(results) + "\n");
