// Size benchmark: gzip bytes of everything a page loads from the idtag package
// (wasm + JS) beside peer browser SDKs measured from their npm packages in the
// same run. Fails (exit 1) when idtag exceeds its budget (size-budget.txt).
import fs from 'node:fs';
import path from 'node:path';
import zlib from 'node:zlib';
import { fileURLToPath } from 'node:url';

const here = path.dirname(fileURLToPath(import.meta.url));
const repo = path.resolve(here, '../..');
const nm = path.join(here, 'node_modules');
const ver = (name) => JSON.parse(fs.readFileSync(path.join(nm, name, 'package.json'))).version;

// Regression budget in gzip bytes; lower it as the package shrinks. The goal is 12,000 B.
export const BUDGET = Number(process.env.IDTAG_SIZE_BUDGET || fs.readFileSync(path.join(here, 'size-budget.txt'), 'utf8').trim());
export const GOAL = 12000;

const gz = (buf) => zlib.gzipSync(buf, { level: 9 }).length;
const measure = (files) => files.reduce((acc, f) => {
  const b = fs.readFileSync(f);
  return { raw: acc.raw + b.length, gzip: acc.gzip + gz(b) };
}, { raw: 0, gzip: 0 });

const pkg = path.join(repo, 'pkg');
// What a page loads: every script and wasm file the package ships (the types and README are not loaded).
const ours = fs.readdirSync(pkg).filter((f) => /\.(js|wasm)$/.test(f)).sort().map((f) => path.join(pkg, f));
const rows = [
  ...ours.map((f) => ({ name: 'idtag ' + path.relative(pkg, f), ...measure([f]), part: true })),
  { name: 'idtag ' + JSON.parse(fs.readFileSync(path.join(pkg, 'package.json'))).version + ' (all a page loads)', ...measure(ours), ours: true },
];
const vite = path.join(repo, 'target/js-e2e/vite-app/dist/assets');
if (fs.existsSync(vite)) {
  const files = fs.readdirSync(vite).map((f) => path.join(vite, f));
  rows.push({ name: 'idtag in a Vite 8 production build (app chunk + wasm)', ...measure(files), part: true });
}
const peers = [
  ['@snowplow/browser-tracker', 'dist/index.umd.min.js'],
  ['@segment/analytics-next', 'dist/umd/standalone.js'],
  ['mixpanel-browser', 'dist/mixpanel.min.js'],
].map(([name, file]) => ({ name: `${name} ${ver(name)} ${file}`, ...measure([path.join(nm, name, file)]), peer: true }));
rows.push(...peers);

const w = Math.max(...rows.map((r) => r.name.length));
const fmt = (n) => n.toLocaleString('en-US').padStart(9);
console.log('| ' + 'what'.padEnd(w) + ' |       raw |      gzip |');
console.log('|' + '-'.repeat(w + 2) + '|----------:|----------:|');
for (const r of rows) console.log('| ' + r.name.padEnd(w) + ' | ' + fmt(r.raw) + ' | ' + fmt(r.gzip) + ' |');

const total = rows.find((r) => r.ours).gzip;
const smallest = Math.min(...peers.map((p) => p.gzip));
console.log(`\nidtag: ${total} B gzip; goal ${GOAL} B (${total <= GOAL ? 'met' : 'NOT met'}); budget ${BUDGET} B; smallest peer ${smallest} B`);
let bad = false;
if (total > BUDGET) { console.error(`size budget exceeded: ${total} > ${BUDGET} B gzip`); bad = true; }
// The budget is the regression gate (lower size-budget.txt whenever the package
// shrinks); staying below the smallest peer is required too; the 12 KB goal is reported.
if (total >= smallest) { console.error(`not below the smallest peer: ${total} >= ${smallest} B gzip`); bad = true; }
if (total > GOAL) console.log(`GOAL NOT MET: ${total} > ${GOAL} B gzip`);
process.exit(bad ? 1 : 0);
