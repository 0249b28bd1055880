/** Consent to marketing tracking as the page knows it. */
export type Consent = 'granted' | 'denied' | 'pending';

/** The event that made the backend learn who the visitor is. */
export type TagEvent = 'login' | 'signup';

/**
 * How a hand-over ended.
 * - `sent`: the endpoint queued the association (202).
 * - `queued`: stored; sent later (consent pending, another tab owns it, network error or
 *   no reply within 10 s, page hidden).
 * - `duplicate`: this (cookie token, person) pair was sent before (locally remembered or endpoint 200).
 * - `no_cookie`: no Munchkin cookie within `waitForCookieMs`; the request stays queued until the
 *   token expires and is sent by a later page load if the cookie appears.
 * - `consent_denied`: consent denied or Munchkin opt-out cookie: nothing stored or sent.
 * - `rejected:<code>`: refused for good (endpoint error code, e.g. `rejected:expired`;
 *   `rejected:malformed` for a token that is not `v1.<payload>.<signature>`;
 *   `rejected:bad_reply` when the endpoint answered 2xx with something that is not
 *   a tag reply, i.e. it is not idtag's endpoint; `rejected:http_<status>` for a 4xx
 *   without an error code).
 */
export type TagOutcome =
  | 'sent'
  | 'queued'
  | 'duplicate'
  | 'no_cookie'
  | 'consent_denied'
  | `rejected:${string}`;

/** What `onOutcome` receives for each hand-over. */
export type OutcomeReport =
  | { mode: 'tag'; outcome: TagOutcome; event?: TagEvent }
  | { mode: 'form'; outcome: 'attached' | 'no_cookie' | 'consent_denied'; event?: TagEvent };

/** Options of {@link createTagger}. */
export interface TaggerConfig {
  /** The tag endpoint (`POST /v1/tag`), absolute or relative to the page. */
  endpoint: string | URL;
  /** The site's Munchkin id (`123-ABC-456`): cookies of other instances are never used. */
  munchkinId?: string;
  /** The cookie domain Munchkin writes (`example.com`): preferred over stale duplicates. */
  cookieDomain?: string;
  /** Initial consent (default `granted`). */
  consent?: Consent;
  /** How long `tag()` waits for Munchkin to set its cookie (default 2000 ms). */
  waitForCookieMs?: number;
  /** Called after each hand-over; exceptions it throws are swallowed. */
  onOutcome?: (report: OutcomeReport) => void;
  /** Where to load `idtag_wasm_bg.wasm` from (default: beside this module). */
  wasmUrl?: string | URL;
}

/** Options of {@link Tagger.hookForm}. */
export interface HookFormOptions {
  /** Reported to `onOutcome`. */
  event?: TagEvent;
  /** Hidden field name (default `_mkt_trk`). */
  fieldName?: string;
}

/** Options of {@link Tagger.reset}. */
export interface ResetOptions {
  /** Also expire `_mkto_trk` (shared machines, kiosks). Default false. */
  forgetVisitor?: boolean;
}

/** Options of {@link Tagger.tag}. */
export interface TagOptions {
  /** Reported to `onOutcome`. */
  event?: TagEvent;
}

/** A page's tagger. Its methods never throw except on programming errors noted below. */
export interface Tagger {
  /**
   * Mode 3: persists `{token, cookies}` first, then sends it to the endpoint
   * (fetch keepalive; sendBeacon when the page hides; retried with backoff on later loads).
   */
  tag(token: string, options?: TagOptions): Promise<TagOutcome>;
  /**
   * Mode 1: at submit, adds or refreshes a hidden field with the `_mkto_trk` value.
   * Returns a function that removes the hook. Throws `IdtagError` `invalid_argument`
   * when `form` is not a form.
   */
  hookForm(form: HTMLFormElement, options?: HookFormOptions): () => void;
  /** Mode 2: `{ 'X-Idtag-Mkto-Trk': value }` for the app's own login request, or `{}`. */
  headers(): { 'X-Idtag-Mkto-Trk'?: string };
  /** Mode 2: `{ _mkt_trk: value }` for a JSON or form body, or `{}`. */
  fields(): { _mkt_trk?: string };
  /** The selected `_mkto_trk` value, or null (none, or consent not granted). */
  cookie(): string | null;
  /** Changes consent. Throws `IdtagError` `invalid_argument` for another value. */
  setConsent(consent: Consent): void;
  /** The consent in force (`denied` when the Munchkin opt-out cookie is set). */
  consent(): Consent;
  /** False once localStorage was missing or threw and the queue lives in memory. */
  persistent(): boolean;
  /**
   * On logout: forgets queued work and sent pairs, so the next user of this browser
   * is not merged with the previous one. Munchkin's `_mkto_trk` stays (the server
   * records a conflict if another person logs in with it) unless `forgetVisitor`
   * is set, which expires it so Munchkin starts a new anonymous visitor.
   */
  reset(options?: ResetOptions): void;
  /** Removes the page-lifecycle listeners. */
  destroy(): void;
}

/** Stable error codes of {@link IdtagError}. */
export type IdtagErrorCode =
  | 'unsupported_environment'
  | 'invalid_config'
  | 'wasm_load_failed'
  | 'invalid_argument';

/** Errors thrown by the SDK. */
export class IdtagError extends Error {
  readonly name: 'IdtagError';
  readonly code: IdtagErrorCode;
  constructor(code: IdtagErrorCode, message: string);
}

/** The header name `headers()` uses. */
export declare const HEADER: 'X-Idtag-Mkto-Trk';
/** The field name `fields()` and `hookForm()` use by default. */
export declare const FIELD: '_mkt_trk';

/**
 * Loads the wasm module (once per page) and creates a tagger. Rejects with
 * `IdtagError` (`unsupported_environment` outside a browser, `invalid_config`,
 * `wasm_load_failed`).
 */
export function createTagger(config: TaggerConfig): Promise<Tagger>;
