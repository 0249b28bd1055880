//! Fuzzes the browser queue's stored form (localStorage text anyone on the
//! origin can rewrite) and the queue operations on whatever it held.
#![no_main]

use idtag::tag_queue::{Person, Queue, Reply};
use libfuzzer_sys::fuzz_target;

const COOKIE: &str = "id:123-ABC-456&token:_mch-example.com-1700000000000-12345";

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    let mut q = Queue::from_text(text);
    // What is read back is written and read back unchanged.
    let once = q.to_text();
    assert_eq!(Queue::from_text(&once), q);
    let now = 1_700_000_000_000;
    let token = "v1.eyJzdWIiOiJ1MSJ9.c2ln";
    let person = Person::new("u1\na@example.com", token);
    q.enqueue(token, &person, Some(600_000), Some(COOKIE), text, "tab", now);
    let claimed: Vec<String> = q.claim("tab", Some(COOKIE), now).iter().map(|i| i.send_line()).collect();
    for line in &claimed {
        let t = line.split('\t').next().unwrap_or_default().to_owned();
        q.complete(&t, Reply::Retry, now, 0.5);
    }
    let _ = q.next_due_ms();
    assert_eq!(Queue::from_text(&q.to_text()), q);
});
