//! The demo product's HTML. Every page loads the emulator's Munchkin-like script
//! (unless the visitor declined tracking) and creates an idtag `Tagger`.

/// Settings every page needs.
pub struct PageEnv<'a> {
    /// URL of the Munchkin(-like) tracking script.
    pub munchkin_script: &'a str,
    /// The Munchkin id the tagger prefers.
    pub munchkin_id: &'a str,
}

/// Escapes text for HTML element content and attribute values.
pub fn esc(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

/// Encodes a string as a JSON literal safe inside a `<script>` element.
pub fn js_str(s: &str) -> String {
    serde_json::to_string(s)
        .unwrap_or_else(|_| "\"\"".into())
        .replace('<', "\\u003c")
}

const STYLE: &str = "body{font:16px/1.5 system-ui,sans-serif;max-width:52rem;margin:2rem auto;padding:0 1rem;color:#1d2433}
nav a{margin-right:1rem}form{display:grid;gap:.5rem;max-width:22rem}input,button{font:inherit;padding:.4rem}
#consent{position:fixed;bottom:0;left:0;right:0;background:#f3f4f6;padding:.75rem;border-top:1px solid #ccc}
table{border-collapse:collapse}td,th{border:1px solid #ccc;padding:.25rem .6rem;text-align:right}th:first-child,td:first-child{text-align:left}
.ok{color:#0a7a3a}.warn{color:#b45309}.bad{color:#b91c1c}";

/// A full page: nav, consent banner, tracking script, the tagger, then `body` and `script`.
pub fn layout(
    env: &PageEnv<'_>,
    title: &str,
    user: Option<&str>,
    body: &str,
    script: &str,
) -> String {
    let who = match user {
        Some(name) => format!("<a href=\"/app\">{}</a><a href=\"/logout\">Log out</a>", esc(name)),
        None => "<a href=\"/signup\">Sign up</a><a href=\"/login\">Log in</a><a href=\"/sso\">Log in with SSO</a>".into(),
    };
    format!(
        r#"<!doctype html><html lang="en"><head><meta charset="utf-8"><title>{title} · Acme Analytics</title>
<meta name="viewport" content="width=device-width,initial-scale=1"><style>{STYLE}</style>
<script>
  // Consent manager: Munchkin only loads when tracking was not declined.
  (function () {{
    var c = null; try {{ c = localStorage.getItem('demo-consent'); }} catch (e) {{}}
    if (c !== 'denied') {{ var s = document.createElement('script'); s.async = true; s.src = {script_src}; document.head.appendChild(s); }}
  }})();
</script>
<script type="module">
  import {{ createTagger }} from '/static/idtag/index.js';
  let consent = 'granted';
  try {{ consent = localStorage.getItem('demo-consent') || 'granted'; }} catch (e) {{}}
  window.tagger = await createTagger({{ endpoint: '/v1/tag', munchkinId: {munchkin_id}, consent,
    onOutcome: (o) => {{ window.lastOutcome = o; document.dispatchEvent(new CustomEvent('idtag-outcome', {{ detail: o }})); }} }});
  window.decline = () => {{
    try {{ localStorage.setItem('demo-consent', 'denied'); }} catch (e) {{}}
    document.cookie = 'mkto_opt_out=true; path=/; max-age=63072000';
    window.tagger.setConsent('denied');
    document.getElementById('consent').hidden = true;
  }};
  window.accept = () => {{
    try {{ localStorage.setItem('demo-consent', 'granted'); }} catch (e) {{}}
    window.tagger.setConsent('granted');
    document.getElementById('consent').hidden = true;
  }};
  try {{ if (localStorage.getItem('demo-consent')) document.getElementById('consent').hidden = true; }} catch (e) {{}}
  window.dispatchEvent(new Event('tagger-ready'));
  window.taggerReady = true;
  {script}
</script></head>
<body><nav><a href="/"><b>Acme Analytics</b></a><a href="/features">Features</a><a href="/pricing">Pricing</a>{who}<a href="/coverage">Coverage</a></nav>
<main>{body}</main>
<div id="consent">We use cookies for marketing analytics.
<button id="accept" onclick="accept()">Accept</button> <button id="decline" onclick="decline()">Decline</button></div>
</body></html>"#,
        title = esc(title),
        script_src = js_str(env.munchkin_script),
        munchkin_id = js_str(env.munchkin_id),
    )
}

pub fn marketing(env: &PageEnv<'_>, path: &str, user: Option<&str>) -> String {
    let (title, body) = match path {
        "/pricing" => ("Pricing", "<h1>Pricing</h1><p>Team: $49/month. Business: $199/month. Enterprise: talk to us.</p>"),
        "/features" => ("Features", "<h1>Features</h1><ul><li>Dashboards</li><li>Alerts</li><li>SQL exports</li></ul>"),
        _ => ("Home", "<h1>Acme Analytics</h1><p>Know what your customers do. <a href=\"/signup\">Start free</a>.</p>"),
    };
    layout(env, title, user, body, "")
}

pub fn signup(env: &PageEnv<'_>, error: Option<&str>) -> String {
    let err = error
        .map(|e| format!("<p class=\"bad\" id=\"error\">{}</p>", esc(e)))
        .unwrap_or_default();
    let body = format!(
        r#"<h1>Create your account</h1>{err}
<form id="signup" method="post" action="/signup">
<label>Name <input name="name" required></label>
<label>Work email <input name="email" type="email" required></label>
<label>Password <input name="password" type="password" minlength="8" required></label>
<button type="submit">Sign up</button></form>
<p>Server-rendered form: idtag's form hook adds the hidden <code>_mkt_trk</code> field at submit.</p>"#
    );
    layout(
        env,
        "Sign up",
        None,
        &body,
        "window.tagger.hookForm(document.getElementById('signup'), { event: 'signup' });",
    )
}

pub fn login(env: &PageEnv<'_>) -> String {
    let body = r#"<h1>Log in</h1>
<form id="login"><label>Email <input name="email" type="email" required></label>
<label>Password <input name="password" type="password" required></label>
<button type="submit">Log in</button></form><p id="status"></p>
<p>Single-page login: the app's own <code>fetch</code> carries idtag's header.</p>"#;
    let script = r#"
  document.getElementById('login').addEventListener('submit', async (ev) => {
    ev.preventDefault();
    const f = new FormData(ev.target);
    const r = await fetch('/api/login', { method: 'POST',
      headers: { 'content-type': 'application/json', ...window.tagger.headers() },
      body: JSON.stringify({ email: f.get('email'), password: f.get('password') }) });
    const j = await r.json();
    if (r.ok) { location.href = '/app'; } else { document.getElementById('status').textContent = j.error.message; }
  });"#;
    layout(env, "Log in", None, body, script)
}

pub fn sso_start(env: &PageEnv<'_>) -> String {
    let body = r#"<h1>Single sign-on</h1><p>Your company signs you in through its identity provider.</p>
<p><a id="sso" href="/idp/authorize?return=/sso/callback">Continue with DemoSSO</a></p>"#;
    layout(env, "SSO", None, body, "")
}

/// The identity provider's own page: a different "site" in a real deployment, so
/// it carries no idtag code.
pub fn idp_login(ret: &str, error: Option<&str>) -> String {
    let err = error
        .map(|e| format!("<p class=\"bad\">{}</p>", esc(e)))
        .unwrap_or_default();
    format!(
        r#"<!doctype html><html><head><meta charset="utf-8"><title>DemoSSO</title><style>{STYLE}</style></head>
<body><h1>DemoSSO</h1>{err}<form id="idp" method="post" action="/idp/authorize">
<input type="hidden" name="return" value="{ret}">
<label>Email <input name="email" type="email" required></label>
<label>Password <input name="password" type="password" required></label>
<button type="submit">Sign in</button></form></body></html>"#,
        ret = esc(ret)
    )
}

/// The signed-in app. `tag` carries a tag token to send (SSO landings); `then`
/// navigates away right after `tag()` starts, as apps that redirect at once do.
pub fn app(env: &PageEnv<'_>, name: &str, tag: Option<(&str, &str)>, then: Option<&str>) -> String {
    let body = format!(
        "<h1>Welcome, {}</h1><p>Your dashboards are ready.</p><p id=\"tag-status\"></p>",
        esc(name)
    );
    let mut script = String::new();
    if let Some((token, event)) = tag {
        script.push_str(&format!(
            "const p = window.tagger.tag({}, {{ event: {} }});\n  p.then((o) => {{ document.getElementById('tag-status').textContent = 'tag: ' + o; }});\n",
            js_str(token),
            js_str(event)
        ));
    }
    if let Some(to) = then {
        script.push_str(&format!("  location.href = {};\n", js_str(to)));
    }
    layout(env, "App", Some(name), &body, &script)
}

pub fn logged_out(env: &PageEnv<'_>) -> String {
    layout(
        env,
        "Logged out",
        None,
        "<h1>You are logged out</h1><p id=\"reset\"></p>",
        "window.tagger.reset(); document.getElementById('reset').textContent = 'idtag reset';",
    )
}
