// Launching Debian's Chromium (or $CHROMIUM_PATH) headless for the e2e scripts, with the flags
// that keep it quiet and working in a container; a script adds its own flags.
import { chromium } from "playwright-core";

export function launch(extraArgs = []) {
  return chromium.launch({
    executablePath: process.env.CHROMIUM_PATH || "/usr/bin/chromium",
    headless: true,
    args: [
      "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--disable-quic",
      "--no-first-run", "--disable-background-networking", "--disable-component-update",
      "--disable-sync", ...extraArgs,
    ],
  });
}
