// End-to-end test of the package users get: packs the npm tarball, installs it
// into plain Node (SSR import) and into a fresh Vite project, builds that, and
// drives the build in headless Chromium against a local tag endpoint through
// all three hand-over modes. Exits non-zero on any failure; bounded in time.
import fs from 'node:fs';
import path from 'node:path';
import { execFileSync } from 'node:child_process';
import { fileURLToPath } from 'node:url';
import { build } from 'vite';
import { launch, serve, tarball, token, sleep } from './harness.mjs';

const here = path.dirname(fileURLToPath(import.meta.url));
const repo = path.resolve(here, '../..');
const work = path.join(repo, 'target', 'js-e2e');
const COOKIE = 'id:123-ABC-456&token:_mch-127.0.0.1-1700000000000-12345';
const guard = setTimeout(() => { console.error('e2e: timed out'); process.exit(2); }, 300000);

let failed = 0;
const check = (name, ok, detail) => {
  console.log((ok ? 'ok   ' : 'FAIL ') + name + (ok || detail === undefined ? '' : ' — ' + JSON.stringify(detail)));
  if (!ok) failed++;
};
const npmInstall = (dir, spec) => execFileSync('npm', ['install', '--no-audit', '--no-fund', '--loglevel=error', spec], { cwd: dir, stdio: 'inherit' });

const tgz = tarball(repo);
console.log('package: ' + path.relative(repo, tgz));
fs.rmSync(work, { recursive: true, force: true });

// 1. Plain Node: importing during SSR touches no browser global.
const nodeApp = path.join(work, 'node-app');
fs.mkdirSync(nodeApp, { recursive: true });
fs.writeFileSync(path.join(nodeApp, 'package.json'), JSON.stringify({ name: 'ssr-app', private: true, type: 'module' }));
npmInstall(nodeApp, tgz);
fs.writeFileSync(path.join(nodeApp, 'ssr.mjs'), `
import { createTagger, IdtagError, HEADER, FIELD } from 'idtag';
let code = 'none';
try { await createTagger({ endpoint: '/v1/tag' }); } catch (e) { code = e instanceof IdtagError && e.name + ':' + e.code; }
console.log(JSON.stringify({ code, HEADER, FIELD, window: typeof window }));
`);
const ssr = JSON.parse(execFileSync('node', ['ssr.mjs'], { cwd: nodeApp }).toString());
check('SSR import in Node does not throw; createTagger rejects with IdtagError', ssr.code === 'IdtagError:unsupported_environment' && ssr.HEADER === 'X-Idtag-Mkto-Trk' && ssr.window === 'undefined', ssr);

// 2. A fresh Vite project depending on the tarball.
const app = path.join(work, 'vite-app');
fs.mkdirSync(app, { recursive: true });
fs.writeFileSync(path.join(app, 'package.json'), JSON.stringify({ name: 'vite-app', private: true, type: 'module' }));
fs.writeFileSync(path.join(app, 'index.html'), `<!doctype html><html><head><meta charset="utf-8"><title>login</title></head><body>
<form id="login" method="post" action="/login"><input name="email" value="a@example.com"><button id="go">Log in</button></form>
<script type="module" src="/main.js"></script></body></html>`);
fs.writeFileSync(path.join(app, 'main.js'), `import { createTagger, IdtagError } from 'idtag';
window.idtag = { createTagger, IdtagError };
`);
npmInstall(app, tgz);
await build({ root: app, logLevel: 'warn', build: { outDir: path.join(app, 'dist'), emptyOutDir: true } });
const assets = fs.readdirSync(path.join(app, 'dist', 'assets'));
check('Vite build emits the wasm asset', assets.some((f) => f.endsWith('.wasm')), assets);

// The hand-written types, compiled with tsc --strict against the installed package.
fs.copyFileSync(path.join(here, 'types-check.ts'), path.join(app, 'types-check.ts'));
fs.writeFileSync(path.join(app, 'tsconfig.json'), JSON.stringify({
  compilerOptions: { strict: true, noEmit: true, target: 'es2022', module: 'esnext', moduleResolution: 'bundler', lib: ['es2022', 'dom'], skipLibCheck: false },
  files: ['types-check.ts'],
}));
let tsc = '';
try {
  execFileSync('node', [path.join(here, 'node_modules/typescript/bin/tsc'), '-p', app], { stdio: 'pipe' });
} catch (e) {
  tsc = String(e.stdout || e);
}
check('TypeScript types: strict compile of typical and wrong uses', tsc === '', tsc);

// 3. Headless Chromium against the local endpoint.
const srv = await serve(path.join(app, 'dist'));
const browser = await launch();
const open = async (ctx, query = '') => {
  const page = ctx || (await (await browser.newContext()).newPage());
  await page.goto(srv.base + '/' + query);
  await page.waitForFunction(() => window.idtag);
  return page;
};
const setCookie = (page, v = COOKIE) => page.evaluate((v) => { document.cookie = '_mkto_trk=' + v + '; path=/'; }, v);
const tagsFor = (t) => srv.state.tags.filter((r) => r.token === t);

