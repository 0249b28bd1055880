// QA journeys of the idtag demo, driven headless with Playwright (playwright-core)
// and the Debian Chromium, verified through the emulator's inspection endpoints.
// Usage: node examples/demo/journeys.mjs SITE_URL EMULATOR_URL CLIENT_ID CLIENT_SECRET
import { chromium } from 'playwright-core';

const [site, emu, clientId, clientSecret] = process.argv.slice(2);
if (!site || !emu) {
  console.error('usage: journeys.mjs SITE_URL EMULATOR_URL [CLIENT_ID CLIENT_SECRET]');
  process.exit(2);
}
const run = Date.now().toString(36);
const email = (who) => `${who}.${run}@example.com`;
const PASSWORD = 'correct horse battery';
const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

async function getJson(url, init) {
  const r = await fetch(url, init);
  if (!r.ok) throw new Error(`${url}: HTTP ${r.status}`);
  return r.json();
}
const leads = async () => (await getJson(`${emu}/__emulator/leads`)).leads;
const leadOf = async (addr) => (await leads()).filter((l) => l.email === addr);
const calls = () => getJson(`${emu}/__emulator/calls`);
const callLog = async () => (await getJson(`${emu}/__emulator/log?limit=2000`)).calls;
const coverage = () => getJson(`${site}/api/coverage`);
const setFaults = (f) => getJson(`${emu}/__emulator/faults`, { method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify(f) });

async function until(what, fn, timeoutMs = 30000) {
  const end = Date.now() + timeoutMs;
  let last;
  while (Date.now() < end) {
    try { last = await fn(); if (last) return last; } catch (e) { last = e; }
    await sleep(250);
  }
  throw new Error(`timed out waiting for ${what}${last instanceof Error ? `: ${last.message}` : ''}`);
}

/** Waits until the idtag outbox has nothing pending and Marketo's call count is still. */
async function settle(ms = 1500) {
  await until('outbox drained', async () => (await coverage()).pairs.pending === 0, 60000);
  let before = (await calls()).total;
  for (;;) {
    await sleep(ms);
    const now = (await calls()).total;
    if (now === before && (await coverage()).pairs.pending === 0) return;
    before = now;
  }
}

const browser = await chromium.launch({
  executablePath: process.env.CHROMIUM || '/usr/bin/chromium',
  args: ['--headless', '--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run',
    '--disable-background-networking', '--disable-component-update', '--disable-sync'],
});

async function newBrowser() {
  const ctx = await browser.newContext();
  const page = await ctx.newPage();
  page.on('pageerror', (e) => console.error(`  [page error] ${e.message}`));
  return { ctx, page };
}

async function visit(page, path) {
  await page.goto(site + path);
  await page.waitForFunction(() => window.taggerReady === true);
  const denied = await page.evaluate(() => localStorage.getItem('demo-consent') === 'denied');
  if (denied) return;
  // Munchkin loads asynchronously: wait for its cookie, then for its page-view report.
  await page.waitForFunction(() => document.cookie.includes('_mkto_trk='));
  const token = await tokenOf(page.context());
  await until(`page view of ${path}`, async () => {
    const all = await getJson(`${emu}/__emulator/leads`);
    const acts = [...all.leads, ...all.anonymous].flatMap((x) => x.activity);
    return acts.some((a) => a.token === token && new URL(a.url, site).pathname === path);
  }, 10000);
}

async function tokenOf(ctx) {
  const c = (await ctx.cookies()).find((k) => k.name === '_mkto_trk');
  if (!c) throw new Error('no _mkto_trk cookie in the browser');
  return c.value.split('&token:')[1];
}

/** Creates an account without a browser (no cookie, so nothing to associate). */
async function createAccount(addr, name) {
  const r = await fetch(`${site}/signup`, { method: 'POST', redirect: 'manual',
    headers: { 'content-type': 'application/x-www-form-urlencoded' },
    body: new URLSearchParams({ name, email: addr, password: PASSWORD }) });
  if (r.status !== 303) throw new Error(`account ${addr}: HTTP ${r.status}`);
}

async function signupInBrowser(page, addr, name) {
  await visit(page, '/signup');
  await page.fill('input[name=name]', name);
  await page.fill('input[name=email]', addr);
  await page.fill('input[name=password]', PASSWORD);
  await Promise.all([page.waitForURL(`${site}/app`), page.click('button[type=submit]')]);
}

async function spaLogin(page, addr) {
  await visit(page, '/login');
  await page.fill('input[name=email]', addr);
  await page.fill('input[name=password]', PASSWORD);
  await Promise.all([page.waitForURL(`${site}/app`), page.click('button[type=submit]')]);
}

