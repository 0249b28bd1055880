// Shared pieces of the browser tests and benchmarks: a local server that serves
// static files and mimics the tag endpoint, a tag-token maker, and Chromium.
import http from 'node:http';
import fs from 'node:fs';
import path from 'node:path';
import { execFileSync } from 'node:child_process';
import { chromium } from 'playwright-core';

export const CHROMIUM = process.env.CHROMIUM || '/usr/bin/chromium';
export const CHROME_ARGS = [
  '--headless', '--no-sandbox', '--disable-gpu', '--disable-dev-shm-usage',
  '--disable-background-networking', '--disable-component-update', '--disable-sync', '--no-first-run',
];

export const launch = () => chromium.launch({ executablePath: CHROMIUM, args: CHROME_ARGS, timeout: 30000 });

const b64url = (s) => Buffer.from(s).toString('base64url');

/** An (unsigned) tag token of the v1 shape; the mimic endpoint does not verify. */
export const token = (sub, email, extra = {}) =>
  'v1.' + b64url(JSON.stringify({ sub, email, evt: 'login', iat: Math.floor(Date.now() / 1000), exp: Math.floor(Date.now() / 1000) + 600, kid: 'k1', n: Math.random(), ...extra })) + '.c2ln';

const MIME = { '.html': 'text/html', '.js': 'text/javascript', '.mjs': 'text/javascript', '.wasm': 'application/wasm', '.css': 'text/css', '.json': 'application/json' };

/**
 * Starts the server. `root` holds static files. Records every tag request in
 * `tags` ({ token, cookie, contentType, body }), form posts in `forms`, SPA
 * logins in `logins`.
 */
export async function serve(root) {
  const state = { tags: [], forms: [], logins: [], pairs: new Set() };
  const server = http.createServer((req, res) => {
    const url = new URL(req.url, 'http://x');
    let body = '';
    req.on('data', (c) => { body += c; });
    req.on('end', () => {
      const json = (status, obj) => {
        res.writeHead(status, { 'content-type': 'application/json' });
        res.end(JSON.stringify(obj));
      };
      if (req.method === 'POST' && url.pathname === '/v1/tag') {
        let r;
        try { r = JSON.parse(body); } catch { return json(400, { error: { code: 'bad_json', message: 'not JSON' } }); }
        const cookie = r && r.cookies && r.cookies._mkto_trk;
        state.tags.push({ token: r.token, cookie, contentType: req.headers['content-type'], mode: req.headers['sec-fetch-mode'], body: r });
        if (r.v !== 1 || typeof r.token !== 'string') return json(400, { error: { code: 'bad_request', message: 'v and token' } });
        let claims;
        try { claims = JSON.parse(Buffer.from(r.token.split('.')[1], 'base64url')); } catch { return json(400, { error: { code: 'malformed', message: 'token' } }); }
        if (claims.sub === 'forged') return json(401, { error: { code: 'bad_signature', message: 'bad signature' } });
        if (claims.sub === 'flaky' && state.tags.filter((t) => t.token === r.token).length === 1) return json(503, { error: { code: 'unavailable', message: 'try later' } });
        const pair = cookie + '|' + claims.sub;
        if (state.pairs.has(pair)) return json(200, { v: 1, status: 'duplicate' });
        state.pairs.add(pair);
        return json(202, { v: 1, status: 'queued' });
      }
      if (req.method === 'POST' && url.pathname === '/login') {
        state.forms.push(Object.fromEntries(new URLSearchParams(body)));
        res.writeHead(303, { location: '/done.html' });
        return res.end();
      }
      if (req.method === 'POST' && url.pathname === '/api/login') {
        state.logins.push({ header: req.headers['x-idtag-mkto-trk'], body });
        return json(200, { ok: true });
      }
      if (url.pathname === '/done.html') {
        res.writeHead(200, { 'content-type': 'text/html' });
        return res.end('<!doctype html><title>done</title>done');
      }
      if (req.method === 'POST') {
        // Peer SDKs' collectors in the benchmarks: accept anything.
        state.other = (state.other || 0) + 1;
        res.writeHead(200, { 'content-type': 'application/json', 'access-control-allow-origin': '*' });
        return res.end('{}');
      }
      const file = path.join(root, path.normalize(url.pathname === '/' ? '/index.html' : url.pathname));
      if (!file.startsWith(root) || !fs.existsSync(file) || fs.statSync(file).isDirectory()) {
        res.writeHead(404);
        return res.end();
      }
      res.writeHead(200, { 'content-type': MIME[path.extname(file)] || 'application/octet-stream', 'cache-control': 'no-store' });
      fs.createReadStream(file).pipe(res);
    });
  });
  await new Promise((r) => server.listen(0, '127.0.0.1', r));
  const base = 'http://127.0.0.1:' + server.address().port;
  return { base, state, close: () => new Promise((r) => { server.closeAllConnections(); server.close(r); }) };
}

/** Builds the npm tarball with `make pkg` unless IDTAG_TGZ names one; returns its path. */
export function tarball(repo) {
  if (process.env.IDTAG_TGZ) return path.resolve(process.env.IDTAG_TGZ);
  const out = execFileSync('bash', ['.ci/build-pkg.sh'], { cwd: repo, stdio: ['ignore', 'pipe', 'inherit'] }).toString().trim().split('\n').pop();
  return path.resolve(repo, out);
}

export const sleep = (ms) => new Promise((r) => setTimeout(r, ms));
