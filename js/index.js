// idtag browser SDK: hand-written ESM facade over the wasm `Tagger`.
//
// Importing this module touches no browser global (SSR-safe): the wasm is
// fetched and instantiated only by `createTagger`. The facade carries out what
// the wasm decides: it sends (fetch keepalive, sendBeacon when the page hides),
// waits for the Munchkin cookie, and wires form and page-lifecycle events.
// Nothing here throws into a login flow after `createTagger` resolved.
import initWasm, { Tagger, isMunchkinId } from './idtag_wasm.js';

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

let ready;
const CONSENTS = ['granted', 'denied', 'pending'];
const fail = (code, message) => { throw new IdtagError(code, message); };

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
  ready = ready || initWasm(c.wasmUrl ? { module_or_path: c.wasmUrl } : undefined).catch((e) => {
    ready = undefined;
    throw e;
  });
  try {
    await ready;
  } catch {
    fail('wasm_load_failed', 'could not load idtag_wasm_bg.wasm');
  }
  if (c.munchkinId != null && !isMunchkinId(String(c.munchkinId))) {
    fail('invalid_config', 'munchkinId must look like 123-ABC-456');
  }
  return makeTagger(c, endpoint, consent, wait);
}

function makeTagger(c, endpoint, consent, wait) {
  const owner = Math.random().toString(36).slice(2) + Date.now().toString(36);
  const t = new Tagger(c.munchkinId ? String(c.munchkinId) : undefined, c.cookieDomain || undefined, consent, owner);
  const inflight = new Map();
  let hiding = false;
  let timer;

  // Runs a wasm call; a trap (which never should happen) must not break the page.
  const safe = (f, fallback) => {
    try {
      return f();
    } catch {
      return fallback;
    }
  };
  const report = (mode, outcome, event) => {
    try {
      if (c.onOutcome) c.onOutcome({ mode, outcome, event });
    } catch {
      // The app's callback must not break tagging.
    }
    return outcome;
  };

  const reply = async (token, res) => {
    let dup = false;
    let code = '';
    try {
      const body = await res.json();
      dup = body && body.status === 'duplicate';
      code = body && body.error && body.error.code;
    } catch {
      // A reply without a JSON body is classified by its status alone.
    }
    const r = safe(() => t.complete(token, res.status, !!dup, Date.now(), Math.random()), 'retry');
    if (r === 'rejected') return 'rejected:' + (typeof code === 'string' && code ? code : 'http_' + res.status);
    if (r === 'retry') schedule();
    return r === 'retry' ? 'queued' : r;
  };

  const post = (token, body) => {
    if (hiding && typeof navigator !== 'undefined' && navigator.sendBeacon) {
      const sent = safe(() => navigator.sendBeacon(endpoint, body), false);
      if (sent) return Promise.resolve('queued');
    }
    return fetch(endpoint, {
      method: 'POST',
      body,
      keepalive: true,
      headers: { 'content-type': 'text/plain;charset=UTF-8' },
    }).then((res) => reply(token, res), () => {
      safe(() => t.complete(token, 0, false, Date.now(), Math.random()), '');
      schedule();
      return 'queued';
    });
  };

  // Sends every due item not already on its way from this page.
  const flush = () => {
    const list = safe(() => t.claim(Date.now()), []);
    for (let i = 0; i + 1 < list.length; i += 2) {
      const token = list[i];
      if (inflight.has(token)) continue;
      const p = post(token, list[i + 1]).finally(() => inflight.delete(token));
      inflight.set(token, p);
    }
  };

  // An in-page retry for items backing off; later page loads retry too.
  const schedule = () => {
    const due = safe(() => t.nextDue(), -1);
    if (due < 0 || timer) return;
    const delay = Math.max(0, due - Date.now());
    if (delay > 600000) return;
    timer = setTimeout(() => {
      timer = undefined;
      flush();
    }, delay);
  };

  // Waits for Munchkin to set the cookie: cookieStore change events where the
  // browser has them, else a timer whose interval grows (no busy loop).
  const waitForCookie = (ms) => new Promise((resolve) => {
    if (safe(() => t.cookie(), null)) return resolve(true);
    const end = Date.now() + ms;
    const store = globalThis.cookieStore;
    let step = 25;
    let id;
    const onChange = () => check();
    const finish = (v) => {
      clearTimeout(id);
      if (store) safe(() => store.removeEventListener('change', onChange));
      resolve(v);
    };
    const check = () => {
      if (safe(() => t.cookie(), null)) return finish(true);
      const left = end - Date.now();
      if (left <= 0) return finish(false);
      clearTimeout(id);
      id = setTimeout(check, Math.min(step, left));
      step = Math.min(step * 2, 400);
    };
    if (store) safe(() => store.addEventListener('change', onChange));
    check();
  });

  const onHide = (e) => {
    if (e.type === 'pagehide' || document.visibilityState === 'hidden') {
      hiding = true;
      flush();
    } else {
      hiding = false;
    }
  };
  addEventListener('pagehide', onHide);
  document.addEventListener('visibilitychange', onHide);
  // Work left by earlier pages (navigation, failures, other tabs' expired leases).
  flush();

  const value = () => safe(() => t.cookie(), null);
  const consentNow = () => safe(() => t.consent(), 'denied');

  return {
    async tag(token, opts) {
      const event = opts && opts.event;
      const done = (o) => report('tag', o, event);
      if (typeof token !== 'string') return done('rejected:malformed');
      const first = safe(() => t.enqueue(token, location.href, Date.now()), 'rejected:internal');
      if (first !== 'queued') return done(first);
      if (consentNow() === 'pending') return done('queued');
      flush();
      if (!inflight.has(token)) {
        if (!(await waitForCookie(wait))) {
          return done(consentNow() === 'denied' ? 'consent_denied' : 'no_cookie');
        }
        flush();
      }
      const p = inflight.get(token);
      return done(p ? await p : 'queued');
    },

    hookForm(form, opts) {
      if (!form || typeof form.addEventListener !== 'function' || !('elements' in form)) {
        fail('invalid_argument', 'hookForm needs an HTMLFormElement');
      }
      const name = (opts && opts.fieldName) || FIELD;
      const event = opts && opts.event;
      const onSubmit = () => {
        try {
          const v = value();
          let input = form.querySelector('input[type="hidden"][name="' + name + '"][data-idtag]');
          if (!v) {
            if (input) input.remove();
            report('form', consentNow() === 'granted' ? 'no_cookie' : 'consent_denied', event);
            return;
          }
          if (!input) {
            input = document.createElement('input');
            input.type = 'hidden';
            input.name = name;
            input.setAttribute('data-idtag', '');
            form.appendChild(input);
          }
          input.value = v;
          report('form', 'attached', event);
        } catch {
          // Never block or break the submit.
        }
      };
      // form.submit() and new FormData(form) skip `submit` but fire `formdata`.
      const onFormData = (e) => {
        try {
          const v = value();
          if (v && e.formData && !e.formData.has(name)) e.formData.set(name, v);
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
      return value() || null;
    },

    setConsent(next) {
      if (!CONSENTS.includes(next)) fail('invalid_argument', 'consent must be granted, denied or pending');
      safe(() => t.setConsent(next), false);
      if (next === 'granted') flush();
    },

    consent() {
      return consentNow();
    },

    persistent() {
      return safe(() => t.persistent(), false);
    },

    reset(options) {
      const forget = !!(options && options.forgetVisitor);
      safe(() => t.reset(forget));
    },

    destroy() {
      removeEventListener('pagehide', onHide);
      document.removeEventListener('visibilitychange', onHide);
      clearTimeout(timer);
    },
  };
}