async function logout(page) {
  await page.goto(`${site}/logout`);
  await page.waitForSelector('#reset:has-text("idtag reset")');
}

const results = [];
async function journey(n, title, fn) {
  const t0 = Date.now();
  try {
    const detail = await fn();
    results.push({ n, title, ok: true, detail, ms: Date.now() - t0 });
  } catch (e) {
    results.push({ n, title, ok: false, detail: e.message, ms: Date.now() - t0 });
  }
  const r = results[results.length - 1];
  console.log(`journey ${n} ${r.ok ? 'PASS' : 'FAIL'} (${r.ms} ms) ${title}: ${r.detail}`);
}

function assert(cond, msg) { if (!cond) throw new Error(msg); }

const jane = email('jane');
const b1 = await newBrowser();

await journey(1, 'anonymous visitor views three pages, then signs up', async () => {
  for (const p of ['/', '/pricing', '/features']) await visit(b1.page, p);
  const token = await tokenOf(b1.ctx);
  await signupInBrowser(b1.page, jane, 'Jane');
  const lead = await until('lead with the token', async () => {
    const l = await leadOf(jane);
    return l.length === 1 && l[0].cookies.includes(token) ? l[0] : null;
  });
  const anon = lead.activity.filter((a) => a.type === 'visitWebPage' && a.anonymous && a.token === token).map((a) => new URL(a.url, site).pathname);
  for (const p of ['/', '/pricing', '/features']) assert(anon.includes(p), `anonymous view of ${p} missing on the lead: ${JSON.stringify(anon)}`);
  assert((await leadOf(jane)).length === 1, 'more than one lead for the email');
  return `lead ${lead.id}, token associated, ${anon.length} anonymous views moved onto the lead`;
});

await journey(2, 'same person logs in from a second browser', async () => {
  const b2 = await newBrowser();
  await visit(b2.page, '/pricing');
  const token2 = await tokenOf(b2.ctx);
  await spaLogin(b2.page, jane);
  const lead = await until('second token on the lead', async () => {
    const l = await leadOf(jane);
    return l.length === 1 && l[0].cookies.includes(token2) ? l[0] : null;
  });
  await b2.ctx.close();
  return `lead ${lead.id} holds ${lead.cookies.length} tokens`;
});

await journey(3, 'SSO login followed at once by a redirect', async () => {
  const sam = email('sam');
  await createAccount(sam, 'Sam');
  const b3 = await newBrowser();
  await visit(b3.page, '/features');
  const token3 = await tokenOf(b3.ctx);
  await b3.page.goto(`${site}/sso`);
  await b3.page.click('#sso');
  await b3.page.fill('input[name=email]', sam);
  await b3.page.fill('input[name=password]', PASSWORD);
  // The IdP returns to the callback, which lands on /app; /app calls tag() and navigates away at once.
  await b3.page.evaluate(() => { document.querySelector('input[name=return]').value = '/sso/callback?then=/pricing'; });
  await Promise.all([b3.page.waitForURL(`${site}/pricing`), b3.page.click('button[type=submit]')]);
  const lead = await until('SSO token on the lead', async () => {
    const l = await leadOf(sam);
    return l.length === 1 && l[0].cookies.includes(token3) ? l[0] : null;
  });
  // Another page load retries anything unsent; it must not cost a second association.
  await visit(b3.page, '/');
  await settle();
  const assoc = (await callLog()).filter((c) => c.endpoint === 'associate' && c.path.includes(`/leads/${lead.id}/`) && !c.code);
  assert(assoc.length === 1, `expected 1 associate call for the lead, saw ${assoc.length}`);
  await b3.ctx.close();
  return `arrived once (lead ${lead.id})`;
});

await journey(4, 'ten repeat logins from the same browser cost no Marketo call', async () => {
  await settle();
  const before = (await calls()).total;
  for (let i = 0; i < 10; i++) {
    await logout(b1.page);
    await spaLogin(b1.page, jane);
  }
  await settle();
  const after = (await calls()).total;
  assert(after === before, `Marketo calls went from ${before} to ${after}`);
  return `Marketo calls before ${before}, after ${after}`;
});

