//! Wire types shared by the browser SDK and the tag endpoint (versioned JSON).

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// The tag request version this build speaks.
pub const TAG_REQUEST_VERSION: u32 = 1;

/// Largest tag request body the endpoint accepts, in bytes.
pub const MAX_TAG_REQUEST_BYTES: usize = 8 * 1024;

/// The visitor's consent to marketing tracking, as the page knows it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Consent {
    /// Tracking allowed.
    #[default]
    Granted,
    /// Tracking refused: nothing may be stored or sent.
    Denied,
    /// Not decided yet: hold work in memory only.
    Pending,
}

impl Consent {
    /// `granted`, `denied` or `pending`.
    pub fn as_str(self) -> &'static str {
        match self {
            Consent::Granted => "granted",
            Consent::Denied => "denied",
            Consent::Pending => "pending",
        }
    }
}

/// Browser → tag endpoint: "this browser, holding these cookies, belongs to the
/// person the signed `token` names".
///
/// ```
/// let r: idtag::wire::TagRequest = serde_json::from_str(
///     r#"{"v":1,"token":"v1.x.y","cookies":{"_mkto_trk":"id:123-ABC-456&token:_mch-example.com-1700000000000-1"},"ts":1,"consent":"granted"}"#,
/// ).unwrap();
/// assert_eq!(r.tracking_value(), Some("id:123-ABC-456&token:_mch-example.com-1700000000000-1"));
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TagRequest {
    /// Wire version; must be [`TAG_REQUEST_VERSION`].
    pub v: u32,
    /// The tag token the backend signed.
    pub token: String,
    /// Tracking cookies by name (`_mkto_trk`).
    #[serde(default)]
    pub cookies: BTreeMap<String, String>,
    /// The page the request was sent from.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub page: Option<String>,
    /// When the browser captured the cookie, Unix milliseconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ts: Option<i64>,
    /// The visitor's consent; absent means granted (the page decided to send).
    #[serde(default)]
    pub consent: Consent,
}

impl TagRequest {
    /// The `_mkto_trk` value carried, if any.
    pub fn tracking_value(&self) -> Option<&str> {
        self.cookies
            .get(crate::munchkin::COOKIE_NAME)
            .map(String::as_str)
    }
}

/// What the endpoint did with an accepted request.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TagStatus {
    /// Stored durably; it will be associated (HTTP 202).
    Queued,
    /// This (token, person) pair was already queued or associated (HTTP 200).
    Duplicate,
}

/// Tag endpoint → browser on success.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TagReply {
    /// Wire version.
    pub v: u32,
    /// `queued` or `duplicate`.
    pub status: TagStatus,
}

/// A machine-readable error: `{"error":{"code":…,"message":…}}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorBody {
    /// The error.
    pub error: ErrorDetail,
}

/// The code and message of an [`ErrorBody`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorDetail {
    /// Stable code (`expired`, `placeholder`, `consent_denied`, …).
    pub code: String,
    /// A sentence for people.
    pub message: String,
}

impl ErrorBody {
    /// An error body from a code and a message.
    pub fn new(code: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            error: ErrorDetail {
                code: code.into(),
                message: message.into(),
            },
        }
    }
}
