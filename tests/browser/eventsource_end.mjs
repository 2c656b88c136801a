// Chromium's native EventSource on a resumable stream that has ended (tests/test_eventsource.py).
// Usage: node eventsource_end.mjs <page-url> <events-url>
// Opens <page-url> (any same-origin page), then `new EventSource(<events-url>)`, and reports
// the events it dispatched, the error events, and its readyState once it is CLOSED (2), or
// after 10 s if it never closes (a browser that keeps reconnecting).
import { launch } from "./chromium.mjs";

const [pageUrl, eventsUrl] = process.argv.slice(2);
if (!pageUrl || !eventsUrl) throw new Error("usage: node eventsource_end.mjs <page> <events>");

const browser = await launch();
try {
  const page = await browser.newPage();
  await page.goto(pageUrl);
  const result = await page.evaluate((url) => new Promise((resolve) => {
    const source = new EventSource(url);
    const seen = [];
    let errors = 0;
    for (const type of ["metadata", "text", "usage", "done", "error"]) {
      source.addEventListener(type, (e) => {
        if (e.data !== undefined) seen.push({ type, id: e.lastEventId, data: JSON.parse(e.data) });
      });
    }
    source.onerror = () => {
      errors += 1;
      if (source.readyState === EventSource.CLOSED) resolve({ seen, errors, state: source.readyState });
    };
    setTimeout(() => {
      const state = source.readyState;
      source.close();
      resolve({ seen, errors, state, timedOut: true });
    }, 10_000);
  }), eventsUrl);
  console.log(JSON.stringify(result));
} finally {
  await browser.close();
}
