//! Query-string and form-body parsing, done by hand so the emulator sees
//! exactly what a client sent: a raw `&` inside a value splits it, `%26` does not.

use percent_encoding::percent_decode_str;

/// Splits `a=1&b=x%26y` into decoded pairs, in order. A pair without `=` gets an
/// empty value; `+` means a space (form encoding); bytes that are not UTF-8 after
/// decoding are replaced, never a panic.
pub(crate) fn parse_pairs(raw: &str) -> Vec<(String, String)> {
    raw.split('&')
        .filter(|p| !p.is_empty())
        .map(|p| {
            let (k, v) = p.split_once('=').unwrap_or((p, ""));
            (decode(k), decode(v))
        })
        .collect()
}

fn decode(s: &str) -> String {
    let spaced = s.replace('+', " ");
    percent_decode_str(&spaced).decode_utf8_lossy().into_owned()
}

/// Decoded parameters with "first one wins" lookup.
#[derive(Debug, Default, Clone)]
pub(crate) struct Params(pub(crate) Vec<(String, String)>);

impl Params {
    /// Parses a raw query string or form body.
    pub(crate) fn parse(raw: &str) -> Self {
        Params(parse_pairs(raw))
    }

    /// The first value of `name`, if present.
    pub(crate) fn get(&self, name: &str) -> Option<&str> {
        self.0
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }

    /// Adds the pairs of `other` in front, so they win over this set's own.
    pub(crate) fn overlay(self, other: Params) -> Params {
        let mut v = other.0;
        v.extend(self.0);
        Params(v)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn raw_ampersand_splits_encoded_does_not() {
        let p = Params::parse("cookie=id:123-ABC-456&token:_mch-x.com-1700000000000-1");
        assert_eq!(p.get("cookie"), Some("id:123-ABC-456"));
        let p = Params::parse("cookie=id%3A123-ABC-456%26token%3A_mch-x.com-1700000000000-1");
        assert_eq!(
            p.get("cookie"),
            Some("id:123-ABC-456&token:_mch-x.com-1700000000000-1")
        );
        let p = Params::parse("a=%ZZ%FF&b");
        assert_eq!(p.get("b"), Some(""));
        assert!(p.get("a").is_some());
    }
}
