//! Reading the node proxies' Prometheus metrics.

use std::collections::BTreeMap;

pub const OPENED: &str = "istio_tcp_connections_opened_total";
pub const FAILED: &str = "istio_tcp_connections_failed_total";

/// One sample of a Prometheus text exposition.
#[derive(Debug, Clone)]
pub struct Sample {
    pub name: String,
    pub labels: Vec<(String, String)>,
    pub value: f64,
}

impl Sample {
    pub fn label(&self, key: &str) -> &str {
        self.labels
            .iter()
            .find(|(k, _)| k == key)
            .map_or("", |(_, v)| v.as_str())
    }
}

/// Parses the Prometheus/OpenMetrics text format (comments skipped).
pub fn parse(text: &str) -> Vec<Sample> {
    let mut out = Vec::new();
    for line in text.lines() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let name_end = line
            .find(|c: char| c == '{' || c.is_whitespace())
            .unwrap_or(line.len());
        let name = line[..name_end].to_string();
        let mut rest = &line[name_end..];
        let mut labels = Vec::new();
        if let Some(inner) = rest.strip_prefix('{') {
            let mut chars = inner.char_indices();
            let (mut key, mut val, mut in_val, mut end) =
                (String::new(), String::new(), false, None);
            while let Some((i, c)) = chars.next() {
                if in_val {
                    match c {
                        '\\' => match chars.next() {
                            Some((_, 'n')) => val.push('\n'),
                            Some((_, other)) => val.push(other),
                            None => break,
                        },
                        '"' => {
                            labels.push((key.trim().to_string(), std::mem::take(&mut val)));
                            key.clear();
                            in_val = false;
                        }
                        _ => val.push(c),
                    }
                } else {
                    match c {
                        '}' => {
                            end = Some(i + 2);
                            break;
                        }
                        '"' => in_val = true,
                        '=' | ',' => {}
                        _ => key.push(c),
                    }
                }
            }
            let Some(end) = end else { continue };
            rest = &rest[end..];
        }
        let Some(Ok(value)) = rest.split_whitespace().next().map(str::parse::<f64>) else {
            continue;
        };
        out.push(Sample {
            name,
            labels,
            value,
        });
    }
    out
}

/// Sum of `name` over samples whose labels match every `(key, value)`.
pub fn sum(samples: &[Sample], name: &str, labels: &[(&str, &str)]) -> f64 {
    samples
        .iter()
        .filter(|s| s.name == name && labels.iter().all(|(k, v)| s.label(k) == *v))
        .map(|s| s.value)
        .sum()
}

/// One row of the connection summary.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Key {
    pub node: String,
    pub reporter: String,
    pub source: String,
    pub destination: String,
    pub security: String,
    pub flags: String,
}

/// Opened/failed counts per (node, reporter, source → destination, security, flags).
pub fn summarize(per_node: &[(&str, Vec<Sample>)]) -> BTreeMap<Key, (f64, f64)> {
    let mut rows: BTreeMap<Key, (f64, f64)> = BTreeMap::new();
    for (node, samples) in per_node {
        for s in samples {
            let is_opened = s.name == OPENED;
            if !is_opened && s.name != FAILED {
                continue;
            }
            let src = match (
                s.label("source_workload_namespace"),
                s.label("source_workload"),
            ) {
                (ns, w) if !w.is_empty() && w != "unknown" => format!("{ns}/{w}"),
                _ => "non-mesh client".to_string(),
            };
            let dst = match (
                s.label("destination_workload_namespace"),
                s.label("destination_workload"),
            ) {
                (ns, w) if !w.is_empty() && w != "unknown" => format!("{ns}/{w}"),
                _ => "unknown".to_string(),
            };
            let key = Key {
                node: node.to_string(),
                reporter: s.label("reporter").to_string(),
                source: src,
                destination: dst,
                security: s.label("connection_security_policy").to_string(),
                flags: s.label("response_flags").to_string(),
            };
            let e = rows.entry(key).or_default();
            if is_opened {
                e.0 += s.value;
            } else {
                e.1 += s.value;
            }
        }
    }
    rows
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_sums() {
        let text = "# TYPE x counter\nistio_tcp_connections_opened_total{reporter=\"destination\",\
                    source_workload=\"producer\",source_workload_namespace=\"apps\",\
                    destination_workload=\"kafka-0\",destination_workload_namespace=\"kafka\",\
                    connection_security_policy=\"mutual_tls\",response_flags=\"-\"} 3\n\
                    istio_tcp_connections_failed_total{reporter=\"destination\",\
                    source_workload=\"unknown\",destination_workload=\"kafka-0\",\
                    destination_workload_namespace=\"kafka\",\
                    connection_security_policy=\"unknown\",response_flags=\"DENY\"} 1\n";
        let s = parse(text);
        assert_eq!(sum(&s, OPENED, &[("reporter", "destination")]), 3.0);
        assert_eq!(sum(&s, FAILED, &[("response_flags", "DENY")]), 1.0);
        let rows = summarize(&[("node-a", s)]);
        let keys: Vec<_> = rows.keys().map(|k| k.source.clone()).collect();
        assert_eq!(keys, ["apps/producer", "non-mesh client"]);
    }
}
