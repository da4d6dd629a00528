//! Which objects concern which node, and the snapshots and deltas that keep
//! every subscribed node's view current.
//!
//! A node's view is every Workload (outbound traffic maps any destination
//! address to its identity, so every node needs the whole address index, as
//! in Istio's ambient mode), every object of a kind without a narrower scope,
//! and the PeerAuthentications and AuthorizationPolicies that may apply to
//! one of its workloads: in the workload's namespace or the root namespace,
//! with a selector that matches it (no selector: the whole namespace). A
//! gateway's view is everything.
//!
//! A change of the catalog is pushed incrementally: the Workload and
//! everywhere-scoped changes go to every subscriber as they are; the
//! policy part of a view is recomputed only for the nodes the change can
//! affect (the nodes of changed workloads, the nodes with workloads in the
//! namespace of a changed policy, every node for the root namespace).
//! Each node's message is built from shared, reference-counted documents.
//!
//! A subscriber that cannot keep up (its queue of [`QUEUE`] updates is full)
//! is dropped: its stream ends, the node reconnects with what it holds and
//! gets the difference. Nothing is ever skipped silently.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::sync::{Mutex, MutexGuard};

use prost::Message;
use tokio::sync::mpsc;
use weir_core::MeshSettings;

use crate::catalog::{Catalog, Entry, Scope};
use crate::proto::{self, ConfigUpdate, Resource, ResourceKey, ResourceVersion};

/// Updates queued per subscriber before it is dropped to resync.
pub const QUEUE: usize = 64;

/// What a subscriber is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// A node proxy: its per-node view.
    Node,
    /// A gateway: everything.
    Gateway,
}

/// A subscription: the first message (snapshot or difference) and the
/// updates that follow.
#[derive(Debug)]
pub struct Subscription {
    /// The node's whole view (`full`), or what differs from what it holds.
    pub first: ConfigUpdate,
    /// Later updates, in order. Ends when the subscriber is dropped.
    pub updates: mpsc::Receiver<ConfigUpdate>,
}

/// What one push did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PushStats {
    /// The config version after the change.
    pub version: u64,
    /// Objects added, changed or removed.
    pub changed: usize,
    /// Messages queued (one per subscriber whose view changed).
    pub messages: usize,
    /// Their total encoded size in bytes.
    pub bytes: usize,
    /// Subscribers dropped because their queue was full.
    pub dropped: usize,
}

struct Subscriber {
    tx: mpsc::Sender<ConfigUpdate>,
    /// The node or gateway it serves.
    caller: String,
}

/// Most config streams one node or gateway holds at once. A reconnecting
/// caller's previous stream may not have ended yet; past this the oldest
/// are dropped, so a caller cannot pile up subscribers.
pub const MAX_STREAMS_PER_CALLER: usize = 4;

/// Adds `subscriber` to `subs`, dropping the oldest of its caller's streams
/// past [`MAX_STREAMS_PER_CALLER`] and any that ended.
fn add_subscriber(subs: &mut Vec<Subscriber>, subscriber: Subscriber) {
    subs.retain(|sub| !sub.tx.is_closed());
    let mine = subs
        .iter()
        .filter(|s| s.caller == subscriber.caller)
        .count();
    let mut excess = (mine + 1).saturating_sub(MAX_STREAMS_PER_CALLER);
    if excess > 0 {
        tracing::warn!(
            caller = %subscriber.caller,
            limit = MAX_STREAMS_PER_CALLER,
            "too many config streams from one caller; ending its oldest"
        );
        subs.retain(|s| {
            if excess > 0 && s.caller == subscriber.caller {
                excess -= 1;
                false
            } else {
                true
            }
        });
    }
    subs.push(subscriber);
}

#[derive(Default)]
struct NodeSubscribers {
    /// The node's current policy keys.
    scoped: BTreeSet<ResourceKey>,
    subscribers: Vec<Subscriber>,
}

#[derive(Default)]
struct State {
    settings: MeshSettings,
    version: u64,
    entries: BTreeMap<ResourceKey, Entry>,
    workloads_by_node: HashMap<String, BTreeSet<ResourceKey>>,
    policies_by_namespace: HashMap<String, BTreeSet<ResourceKey>>,
    /// namespace → node → how many of its workloads are there.
    nodes_by_namespace: HashMap<String, HashMap<String, usize>>,
    nodes: HashMap<String, NodeSubscribers>,
    gateways: Vec<Subscriber>,
}

