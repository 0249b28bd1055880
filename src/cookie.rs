//! `Cookie` request header and `document.cookie` parsing.
//!
//! Lenient the way browsers and servers are in practice: pairs are split on `;`,
//! each pair is trimmed, the first `=` separates name from value, names are
//! compared exactly, a value wrapped in double quotes loses the quotes, and
//! duplicates are kept in the order they appear (a browser can send two cookies
//! of one name set on different domains or paths).

/// One `name=value` pair from a cookie string, borrowing from the input.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CookiePair<'a> {
    /// The cookie name, trimmed; empty for a bare value without `=`.
    pub name: &'a str,
    /// The cookie value, trimmed and without surrounding double quotes.
    pub value: &'a str,
}

/// Parses a `Cookie` header or a `document.cookie` string into its pairs, in order.
///
/// Empty segments (`a=1;;b=2`, trailing `;`) are skipped. A segment without `=`
/// is kept with an empty name, as browsers do for `document.cookie = "x"`.
///
/// ```
/// let pairs = idtag::cookie::parse(" a=1; b=\"two\" ;a=3");
/// let values: Vec<_> = pairs.iter().map(|p| (p.name, p.value)).collect();
/// assert_eq!(values, [("a", "1"), ("b", "two"), ("a", "3")]);
/// ```
pub fn parse(header: &str) -> Vec<CookiePair<'_>> {
    pairs(header).collect()
}

/// The values of every cookie called exactly `name`, in header order.
///
/// ```
/// let v: Vec<_> = idtag::cookie::values_named("x_a=0; a=1; a=2", "a").collect();
/// assert_eq!(v, ["1", "2"]);
/// ```
pub fn values_named<'a>(header: &'a str, name: &'a str) -> impl Iterator<Item = &'a str> + 'a {
    pairs(header)
        .filter(move |p| p.name == name)
        .map(|p| p.value)
}

/// The pairs of a header, in order.
fn pairs(header: &str) -> impl Iterator<Item = CookiePair<'_>> {
    split_on(header, b';').filter_map(parse_pair)
}

/// The pieces of `s` between occurrences of the ASCII byte `sep` (like
/// `str::split`, without the `char` pattern machinery the browser build
/// avoids). Every split point is ASCII, so each piece is valid UTF-8.
///
/// ```
/// let v: Vec<_> = idtag::cookie::split_on("a;;b", b';').collect();
/// assert_eq!(v, ["a", "", "b"]);
/// ```
pub fn split_on(s: &str, sep: u8) -> impl Iterator<Item = &str> {
    let mut rest = Some(s);
    core::iter::from_fn(move || {
        let (piece, tail) = split_at_byte(rest?, sep);
        rest = tail;
        Some(piece)
    })
}

/// `s` up to the first `sep`, and what follows it (`None` when `sep` is absent).
pub(crate) fn split_at_byte(s: &str, sep: u8) -> (&str, Option<&str>) {
    match s.bytes().position(|c| c == sep) {
        Some(i) => (s.get(..i).unwrap_or_default(), s.get(i + 1..)),
        None => (s, None),
    }
}

fn parse_pair(segment: &str) -> Option<CookiePair<'_>> {
    let segment = trim_cookie_ws(segment);
    if segment.is_empty() {
        return None;
    }
    let (name, value) = match split_at_byte(segment, b'=') {
        (n, Some(v)) => (trim_cookie_ws(n), trim_cookie_ws(v)),
        (_, None) => ("", segment),
    };
    Some(CookiePair {
        name,
        value: strip_quotes(value),
    })
}

/// Trims the whitespace browsers and proxies leave around pairs (space, tab, CR, LF).
fn trim_cookie_ws(s: &str) -> &str {
    trim_bytes(s, |c| matches!(c, b' ' | b'\t' | b'\r' | b'\n'))
}

/// `s` without the ASCII bytes `skip` matches at either end (byte-wise, like
/// [`split_on`]; cutting at ASCII bytes keeps the rest valid UTF-8).
pub(crate) fn trim_bytes(s: &str, skip: impl Fn(&u8) -> bool) -> &str {
    let b = s.as_bytes();
    let start = b.iter().position(|c| !skip(c)).unwrap_or(b.len());
    let end = b.iter().rposition(|c| !skip(c)).map_or(start, |i| i + 1);
    s.get(start..end).unwrap_or_default()
}

fn strip_quotes(v: &str) -> &str {
    v.strip_prefix('"')
        .and_then(|inner| inner.strip_suffix('"'))
        .unwrap_or(v)
}

#[cfg(test)]
mod tests {
    use super::*;
    #[cfg(target_arch = "wasm32")]
    use wasm_bindgen_test::wasm_bindgen_test as test;

    fn pairs(h: &str) -> Vec<(&str, &str)> {
        parse(h).into_iter().map(|p| (p.name, p.value)).collect()
    }

    #[test]
    fn first_equals_splits() {
        assert_eq!(pairs("a=b=c"), [("a", "b=c")]);
    }

    #[test]
    fn empty_segments_and_whitespace() {
        assert_eq!(pairs(" ;a=1;;\tb = 2 ; "), [("a", "1"), ("b", "2")]);
        assert!(pairs("").is_empty());
        assert!(pairs(" ; ; ").is_empty());
    }

    #[test]
    fn bare_value_has_empty_name() {
        assert_eq!(pairs("flag; a=1"), [("", "flag"), ("a", "1")]);
    }

    #[test]
    fn quotes_stripped_only_when_balanced() {
        assert_eq!(
            pairs("a=\"x\"; b=\"; c=\"\""),
            [("a", "x"), ("b", "\""), ("c", "")]
        );
    }

    #[test]
    fn names_are_exact() {
        let v: Vec<_> = values_named("A=1; a =2; aa=3", "a").collect();
        assert_eq!(v, ["2"]);
    }
}
