//! Kafka authorization vocabulary shared by the policy engine, the gateway and
//! `weir explain`: resource types, operations (Kafka's ACL operations, with
//! Kafka's implication rules) and the principal a request is made by.
//!
//! [`dn`] compares X.509 distinguished names the way operators write them.

pub mod dn;

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::SpiffeId;

/// A Kafka resource type, as in Kafka's ACLs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum ResourceType {
    Topic,
    Group,
    TransactionalId,
    Cluster,
}

impl ResourceType {
    pub const ALL: [ResourceType; 4] = [
        ResourceType::Topic,
        ResourceType::Group,
        ResourceType::TransactionalId,
        ResourceType::Cluster,
    ];

    /// The spelling used in config and output (`topic`, `group`,
    /// `transactionalId`, `cluster`).
    pub fn as_str(self) -> &'static str {
        match self {
            ResourceType::Topic => "topic",
            ResourceType::Group => "group",
            ResourceType::TransactionalId => "transactionalId",
            ResourceType::Cluster => "cluster",
        }
    }
}

impl fmt::Display for ResourceType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl ResourceType {
    /// The name Kafka gives the only cluster resource.
    pub const CLUSTER_NAME: &'static str = "kafka-cluster";

    /// Whether Kafka defines `op` for this resource type (`kafka-acls.sh`
    /// refuses the other combinations). `All` is defined for every type.
    pub fn supports(self, op: Operation) -> bool {
        use Operation::*;
        match self {
            ResourceType::Topic => matches!(
                op,
                Read | Write
                    | Create
                    | Delete
                    | Alter
                    | Describe
                    | DescribeConfigs
                    | AlterConfigs
                    | All
            ),
            // DescribeConfigs and AlterConfigs since Kafka 3.8 (KIP-848 group configs).
            ResourceType::Group => matches!(
                op,
                Read | Describe | Delete | DescribeConfigs | AlterConfigs | All
            ),
            ResourceType::TransactionalId => matches!(op, Write | Describe | All),
            ResourceType::Cluster => matches!(
                op,
                Create | Alter | Describe | DescribeConfigs | AlterConfigs | IdempotentWrite | All
            ),
        }
    }
}

impl FromStr for ResourceType {
    type Err = String;
    /// Accepts the config spelling and Kafka's (`transactionalId`,
    /// `TRANSACTIONAL_ID`, `transactional-id`), in any case.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let norm: String = s
            .chars()
            .filter(|c| *c != '_' && *c != '-')
            .collect::<String>()
            .to_ascii_lowercase();
        ResourceType::ALL
            .into_iter()
            .find(|r| r.as_str().to_ascii_lowercase() == norm)
            .ok_or_else(|| {
                format!("unknown Kafka resource type {s:?} (expected topic, group, transactionalId or cluster)")
            })
    }
}

/// A Kafka ACL operation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub enum Operation {
    Read,
    Write,
    Create,
    Delete,
    Alter,
    Describe,
    DescribeConfigs,
    AlterConfigs,
    IdempotentWrite,
    All,
}

