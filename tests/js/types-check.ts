// Compile-only check of the package's hand-written types (run by e2e.mjs with
// tsc --strict against the installed tarball).
import { createTagger, IdtagError, HEADER, FIELD, type TagOutcome, type Tagger } from 'idtag';

async function main(form: HTMLFormElement): Promise<void> {
  const t: Tagger = await createTagger({
    endpoint: '/v1/tag',
    munchkinId: '123-ABC-456',
    consent: 'pending',
    waitForCookieMs: 500,
    onOutcome: (r) => {
      if (r.mode === 'form') {
        const o: 'attached' | 'no_cookie' | 'consent_denied' = r.outcome;
        void o;
      }
    },
  });
  const outcome: TagOutcome = await t.tag('v1.a.b', { event: 'login' });
  if (outcome.startsWith('rejected:')) console.log(outcome);
  const unhook: () => void = t.hookForm(form, { event: 'signup', fieldName: 'mkt' });
  unhook();
  const h: string | undefined = t.headers()['X-Idtag-Mkto-Trk'];
  const f: string | undefined = t.fields()._mkt_trk;
  const c: string | null = t.cookie();
  t.setConsent('granted');
  const hdr: 'X-Idtag-Mkto-Trk' = HEADER;
  const fld: '_mkt_trk' = FIELD;
  void [h, f, c, hdr, fld];
  try {
    await createTagger({ endpoint: new URL('https://x.test/v1/tag') });
  } catch (e) {
    if (e instanceof IdtagError) {
      const code: 'unsupported_environment' | 'invalid_config' | 'wasm_load_failed' | 'invalid_argument' = e.code;
      void code;
    }
  }
  // @ts-expect-error consent values are a closed set
  t.setConsent('maybe');
  // @ts-expect-error endpoint is required
  await createTagger({});
  // @ts-expect-error event is login or signup
  await t.tag('v1.a.b', { event: 'logout' });
  // @ts-expect-error outcomes are a closed set
  const bad: TagOutcome = 'ok';
  void bad;
}
void main;
