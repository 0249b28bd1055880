// idtag browser SDK: hand-written ESM facade over the wasm `Tagger`.
//
// Importing this module touches no browser global (SSR-safe): the wasm is
// fetched and instantiated only by `createTagger`. The facade carries out what
// the wasm decides: it sends (fetch keepalive, sendBeacon when the page hides),
// waits for the Munchkin cookie, reads a tag token's claims with the browser's
// own JSON parser, and wires form and page-lifecycle events. Nothing here throws
// into a login flow after `createTagger` resolved.
import initWasm, { Tagger } from './idtag_wasm.js';

/** Header carrying the selected `_mkto_trk` value on the app's own requests. */
export const HEADER = 'X-Idtag-Mkto-Trk';
/** Body/form field carrying it (the Marketo Forms 2.0 name). */
export const FIELD = '_mkt_trk';

/** Errors thrown by the SDK: `name` is `IdtagError`, `code` is stable. */
export class IdtagError extends Error {
  constructor(code, message) {
    super(message);
    this.name = 'IdtagError';
    this.code = code;
  }
}

// Operation codes of the wasm `Tagger.call` (src/browser/mod.rs, `op`).
const CONFIG_ERROR = 0;
const CONSENT = 1;
const SET_CONSENT = 2;
const COOKIE = 3;
const PERSISTENT = 4;
const ENQUEUE = 5;
const CLAIM = 6;
const COMPLETE = 7;
const QUEUED = 8;
const NEXT_DUE = 9;
const RESET = 10;

// How long a send may take (the reply included) before it counts as a network
// error and is retried; also bounds how long `tag()` can keep a page waiting.
const SEND_TIMEOUT_MS = 10000;
const LOAD_TIMEOUT_MS = 15000;
// Longest in-page retry timer; later page loads retry what waits longer.
const MAX_TIMER_MS = 3600000;

let ready;
const CONSENTS = ['granted', 'denied', 'pending'];
const fail = (code, message) => { throw new IdtagError(code, message); };
const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

/** Loads the wasm (once) and returns a tagger for this page. */
export async function createTagger(config) {
  if (typeof window === 'undefined' || typeof document === 'undefined') {
    fail('unsupported_environment', 'createTagger needs a browser window');
  }
  const c = config || {};
  let endpoint;
  try {
    endpoint = new URL(c.endpoint, location.href).href;
  } catch {
    endpoint = '';
  }
  if (!c.endpoint || typeof c.endpoint !== 'string' && !(c.endpoint instanceof URL) || !endpoint) {
    fail('invalid_config', 'endpoint must be a URL');
  }
  const consent = c.consent == null ? 'granted' : c.consent;
  if (!CONSENTS.includes(consent)) fail('invalid_config', 'consent must be granted, denied or pending');
  const wait = c.waitForCookieMs == null ? 2000 : c.waitForCookieMs;
  if (typeof wait !== 'number' || !(wait >= 0)) fail('invalid_config', 'waitForCookieMs must be a number >= 0');
  if (c.onOutcome != null && typeof c.onOutcome !== 'function') fail('invalid_config', 'onOutcome must be a function');
  ready = ready || Promise.race([
    initWasm(c.wasmUrl ? { module_or_path: c.wasmUrl } : undefined),
    sleep(LOAD_TIMEOUT_MS).then(() => { throw new Error('timeout'); }),
  ]).catch((e) => {
    ready = undefined;
    throw e;
  });
  try {
    await ready;
  } catch {
    fail('wasm_load_failed', 'could not load idtag_wasm_bg.wasm');
  }
  const owner = Math.random().toString(36).slice(2) + Date.now().toString(36);
  const str = (v) => (v == null ? '' : String(v));
  const t = new Tagger([str(c.munchkinId), str(c.cookieDomain), consent, owner].join('\0'));
  if (t.call(CONFIG_ERROR, '', 0, 0, 0)) {
    t.free();
    fail('invalid_config', 'munchkinId must look like 123-ABC-456');
  }
  return makeTagger(c, t, endpoint, wait);
}

/** The token's person (`sub` and `email` claims, newline-joined) and lifetime in ms, read without verifying. */
function claimsOf(token) {
  try {
    const b64 = token.split('.')[1].replace(/-/g, '+').replace(/_/g, '/');
    const c = JSON.parse(new TextDecoder().decode(Uint8Array.from(atob(b64), (ch) => ch.charCodeAt(0))));
    const person = typeof c.sub === 'string' && typeof c.email === 'string' ? c.sub + '\n' + c.email : '';
    return [person, Number.isFinite(c.exp) && Number.isFinite(c.iat) ? (c.exp - c.iat) * 1000 : NaN];
  } catch {
    return ['', NaN];
  }
}

