//! The authorization interface the gateway enforces, and a per-session
//! cache of its answers.
//!
//! The gateway asks Kafka's questions — may this principal do operation X
//! on resource Y — the way Kafka's own authorizer is asked for each request
//! (see `docs/kafka-gateway-protocol.md` for the API → ACL table). The
//! policy engine behind the trait lives elsewhere (weir-core's
//! KafkaAuthorizationPolicy engine); tests use small fakes.

use std::collections::HashMap;
use std::sync::Arc;

use weir_core::kafka::{Operation, Principal, ResourceType};

/// Kafka's name of the cluster resource (`kafka-cluster`).
pub const CLUSTER_RESOURCE: &str = "kafka-cluster";

/// An authorization answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decision {
    /// Whether the operation is allowed.
    pub allowed: bool,
    /// Why: the deciding rule or policy, for logs.
    pub reason: String,
}

impl Decision {
    /// Allowed, because of `reason`.
    pub fn allow(reason: impl Into<String>) -> Self {
        Decision {
            allowed: true,
            reason: reason.into(),
        }
    }

    /// Denied, because of `reason`.
    pub fn deny(reason: impl Into<String>) -> Self {
        Decision {
            allowed: false,
            reason: reason.into(),
        }
    }
}

/// Decides Kafka operations for principals.
pub trait Authorizer: Send + Sync {
    /// May `principal` do `op` on the `resource` named `name`? (The cluster
    /// resource is named [`CLUSTER_RESOURCE`].)
    fn authorize(
        &self,
        principal: &Principal,
        resource: ResourceType,
        name: &str,
        op: Operation,
    ) -> Decision;

    /// May `principal` create topic `name` (CreateTopics, Metadata with
    /// auto-creation)? Kafka's `KafkaApis` asks Create on the cluster first,
    /// which allows every topic, and otherwise Create on the topic. This
    /// default asks [`Authorizer::authorize`] both questions; an authorizer
    /// with DENY rules may refine it (weir's policy engine lets a DENY of
    /// Create on the topic still deny).
    fn authorize_topic_creation(&self, principal: &Principal, name: &str) -> Decision {
        let topic = self.authorize(principal, ResourceType::Topic, name, Operation::Create);
        if topic.allowed {
            return topic;
        }
        let cluster = self.authorize(
            principal,
            ResourceType::Cluster,
            CLUSTER_RESOURCE,
            Operation::Create,
        );
        if cluster.allowed {
            cluster
        } else {
            topic
        }
    }

    /// May `principal` get a producer id without a transactional id (an
    /// idempotent producer's InitProducerId)? Kafka 2.8+ (KIP-679) allows it
    /// with IdempotentWrite on the cluster or Write on at least one topic;
    /// the second question is about the authorizer's rules, not one
    /// resource, so this default asks only the first.
    fn authorize_idempotent_producer(&self, principal: &Principal) -> Decision {
        self.authorize(
            principal,
            ResourceType::Cluster,
            CLUSTER_RESOURCE,
            Operation::IdempotentWrite,
        )
    }

    /// True if every question is answered "allowed": the gateway then skips
    /// authorization work (and forwards request versions it cannot read).
    fn allows_everything(&self) -> bool {
        false
    }

    /// A number that changes whenever answers may change (a policy reload).
    /// Sessions cache answers and drop the cache when it changes.
    fn epoch(&self) -> u64 {
        0
    }
}

/// Allows everything (no authorization configured).
#[derive(Debug, Clone, Copy, Default)]
pub struct AllowAll;

impl Authorizer for AllowAll {
    fn authorize(&self, _: &Principal, _: ResourceType, _: &str, _: Operation) -> Decision {
        Decision::allow("no authorization policy")
    }

    fn allows_everything(&self) -> bool {
        true
    }
}

const CACHE_LIMIT: usize = 4096;

/// Which question a check asks (see [`Authorizer`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) enum Ask {
    /// The operation on the resource ([`Authorizer::authorize`]).
    Acl,
    /// Creating a topic ([`Authorizer::authorize_topic_creation`]).
    TopicCreation,
    /// An idempotent producer's producer id
    /// ([`Authorizer::authorize_idempotent_producer`]).
    IdempotentProducer,
}