await journey(5, 'consent denied: no association, nothing stored', async () => {
  const nora = email('nora');
  const cov0 = await coverage();
  const b5 = await newBrowser();
  await b5.page.goto(`${site}/`);
  await b5.page.waitForFunction(() => window.taggerReady === true);
  await b5.page.click('#decline');
  await visit(b5.page, '/pricing');
  await signupInBrowser(b5.page, nora, 'Nora');
  await settle();
  const cov1 = await coverage();
  assert((await leadOf(nora)).length === 0, 'a lead was created for the person');
  assert(cov1.pairs.total === cov0.pairs.total, `idtag stored ${cov1.pairs.total - cov0.pairs.total} item(s)`);
  await b5.ctx.close();
  return 'no lead, no outbox item';
});

await journey(6, 'shared browser: A logs out, B logs in; B not merged with A', async () => {
  const ann = email('ann'), bob = email('bob');
  await createAccount(bob, 'Bob');
  const b6 = await newBrowser();
  await visit(b6.page, '/');
  const token = await tokenOf(b6.ctx);
  await signupInBrowser(b6.page, ann, 'Ann');
  await until('A associated', async () => (await leadOf(ann))[0]?.cookies.includes(token));
  const conflicts0 = (await coverage()).pairs.conflicts;
  await logout(b6.page);
  await spaLogin(b6.page, bob);
  await settle();
  const cov = await coverage();
  const bobLead = (await leadOf(bob))[0];
  assert(!(bobLead?.cookies ?? []).includes(token), "B's lead holds A's token");
  assert((await leadOf(ann))[0].cookies.includes(token), "A's lead lost the token");
  assert(cov.pairs.conflicts === conflicts0 + 1, `conflicts ${conflicts0} -> ${cov.pairs.conflicts}`);
  await b6.ctx.close();
  return 'conflict recorded, token stays with A';
});

await journey(7, '606 and 502 storms, then a quota day: all delivered once after recovery', async () => {
  const people = [1, 2, 3, 4].map((i) => email(`storm${i}`));
  for (const p of people) await createAccount(p, 'Storm');
  // Another integration on the same instance eats the rate window: idtag meets 606.
  if (clientId && clientSecret) {
    const t = await getJson(`${emu}/identity/oauth/token?grant_type=client_credentials&client_id=${encodeURIComponent(clientId)}&client_secret=${encodeURIComponent(clientSecret)}`);
    const cfg = await getJson(`${emu}/__emulator/`);
    await Promise.all(Array.from({ length: cfg.rate_limit }, () =>
      fetch(`${emu}/rest/v1/leads.json?filterType=email&filterValues=nobody@example.com`, { headers: { authorization: `Bearer ${t.access_token}` } })));
  }
  await setFaults({ share_502: 0.5 });
  const tokens = [];
  const loginNew = async (p) => {
    const b = await newBrowser();
    await visit(b.page, '/');
    tokens.push(await tokenOf(b.ctx));
    await spaLogin(b.page, p);
    await b.ctx.close();
  };
  for (const p of people.slice(0, 2)) await loginNew(p);
  await sleep(1500);
  // A quota day: the next associations meet 607 and must wait, not be dropped.
  await setFaults({ share_502: 0, quota_exhausted: true });
  for (const p of people.slice(2)) await loginNew(p);
  await until('a 607 answered to idtag', async () => ((await calls()).by_code['607'] ?? 0) > 0, 60000);
  await sleep(2500);
  await setFaults({ share_502: 0, quota_exhausted: false });
  for (let i = 0; i < people.length; i++) {
    await until(`delivery for ${people[i]}`, async () => (await leadOf(people[i]))[0]?.cookies.includes(tokens[i]), 90000);
  }
  await settle();
  const codes = (await calls()).by_code;
  for (const c of ['502', '606', '607']) assert((codes[c] ?? 0) > 0, `no ${c} was provoked: ${JSON.stringify(codes)}`);
  const log = await callLog();
  for (let i = 0; i < people.length; i++) {
    const l = await leadOf(people[i]);
    assert(l.length === 1, `${l.length} leads for ${people[i]}`);
    const ok = log.filter((c) => c.endpoint === 'associate' && c.path.includes(`/leads/${l[0].id}/`) && !c.code && c.http_status === 200);
    assert(ok.length === 1, `${ok.length} successful associate calls for ${people[i]}`);
  }
  return `codes seen during the storm ${JSON.stringify(codes)}; ${people.length} pairs delivered once`;
});

await browser.close();
const failed = results.filter((r) => !r.ok);
console.log('\nidtag demo journeys');
for (const r of results) console.log(`  ${r.ok ? 'PASS' : 'FAIL'}  ${r.n}. ${r.title}`);
console.log(`${results.length - failed.length} passed, ${failed.length} failed`);
process.exit(failed.length ? 1 : 0);