function makeTagger(c, t, endpoint, wait) {
  const inflight = new Map();
  let timer;
  let timerAt = Infinity;

  // Runs a wasm operation; a trap (which never should happen) must not break the page.
  const call = (op, arg, x, y) => {
    try {
      return t.call(op, arg || '', Date.now(), x == null ? NaN : x, y || 0);
    } catch {
      return '';
    }
  };
  const value = () => call(COOKIE) || null;
  const consentNow = () => call(CONSENT) || 'denied';
  const report = (mode, outcome, event) => {
    try {
      if (c.onOutcome) c.onOutcome({ mode, outcome, event });
    } catch {
      // The app's callback must not break tagging.
    }
    return outcome;
  };
  // Queue changes made after a reply run one tab at a time where the browser
  // has Web Locks; claims at page hide cannot wait and run at once.
  const exclusive = (f) => {
    const locks = typeof navigator !== 'undefined' && navigator.locks;
    return (locks ? locks.request('idtag:q', f) : Promise.resolve().then(f)).catch(() => {});
  };

  const reply = async (token, res) => {
    let body;
    try {
      body = await res.json();
    } catch {
      // A reply without a JSON body is classified by its status alone.
    }
    body = body || {};
    const kind = body.v === 1 && (body.status === 'queued' || body.status === 'duplicate') ? body.status : '';
    let r;
    await exclusive(() => { r = call(COMPLETE, token + '\0' + kind, res.status, Math.random()); });
    if (r === 'rejected') {
      const code = body.error && body.error.code;
      return 'rejected:' + (typeof code === 'string' && code ? code : res.ok ? 'bad_reply' : 'http_' + res.status);
    }
    schedule();
    return r === 'sent' || r === 'duplicate' ? r : 'queued';
  };

  // Sends one claimed item (a send line: token, cookie, page, ts).
  const send = (line, beacon) => {
    const [token, cookie, page, ts] = line.split('\t');
    if (!token || inflight.has(token)) return;
    const body = JSON.stringify({ v: 1, token, cookies: { _mkto_trk: cookie }, page: page || undefined, ts: +ts, consent: 'granted' });
    if (beacon && typeof navigator !== 'undefined' && navigator.sendBeacon) {
      // The page is going away: the lease keeps other pages from resending
      // while the beacon is on its way; the endpoint dedups a later resend.
      try {
        if (navigator.sendBeacon(endpoint, body)) return;
      } catch {
        // Fall back to fetch below.
      }
    }
    const signal = typeof AbortSignal !== 'undefined' && AbortSignal.timeout ? AbortSignal.timeout(SEND_TIMEOUT_MS) : undefined;
    const p = fetch(endpoint, {
      method: 'POST',
      body,
      keepalive: true,
      signal,
      headers: { 'content-type': 'text/plain;charset=UTF-8' },
    })
      .then((res) => reply(token, res), async () => {
        await exclusive(() => call(COMPLETE, token, 0, Math.random()));
        schedule();
        return 'queued';
      })
      .finally(() => inflight.delete(token));
    inflight.set(token, p);
  };

  // Claims every due item for this tab and sends it.
  const flush = (beacon) => {
    const lines = call(CLAIM);
    if (lines) for (const line of lines.split('\n')) send(line, beacon);
  };
  const flushLater = () => exclusive(() => flush()).then(schedule);

  // An in-page timer for the next item due (backoff, or a lease left by a page
  // that is gone); later page loads retry too.
  const schedule = () => {
    const due = Number(call(NEXT_DUE) || NaN);
    if (!(due >= 0) || (timer && due >= timerAt)) return;
    clearTimeout(timer);
    const delay = Math.max(0, due - Date.now());
    if (delay > MAX_TIMER_MS) return;
    timerAt = due;
    timer = setTimeout(() => {
      timer = undefined;
      timerAt = Infinity;
      flushLater();
    }, delay);
  };

  // Waits for Munchkin to set the cookie: cookieStore change events where the
  // browser has them, else a timer whose interval grows (no busy loop).
  const waitForCookie = (ms) => new Promise((resolve) => {
    if (value()) return resolve(true);
    const end = Date.now() + ms;
    const store = globalThis.cookieStore;
    let step = 25;
    let id;
    const onChange = () => check();
    const finish = (v) => {
      clearTimeout(id);
      try {
        if (store) store.removeEventListener('change', onChange);
      } catch {
        // Best effort.
      }
      resolve(v);
    };
    const check = () => {
      if (value()) return finish(true);
      const left = end - Date.now();
      if (left <= 0) return finish(false);
      clearTimeout(id);
      id = setTimeout(check, Math.min(step, left));
      step = Math.min(step * 2, 400);
    };
    try {
      if (store) store.addEventListener('change', onChange);
    } catch {
      // Timers alone, then.
    }
    check();
  });

  const onHide = (e) => {
    if (e.type === 'pagehide' || document.visibilityState === 'hidden') flush(true);
  };
  addEventListener('pagehide', onHide);
  document.addEventListener('visibilitychange', onHide);
  // Work left by earlier pages (navigation, failures, other tabs' expired leases).
  flushLater();

  return {
    async tag(token, opts) {
      const event = opts && opts.event;
      const done = (o) => report('tag', o, event);
      if (typeof token !== 'string') return done('rejected:malformed');
      const [person, ttl] = claimsOf(token);
      // Query and fragment stay out: SSO landings carry codes and tokens there.
      const page = location.origin + location.pathname;
      const r = call(ENQUEUE, token + '\0' + page + '\0' + person, ttl);
      const nl = r.indexOf('\n');
      const first = nl < 0 ? r : r.slice(0, nl);
      if (first !== 'queued') return done(first || 'rejected:internal');
      if (nl >= 0) {
        send(r.slice(nl + 1));
      } else if (consentNow() === 'pending') {
        return done('queued');
      } else if (!inflight.has(token)) {
        if (!(await waitForCookie(wait))) {
          return done(consentNow() === 'denied' ? 'consent_denied' : 'no_cookie');
        }
        await exclusive(() => flush());
      }
      const p = inflight.get(token);
      if (!p) return done(call(QUEUED, token) ? 'queued' : 'duplicate');
      return done(await p);
    },

    hookForm(form, opts) {
      if (!form || typeof form.addEventListener !== 'function' || !('elements' in form)) {
        fail('invalid_argument', 'hookForm needs an HTMLFormElement');
      }
      const name = (opts && opts.fieldName) || FIELD;
      const event = opts && opts.event;
      // Hidden inputs of that name: the template's own ones and the one we add.
      const fields = () => [...form.querySelectorAll('input[type="hidden"]')].filter((i) => i.name === name);
      const onSubmit = () => {
        try {
          const v = value();
          const list = fields();
          if (!v) {
            // Take back what we wrote: consent may have changed since.
            for (const i of list) {
              if (i.dataset.idtag === 'added') i.remove();
              else if (i.dataset.idtag === 'set') i.value = '';
            }
            report('form', consentNow() === 'granted' ? 'no_cookie' : 'consent_denied', event);
            return;
          }
          if (!list.length) {
            const input = document.createElement('input');
            input.type = 'hidden';
            input.name = name;
            input.dataset.idtag = 'added';
            form.appendChild(input);
            list.push(input);
          }
          for (const i of list) {
            if (!i.dataset.idtag) i.dataset.idtag = 'set';
            i.value = v;
          }
          report('form', 'attached', event);
        } catch {
          // Never block or break the submit.
        }
      };
      // form.submit() and new FormData(form) skip `submit` but fire `formdata`.
      const onFormData = (e) => {
        try {
          const v = value();
          if (v) e.formData.set(name, v);
          else if (fields().some((i) => i.dataset.idtag)) e.formData.delete(name);
        } catch {
          // As above.
        }
      };
      form.addEventListener('submit', onSubmit);
      form.addEventListener('formdata', onFormData);
      return () => {
        form.removeEventListener('submit', onSubmit);
        form.removeEventListener('formdata', onFormData);
      };
    },

    headers() {
      const v = value();
      return v ? { [HEADER]: v } : {};
    },

    fields() {
      const v = value();
      return v ? { [FIELD]: v } : {};
    },

    cookie() {
      return value();
    },

    setConsent(next) {
      if (!CONSENTS.includes(next)) fail('invalid_argument', 'consent must be granted, denied or pending');
      call(SET_CONSENT, next);
      if (next === 'granted') flushLater();
    },

    consent() {
      return consentNow();
    },

    persistent() {
      return call(PERSISTENT) === '1';
    },

    reset(options) {
      call(RESET);
      if (!(options && options.forgetVisitor)) return;
      // Expire Munchkin's cookie on this host, its parent domains and the
      // configured cookie domain, so Munchkin starts a new anonymous visitor.
      try {
        const expire = (d) => {
          document.cookie = '_mkto_trk=; expires=Thu, 01 Jan 1970 00:00:00 GMT; path=/' + (d ? '; domain=' + d : '');
        };
        for (let h = location.hostname; h; h = h.includes('.') ? h.slice(h.indexOf('.') + 1) : '') expire(h);
        if (c.cookieDomain) expire(String(c.cookieDomain).replace(/^\./, ''));
        expire();
      } catch {
        // Cookie writes are best effort.
      }
    },

    destroy() {
      removeEventListener('pagehide', onHide);
      document.removeEventListener('visibilitychange', onHide);
      clearTimeout(timer);
      timer = undefined;
    },
  };
}