/// One session's view of an [`Authorizer`]: its principal, and the answers
/// it has had, so that the produce path asks once per topic, not per request.
pub(crate) struct SessionAuthz {
    authorizer: Arc<dyn Authorizer>,
    pub(crate) principal: Principal,
    pub(crate) principal_label: String,
    epoch: u64,
    cache: HashMap<(Ask, ResourceType, Operation), HashMap<Box<str>, bool>>,
    cached: usize,
}

impl SessionAuthz {
    pub(crate) fn new(authorizer: Arc<dyn Authorizer>, principal: Principal) -> Self {
        let epoch = authorizer.epoch();
        SessionAuthz {
            authorizer,
            principal_label: principal.label(),
            principal,
            epoch,
            cache: HashMap::new(),
            cached: 0,
        }
    }

    pub(crate) fn enforcing(&self) -> bool {
        !self.authorizer.allows_everything()
    }

    /// [`SessionAuthz::allowed_as`], counting a denial in `metrics`
    /// (`weir_kafka_authorization_denials_total`) under the resource and
    /// operation.
    pub(crate) fn check_counted(
        &mut self,
        metrics: &crate::metrics::KafkaMetrics,
        ask: Ask,
        resource: ResourceType,
        name: &str,
        op: Operation,
    ) -> bool {
        let ok = self.allowed_as(ask, resource, name, op);
        if !ok {
            metrics.denial(resource, name, &self.principal_label, op);
        }
        ok
    }

    /// Whether `op` on `resource` `name` is allowed.
    pub(crate) fn allowed(&mut self, resource: ResourceType, name: &str, op: Operation) -> bool {
        self.allowed_as(Ask::Acl, resource, name, op)
    }

    /// Whether the question `ask` about `op` on `resource` `name` is
    /// answered "allowed" (for [`Ask::TopicCreation`] `resource` is the
    /// topic; for [`Ask::IdempotentProducer`], the cluster).
    pub(crate) fn allowed_as(
        &mut self,
        ask: Ask,
        resource: ResourceType,
        name: &str,
        op: Operation,
    ) -> bool {
        let epoch = self.authorizer.epoch();
        if epoch != self.epoch || self.cached >= CACHE_LIMIT {
            self.cache.clear();
            self.cached = 0;
            self.epoch = epoch;
        }
        if let Some(a) = self
            .cache
            .get(&(ask, resource, op))
            .and_then(|m| m.get(name))
        {
            return *a;
        }
        let d = match ask {
            Ask::Acl => self
                .authorizer
                .authorize(&self.principal, resource, name, op),
            Ask::TopicCreation => self
                .authorizer
                .authorize_topic_creation(&self.principal, name),
            Ask::IdempotentProducer => self
                .authorizer
                .authorize_idempotent_producer(&self.principal),
        };
        if !d.allowed {
            tracing::debug!(
                principal = %self.principal_label, resource = %resource, name, operation = %op,
                reason = %d.reason, "Kafka operation denied"
            );
        }
        self.cache
            .entry((ask, resource, op))
            .or_default()
            .insert(Box::from(name), d.allowed);
        self.cached += 1;
        d.allowed
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};

    struct Counting {
        calls: AtomicUsize,
        epoch: AtomicU64,
    }

    impl Authorizer for Counting {
        fn authorize(&self, _: &Principal, _: ResourceType, name: &str, _: Operation) -> Decision {
            self.calls.fetch_add(1, Ordering::SeqCst);
            if name.starts_with("ok") {
                Decision::allow("rule ok")
            } else {
                Decision::deny("default deny")
            }
        }
        fn epoch(&self) -> u64 {
            self.epoch.load(Ordering::SeqCst)
        }
    }

    #[test]
    fn answers_are_cached_until_the_epoch_changes() {
        let a = Arc::new(Counting {
            calls: AtomicUsize::new(0),
            epoch: AtomicU64::new(1),
        });
        let mut s = SessionAuthz::new(a.clone(), Principal::Anonymous);
        assert!(s.enforcing());
        for _ in 0..3 {
            assert!(s.allowed(ResourceType::Topic, "ok-1", Operation::Write));
            assert!(!s.allowed(ResourceType::Topic, "no", Operation::Write));
        }
        assert_eq!(a.calls.load(Ordering::SeqCst), 2);
        a.epoch.store(2, Ordering::SeqCst);
        assert!(s.allowed(ResourceType::Topic, "ok-1", Operation::Write));
        assert_eq!(a.calls.load(Ordering::SeqCst), 3);
        assert!(!SessionAuthz::new(Arc::new(AllowAll), Principal::Anonymous).enforcing());
    }
}