try {
  // Mode 1: form hook.
  {
    const page = await open();
    await setCookie(page);
    await page.evaluate(async () => {
      const t = await window.idtag.createTagger({ endpoint: '/v1/tag' });
      t.hookForm(document.getElementById('login'), { event: 'login' });
    });
    await Promise.all([page.waitForURL('**/done.html'), page.click('#go')]);
    const f = srv.state.forms[0] || {};
    check('form hook: submit carries _mkt_trk and still navigates', f._mkt_trk === COOKIE && f.email === 'a@example.com', f);
    await page.context().close();
  }
  // Mode 2: request helper for the app's own fetch.
  {
    const page = await open();
    await setCookie(page);
    const out = await page.evaluate(async () => {
      const t = await window.idtag.createTagger({ endpoint: '/v1/tag', munchkinId: '123-ABC-456' });
      await fetch('/api/login', { method: 'POST', headers: { 'content-type': 'application/json', ...t.headers() }, body: JSON.stringify({ email: 'a@example.com', ...t.fields() }) });
      return { h: t.headers(), f: t.fields() };
    });
    const l = srv.state.logins[0] || {};
    check('request helper: header and body field reach the login call', l.header === COOKIE && JSON.parse(l.body)._mkt_trk === COOKIE && out.h['X-Idtag-Mkto-Trk'] === COOKIE, { l, out });
    await page.context().close();
  }
  // Mode 3: tag call (on an SSO landing whose address carries a code), then a
  // repeat login, then a forged token, then an endpoint that is no tag endpoint.
  {
    const page = await open(undefined, '?code=s3cret#state=x');
    await setCookie(page);
    const t1 = token('u1', 'a@example.com');
    const t2 = token('u1', 'a@example.com');
    const t3 = token('forged', 'x@example.com');
    const t4 = token('misrouted', 'm@example.com');
    const out = await page.evaluate(async ([t1, t2, t3, t4]) => {
      const seen = [];
      const t = await window.idtag.createTagger({ endpoint: '/v1/tag', onOutcome: (r) => seen.push(r) });
      const wrong = await window.idtag.createTagger({ endpoint: '/misrouted' });
      return { a: await t.tag(t1, { event: 'login' }), b: await t.tag(t2, { event: 'login' }), c: await t.tag(t3), d: await wrong.tag(t4), seen, persistent: t.persistent() };
    }, [t1, t2, t3, t4]);
    check('tag: sent once, as text/plain wire format', out.a === 'sent' && tagsFor(t1).length === 1 && tagsFor(t1)[0].cookie === COOKIE && /^text\/plain/.test(tagsFor(t1)[0].contentType) && tagsFor(t1)[0].body.consent === 'granted', { out, r: tagsFor(t1) });
    check('tag: the page address is sent without its query and fragment', tagsFor(t1)[0] && tagsFor(t1)[0].body.page === srv.base + '/', tagsFor(t1)[0] && tagsFor(t1)[0].body.page);
    check('tag: a 2xx reply that is not a tag reply is rejected:bad_reply', out.d === 'rejected:bad_reply', out.d);
    check('tag: repeat login of the same person is a local duplicate (no request)', out.b === 'duplicate' && tagsFor(t2).length === 0, out);
    check('tag: endpoint error code surfaces as rejected:<code>', out.c === 'rejected:bad_signature', out);
    check('onOutcome reports each call', out.seen.length === 3 && out.seen[0].mode === 'tag' && out.seen[0].event === 'login', out.seen);
    await page.context().close();
  }
  // tag() followed by an immediate navigation (0 ms and 5 ms): arrives, once.
  for (const delay of [0, 5]) {
    const page = await open();
    await setCookie(page);
    const t = token('nav' + delay, 'n@example.com');
    await page.evaluate(async ([t, delay]) => {
      const tagger = await window.idtag.createTagger({ endpoint: '/v1/tag' });
      tagger.tag(t);
      if (delay) setTimeout(() => { location.href = '/?next'; }, delay);
      else location.href = '/?next';
    }, [t, delay]);
    await page.waitForURL('**/?next');
    await page.waitForFunction(() => window.idtag);
    // The next page loads the SDK too; its start-up flush must not send it again.
    await page.evaluate(() => window.idtag.createTagger({ endpoint: '/v1/tag' }));
    await sleep(1500);
    check(`tag then navigation after ${delay} ms: request arrives exactly once`, tagsFor(t).length === 1, tagsFor(t).length);
    await page.context().close();
  }
  // Munchkin sets the cookie late: tag() waits for it.
  {
    const page = await open();
    const t = token('late', 'l@example.com');
    const out = await page.evaluate(async ([t, c]) => {
      const tagger = await window.idtag.createTagger({ endpoint: '/v1/tag' });
      setTimeout(() => { document.cookie = '_mkto_trk=' + c + '; path=/'; }, 300);
      const t0 = performance.now();
      const o = await tagger.tag(t);
      return { o, ms: performance.now() - t0 };
    }, [t, COOKIE]);
    check('tag waits for a late Munchkin cookie', out.o === 'sent' && out.ms >= 250 && out.ms < 2000 && tagsFor(t).length === 1, out);
    await page.context().close();
  }
  // No cookie: no_cookie now; sent by a later page load once the cookie exists.
  {
    const page = await open();
    const t = token('nocookie', 'z@example.com');
    const o = await page.evaluate(async (t) => (await window.idtag.createTagger({ endpoint: '/v1/tag', waitForCookieMs: 200 })).tag(t), t);
    check('no cookie within waitForCookieMs: no_cookie, nothing sent', o === 'no_cookie' && tagsFor(t).length === 0, o);
    await open(page, '?reload');
    await sleep(300);
    check('still nothing sent on leaving the page without a cookie', tagsFor(t).length === 0, tagsFor(t).length);
    await setCookie(page);
    await page.evaluate(() => window.idtag.createTagger({ endpoint: '/v1/tag' }));
    await sleep(500);
    check('queued request is sent by a later page load once the cookie exists', tagsFor(t).length === 1 && tagsFor(t)[0].cookie === COOKIE, tagsFor(t).length);
    await page.context().close();
  }
  // Cookie appears after tag() gave up, then the page is left: sendBeacon at pagehide.
  {
    const page = await open();
    const t = token('beacon', 'b@example.com');
    const o = await page.evaluate(async (t) => (await window.idtag.createTagger({ endpoint: '/v1/tag', waitForCookieMs: 100 })).tag(t), t);
    await setCookie(page);
    await open(page, '?after-beacon');
    await page.evaluate(() => window.idtag.createTagger({ endpoint: '/v1/tag' }));
    await sleep(800);
    const r = tagsFor(t);
    check('pagehide: pending request goes out by sendBeacon, once (next page does not resend)', o === 'no_cookie' && r.length === 1 && r[0].mode === 'no-cors', r.map((x) => x.mode));
    await page.context().close();
  }
  // Consent.
  {
    const page = await open();
    await setCookie(page);
    const td = token('denied', 'd@example.com');
    const tp = token('pending', 'p@example.com');
    const out = await page.evaluate(async ([td, tp]) => {
      const a = await window.idtag.createTagger({ endpoint: '/v1/tag', consent: 'denied' });
      const denied = await a.tag(td);
      const deniedHeaders = a.headers();
      const b = await window.idtag.createTagger({ endpoint: '/v1/tag', consent: 'pending' });
      const pending = await b.tag(tp);
      const stored = localStorage.getItem('idtag:q2');
      b.setConsent('granted');
      await new Promise((r) => setTimeout(r, 300));
      document.cookie = 'mkto_opt_out=true; path=/';
      const optedOut = await b.tag(td);
      return { denied, deniedHeaders, pending, stored, optedOut, consent: b.consent() };
    }, [td, tp]);
    check('consent denied: nothing stored or sent, no header', out.denied === 'consent_denied' && Object.keys(out.deniedHeaders).length === 0 && tagsFor(td).length === 0, out);
    check('consent pending: held in memory, sent when granted', out.pending === 'queued' && out.stored === null && tagsFor(tp).length === 1, { out, tags: tagsFor(tp).length });
    check('mkto_opt_out=true counts as denied', out.optedOut === 'consent_denied' && out.consent === 'denied', out);
    await page.context().close();
  }
  // Endpoint unavailable: queued, retried with backoff in the page.
  {
    const page = await open();
    await setCookie(page);
    const t = token('flaky', 'f@example.com');
    const o = await page.evaluate(async (t) => (await window.idtag.createTagger({ endpoint: '/v1/tag' })).tag(t), t);
    await sleep(3500);
    check('503: queued, then retried with backoff', o === 'queued' && tagsFor(t).length === 2, { o, n: tagsFor(t).length });
    await page.context().close();
  }
  // Blocked storage, bad config, reset.
  {
    const page = await open();
    await setCookie(page);
    const t = token('nostore', 's@example.com');
    const out = await page.evaluate(async (t) => {
      Storage.prototype.setItem = () => { throw new DOMException('blocked', 'SecurityError'); };
      const tagger = await window.idtag.createTagger({ endpoint: '/v1/tag' });
      const o = await tagger.tag(t);
      let err = {};
      try { await window.idtag.createTagger({}); } catch (e) { err = { name: e.name, code: e.code, isError: e instanceof Error }; }
      tagger.reset();
      const kept = document.cookie;
      tagger.reset({ forgetVisitor: true });
      return { o, persistent: tagger.persistent(), err, kept, cookie: document.cookie };
    }, t);
    check('blocked storage: memory fallback, still sent', out.o === 'sent' && out.persistent === false, out);
    check('bad config: Error named IdtagError with code', out.err.name === 'IdtagError' && out.err.code === 'invalid_config' && out.err.isError, out.err);
    check('reset() keeps _mkto_trk', out.kept.includes('_mkto_trk'), out.kept);
    check('reset({forgetVisitor:true}) expires _mkto_trk', !out.cookie.includes('_mkto_trk'), out.cookie);
    await page.context().close();
  }
} finally {
  await browser.close();
  await srv.close();
  clearTimeout(guard);
}
console.log(failed ? `e2e: ${failed} check(s) failed` : 'e2e: all checks passed');
process.exit(failed ? 1 : 0);
