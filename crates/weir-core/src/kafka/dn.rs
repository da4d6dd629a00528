//! X.509 distinguished names (RFC 4514 strings such as `CN=billing,O=Example`),
//! compared the way operators write them.
//!
//! Two spellings of a name are equal when their canonical forms are equal.
//! The canonical form:
//! - lower-cases attribute types (`cn=billing` = `CN=billing`); values keep
//!   their case;
//! - drops unescaped spaces around `,`, `+` and `=` and at both ends
//!   (`CN = billing, O = Example` = `CN=billing,O=Example`);
//! - writes every escape one way: `\2C` and `\,` both become `\,`; a character
//!   that needs no escape (`\=`, `\ ` in the middle of a value, `\41`) is
//!   written plainly; bytes outside ASCII, raw or escaped, become lower-case
//!   hex escapes (`é` = `\C3\A9` → `\c3\a9`).
//!
//! The order of the RDNs is kept: `CN=a,O=b` is not `O=b,CN=a` (an exact
//! principal pattern also accepts the reversed order, see
//! `docs/kafka-authorization.md`). Comparisons stream the canonical bytes,
//! so matching allocates nothing.

/// Characters RFC 4514 requires to be escaped in a value.
fn must_escape(b: u8) -> bool {
    matches!(b, b'"' | b'+' | b',' | b';' | b'<' | b'>' | b'\\')
}

fn is_space(b: u8) -> bool {
    b == b' ' || b == b'\t'
}

fn hex_val(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

fn hex_digit(n: u8) -> u8 {
    b"0123456789abcdef"[usize::from(n & 0xf)]
}

/// Up to three output bytes for one input character or escape.
#[derive(Debug, Clone, Copy, Default)]
struct Out {
    bytes: [u8; 3],
    len: u8,
    pos: u8,
}

impl Out {
    fn one(b: u8) -> Self {
        Self {
            bytes: [b, 0, 0],
            len: 1,
            pos: 0,
        }
    }

    fn two(a: u8, b: u8) -> Self {
        Self {
            bytes: [a, b, 0],
            len: 2,
            pos: 0,
        }
    }

    fn hex(b: u8) -> Self {
        Self {
            bytes: [b'\\', hex_digit(b >> 4), hex_digit(b)],
            len: 3,
            pos: 0,
        }
    }

    /// The canonical spelling of the (unescaped) byte `b`.
    fn canonical(b: u8) -> Self {
        if b >= 0x80 {
            Self::hex(b)
        } else if must_escape(b) {
            Self::two(b'\\', b)
        } else {
            Self::one(b)
        }
    }

    fn next(&mut self) -> Option<u8> {
        (self.pos < self.len).then(|| {
            let b = self.bytes[usize::from(self.pos)];
            self.pos += 1;
            b
        })
    }
}

/// Length of the escape starting at `s[i] == b'\\'` and the byte it stands for
/// (`None` for a lone trailing backslash, which stands for itself).
fn escape(s: &[u8], i: usize) -> (usize, Option<u8>) {
    match (s.get(i + 1), s.get(i + 2)) {
        (Some(&h), Some(&l)) if hex_val(h).is_some() && hex_val(l).is_some() => {
            let v = (hex_val(h).unwrap_or(0) << 4) | hex_val(l).unwrap_or(0);
            (3, Some(v))
        }
        (Some(&c), _) => (2, Some(c)),
        (None, _) => (1, None),
    }
}

/// One run of text between separators, trimmed of unescaped spaces.
#[derive(Debug, Clone, Copy)]
struct Run {
    begin: usize,
    end: usize,
    /// Where the next run starts (after the separator).
    next: usize,
    sep: Option<u8>,
}

/// Scans the run starting at `start`. In a value, `=` is not a separator.
fn scan_run(s: &[u8], start: usize, in_value: bool) -> Run {
    let mut i = start;
    while i < s.len() && is_space(s[i]) {
        i += 1;
    }
    let begin = i;
    let mut end = i;
    while i < s.len() {
        match s[i] {
            b',' | b'+' => {
                return Run {
                    begin,
                    end,
                    next: i + 1,
                    sep: Some(s[i]),
                }
            }
            b'=' if !in_value => {
                return Run {
                    begin,
                    end,
                    next: i + 1,
                    sep: Some(b'='),
                }
            }
            b'\\' => {
                i = (i + escape(s, i).0).min(s.len());
                end = i;
            }
            b if is_space(b) => i += 1,
            _ => {
                i += 1;
                end = i;
            }
        }
    }
    Run {
        begin,
        end,
        next: s.len(),
        sep: None,
    }
}

/// The canonical form of a name (or of a fragment of one), streamed byte by
/// byte. The output is ASCII.
#[derive(Debug, Clone)]
pub(crate) struct Canonical<'a> {
    s: &'a [u8],
    run: Run,
    pos: usize,
    /// The current run is an attribute type (it is followed by `=`).
    lower: bool,
    in_value: bool,
    out: Out,
    done: bool,
}

