//! Kubernetes object metadata and Istio's workload selector.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// `metadata` of a Kubernetes-style document. Only `name`, `namespace`, `labels`
/// and `creationTimestamp` mean anything to weir; the other standard ObjectMeta
/// fields are accepted (so `kubectl get -o yaml` output loads) and ignored.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ObjectMeta {
    pub name: String,
    #[serde(default = "default_namespace")]
    pub namespace: String,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub annotations: BTreeMap<String, String>,
    /// RFC 3339; orders competing policies (oldest wins), as in Istio.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub creation_timestamp: Option<Timestamp>,
    // Accepted and ignored.
    #[serde(default, skip_serializing)]
    uid: Option<serde_yaml_ng::Value>,
    #[serde(default, skip_serializing)]
    resource_version: Option<serde_yaml_ng::Value>,
    #[serde(default, skip_serializing)]
    generation: Option<serde_yaml_ng::Value>,
    #[serde(default, skip_serializing)]
    managed_fields: Option<serde_yaml_ng::Value>,
    #[serde(default, skip_serializing)]
    finalizers: Option<serde_yaml_ng::Value>,
    #[serde(default, skip_serializing)]
    owner_references: Option<serde_yaml_ng::Value>,
    #[serde(default, skip_serializing)]
    generate_name: Option<serde_yaml_ng::Value>,
    #[serde(default, skip_serializing)]
    self_link: Option<serde_yaml_ng::Value>,
    /// An object being deleted is in force until it is gone.
    #[serde(default, skip_serializing)]
    deletion_timestamp: Option<serde_yaml_ng::Value>,
    #[serde(default, skip_serializing)]
    deletion_grace_period_seconds: Option<serde_yaml_ng::Value>,
}

fn default_namespace() -> String {
    "default".to_owned()
}

impl ObjectMeta {
    pub fn new(namespace: &str, name: &str) -> Self {
        Self {
            name: name.to_owned(),
            namespace: namespace.to_owned(),
            ..Self::default()
        }
    }

    /// `namespace/name`, the way policies are referred to in output.
    pub fn key(&self) -> String {
        format!("{}/{}", self.namespace, self.name)
    }
}

/// Istio's `WorkloadSelector`: `matchLabels` must all be present on the workload.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct WorkloadSelector {
    #[serde(default)]
    pub match_labels: BTreeMap<String, String>,
}

impl WorkloadSelector {
    pub fn matches(&self, labels: &BTreeMap<String, String>) -> bool {
        self.match_labels
            .iter()
            .all(|(k, v)| labels.get(k) == Some(v))
    }
}

/// An RFC 3339 timestamp, kept as seconds since the Unix epoch (UTC) plus the
/// original text.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Timestamp {
    unix_nanos: i128,
    text: String,
}

impl Timestamp {
    pub fn parse(s: &str) -> Option<Self> {
        let unix_nanos = parse_rfc3339(s)?;
        Some(Self {
            unix_nanos,
            text: s.to_owned(),
        })
    }

    pub fn unix_nanos(&self) -> i128 {
        self.unix_nanos
    }
}

impl Serialize for Timestamp {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.text)
    }
}

impl<'de> Deserialize<'de> for Timestamp {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        Timestamp::parse(&s).ok_or_else(|| {
            serde::de::Error::custom(format!(
                "{s:?} is not an RFC 3339 timestamp (e.g. 2024-05-01T12:00:00Z)"
            ))
        })
    }
}

/// Days from 1970-01-01 to the given civil date (proleptic Gregorian).
fn days_from_civil(y: i64, m: u32, d: u32) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = if y >= 0 { y } else { y - 399 } / 400;
    let yoe = y - era * 400;
    let mp = (i64::from(m) + 9) % 12;
    let doy = (153 * mp + 2) / 5 + i64::from(d) - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

fn parse_rfc3339(s: &str) -> Option<i128> {
    let b = s.as_bytes();
    if b.len() < 20 || b[4] != b'-' || b[7] != b'-' || !matches!(b[10], b'T' | b't' | b' ') {
        return None;
    }
    let num = |r: std::ops::Range<usize>| -> Option<u32> {
        let t = s.get(r)?;
        if t.bytes().all(|c| c.is_ascii_digit()) {
            t.parse().ok()
        } else {
            None
        }
    };
    let (year, month, day) = (num(0..4)?, num(5..7)?, num(8..10)?);
    if b[13] != b':' || b[16] != b':' {
        return None;
    }
    let (hour, min, sec) = (num(11..13)?, num(14..16)?, num(17..19)?);
    if !(1..=12).contains(&month) || !(1..=31).contains(&day) || hour > 23 || min > 59 || sec > 60 {
        return None;
    }
    let mut rest = &s[19..];
    let mut nanos: i128 = 0;
    if let Some(frac) = rest.strip_prefix('.') {
        let digits = frac.bytes().take_while(u8::is_ascii_digit).count();
        if digits == 0 || digits > 9 {
            return None;
        }
        let n: i128 = frac[..digits].parse().ok()?;
        nanos = n * 10i128.pow(9 - digits as u32);
        rest = &frac[digits..];
    }
    let offset_secs: i64 = match rest {
        "Z" | "z" => 0,
        _ => {
            let sign = match rest.as_bytes().first()? {
                b'+' => 1,
                b'-' => -1,
                _ => return None,
            };
            let t = &rest[1..];
            if t.len() != 5 || t.as_bytes()[2] != b':' {
                return None;
            }
            let oh: i64 = t[0..2].parse().ok()?;
            let om: i64 = t[3..5].parse().ok()?;
            sign * (oh * 3600 + om * 60)
        }
    };
    let days = days_from_civil(i64::from(year), month, day);
    let secs =
        days * 86_400 + i64::from(hour) * 3600 + i64::from(min) * 60 + i64::from(sec) - offset_secs;
    Some(i128::from(secs) * 1_000_000_000 + nanos)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timestamps_order_across_offsets() {
        let a = Timestamp::parse("2024-01-01T00:00:00Z").unwrap();
        let b = Timestamp::parse("2024-01-01T00:30:00+01:00").unwrap();
        let c = Timestamp::parse("2024-01-01T00:00:00.5Z").unwrap();
        assert!(b < a, "00:30+01:00 is 23:30 the day before");
        assert!(a < c);
        assert_eq!(
            Timestamp::parse("1970-01-01T00:00:01Z")
                .unwrap()
                .unix_nanos(),
            1_000_000_000
        );
        assert_eq!(
            Timestamp::parse("2000-03-01T00:00:00Z")
                .unwrap()
                .unix_nanos()
                / 1_000_000_000,
            951_868_800
        );
        for bad in [
            "2024-01-01",
            "2024-13-01T00:00:00Z",
            "yesterday",
            "2024-01-01T00:00:00",
        ] {
            assert!(Timestamp::parse(bad).is_none(), "{bad}");
        }
    }

    #[test]
    fn selector_matches_subset() {
        let sel = WorkloadSelector {
            match_labels: [("app".to_owned(), "kafka".to_owned())].into(),
        };
        let mut labels: BTreeMap<String, String> = [
            ("app".to_owned(), "kafka".to_owned()),
            ("x".to_owned(), "y".to_owned()),
        ]
        .into();
        assert!(sel.matches(&labels));
        labels.insert("app".to_owned(), "zk".to_owned());
        assert!(!sel.matches(&labels));
        assert!(WorkloadSelector::default().matches(&labels));
    }
}
