// Main-thread benchmark: median time from starting to load the SDK to a
// completed identify in headless Chromium, fresh browser context (cold cache)
// per run. idtag: import the package, createTagger, await tag() (including the
// round trip to a local tag endpoint). Peers: load their npm bundle, init, and
// identify (their collectors point at the same local server).
import fs from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { launch, serve, token } from './harness.mjs';

const here = path.dirname(fileURLToPath(import.meta.url));
const repo = path.resolve(here, '../..');
const RUNS = Number(process.env.RUNS || 21);
const root = path.join(repo, 'target', 'js-bench');
fs.rmSync(root, { recursive: true, force: true });
fs.mkdirSync(path.join(root, 'idtag'), { recursive: true });
fs.mkdirSync(path.join(root, 'peers'), { recursive: true });
fs.cpSync(path.join(repo, 'pkg'), path.join(root, 'idtag'), { recursive: true });
const nm = path.join(here, 'node_modules');
const peerFiles = {
  snowplow: '@snowplow/browser-tracker/dist/index.umd.min.js',
  segment: '@segment/analytics-next/dist/umd/standalone.js',
  mixpanel: 'mixpanel-browser/dist/mixpanel.min.js',
};
for (const [k, f] of Object.entries(peerFiles)) fs.copyFileSync(path.join(nm, f), path.join(root, 'peers', k + '.js'));

const COOKIE = 'id:123-ABC-456&token:_mch-127.0.0.1-1700000000000-12345';
const page = (body) => `<!doctype html><meta charset="utf-8"><title>bench</title><script>document.cookie='_mkto_trk=${COOKIE}; path=/';</script>${body}`;
const classic = (src, identify) => page(`<script>
const t0 = performance.now();
const s = document.createElement('script');
s.src = '${src}';
s.onload = async () => { try { await (async () => { ${identify} })(); window.__done = { ms: performance.now() - t0 }; } catch (e) { window.__done = { error: String(e) }; } };
document.head.appendChild(s);
</script>`);
fs.writeFileSync(path.join(root, 'idtag.html'), page(`<script type="module">
const t0 = performance.now();
const { createTagger } = await import('/idtag/index.js');
const t1 = performance.now();
const t = await createTagger({ endpoint: '/v1/tag' });
const t2 = performance.now();
const outcome = await t.tag(new URLSearchParams(location.search).get('t'));
const t3 = performance.now();
window.__done = { ms: t3 - t0, outcome, phases: [t1 - t0, t2 - t1, t3 - t2] };
</script>`));
fs.writeFileSync(path.join(root, 'snowplow.html'), classic('/peers/snowplow.js', `
const sp = window.snowplowBrowserTracking;
sp.newTracker('sp', location.origin, { appId: 'bench', eventMethod: 'post' });
sp.setUserId('u1');
sp.trackSelfDescribingEvent && sp.trackPageView();`));
// Segment: the standalone bundle reads a snippet stub and fetches its settings
// from the CDN, here the local server; its collector is the local server too.
fs.mkdirSync(path.join(root, 'v1/projects/bench'), { recursive: true });
const SEG_SETTINGS = { integrations: { 'Segment.io': { apiKey: 'bench', apiHost: 'HOST/seg', protocol: 'http' } } };
const segment = (host) => JSON.stringify(SEG_SETTINGS).replace('HOST', host);
fs.writeFileSync(path.join(root, 'segment.html'), page(`<script>
const t0 = performance.now();
const a = window.analytics = [];
a._writeKey = 'bench'; a._cdn = location.origin; window.analyticsWriteKey = 'bench';
const s = document.createElement('script');
s.src = '/peers/segment.js';
s.onload = async () => {
  try {
    await new Promise((r, j) => { const end = Date.now() + 10000; const c = () => (window.analytics && window.analytics.initialized ? r() : Date.now() > end ? j(new Error('not initialized')) : setTimeout(c, 1)); c(); });
    await window.analytics.identify('u1', { email: 'a@example.com' });
    window.__done = { ms: performance.now() - t0 };
  } catch (e) { window.__done = { error: String(e) }; }
};
document.head.appendChild(s);
</script>`));
// Mixpanel: the minified bundle expects the official snippet's stub.
fs.writeFileSync(path.join(root, 'mixpanel.html'), page(`<script>
const t0 = performance.now();
let loaded;
const ready = new Promise((r) => { loaded = r; });
const m = window.mixpanel = [];
m.__SV = 1.2;
m._i = [['bench', { api_host: location.origin, batch_requests: false, loaded: () => loaded() }, 'mixpanel']];
const s = document.createElement('script');
s.src = '/peers/mixpanel.js';
s.onload = async () => {
  try {
    await ready;
    window.mixpanel.identify('u1');
    window.mixpanel.people.set({ $email: 'a@example.com' });
    window.__done = { ms: performance.now() - t0 };
  } catch (e) { window.__done = { error: String(e) }; }
};
document.head.appendChild(s);
</script>`));

