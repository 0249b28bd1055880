//! The Munchkin-like script the emulator serves, and the web-event endpoint it
//! reports page views to.
//!
//! On a page that includes `<script src="http://127.0.0.1:PORT/munchkin.js"></script>`
//! the script (unless the page has the opt-out cookie `mkto_opt_out=true`):
//! reuses the token of an existing valid `_mkto_trk` or makes a new one
//! `_mch-<cookie domain>-<ms>-<1..99999>`; writes
//! `_mkto_trk=id:<munchkin id>&token:<token>` raw, path `/`, 730 days, on the
//! registrable domain (`.example.com`, `.example.co.uk`; `domainLevel` option)
//! or host-only on `localhost`, IP hosts and single-label hosts; and reports the
//! page view to `/webevents/visitWebPage`. It initialises itself with the
//! emulator's Munchkin id unless loaded as `munchkin.js?manual=1`, in which case
//! the page calls `Munchkin.init('123-ABC-456', {domainLevel: 2})`.
//! `Munchkin.munchkinFunction('visitWebPage', {url})` reports further views (SPAs).

use super::query::Params;
use super::tracking_cookie::{is_munchkin_id, is_token};
use super::Shared;
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use std::sync::Arc;

const SCRIPT: &str = r#"/* idtag emulator: Munchkin-like tracking script (not Adobe's munchkin.js) */
(function () {
  "use strict";
  var BASE = "__BASE__";
  var DEFAULT_ID = "__MUNCHKIN_ID__";
  var AUTO = __AUTO__;
  var NAME = "_mkto_trk";
  var VALUE_RE = /^id:(\d{3}-[A-Za-z]{3}-\d{3})&token:(_mch-[A-Za-z0-9.\-]+-(?:\d{13}-\d{1,5}|[0-9a-f]{32}))$/;
  var state = { started: false, id: null, token: null, value: null, domain: null };

  function cookieValues(name) {
    var out = [];
    var parts = String(document.cookie || "").split(";");
    for (var i = 0; i < parts.length; i++) {
      var p = parts[i].replace(/^\s+/, "");
      var eq = p.indexOf("=");
      if (eq > 0 && p.slice(0, eq) === name) { out.push(p.slice(eq + 1)); }
    }
    return out;
  }
  function optedOut() {
    var v = cookieValues("mkto_opt_out");
    for (var i = 0; i < v.length; i++) { if (v[i] === "true") { return true; } }
    return false;
  }
  function isIpHost(h) {
    return /^\d{1,3}(\.\d{1,3}){3}$/.test(h) || h.indexOf(":") >= 0 || h.charAt(0) === "[";
  }
  // Registrable domain the cookie is set on; null means host-only.
  function cookieDomain(host, level) {
    if (!host || host === "localhost" || isIpHost(host) || host.indexOf(".") < 0) { return null; }
    var labels = host.split(".");
    var n = labels.length;
    var keep = level || ((labels[n - 1].length === 2 && n > 2 && labels[n - 2].length <= 3) ? 3 : 2);
    if (keep > n) { keep = n; }
    return labels.slice(n - keep).join(".");
  }
  function writeCookie() {
    var expires = new Date(Date.now() + 730 * 864e5).toUTCString();
    document.cookie = NAME + "=" + state.value + "; path=/; expires=" + expires +
      (state.domain ? "; domain=." + state.domain : "");
  }
  function report(url, referrer) {
    if (!state.token || optedOut()) { return; }
    writeCookie();
    var e = encodeURIComponent;
    var src = BASE + "/webevents/visitWebPage?_mchNc=" + Date.now() +
      "&_mchId=" + e(state.id) + "&_mchTk=" + e(state.token) +
      "&_mchHo=" + e(location.hostname) + "&_mchRu=" + e(url) + "&_mchRe=" + e(referrer || "");
    try {
      if (typeof fetch === "function") {
        fetch(src, { mode: "no-cors", keepalive: true, credentials: "omit" });
      } else if (typeof Image === "function") {
        (new Image()).src = src;
      }
    } catch (err) { /* tracking never breaks the page */ }
  }
  function init(id, opts) {
    opts = opts || {};
    if (state.started || optedOut()) { return; }
    state.started = true;
    var host = location.hostname;
    var domain = cookieDomain(host, opts.domainLevel);
    var token = null;
    var existing = cookieValues(NAME);
    for (var i = 0; i < existing.length && !token; i++) {
      var m = VALUE_RE.exec(existing[i]);
      if (m) { token = m[2]; }
    }
    if (!token) {
      token = "_mch-" + (domain || host) + "-" + Date.now() + "-" + (1 + Math.floor(Math.random() * 99999));
    }
    state.id = id || DEFAULT_ID;
    state.token = token;
    state.value = "id:" + state.id + "&token:" + token;
    state.domain = domain;
    report(location.pathname + location.search, document.referrer);
  }
  window.Munchkin = {
    init: init,
    munchkinFunction: function (name, args) {
      if (name === "visitWebPage") { report((args && args.url) || (location.pathname + location.search), (args && args.referrer) || ""); }
    },
    token: function () { return state.token; }
  };
  if (AUTO) { init(DEFAULT_ID); }
})();
"#;

