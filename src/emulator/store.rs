//! The emulator's in-memory instance: access tokens, leads, visitor tokens with
//! their web activity, limit bookkeeping, faults and the call log. One mutex,
//! never held across an `.await`.

use super::FaultConfig;
use chrono::{DateTime, NaiveDate};
use serde_json::{json, Map, Value};
use std::collections::{BTreeMap, HashMap, VecDeque};

/// How many call-log entries are kept (oldest dropped first).
pub(crate) const LOG_CAPACITY: usize = 2_000;

/// An access token the identity endpoint handed out.
#[derive(Debug, Clone)]
pub(crate) struct IssuedToken {
    /// Emulated time (ms) at which it stops working.
    pub(crate) expires_ms: i64,
    /// Revoked through the admin API: answered 601 from then on.
    pub(crate) revoked: bool,
}

/// One web activity (a page view) recorded from the Munchkin-like script.
#[derive(Debug, Clone)]
pub(crate) struct Activity {
    pub(crate) at_ms: i64,
    pub(crate) url: String,
    pub(crate) referrer: String,
    pub(crate) token: String,
    /// Made while the token was not associated with any lead.
    pub(crate) anonymous: bool,
}

impl Activity {
    fn to_json(&self) -> Value {
        json!({
            "type": "visitWebPage",
            "at_ms": self.at_ms,
            "at": iso(self.at_ms),
            "url": self.url,
            "referrer": self.referrer,
            "token": self.token,
            "anonymous": self.anonymous,
        })
    }
}

/// A lead record.
#[derive(Debug, Clone)]
pub(crate) struct Lead {
    pub(crate) id: u64,
    /// Writable fields (`email`, `firstName`, …) as given by sync calls.
    pub(crate) fields: Map<String, Value>,
    pub(crate) created_ms: i64,
    pub(crate) updated_ms: i64,
    /// Visitor tokens currently associated with this lead, in association order.
    pub(crate) cookies: Vec<String>,
    /// Web activity attributed to this lead, oldest first.
    pub(crate) activity: Vec<Activity>,
}

impl Lead {
    /// The lead's email, if it has one.
    pub(crate) fn email(&self) -> Option<&str> {
        self.fields.get("email").and_then(Value::as_str)
    }

    /// The value of one REST field as Marketo would return it.
    pub(crate) fn field(&self, name: &str) -> Value {
        match name {
            "id" => json!(self.id),
            "createdAt" => json!(iso(self.created_ms)),
            "updatedAt" => json!(iso(self.updated_ms)),
            "cookies" => {
                if self.cookies.is_empty() {
                    Value::Null
                } else {
                    json!(self.cookies.join(","))
                }
            }
            other => self.fields.get(other).cloned().unwrap_or(Value::Null),
        }
    }

    fn to_admin_json(&self) -> Value {
        json!({
            "id": self.id,
            "email": self.email(),
            "fields": self.fields,
            "created_at_ms": self.created_ms,
            "updated_at_ms": self.updated_ms,
            "cookies": self.cookies,
            "activity": self.activity.iter().map(Activity::to_json).collect::<Vec<_>>(),
        })
    }
}

/// A visitor token (`_mch-…`) the emulator has seen.
#[derive(Debug, Clone, Default)]
pub(crate) struct Visitor {
    pub(crate) munchkin_id: String,
    /// The lead the token is associated with, if any.
    pub(crate) lead: Option<u64>,
    /// Views made while anonymous and not yet attributed to a lead.
    pub(crate) anonymous: Vec<Activity>,
}

/// Counters over every API call (identity and REST).
#[derive(Debug, Default, Clone)]
pub(crate) struct CallStats {
    pub(crate) total: u64,
    pub(crate) ok: u64,
    pub(crate) by_endpoint: BTreeMap<String, u64>,
    pub(crate) by_code: BTreeMap<String, u64>,
    pub(crate) by_record_code: BTreeMap<String, u64>,
}

/// One entry of the call log.
#[derive(Debug, Clone)]
pub(crate) struct CallEntry {
    pub(crate) seq: u64,
    pub(crate) at_ms: i64,
    pub(crate) request_id: String,
    pub(crate) method: String,
    pub(crate) endpoint: &'static str,
    pub(crate) path: String,
    pub(crate) http_status: u16,
    pub(crate) code: Option<String>,
    pub(crate) record_codes: Vec<String>,
    pub(crate) counted: bool,
}