/// The control plane's config state and its subscribers.
pub struct Distributor {
    instance: String,
    state: Mutex<State>,
}

impl std::fmt::Debug for Distributor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let s = self.lock();
        f.debug_struct("Distributor")
            .field("instance", &self.instance)
            .field("version", &s.version)
            .field("objects", &s.entries.len())
            .finish_non_exhaustive()
    }
}

fn selects(match_labels: &BTreeMap<String, String>, labels: &BTreeMap<String, String>) -> bool {
    match_labels.iter().all(|(k, v)| labels.get(k) == Some(v))
}

fn is_policy(e: &Entry) -> bool {
    matches!(e.scope, Scope::Policy { .. })
}

impl State {
    fn index(&mut self, key: &ResourceKey, entry: &Entry) {
        match &entry.scope {
            Scope::Workload { node, .. } => {
                self.workloads_by_node
                    .entry(node.clone())
                    .or_default()
                    .insert(key.clone());
                *self
                    .nodes_by_namespace
                    .entry(key.namespace.clone())
                    .or_default()
                    .entry(node.clone())
                    .or_default() += 1;
            }
            Scope::Policy { .. } => {
                self.policies_by_namespace
                    .entry(key.namespace.clone())
                    .or_default()
                    .insert(key.clone());
            }
            Scope::Everywhere => {}
        }
    }

    fn unindex(&mut self, key: &ResourceKey, entry: &Entry) {
        match &entry.scope {
            Scope::Workload { node, .. } => {
                if let Some(set) = self.workloads_by_node.get_mut(node) {
                    set.remove(key);
                    if set.is_empty() {
                        self.workloads_by_node.remove(node);
                    }
                }
                if let Some(nodes) = self.nodes_by_namespace.get_mut(&key.namespace) {
                    if let Some(n) = nodes.get_mut(node) {
                        *n -= 1;
                        if *n == 0 {
                            nodes.remove(node);
                        }
                    }
                    if nodes.is_empty() {
                        self.nodes_by_namespace.remove(&key.namespace);
                    }
                }
            }
            Scope::Policy { .. } => {
                if let Some(set) = self.policies_by_namespace.get_mut(&key.namespace) {
                    set.remove(key);
                    if set.is_empty() {
                        self.policies_by_namespace.remove(&key.namespace);
                    }
                }
            }
            Scope::Everywhere => {}
        }
    }

    /// Whether a policy in `namespace` with `match_labels` may apply to a
    /// workload on `node`.
    fn node_selects(
        &self,
        node: &str,
        namespace: &str,
        match_labels: &BTreeMap<String, String>,
    ) -> bool {
        let any_namespace = namespace == self.settings.root_namespace;
        self.workloads_by_node.get(node).is_some_and(|keys| {
            keys.iter().any(|k| {
                (any_namespace || k.namespace == namespace)
                    && matches!(
                        self.entries.get(k),
                        Some(Entry { scope: Scope::Workload { labels, .. }, .. })
                            if selects(match_labels, labels)
                    )
            })
        })
    }

    /// The policies that may apply to a workload on `node`.
    fn scoped_for(&self, node: &str) -> BTreeSet<ResourceKey> {
        let mut out = BTreeSet::new();
        let Some(workloads) = self.workloads_by_node.get(node) else {
            return out;
        };
        let mut by_namespace: HashMap<&str, Vec<&BTreeMap<String, String>>> = HashMap::new();
        let mut all = Vec::with_capacity(workloads.len());
        for k in workloads {
            if let Some(Entry {
                scope: Scope::Workload { labels, .. },
                ..
            }) = self.entries.get(k)
            {
                by_namespace.entry(&k.namespace).or_default().push(labels);
                all.push(labels);
            }
        }
        let root = self.settings.root_namespace.as_str();
        let mut add = |namespace: &str, candidates: &[&BTreeMap<String, String>]| {
            for p in self
                .policies_by_namespace
                .get(namespace)
                .into_iter()
                .flatten()
            {
                if let Some(Entry {
                    scope: Scope::Policy { match_labels },
                    ..
                }) = self.entries.get(p)
                {
                    if candidates.iter().any(|l| selects(match_labels, l)) {
                        out.insert(p.clone());
                    }
                }
            }
        };
        for (namespace, labels) in &by_namespace {
            if *namespace != root {
                add(namespace, labels);
            }
        }
        add(root, &all);
        out
    }

