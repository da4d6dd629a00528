//! The external names of a Kafka cluster behind the gateway: one bootstrap
//! host, and one host per broker made from a template with `{id}`.

use std::fmt;

/// What an SNI name stands for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SniTarget {
    /// The bootstrap host: any broker will do.
    Bootstrap,
    /// The host of the broker with this node id.
    Broker(i32),
}

/// A broker host template without exactly one `{id}`, or an empty host.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid Kafka gateway host names: {0}")]
pub struct MapperError(String);

/// Maps broker ids to the names clients use, and back.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostMapper {
    bootstrap: String,
    prefix: String,
    suffix: String,
    port: u16,
}

impl HostMapper {
    /// `bootstrap_host` e.g. `kafka.example.com`; `broker_host_template`
    /// e.g. `b{id}-kafka.example.com` (exactly one `{id}`);
    /// `advertised_port` the gateway listener's port, advertised to clients.
    pub fn new(
        bootstrap_host: &str,
        broker_host_template: &str,
        advertised_port: u16,
    ) -> Result<Self, MapperError> {
        if bootstrap_host.is_empty() {
            return Err(MapperError("the bootstrap host is empty".into()));
        }
        let parts: Vec<&str> = broker_host_template.split("{id}").collect();
        if parts.len() != 2 {
            return Err(MapperError(format!(
                "broker host template {broker_host_template:?} must contain {{id}} exactly once"
            )));
        }
        let mapper = HostMapper {
            bootstrap: bootstrap_host.to_ascii_lowercase(),
            prefix: parts[0].to_ascii_lowercase(),
            suffix: parts[1].to_ascii_lowercase(),
            port: advertised_port,
        };
        if mapper.broker_id(bootstrap_host).is_some() {
            return Err(MapperError(format!(
                "bootstrap host {bootstrap_host:?} also matches the broker template"
            )));
        }
        Ok(mapper)
    }

    /// The host advertised for broker `id`.
    pub fn broker_host(&self, id: i32) -> String {
        format!("{}{}{}", self.prefix, id, self.suffix)
    }

    /// The port advertised for every broker (the gateway's).
    pub fn advertised_port(&self) -> u16 {
        self.port
    }

    /// The bootstrap host.
    pub fn bootstrap_host(&self) -> &str {
        &self.bootstrap
    }

    /// What an SNI name stands for; `None` if it is none of this gateway's names.
    pub fn classify(&self, sni: &str) -> Option<SniTarget> {
        let sni = sni.trim_end_matches('.');
        if sni.eq_ignore_ascii_case(&self.bootstrap) {
            return Some(SniTarget::Bootstrap);
        }
        self.broker_id(sni).map(SniTarget::Broker)
    }

    fn broker_id(&self, sni: &str) -> Option<i32> {
        let sni = sni.trim_end_matches('.');
        if sni.len() <= self.prefix.len() + self.suffix.len() || !sni.is_ascii() {
            return None;
        }
        let (head, rest) = sni.split_at(self.prefix.len());
        let (id, tail) = rest.split_at(rest.len() - self.suffix.len());
        if !head.eq_ignore_ascii_case(&self.prefix) || !tail.eq_ignore_ascii_case(&self.suffix) {
            return None;
        }
        if id.is_empty()
            || !id.bytes().all(|b| b.is_ascii_digit())
            || (id.len() > 1 && id.starts_with('0'))
        {
            return None;
        }
        id.parse::<i32>().ok()
    }
}

impl fmt::Display for HostMapper {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "bootstrap {}, brokers {}{{id}}{}, port {}",
            self.bootstrap, self.prefix, self.suffix, self.port
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip() {
        let m = HostMapper::new("kafka.example.com", "b{id}-kafka.example.com", 9093).unwrap();
        assert_eq!(m.broker_host(7), "b7-kafka.example.com");
        assert_eq!(m.classify("kafka.example.com"), Some(SniTarget::Bootstrap));
        assert_eq!(m.classify("KAFKA.example.com."), Some(SniTarget::Bootstrap));
        assert_eq!(
            m.classify("b7-kafka.example.com"),
            Some(SniTarget::Broker(7))
        );
        assert_eq!(
            m.classify("B12-Kafka.Example.Com"),
            Some(SniTarget::Broker(12))
        );
        for bad in [
            "b-kafka.example.com",
            "bx-kafka.example.com",
            "b07-kafka.example.com",
            "b1-kafka.example.org",
            "b99999999999-kafka.example.com",
            "other",
            "",
            "b+1-kafka.example.com",
        ] {
            assert_eq!(m.classify(bad), None, "{bad}");
        }
    }

    #[test]
    fn ip_style_templates() {
        let m = HostMapper::new("127.0.2.1", "127.0.1.{id}", 19092).unwrap();
        assert_eq!(m.classify("127.0.1.3"), Some(SniTarget::Broker(3)));
        assert_eq!(m.classify("127.0.2.1"), Some(SniTarget::Bootstrap));
    }

    #[test]
    fn templates_need_one_id() {
        assert!(HostMapper::new("k", "broker.example.com", 1).is_err());
        assert!(HostMapper::new("k", "{id}-{id}", 1).is_err());
        assert!(HostMapper::new("", "{id}", 1).is_err());
        assert!(HostMapper::new("b1.x", "b{id}.x", 1).is_err());
    }
}