/// The whole mutable state.
#[derive(Debug)]
pub(crate) struct Store {
    pub(crate) tokens: HashMap<String, IssuedToken>,
    pub(crate) current_token: Option<String>,
    pub(crate) leads: BTreeMap<u64, Lead>,
    /// Lead ids by lower-cased email (several when duplicates were created).
    email_index: HashMap<String, Vec<u64>>,
    pub(crate) next_lead_id: u64,
    pub(crate) visitors: HashMap<String, Visitor>,
    /// Emulated times of the calls counted in the rolling window.
    pub(crate) window: VecDeque<i64>,
    /// The US Central day `quota_used` belongs to.
    pub(crate) quota_day: Option<NaiveDate>,
    pub(crate) quota_used: u64,
    /// A forced quota day: 607 until cleared, reset, or this day is over.
    pub(crate) forced_quota_day: Option<NaiveDate>,
    pub(crate) in_flight: u32,
    pub(crate) faults: FaultConfig,
    pub(crate) stats: CallStats,
    pub(crate) log: VecDeque<CallEntry>,
    pub(crate) seq: u64,
}

impl Store {
    /// A fresh instance with the configured faults.
    pub(crate) fn new(faults: FaultConfig) -> Self {
        Store {
            tokens: HashMap::new(),
            current_token: None,
            leads: BTreeMap::new(),
            email_index: HashMap::new(),
            next_lead_id: 1001,
            visitors: HashMap::new(),
            window: VecDeque::new(),
            quota_day: None,
            quota_used: 0,
            forced_quota_day: None,
            in_flight: 0,
            faults,
            stats: CallStats::default(),
            log: VecDeque::new(),
            seq: 0,
        }
    }

    /// Clears data, counters, limits and faults; keeps access tokens and calls in flight.
    pub(crate) fn reset(&mut self, faults: FaultConfig) {
        let tokens = std::mem::take(&mut self.tokens);
        let current = self.current_token.take();
        let in_flight = self.in_flight;
        let seq = self.seq;
        *self = Store::new(faults);
        self.tokens = tokens;
        self.current_token = current;
        self.in_flight = in_flight;
        self.seq = seq;
    }

    /// Next sequence number (request ids, log entries).
    pub(crate) fn next_seq(&mut self) -> u64 {
        self.seq += 1;
        self.seq
    }

    /// Rolls the quota counter over when the US Central day changed.
    pub(crate) fn roll_day(&mut self, today: NaiveDate) {
        if self.quota_day != Some(today) {
            self.quota_day = Some(today);
            self.quota_used = 0;
        }
        if self.forced_quota_day.is_some_and(|d| d != today) {
            self.forced_quota_day = None;
        }
    }

    /// Appends a call to the log and the counters.
    pub(crate) fn record(&mut self, entry: CallEntry) {
        let s = &mut self.stats;
        s.total += 1;
        *s.by_endpoint.entry(entry.endpoint.to_string()).or_default() += 1;
        match &entry.code {
            Some(code) => *s.by_code.entry(code.clone()).or_default() += 1,
            None => s.ok += 1,
        }
        for c in &entry.record_codes {
            *s.by_record_code.entry(c.clone()).or_default() += 1;
        }
        if self.log.len() >= LOG_CAPACITY {
            self.log.pop_front();
        }
        self.log.push_back(entry);
    }

    /// Leads whose email equals `email`, ignoring ASCII case, by id.
    pub(crate) fn leads_by_email(&self, email: &str) -> Vec<u64> {
        self.email_index
            .get(&email.to_ascii_lowercase())
            .cloned()
            .unwrap_or_default()
    }

    /// Creates a lead and returns its id.
    pub(crate) fn create_lead(&mut self, fields: Map<String, Value>, now_ms: i64) -> u64 {
        let id = self.next_lead_id;
        self.next_lead_id += 1;
        let lead = Lead {
            id,
            fields,
            created_ms: now_ms,
            updated_ms: now_ms,
            cookies: Vec::new(),
            activity: Vec::new(),
        };
        if let Some(e) = lead.email() {
            self.email_index
                .entry(e.to_ascii_lowercase())
                .or_default()
                .push(id);
        }
        self.leads.insert(id, lead);
        id
    }

