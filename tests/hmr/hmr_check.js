// Loads the page through wsplice in Debian's headless Chromium, waits for
// "[vite] connected.", edits msg.js on disk, and waits for the new text to
// appear without a page reload. Prints one JSON line; exit 0 on success.
// Usage: node hmr_check.js URL MSG_JS_PATH
const fs = require('fs');
const { chromium } = require('playwright-core');

const [url, msgPath] = process.argv.slice(2);
const result = { connected: false, updated: false, reloaded: false, console: [] };

function until(pred, ms, what) {
  return new Promise((resolve, reject) => {
    const t0 = Date.now();
    const tick = async () => {
      try {
        if (await pred()) return resolve();
      } catch (e) { /* page busy: try again */ }
      if (Date.now() - t0 > ms) return reject(new Error('timed out waiting for ' + what));
      setTimeout(tick, 50);
    };
    tick();
  });
}

(async () => {
  const browser = await chromium.launch({
    executablePath: process.env.CHROMIUM || '/usr/bin/chromium',
    args: ['--headless', '--no-sandbox', '--disable-gpu', '--disable-background-networking'],
  });
  try {
    const page = await browser.newPage();
    page.on('console', (m) => {
      result.console.push(m.text());
      if (m.text().includes('[vite] connected.')) result.connected = true;
    });
    let loads = 0;
    page.on('load', () => { loads++; });
    await page.goto(url, { waitUntil: 'load', timeout: 30000 });
    await until(() => result.connected, 30000, '[vite] connected.');
    await until(async () => (await page.textContent('#msg')) === 'version 1', 10000, 'version 1');
    await page.evaluate(() => { window.__sameDocument = true; });
    // HMR_QUIET_MS: the HMR socket stays quiet this long before the edit
    // (the express lane takes a tunnel over once it has been quiet).
    await new Promise((r) => setTimeout(r, Number(process.env.HMR_QUIET_MS || 0)));
    fs.writeFileSync(msgPath, "export const msg = 'version 2';\n");
    await until(async () => (await page.textContent('#msg')) === 'version 2', 30000, 'version 2');
    result.updated = true;
    result.reloaded = loads !== 1 || !(await page.evaluate(() => window.__sameDocument === true));
  } catch (e) {
    result.error = String(e);
  } finally {
    await browser.close();
  }
  console.log(JSON.stringify(result));
  process.exit(result.connected && result.updated && !result.reloaded ? 0 : 1);
})();