impl<'a> Canonical<'a> {
    pub(crate) fn new(s: &'a str) -> Self {
        let s = s.as_bytes();
        let run = scan_run(s, 0, false);
        Self {
            s,
            run,
            pos: run.begin,
            lower: run.sep == Some(b'='),
            in_value: false,
            out: Out::default(),
            done: false,
        }
    }
}

impl Iterator for Canonical<'_> {
    type Item = u8;

    fn next(&mut self) -> Option<u8> {
        loop {
            if let Some(b) = self.out.next() {
                return Some(b);
            }
            if self.done {
                return None;
            }
            if self.pos < self.run.end {
                let b = self.s[self.pos];
                if b == b'\\' {
                    let (n, v) = escape(self.s, self.pos);
                    self.pos += n;
                    self.out = match v {
                        Some(v) => Out::canonical(v),
                        None => Out::two(b'\\', b'\\'),
                    };
                    continue;
                }
                self.pos += 1;
                if b >= 0x80 {
                    self.out = Out::hex(b);
                    continue;
                }
                if must_escape(b) {
                    // Only `"`, `;`, `<`, `>` reach here unescaped (`,` and `+`
                    // separate runs); write them the one canonical way.
                    self.out = Out::two(b'\\', b);
                    continue;
                }
                return Some(if self.lower {
                    b.to_ascii_lowercase()
                } else {
                    b
                });
            }
            let Some(sep) = self.run.sep else {
                self.done = true;
                return None;
            };
            self.in_value = sep == b'=';
            self.run = scan_run(self.s, self.run.next, self.in_value);
            self.pos = self.run.begin;
            self.lower = !self.in_value && self.run.sep == Some(b'=');
            return Some(sep);
        }
    }
}

/// The canonical form of `s` as a string (see the module docs).
pub fn canonical(s: &str) -> String {
    // The output is ASCII: bytes outside it are hex-escaped.
    Canonical::new(s).map(char::from).collect()
}

/// The RDNs of a name, split at unescaped commas, in written order.
#[derive(Debug, Clone)]
pub(crate) struct Rdns<'a> {
    s: &'a str,
    pos: usize,
    done: bool,
}

pub(crate) fn rdns(s: &str) -> Rdns<'_> {
    Rdns {
        s,
        pos: 0,
        done: false,
    }
}

impl<'a> Iterator for Rdns<'a> {
    type Item = &'a str;

    fn next(&mut self) -> Option<&'a str> {
        if self.done {
            return None;
        }
        let b = self.s.as_bytes();
        let mut i = self.pos;
        while i < b.len() && b[i] != b',' {
            i += if b[i] == b'\\' { 2 } else { 1 };
        }
        let i = i.min(b.len());
        // `i` is at a `,` or the end: both are char boundaries.
        let rdn = self.s.get(self.pos..i).unwrap_or("");
        if i >= b.len() {
            self.done = true;
        } else {
            self.pos = i + 1;
        }
        Some(rdn)
    }
}

/// Whether `subject`'s canonical form ends with `sfx`, the match starting
/// at a unit of it (a character or a whole escape: `\,`, `\c3`), never
/// inside one. A suffix `,o=Example` must not match the escaped comma of a
/// value: `CN=evil\,o=Example` is one RDN, whose CN a requester may have
/// chosen, not a name in organisation Example. Allocation-free: one pass
/// for the length, one that tracks escapes and compares.
fn ends_with_at_unit(subject: &str, sfx: &str) -> bool {
    let len = Canonical::new(subject).count();
    let Some(k) = len.checked_sub(sfx.len()) else {
        return false;
    };
    let mut want = sfx.bytes();
    // 0: at a unit's start; 1: after its `\`; 2: after `\` and a hex digit.
    let mut state = 0u8;
    for (i, b) in Canonical::new(subject).enumerate() {
        let at_start = match state {
            0 => true,
            1 => false,
            // A second hex digit completes `\hh`; anything else starts anew.
            _ => hex_val(b).is_none(),
        };
        if i == k && !at_start {
            return false;
        }
        if i >= k && want.next() != Some(b) {
            return false;
        }
        state = if at_start {
            u8::from(b == b'\\')
        } else if state == 1 && hex_val(b).is_some() {
            2
        } else {
            0
        };
    }
    true
}