impl Operation {
    pub const ALL: [Operation; 10] = [
        Operation::Read,
        Operation::Write,
        Operation::Create,
        Operation::Delete,
        Operation::Alter,
        Operation::Describe,
        Operation::DescribeConfigs,
        Operation::AlterConfigs,
        Operation::IdempotentWrite,
        Operation::All,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Operation::Read => "Read",
            Operation::Write => "Write",
            Operation::Create => "Create",
            Operation::Delete => "Delete",
            Operation::Alter => "Alter",
            Operation::Describe => "Describe",
            Operation::DescribeConfigs => "DescribeConfigs",
            Operation::AlterConfigs => "AlterConfigs",
            Operation::IdempotentWrite => "IdempotentWrite",
            Operation::All => "All",
        }
    }

    /// Whether a rule granting (or denying) `self` covers a request for
    /// `requested`, with Kafka's implications: `All` covers everything;
    /// `Read`, `Write`, `Delete` and `Alter` imply `Describe`; `AlterConfigs`
    /// implies `DescribeConfigs`. (Kafka applies the implications to ALLOW
    /// ACLs only; a DENY of `Read` does not deny `Describe`. Use
    /// [`Operation::covers_for_deny`] for DENY rules.)
    pub fn covers(self, requested: Operation) -> bool {
        self == requested
            || self == Operation::All
            || (requested == Operation::Describe
                && matches!(
                    self,
                    Operation::Read | Operation::Write | Operation::Delete | Operation::Alter
                ))
            || (requested == Operation::DescribeConfigs && self == Operation::AlterConfigs)
    }

    /// Whether a DENY rule for `self` denies `requested`: only the same
    /// operation, or `All`.
    pub fn covers_for_deny(self, requested: Operation) -> bool {
        self == requested || self == Operation::All
    }

    /// A bit unique to this operation, for sets of operations.
    pub(crate) fn bit(self) -> u16 {
        1 << (self as u16)
    }
}

impl fmt::Display for Operation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Operation {
    type Err = String;
    /// Accepts Kafka's names in any case, with or without `_`
    /// (`Write`, `WRITE`, `describe_configs`, `DescribeConfigs`).
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let norm: String = s
            .chars()
            .filter(|c| *c != '_' && *c != '-')
            .collect::<String>()
            .to_ascii_lowercase();
        Operation::ALL
            .into_iter()
            .find(|o| o.as_str().to_ascii_lowercase() == norm)
            .ok_or_else(|| {
                format!(
                    "unknown Kafka operation {s:?} (expected one of {})",
                    Operation::ALL.map(|o| o.as_str()).join(", ")
                )
            })
    }
}

/// Who makes a Kafka request at the gateway.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Principal {
    /// A mesh client, by its SPIFFE id.
    Spiffe(SpiffeId),
    /// An external client authenticated with a certificate: its subject
    /// (RFC 4514 string, e.g. `CN=billing,O=Example`) and its SANs (DNS
    /// names, URIs, e-mail addresses, as strings).
    Certificate { subject: String, sans: Vec<String> },
    /// No client certificate (TLS without client auth).
    Anonymous,
}

impl Principal {
    /// Whether this is [`Principal::Anonymous`].
    pub fn is_anonymous(&self) -> bool {
        matches!(self, Principal::Anonymous)
    }

    /// The single name used in metrics labels and logs: the SPIFFE id, the
    /// certificate subject, or `anonymous`.
    pub fn label(&self) -> String {
        match self {
            Principal::Spiffe(id) => id.to_string(),
            Principal::Certificate { subject, .. } => subject.clone(),
            Principal::Anonymous => "anonymous".to_owned(),
        }
    }
}

impl fmt::Display for Principal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.label())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn implications_follow_kafka() {
        assert!(Operation::Read.covers(Operation::Describe));
        assert!(Operation::Write.covers(Operation::Describe));
        assert!(!Operation::Describe.covers(Operation::Read));
        assert!(Operation::AlterConfigs.covers(Operation::DescribeConfigs));
        assert!(!Operation::Read.covers(Operation::Write));
        assert!(Operation::All.covers(Operation::IdempotentWrite));
        assert!(!Operation::Read.covers_for_deny(Operation::Describe));
        assert!(Operation::All.covers_for_deny(Operation::Read));
    }

    #[test]
    fn names_parse_in_kafka_spellings() {
        assert_eq!("WRITE".parse::<Operation>(), Ok(Operation::Write));
        assert_eq!(
            "describe_configs".parse::<Operation>(),
            Ok(Operation::DescribeConfigs)
        );
        assert!("Fly"
            .parse::<Operation>()
            .unwrap_err()
            .contains("IdempotentWrite"));
        assert_eq!(
            "transactionalid".parse::<ResourceType>(),
            Ok(ResourceType::TransactionalId)
        );
    }
}