    /// Merges `fields` into a lead, keeping the email index current.
    pub(crate) fn update_lead(&mut self, id: u64, fields: Map<String, Value>, now_ms: i64) {
        let Some(lead) = self.leads.get_mut(&id) else {
            return;
        };
        let old = lead.email().map(str::to_ascii_lowercase);
        lead.fields.extend(fields);
        lead.updated_ms = now_ms;
        let new = lead.email().map(str::to_ascii_lowercase);
        if old != new {
            if let Some(ids) = old.and_then(|o| self.email_index.get_mut(&o)) {
                ids.retain(|i| *i != id);
            }
            if let Some(n) = new {
                let ids = self.email_index.entry(n).or_default();
                ids.push(id);
                ids.sort_unstable();
            }
        }
    }

    /// Binds a visitor token to a lead (associate). Anonymous views move onto
    /// the lead unless `discard_history`; activity already attributed to a
    /// previous lead stays there.
    pub(crate) fn associate(
        &mut self,
        lead_id: u64,
        munchkin_id: &str,
        token: &str,
        discard_history: bool,
    ) {
        let visitor = self.visitors.entry(token.to_string()).or_default();
        if visitor.munchkin_id.is_empty() {
            visitor.munchkin_id = munchkin_id.to_string();
        }
        let previous = visitor.lead.replace(lead_id);
        let moved = std::mem::take(&mut visitor.anonymous);
        if let Some(prev) = previous.filter(|p| *p != lead_id) {
            if let Some(old) = self.leads.get_mut(&prev) {
                old.cookies.retain(|t| t != token);
            }
        }
        if let Some(lead) = self.leads.get_mut(&lead_id) {
            if !lead.cookies.iter().any(|t| t == token) {
                lead.cookies.push(token.to_string());
            }
            if !discard_history {
                lead.activity.extend(moved);
                lead.activity.sort_by_key(|a| a.at_ms);
            }
        }
    }

    /// Records a page view against a visitor token.
    pub(crate) fn visit(&mut self, munchkin_id: &str, token: &str, url: &str, referrer: &str, now_ms: i64) {
        let visitor = self.visitors.entry(token.to_string()).or_default();
        if visitor.munchkin_id.is_empty() {
            visitor.munchkin_id = munchkin_id.to_string();
        }
        let mut activity = Activity {
            at_ms: now_ms,
            url: url.to_string(),
            referrer: referrer.to_string(),
            token: token.to_string(),
            anonymous: false,
        };
        match visitor.lead.and_then(|id| self.leads.get_mut(&id)) {
            Some(lead) => lead.activity.push(activity),
            None => {
                activity.anonymous = true;
                visitor.anonymous.push(activity);
            }
        }
    }

    /// `GET /__emulator/leads`.
    pub(crate) fn leads_json(&self) -> Value {
        let mut anonymous: Vec<(&String, &Visitor)> = self
            .visitors
            .iter()
            .filter(|(_, v)| v.lead.is_none())
            .collect();
        anonymous.sort_by(|a, b| a.0.cmp(b.0));
        json!({
            "leads": self.leads.values().map(Lead::to_admin_json).collect::<Vec<_>>(),
            "anonymous": anonymous.iter().map(|(token, v)| json!({
                "token": token,
                "munchkin_id": v.munchkin_id,
                "activity": v.anonymous.iter().map(Activity::to_json).collect::<Vec<_>>(),
            })).collect::<Vec<_>>(),
        })
    }

    /// `GET /__emulator/calls`.
    pub(crate) fn calls_json(&self) -> Value {
        let s = &self.stats;
        json!({
            "total": s.total,
            "ok": s.ok,
            "in_flight": self.in_flight,
            "quota_used": self.quota_used,
            "by_endpoint": s.by_endpoint,
            "by_code": s.by_code,
            "by_record_code": s.by_record_code,
        })
    }

    /// `GET /__emulator/log`.
    pub(crate) fn log_json(&self, limit: usize) -> Value {
        let skip = self.log.len().saturating_sub(limit);
        json!({
            "calls": self.log.iter().skip(skip).map(|e| json!({
                "seq": e.seq,
                "at_ms": e.at_ms,
                "request_id": e.request_id,
                "method": e.method,
                "endpoint": e.endpoint,
                "path": e.path,
                "http_status": e.http_status,
                "code": e.code,
                "record_codes": e.record_codes,
                "counted": e.counted,
            })).collect::<Vec<_>>(),
        })
    }
}

/// `2026-12-03T19:26:34Z` for an emulated time in ms.
pub(crate) fn iso(ms: i64) -> String {
    DateTime::from_timestamp_millis(ms)
        .map(|d| d.format("%Y-%m-%dT%H:%M:%SZ").to_string())
        .unwrap_or_default()
}