/// A precompiled pattern for certificate subjects: exact (in written or
/// reversed RDN order), or a prefix or suffix of the canonical form.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum DnMatch {
    Exact {
        canonical: String,
        /// The canonical RDNs in reverse order, when there are several.
        reversed: Vec<String>,
    },
    Prefix(String),
    Suffix(String),
}

impl DnMatch {
    pub(crate) fn exact(s: &str) -> Self {
        let mut reversed: Vec<String> = rdns(s).map(canonical).collect();
        reversed.reverse();
        if reversed.len() < 2 {
            reversed.clear();
        }
        DnMatch::Exact {
            canonical: canonical(s),
            reversed,
        }
    }

    pub(crate) fn prefix(s: &str) -> Self {
        DnMatch::Prefix(canonical(s))
    }

    pub(crate) fn suffix(s: &str) -> Self {
        DnMatch::Suffix(canonical(s))
    }

    /// Whether `subject` matches; allocation-free.
    pub(crate) fn matches(&self, subject: &str) -> bool {
        match self {
            DnMatch::Exact {
                canonical,
                reversed,
            } => {
                Canonical::new(subject).eq(canonical.bytes())
                    || (!reversed.is_empty() && Self::matches_reversed(reversed, subject))
            }
            DnMatch::Prefix(p) => {
                let mut it = Canonical::new(subject);
                p.bytes().all(|b| it.next() == Some(b))
            }
            DnMatch::Suffix(sfx) => ends_with_at_unit(subject, sfx),
        }
    }