    fn resources<'a>(&'a self, keys: impl IntoIterator<Item = &'a ResourceKey>) -> Vec<Resource> {
        keys.into_iter()
            .filter_map(|k| self.entries.get(k).map(|e| e.resource.clone()))
            .collect()
    }

    /// The view of `node` (or of a gateway), as resources.
    fn view(&self, role: Role, scoped: &BTreeSet<ResourceKey>) -> Vec<Resource> {
        match role {
            Role::Gateway => self.entries.values().map(|e| e.resource.clone()).collect(),
            Role::Node => {
                let mut out: Vec<Resource> = self
                    .entries
                    .values()
                    .filter(|e| !is_policy(e))
                    .map(|e| e.resource.clone())
                    .collect();
                out.extend(self.resources(scoped));
                out
            }
        }
    }
}

impl Distributor {
    /// A distributor serving `catalog`, as control-plane instance `instance`.
    pub fn new(catalog: Catalog, instance: impl Into<String>) -> Self {
        let mut state = State {
            settings: catalog.settings,
            version: 1,
            ..State::default()
        };
        for (k, e) in &catalog.entries {
            state.index(k, e);
        }
        state.entries = catalog.entries;
        Self {
            instance: instance.into(),
            state: Mutex::new(state),
        }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // Every mutation completes under the lock before it is released.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// This control-plane instance's id.
    pub fn instance(&self) -> &str {
        &self.instance
    }

    /// The mesh settings the served config was validated with.
    pub fn settings(&self) -> MeshSettings {
        self.lock().settings.clone()
    }

    /// The current config version.
    pub fn version(&self) -> u64 {
        self.lock().version
    }

    /// How many objects are served.
    pub fn objects(&self) -> usize {
        self.lock().entries.len()
    }

    /// Subscribers currently registered (nodes and gateways).
    pub fn subscribers(&self) -> usize {
        let s = self.lock();
        s.nodes
            .values()
            .map(|n| n.subscribers.iter().filter(|s| !s.tx.is_closed()).count())
            .sum::<usize>()
            + s.gateways.iter().filter(|s| !s.tx.is_closed()).count()
    }

    /// Drops every subscriber: their streams end (shutdown).
    pub fn disconnect_all(&self) {
        let mut s = self.lock();
        s.nodes.clear();
        s.gateways.clear();
    }

    /// Whether a Workload on `node` runs as `namespace`/`service_account`:
    /// the check before the CA signs that identity for `node`.
    pub fn has_identity_on_node(&self, node: &str, namespace: &str, service_account: &str) -> bool {
        let s = self.lock();
        s.workloads_by_node.get(node).is_some_and(|keys| {
            keys.iter().any(|k| {
                k.namespace == namespace
                    && matches!(
                        s.entries.get(k),
                        Some(Entry { scope: Scope::Workload { service_account: sa, .. }, .. })
                            if sa == service_account
                    )
            })
        })
    }

    /// `node`'s whole view as one message (what a node without state gets).
    pub fn snapshot(&self, node: &str, role: Role) -> ConfigUpdate {
        let s = self.lock();
        let scoped = match role {
            Role::Node => s.scoped_for(node),
            Role::Gateway => BTreeSet::new(),
        };
        ConfigUpdate {
            version: s.version,
            full: true,
            resources: s.view(role, &scoped),
            removed: Vec::new(),
            control_plane: self.instance.clone(),
            mesh: Some(mesh(&s.settings)),
        }
    }

    /// Registers a subscriber for `node`. With `known` empty the first
    /// message is the whole view; otherwise it holds only what differs from
    /// `known` (changed or missing resources, and removals).
    pub fn subscribe(&self, node: &str, role: Role, known: &[ResourceVersion]) -> Subscription {
        // Built before the lock: other callers wait for it only as long as
        // the comparison takes.
        let mut held: HashMap<&ResourceKey, &str> = known
            .iter()
            .filter_map(|v| v.key.as_ref().map(|k| (k, v.version.as_str())))
            .collect();
        let mut s = self.lock();
        let scoped = match role {
            Role::Node => {
                let scoped = s.scoped_for(node);
                let entry = s.nodes.entry(node.to_owned()).or_default();
                entry.scoped = scoped.clone();
                scoped
            }
            Role::Gateway => BTreeSet::new(),
        };
        let view = s.view(role, &scoped);
        let first = if known.is_empty() {
            ConfigUpdate {
                version: s.version,
                full: true,
                resources: view,
                removed: Vec::new(),
                control_plane: self.instance.clone(),
                mesh: Some(mesh(&s.settings)),
            }
        } else {
            let mut resources = Vec::new();
            for r in view {
                let same = r
                    .key
                    .as_ref()
                    .and_then(|k| held.remove(k))
                    .is_some_and(|v| v == r.version);
                if !same {
                    resources.push(r);
                }
            }
            ConfigUpdate {
                version: s.version,
                full: false,
                resources,
                removed: held.into_keys().cloned().collect(),
                control_plane: self.instance.clone(),
                mesh: Some(mesh(&s.settings)),
            }
        };
        let (tx, updates) = mpsc::channel(QUEUE);
        let subscriber = Subscriber {
            tx,
            caller: node.to_owned(),
        };
        match role {
            Role::Node => add_subscriber(
                &mut s.nodes.entry(node.to_owned()).or_default().subscribers,
                subscriber,
            ),
            Role::Gateway => add_subscriber(&mut s.gateways, subscriber),
        }
        Subscription { first, updates }
    }

    /// Replaces the served catalog with `catalog` and pushes each subscriber
    /// what changed in its view. Objects are compared by content hash.
    pub fn replace(&self, catalog: Catalog) -> PushStats {
        let Catalog { settings, entries } = catalog;
        // Unchanged entries are freed after the lock is released.
        let mut unchanged = Vec::with_capacity(entries.len());
        let stats = {
            let mut s = self.lock();
            if settings != s.settings {
                // Settings come from the command line; they do not change
                // while running. Keep them, and say so if a source disagrees.
                tracing::warn!(
                    "config source validated with other mesh settings; keeping {:?}",
                    s.settings
                );
            }
            // Both maps are sorted by key: one merge pass, no lookups.
            let mut changes: Vec<(ResourceKey, Option<Entry>)> = Vec::new();
            let mut old = s.entries.iter().peekable();
            for (k, e) in entries {
                while let Some((gone, _)) = old.next_if(|(o, _)| *o < &k) {
                    changes.push((gone.clone(), None));
                }
                match old.next_if(|(o, _)| *o == &k) {
                    // The scope is a function of the document: same hash,
                    // same scope.
                    Some((_, before)) if before.resource.version == e.resource.version => {
                        unchanged.push(e)
                    }
                    _ => changes.push((k, Some(e))),
                }
            }
            changes.extend(old.map(|(gone, _)| (gone.clone(), None)));
            self.apply_locked(&mut s, changes)
        };
        drop(unchanged);
        stats
    }

    /// Applies individual changes (`None` removes) and pushes each
    /// subscriber what changed in its view.
    pub fn apply(&self, changes: Vec<(ResourceKey, Option<Entry>)>) -> PushStats {
        let mut s = self.lock();
        self.apply_locked(&mut s, changes)
    }

    fn apply_locked(&self, s: &mut State, changes: Vec<(ResourceKey, Option<Entry>)>) -> PushStats {
        if changes.is_empty() {
            return PushStats {
                version: s.version,
                ..PushStats::default()
            };
        }
        let mut stats = PushStats {
            changed: changes.len(),
            ..PushStats::default()
        };
        let mut global_upserts: Vec<Resource> = Vec::new();
        let mut global_removed: Vec<ResourceKey> = Vec::new();
        let mut policy_upserts: Vec<Resource> = Vec::new();
        let mut policy_removed: Vec<ResourceKey> = Vec::new();
        let mut changed_policies: HashSet<ResourceKey> = HashSet::new();
        let mut dirty_nodes: HashSet<String> = HashSet::new();
        for (k, new) in changes {
            let old = s.entries.remove(&k);
            for e in old.iter().chain(new.iter()) {
                match &e.scope {
                    Scope::Workload { node, .. } => {
                        dirty_nodes.insert(node.clone());
                    }
                    Scope::Policy { .. } | Scope::Everywhere => {}
                }
            }
            if let Some(old) = &old {
                s.unindex(&k, old);
            }
            let policy = old.as_ref().or(new.as_ref()).is_some_and(is_policy);
            if policy {
                changed_policies.insert(k.clone());
            }
            match new {
                Some(e) => {
                    s.index(&k, &e);
                    if policy {
                        policy_upserts.push(e.resource.clone());
                    } else {
                        global_upserts.push(e.resource.clone());
                    }
                    s.entries.insert(k, e);
                }
                None if policy => policy_removed.push(k),
                None => global_removed.push(k),
            }
        }
        s.version += 1;
        stats.version = s.version;

        let root = s.settings.root_namespace.clone();
        let version = s.version;
        let names: Vec<String> = s.nodes.keys().cloned().collect();
        for node in names {
            let (mut resources, mut removed) = (global_upserts.clone(), global_removed.clone());
            let Some(old) = s.nodes.get(&node).map(|n| &n.scoped) else {
                continue;
            };
            if dirty_nodes.contains(&node) {
                // Its workloads changed: recompute its policy view.
                let new = s.scoped_for(&node);
                removed.extend(old.difference(&new).cloned());
                let upserts: Vec<&ResourceKey> = new
                    .iter()
                    .filter(|k| !old.contains(*k) || changed_policies.contains(*k))
                    .collect();
                resources.extend(s.resources(upserts));
                if let Some(subs) = s.nodes.get_mut(&node) {
                    subs.scoped = new;
                }
            } else if !changed_policies.is_empty() {
                // Only policies changed: decide each for this node alone.
                let mut add = Vec::new();
                let mut drop = Vec::new();
                for k in &changed_policies {
                    let in_scope = k.namespace == root
                        || s.nodes_by_namespace
                            .get(&k.namespace)
                            .is_some_and(|nodes| nodes.contains_key(&node));
                    let had = old.contains(k);
                    if !in_scope && !had {
                        continue;
                    }
                    let now = match s.entries.get(k) {
                        Some(
                            e @ Entry {
                                scope: Scope::Policy { match_labels },
                                ..
                            },
                        ) if in_scope && s.node_selects(&node, &k.namespace, match_labels) => {
                            Some(e.resource.clone())
                        }
                        _ => None,
                    };
                    match now {
                        Some(resource) => {
                            resources.push(resource);
                            add.push(k.clone());
                        }
                        None if had => {
                            removed.push(k.clone());
                            drop.push(k.clone());
                        }
                        None => {}
                    }
                }
                if let Some(subs) = s.nodes.get_mut(&node) {
                    subs.scoped.extend(add);
                    for k in &drop {
                        subs.scoped.remove(k);
                    }
                }
            }
            if resources.is_empty() && removed.is_empty() {
                continue;
            }
            let update = ConfigUpdate {
                version,
                full: false,
                resources,
                removed,
                control_plane: self.instance.clone(),
                mesh: None,
            };
            if let Some(subs) = s.nodes.get_mut(&node) {
                push(&mut subs.subscribers, &update, &mut stats);
                if subs.subscribers.is_empty() {
                    s.nodes.remove(&node);
                }
            }
        }
        if !s.gateways.is_empty() {
            let mut resources = global_upserts;
            resources.extend(policy_upserts);
            let mut removed = global_removed;
            removed.extend(policy_removed);
            let update = ConfigUpdate {
                version,
                full: false,
                resources,
                removed,
                control_plane: self.instance.clone(),
                mesh: None,
            };
            push(&mut s.gateways, &update, &mut stats);
        }
        stats
    }
}

/// Queues `update` for every subscriber, dropping closed and full ones.
fn push(subscribers: &mut Vec<Subscriber>, update: &ConfigUpdate, stats: &mut PushStats) {
    let len = update.encoded_len();
    subscribers.retain(|sub| match sub.tx.try_send(update.clone()) {
        Ok(()) => {
            stats.messages += 1;
            stats.bytes += len;
            true
        }
        Err(mpsc::error::TrySendError::Closed(_)) => false,
        Err(mpsc::error::TrySendError::Full(_)) => {
            tracing::warn!(
                caller = %sub.caller,
                queued = QUEUE,
                "subscriber is not keeping up; closing its stream so that it resyncs"
            );
            stats.dropped += 1;
            false
        }
    });
}

fn mesh(settings: &MeshSettings) -> proto::MeshSettings {
    proto::MeshSettings {
        trust_domain: settings.trust_domain.to_string(),
        root_namespace: settings.root_namespace.clone(),
    }
}

#[cfg(test)]
mod tests;