const srv = await serve(root);
fs.writeFileSync(path.join(root, 'v1/projects/bench/settings'), segment(new URL(srv.base).host));
const browser = await launch();
const guard = setTimeout(() => { console.error('bench: timed out'); process.exit(2); }, 500000);
const results = {};
try {
  for (const sdk of ['idtag', 'snowplow', 'segment', 'mixpanel']) {
    const times = [];
    let note = '';
    for (let i = 0; i < RUNS; i++) {
      const ctx = await browser.newContext();
      const p = await ctx.newPage();
      await p.goto(`${srv.base}/${sdk}.html?t=${encodeURIComponent(token('u' + i, 'a' + i + '@example.com'))}`);
      const done = await p.waitForFunction(() => window.__done, null, { timeout: 15000 }).then((h) => h.jsonValue(), () => ({ error: 'timed out after 15 s' }));
      if (done.error) note = (note ? note + '; ' : '') + `run ${i}: ${done.error}`;
      else times.push(done.ms);
      if (done.phases) (results.phases = results.phases || []).push(done.phases);
      if (sdk === 'idtag' && !done.error && done.outcome !== 'sent') note = 'outcome ' + done.outcome;
      await ctx.close();
    }
    times.sort((a, b) => a - b);
    results[sdk] = { median: times[Math.floor(times.length / 2)], p90: times[Math.floor(times.length * 0.9)], n: times.length, note };
  }
} finally {
  clearTimeout(guard);
  await browser.close();
  await srv.close();
}
const phases = results.phases || [];
delete results.phases;
const med = (xs) => xs.sort((a, b) => a - b)[Math.floor(xs.length / 2)];
const phaseNote = phases.length ? `idtag phases (median ms): import ${med(phases.map((p) => p[0])).toFixed(1)}, createTagger (wasm fetch+instantiate) ${med(phases.map((p) => p[1])).toFixed(1)}, tag() incl. POST ${med(phases.map((p) => p[2])).toFixed(1)}` : '';
const label = {
  idtag: 'idtag: import + createTagger + await tag() (incl. POST round trip)',
  snowplow: '@snowplow/browser-tracker 4.10.1: load + newTracker + setUserId',
  segment: '@segment/analytics-next 1.84.3: load standalone + await identify',
  mixpanel: 'mixpanel-browser 2.83.0: load + init + identify',
};
const w = Math.max(...Object.values(label).map((l) => l.length));
console.log(`Headless Chromium, fresh context per run, ${RUNS} runs, local server`);
console.log('| ' + 'load → identify'.padEnd(w) + ' | median ms | p90 ms | runs |');
console.log('|' + '-'.repeat(w + 2) + '|----------:|-------:|-----:|');
for (const [k, r] of Object.entries(results)) {
  const ms = (v) => (v === undefined ? 'n/a' : v.toFixed(1));
  console.log('| ' + label[k].padEnd(w) + ' | ' + ms(r.median).padStart(9) + ' | ' + ms(r.p90).padStart(6) + ' | ' + String(r.n).padStart(4) + ' |' + (r.note ? ' ' + r.note : ''));
}
if (phaseNote) console.log('\n' + phaseNote);