    fn matches_reversed(reversed: &[String], subject: &str) -> bool {
        let mut n = 0;
        for rdn in rdns(subject) {
            match reversed.get(n) {
                Some(want) if Canonical::new(rdn).eq(want.bytes()) => n += 1,
                _ => return false,
            }
        }
        n == reversed.len()
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    /// Where the units of a canonical form start (a reference for
    /// `ends_with_at_unit`, with the escapes' lengths spelled out).
    fn unit_starts(c: &str) -> Vec<usize> {
        let b = c.as_bytes();
        let (mut i, mut out) = (0, Vec::new());
        while i < b.len() {
            out.push(i);
            i += if b[i] != b'\\' {
                1
            } else if b.get(i + 1).and_then(|&h| hex_val(h)).is_some()
                && b.get(i + 2).and_then(|&l| hex_val(l)).is_some()
            {
                3
            } else {
                2
            };
        }
        out.push(b.len());
        out
    }

    #[test]
    fn spellings_of_one_name_agree() {
        let want = "cn=billing,o=Example";
        for s in [
            "CN=billing,O=Example",
            "cn=billing,o=Example",
            "CN = billing , O = Example",
            "  CN=billing,  O=Example  ",
            "Cn=billing,\tO=Example",
            "CN=\\62illing,O=Example",
        ] {
            assert_eq!(canonical(s), want, "{s:?}");
        }
        // Values keep their case; RDN order is kept.
        assert_ne!(canonical("CN=Billing,O=Example"), want);
        assert_ne!(canonical("O=Example,CN=billing"), want);
    }

    #[test]
    fn escapes_are_canonical() {
        assert_eq!(canonical("CN=a\\,b"), "cn=a\\,b");
        assert_eq!(canonical("CN=a\\2Cb"), "cn=a\\,b");
        assert_eq!(canonical("CN=a\\2cb"), "cn=a\\,b");
        assert_eq!(canonical("CN=a\\=b"), "cn=a=b");
        assert_eq!(canonical("CN=a=b"), "cn=a=b");
        assert_eq!(canonical("CN=caf\u{e9}"), "cn=caf\\c3\\a9");
        assert_eq!(canonical("CN=caf\\C3\\A9"), "cn=caf\\c3\\a9");
        // An escaped space at an end is significant; an unescaped one is not.
        assert_eq!(canonical("CN=\\ a"), "cn= a");
        assert_eq!(canonical("CN= a"), "cn=a");
        // Multi-valued RDNs keep `+`.
        assert_eq!(canonical("CN=a + UID=7"), "cn=a+uid=7");
        // A lone trailing backslash stands for itself.
        assert_eq!(canonical("CN=a\\"), "cn=a\\\\");
        assert_eq!(canonical(""), "");
    }

    #[test]
    fn rdns_split_at_unescaped_commas() {
        let v: Vec<&str> = rdns("CN=a\\,b, O=x,C=y").collect();
        assert_eq!(v, ["CN=a\\,b", " O=x", "C=y"]);
        assert_eq!(rdns("").collect::<Vec<_>>(), [""]);
        assert_eq!(rdns("CN=a\\").collect::<Vec<_>>(), ["CN=a\\"]);
    }

    #[test]
    fn patterns() {
        let exact = DnMatch::exact("CN=billing,O=Example");
        assert!(exact.matches("cn=billing, o=Example"));
        assert!(exact.matches("O=Example, CN=billing"), "reversed order");
        assert!(!exact.matches("CN=billing"));
        assert!(!exact.matches("CN=billing,O=Example,C=DE"));
        assert!(!exact.matches("C=DE,O=Example,CN=billing,O=Example"));
        let single = DnMatch::exact("CN=billing");
        assert!(single.matches(" cn = billing "));
        assert!(!single.matches("CN=billing2"));
        let prefix = DnMatch::prefix("CN=billing-");
        assert!(prefix.matches("cn=billing-eu,O=Example"));
        assert!(!prefix.matches("CN=billing,O=Example"));
        let suffix = DnMatch::suffix(",O=Example");
        assert!(suffix.matches("CN=x, o = Example"));
        assert!(!suffix.matches("CN=x,O=Example2"));
        assert!(!DnMatch::suffix("CN=a,O=Example").matches("O=Example"));
        // An escaped comma is part of a value, not an RDN boundary: a
        // requester-chosen CN cannot end in the organisation's suffix.
        assert!(!suffix.matches("CN=evil\\,o=Example"));
        assert!(!suffix.matches("CN=evil\\2Co=Example"));
        assert!(
            suffix.matches("CN=evil\\\\,o=Example"),
            "an escaped backslash, then a real comma"
        );
        assert!(DnMatch::suffix("ample").matches("CN=x,O=Example"));
        assert!(
            !DnMatch::suffix("c3").matches("CN=\\c3"),
            "inside a hex escape"
        );
    }

    fn dn() -> impl Strategy<Value = Vec<(String, String)>> {
        prop::collection::vec(("[A-Za-z]{1,3}", "[a-zA-Z0-9 .,=+-]{1,6}"), 1..4)
    }

    fn render(rdns: &[(String, String)], sp: bool) -> String {
        let esc = |v: &str| {
            let mut out = String::new();
            let n = v.chars().count();
            for (i, c) in v.chars().enumerate() {
                if matches!(c, ',' | '+') || (c == ' ' && (i == 0 || i + 1 == n)) {
                    out.push('\\');
                }
                out.push(c);
            }
            out
        };
        let (eq, comma) = if sp { (" = ", " , ") } else { ("=", ",") };
        rdns.iter()
            .map(|(t, v)| format!("{t}{eq}{}", esc(v)))
            .collect::<Vec<_>>()
            .join(comma)
    }

    proptest! {
        #[test]
        fn spacing_and_type_case_never_matter(rdns in dn()) {
            let a = render(&rdns, false);
            let upper: Vec<(String, String)> =
                rdns.iter().map(|(t, v)| (t.to_ascii_uppercase(), v.clone())).collect();
            let b = render(&upper, true);
            prop_assert_eq!(canonical(&a), canonical(&b));
            prop_assert!(DnMatch::exact(&a).matches(&b));
            let mut rev = rdns.clone();
            rev.reverse();
            prop_assert!(DnMatch::exact(&a).matches(&render(&rev, true)));
        }

        #[test]
        fn different_values_never_match(rdns in dn(), extra in "[a-z0-9]{1,3}") {
            let a = render(&rdns, false);
            let mut other = rdns.clone();
            other[0].1.push_str(&extra);
            let b = render(&other, false);
            prop_assert!(!DnMatch::exact(&a).matches(&b));
        }

        #[test]
        fn prefix_and_suffix_agree_with_canonical(a in "[ -~]{0,12}", b in "[ -~]{0,12}") {
            let subject = format!("{a}{b}");
            let c = canonical(&subject);
            prop_assert_eq!(DnMatch::Prefix(c.clone()).matches(&subject), true);
            prop_assert_eq!(DnMatch::Suffix(c.clone()).matches(&subject), true);
            let p = canonical(&a);
            prop_assert_eq!(DnMatch::Prefix(p.clone()).matches(&subject), c.starts_with(&p));
            let s = canonical(&b);
            prop_assert_eq!(
                DnMatch::Suffix(s.clone()).matches(&subject),
                c.ends_with(&s) && unit_starts(&c).contains(&(c.len() - s.len()))
            );
        }
    }
}