/// A 1×1 transparent GIF, what a tracking pixel answers with.
const PIXEL: &[u8] = &[
    0x47, 0x49, 0x46, 0x38, 0x39, 0x61, 0x01, 0x00, 0x01, 0x00, 0x80, 0x00, 0x00, 0x00, 0x00,
    0x00, 0xff, 0xff, 0xff, 0x21, 0xf9, 0x04, 0x01, 0x00, 0x00, 0x00, 0x00, 0x2c, 0x00, 0x00,
    0x00, 0x00, 0x01, 0x00, 0x01, 0x00, 0x00, 0x02, 0x02, 0x44, 0x01, 0x00, 0x3b,
];

/// `GET /munchkin.js`: the script, reporting back to the host it was fetched from.
pub(crate) fn script(sh: &Arc<Shared>, headers: &HeaderMap, raw_query: &str) -> Response {
    let host = headers
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .filter(|h| {
            !h.is_empty()
                && h.bytes()
                    .all(|c| c.is_ascii_alphanumeric() || b".:-[]".contains(&c))
        });
    let base = match host {
        Some(h) => format!("http://{h}"),
        None => sh.base_url.clone(),
    };
    let auto = Params::parse(raw_query).get("manual") != Some("1");
    let body = SCRIPT
        .replace("__BASE__", &base)
        .replace("__MUNCHKIN_ID__", &sh.config.munchkin_id)
        .replace("__AUTO__", if auto { "true" } else { "false" });
    (
        StatusCode::OK,
        [
            (header::CONTENT_TYPE, "application/javascript; charset=utf-8"),
            (header::CACHE_CONTROL, "no-store"),
            (header::ACCESS_CONTROL_ALLOW_ORIGIN, "*"),
        ],
        body,
    )
        .into_response()
}

/// `GET /webevents/visitWebPage`: records one page view against a token.
pub(crate) fn visit(sh: &Arc<Shared>, raw_query: &str) -> Response {
    let p = Params::parse(raw_query);
    let id = p.get("_mchId").unwrap_or("");
    let token = p.get("_mchTk").unwrap_or("");
    if !is_munchkin_id(id) || !is_token(token) {
        return (StatusCode::BAD_REQUEST, "invalid _mchId or _mchTk\n").into_response();
    }
    if !id.eq_ignore_ascii_case(&sh.config.munchkin_id) {
        return (StatusCode::BAD_REQUEST, "munchkin id of another instance\n").into_response();
    }
    let url: String = p.get("_mchRu").unwrap_or("").chars().take(2048).collect();
    let referrer: String = p.get("_mchRe").unwrap_or("").chars().take(2048).collect();
    let now = sh.now();
    sh.lock().visit(id, token, &url, &referrer, now);
    (
        StatusCode::OK,
        [
            (header::CONTENT_TYPE, "image/gif"),
            (header::CACHE_CONTROL, "no-store"),
            (header::ACCESS_CONTROL_ALLOW_ORIGIN, "*"),
        ],
        PIXEL,
    )
        .into_response()
}
