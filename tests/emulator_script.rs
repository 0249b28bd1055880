//! The Munchkin-like script the emulator serves, run in Node with a minimal
//! `document`/`location`/`fetch`: the cookie it writes (format, domain,
//! host-only on localhost/IP hosts, reuse, opt-out) and the page views it
//! reports. Skipped (with a note) where `node` is not installed.

#![cfg(all(not(target_arch = "wasm32"), feature = "emulator"))]

use idtag::emulator::tracking_cookie::parse_value;
use idtag::emulator::{Emulator, EmulatorConfig};
use serde_json::Value;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::Command;

const HARNESS: &str = r#"
const fs = require("fs");
const [src, host, initial, mode] = process.argv.slice(2);
let jar = initial || "";
const writes = [], requests = [];
global.window = global;
global.location = { hostname: host, pathname: "/pricing", search: "?plan=team" };
global.document = {
  referrer: "https://search.example/",
  get cookie() { return jar; },
  set cookie(v) {
    writes.push(v);
    const pair = v.split(";")[0];
    const name = pair.slice(0, pair.indexOf("="));
    const kept = jar ? jar.split("; ").filter(p => !p.startsWith(name + "=")) : [];
    kept.push(pair);
    jar = kept.join("; ");
  },
};
global.fetch = (url) => { requests.push(url); return Promise.resolve(); };
new Function(fs.readFileSync(src, "utf8"))();
if (mode === "spa" && global.Munchkin) Munchkin.munchkinFunction("visitWebPage", { url: "/docs" });
console.log(JSON.stringify({ writes, requests, token: global.Munchkin ? Munchkin.token() : null }));
"#;

fn http_get(base: &str, target: &str) -> (u16, Vec<u8>) {
    let host = base.trim_start_matches("http://");
    let mut s = TcpStream::connect(host).expect("connect");
    let req = format!("GET {target} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n");
    s.write_all(req.as_bytes()).expect("write");
    let mut buf = Vec::new();
    s.read_to_end(&mut buf).expect("read");
    let split = buf.windows(4).position(|w| w == b"\r\n\r\n").expect("head");
    let head = String::from_utf8_lossy(&buf[..split]).to_string();
    let status = head
        .split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .expect("status");
    (status, buf[split + 4..].to_vec())
}

struct Page {
    writes: Vec<String>,
    requests: Vec<String>,
}

fn run_page(script: &std::path::Path, host: &str, initial_cookie: &str, mode: &str) -> Page {
    let dir = std::path::Path::new(env!("CARGO_TARGET_TMPDIR"));
    let harness = dir.join("emulator_script_harness.js");
    std::fs::write(&harness, HARNESS).expect("write harness");
    let out = Command::new("node")
        .arg(&harness)
        .arg(script)
        .arg(host)
        .arg(initial_cookie)
        .arg(mode)
        .output()
        .expect("run node");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: Value = serde_json::from_slice(&out.stdout).expect("harness JSON");
    let strings = |k: &str| -> Vec<String> {
        v[k].as_array()
            .map(|a| {
                a.iter()
                    .filter_map(|s| s.as_str().map(String::from))
                    .collect()
            })
            .unwrap_or_default()
    };
    Page {
        writes: strings("writes"),
        requests: strings("requests"),
    }
}

/// The `_mkto_trk` value and the attributes of one `document.cookie` write.
fn split_write(w: &str) -> (String, Vec<String>) {
    let mut parts = w.split("; ");
    let pair = parts.next().unwrap_or("");
    let value = pair.strip_prefix("_mkto_trk=").expect("cookie name");
    (value.to_string(), parts.map(String::from).collect())
}

#[test]
fn script_sets_the_cookie_and_reports_page_views() {
    if Command::new("node").arg("--version").output().is_err() {
        eprintln!("node not installed: skipping the served-script test");
        return;
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .expect("runtime");
    let emu = rt
        .block_on(Emulator::start(EmulatorConfig::default()))
        .expect("start");
    let base = emu.base_url().to_string();
    let (status, js) = http_get(&base, "/munchkin.js");
    assert_eq!(status, 200);
    let script = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("emulator_munchkin.js");
    std::fs::write(&script, js).expect("write script");

    // Registrable domain, genuine value format, 730 days, path /.
    let page = run_page(&script, "www.example.com", "", "");
    assert_eq!(page.writes.len(), 1, "{:?}", page.writes);
    let (value, attrs) = split_write(&page.writes[0]);
    let parsed = parse_value(&value).expect("genuine _mkto_trk format");
    assert_eq!(parsed.munchkin_id, "123-ABC-456");
    assert!(parsed.token.starts_with("_mch-example.com-"));
    assert!(attrs.contains(&"path=/".to_string()));
    assert!(attrs.contains(&"domain=.example.com".to_string()));
    assert!(attrs.iter().any(|a| a.starts_with("expires=")));

    // The page view is reported against the token; sending it records it.
    assert_eq!(page.requests.len(), 1);
    let target = page.requests[0]
        .strip_prefix(&base)
        .expect("reports to the emulator");
    assert!(target.starts_with("/webevents/visitWebPage?"));
    assert_eq!(http_get(&base, target).0, 200);
    let (_, leads) = http_get(&base, "/__emulator/leads");
    let leads: Value = serde_json::from_slice(&leads).expect("leads JSON");
    assert_eq!(leads["anonymous"][0]["token"], parsed.token.as_str());
    assert_eq!(
        leads["anonymous"][0]["activity"][0]["url"],
        "/pricing?plan=team"
    );
    assert_eq!(
        leads["anonymous"][0]["activity"][0]["referrer"],
        "https://search.example/"
    );

    // Two-letter country domains keep three labels.
    let page = run_page(&script, "shop.example.co.uk", "", "");
    let (value, attrs) = split_write(&page.writes[0]);
    assert!(parse_value(&value)
        .expect("valid")
        .token
        .starts_with("_mch-example.co.uk-"));
    assert!(attrs.contains(&"domain=.example.co.uk".to_string()));

    // Host-only on localhost and IP hosts.
    for host in ["localhost", "127.0.0.1"] {
        let page = run_page(&script, host, "", "");
        let (value, attrs) = split_write(&page.writes[0]);
        assert!(parse_value(&value)
            .expect("valid")
            .token
            .starts_with(&format!("_mch-{host}-")));
        assert!(!attrs.iter().any(|a| a.starts_with("domain=")), "{attrs:?}");
    }

    // An existing cookie's token is kept (and the cookie renewed); SPA views reported.
    let existing = "id:123-ABC-456&token:_mch-example.com-1700000000000-12345";
    let page = run_page(
        &script,
        "app.example.com",
        &format!("theme=dark; _mkto_trk={existing}"),
        "spa",
    );
    let (value, _) = split_write(&page.writes[0]);
    assert_eq!(value, existing);
    assert_eq!(page.requests.len(), 2);
    assert!(page.requests[1].contains("_mchRu=%2Fdocs"));

    // Opted out: no cookie, no requests.
    let page = run_page(&script, "www.example.com", "mkto_opt_out=true", "");
    assert!(page.writes.is_empty());
    assert!(page.requests.is_empty());

    drop(emu);
    drop(rt);
}
