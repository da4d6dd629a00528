//! `weir-bench control`: the control plane at scale, in-process (no network,
//! no root): 10 000 workloads, 1 000 policies, 100 nodes.
//!
//! - full computation: every node's snapshot (its view: all workloads, the
//!   policies that may apply to its workloads) built and encoded as the
//!   protobuf message a node receives on connect; target ≤ 1 s for all nodes;
//! - one-workload delta: one Workload changes; the delta for every affected
//!   node (all of them: every node holds the whole address index) computed,
//!   queued and encoded; target ≤ 10 ms;
//! - one-policy delta, for comparison (only the nodes it concerns);
//! - what surrounds them: validating and splitting the 11 000 documents,
//!   indexing, and a node rebuilding its config from a snapshot or a delta.
//!
//! Times are medians over `--rounds` (default 5).

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::time::{Duration, Instant};

use anyhow::{anyhow, Result};
use prost::Message;
use weir_control::catalog::Catalog;
use weir_control::distributor::{Distributor, Role};
use weir_control::proto::{ConfigUpdate, Resource, ResourceKey};
use weir_core::config::SourceFile;
use weir_core::MeshSettings;

const TARGET_FULL: Duration = Duration::from_secs(1);
const TARGET_DELTA: Duration = Duration::from_millis(10);

/// `weir-bench control` options.
#[derive(Debug, clap::Args)]
pub struct ControlArgs {
    /// Workloads in the mesh.
    #[arg(long, default_value_t = 10_000)]
    workloads: usize,
    /// AuthorizationPolicies and PeerAuthentications.
    #[arg(long, default_value_t = 1_000)]
    policies: usize,
    /// Nodes (node proxies subscribed).
    #[arg(long, default_value_t = 100)]
    nodes: usize,
    /// Workloads per namespace.
    #[arg(long, default_value_t = 50)]
    per_namespace: usize,
    /// Repetitions; the table shows medians.
    #[arg(long, default_value_t = 5)]
    rounds: usize,
}

/// Workload `i`: namespace `ns-(i / per_namespace)`, label `app: app-(i % 10)`,
/// node `node-(i % nodes)`.
fn workload_doc(i: usize, per_ns: usize, nodes: usize, address_salt: u32) -> String {
    let ip = 0x0a00_0000u32 + i as u32 + 1 + address_salt * 0x0010_0000;
    let [_, b, c, d] = ip.to_be_bytes();
    format!(
        "---\napiVersion: weir.dev/v1alpha1\nkind: Workload\n\
         metadata: {{name: w-{i}, namespace: ns-{ns}, labels: {{app: app-{app}, tier: t{tier}}}}}\n\
         spec: {{serviceAccount: sa-{sa}, address: 10.{b}.{c}.{d}, node: node-{node}}}\n",
        ns = i / per_ns,
        app = i % 10,
        tier = i % 3,
        sa = i % 10,
        node = i % nodes,
    )
}

/// Policy `j`: in the root namespace for j < 10 (mesh-wide), else in one of
/// the namespaces: a third namespace-wide, the rest selecting one app label.
fn policy_doc(j: usize, namespaces: usize) -> String {
    if j < 10 {
        return if j == 0 {
            "---\napiVersion: security.istio.io/v1\nkind: PeerAuthentication\n\
             metadata: {name: mesh-default, namespace: istio-system}\nspec: {mtls: {mode: STRICT}}\n"
                .to_owned()
        } else {
            format!(
                "---\napiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\n\
                 metadata: {{name: root-{j}, namespace: istio-system}}\n\
                 spec:\n  selector: {{matchLabels: {{app: app-{app}}}}}\n  action: DENY\n\
                 \x20 rules: [{{from: [{{source: {{namespaces: [quarantine-{j}]}}}}]}}]\n",
                app = j % 10
            )
        };
    }
    let ns = j % namespaces;
    let selector = if j % 3 == 0 {
        String::new()
    } else {
        format!("  selector: {{matchLabels: {{app: app-{}}}}}\n", j % 10)
    };
    if j % 11 == 0 {
        format!(
            "---\napiVersion: security.istio.io/v1\nkind: PeerAuthentication\n\
             metadata: {{name: pa-{j}, namespace: ns-{ns}}}\nspec:\n{selector}  mtls: {{mode: STRICT}}\n"
        )
    } else {
        format!(
            "---\napiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\n\
             metadata: {{name: ap-{j}, namespace: ns-{ns}}}\nspec:\n{selector}  action: ALLOW\n\
             \x20 rules:\n  - from:\n    - source:\n        principals: [cluster.local/ns/ns-{src}/sa/sa-{sa}]\n\
             \x20   to:\n    - operation:\n        ports: [\"9092\"]\n",
            src = (j * 7) % namespaces,
            sa = j % 10
        )
    }
}

fn sources(a: &ControlArgs) -> Vec<SourceFile> {
    let namespaces = a.workloads.div_ceil(a.per_namespace).max(1);
    let mut files: BTreeMap<String, String> = BTreeMap::new();
    for i in 0..a.workloads {
        files
            .entry(format!("ns-{}/workloads.yaml", i / a.per_namespace))
            .or_default()
            .push_str(&workload_doc(i, a.per_namespace, a.nodes, 0));
    }
    for j in 0..a.policies {
        let file = if j < 10 {
            "istio-system/policies.yaml".to_owned()
        } else {
            format!("ns-{}/policies.yaml", j % namespaces)
        };
        files
            .entry(file)
            .or_default()
            .push_str(&policy_doc(j, namespaces));
    }
    files
        .into_iter()
        .map(|(name, content)| SourceFile::new(name, content))
        .collect()
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v.get(v.len() / 2).copied().unwrap_or_default()
}

fn ms(d: Duration) -> String {
    format!("{:.2} ms", d.as_secs_f64() * 1000.0)
}

fn kib(bytes: usize) -> String {
    format!("{:.1} KiB", bytes as f64 / 1024.0)
}

/// One workload changed (label and address), as the catalog sees it.
fn changed_workload(
    a: &ControlArgs,
    i: usize,
    round: usize,
) -> Result<(ResourceKey, weir_control::catalog::Entry)> {
    let doc = workload_doc(i, a.per_namespace, a.nodes, 1 + round as u32)
        .replace("tier: t", &format!("tier: r{round}-t"));
    let one = Catalog::load(
        &[SourceFile::new("changed.yaml", doc)],
        MeshSettings::default(),
    )
    .map_err(|e| anyhow!("{e}"))?;
    one.entries
        .into_iter()
        .next()
        .ok_or_else(|| anyhow!("no entry for the changed workload"))
}

fn changed_policy(
    a: &ControlArgs,
    j: usize,
    round: usize,
) -> Result<(ResourceKey, weir_control::catalog::Entry)> {
    let namespaces = a.workloads.div_ceil(a.per_namespace).max(1);
    let doc = policy_doc(j, namespaces).replace("9092", &format!("{}", 10_000 + round));
    let one = Catalog::load(
        &[SourceFile::new("changed.yaml", doc)],
        MeshSettings::default(),
    )
    .map_err(|e| anyhow!("{e}"))?;
    one.entries
        .into_iter()
        .next()
        .ok_or_else(|| anyhow!("no entry for the changed policy"))
}

struct Drained {
    messages: usize,
    bytes: usize,
}

/// Takes every queued update and encodes it, as each stream would.
fn drain(subs: &mut [weir_control::distributor::Subscription]) -> Drained {
    let mut d = Drained {
        messages: 0,
        bytes: 0,
    };
    for s in subs {
        while let Ok(update) = s.updates.try_recv() {
            d.messages += 1;
            d.bytes += update.encode_to_vec().len();
        }
    }
    d
}

pub fn run(a: &ControlArgs) -> Result<()> {
    let rounds = a.rounds.max(1);
    println!(
        "weir-bench control: {} workloads, {} policies, {} nodes, {} rounds (medians)",
        a.workloads, a.policies, a.nodes, rounds
    );
    println!(
        "machine: {} cores, load average {}",
        std::thread::available_parallelism().map_or(0, |n| n.get()),
        std::fs::read_to_string("/proc/loadavg")
            .unwrap_or_default()
            .split_whitespace()
            .take(3)
            .collect::<Vec<_>>()
            .join(" ")
    );
    let files = sources(a);
    let documents: usize = files
        .iter()
        .map(|f| f.content.matches("\n---\n").count() + usize::from(f.content.starts_with("---")))
        .sum();

    let mut t_load = Vec::new();
    let mut t_index = Vec::new();
    let mut t_full = Vec::new();
    let mut t_wdelta = Vec::new();
    let mut t_wdelta_diff = Vec::new();
    let mut t_pdelta = Vec::new();
    let mut t_node_full = Vec::new();
    let mut t_node_delta = Vec::new();
    let mut snapshot_bytes = Vec::new();
    let mut wdelta = (0, 0);
    let mut wdelta_diff = (0, 0);
    let mut pdelta = (0, 0);
    let mut objects = 0;
    let mut node_objects = 0;

    for round in 0..rounds {
        let t = Instant::now();
        let catalog = Catalog::load(&files, MeshSettings::default()).map_err(|e| anyhow!("{e}"))?;
        t_load.push(t.elapsed());
        objects = catalog.entries.len();

        let t = Instant::now();
        let d = Distributor::new(catalog.clone(), "bench");
        t_index.push(t.elapsed());

        // Every node's snapshot, built and encoded.
        let t = Instant::now();
        let mut sizes = Vec::with_capacity(a.nodes);
        for n in 0..a.nodes {
            let snapshot = d.snapshot(&format!("node-{n}"), Role::Node);
            sizes.push(snapshot.encode_to_vec().len());
        }
        t_full.push(t.elapsed());
        snapshot_bytes = sizes;

        let mut subs: Vec<_> = (0..a.nodes)
            .map(|n| d.subscribe(&format!("node-{n}"), Role::Node, &[]))
            .collect();

        // One workload changes (event path: the source names the change).
        let (k, e) = changed_workload(a, 4242 % a.workloads.max(1), round)?;
        let t = Instant::now();
        let stats = d.apply(vec![(k, Some(e))]);
        let drained = drain(&mut subs);
        t_wdelta.push(t.elapsed());
        wdelta = (drained.messages, drained.bytes);
        debug_assert_eq!(stats.messages, drained.messages);

        // The same through a whole new catalog (file path: diff first).
        let (k, e) = changed_workload(a, 777 % a.workloads.max(1), round)?;
        let mut next = catalog.clone();
        next.entries.insert(k, e);
        // Keep the first change, so only this one differs.
        let first = changed_workload(a, 4242 % a.workloads.max(1), round)?;
        next.entries.insert(first.0, first.1);
        let t = Instant::now();
        d.replace(next);
        let drained = drain(&mut subs);
        t_wdelta_diff.push(t.elapsed());
        wdelta_diff = (drained.messages, drained.bytes);

        // One namespace policy changes.
        let (k, e) = changed_policy(a, 500 % a.policies.max(11), round)?;
        let t = Instant::now();
        d.apply(vec![(k, Some(e))]);
        let drained = drain(&mut subs);
        t_pdelta.push(t.elapsed());
        pdelta = (drained.messages, drained.bytes);

        // A node rebuilding its config: from a snapshot, and after a delta
        // (today the node re-validates its whole view on every update).
        let snapshot = d.snapshot("node-0", Role::Node);
        let mut held: BTreeMap<ResourceKey, Resource> = BTreeMap::new();
        let t = Instant::now();
        weir_control::client::apply(&mut held, snapshot, &MeshSettings::default())
            .map_err(|e| anyhow!("{e}"))?;
        t_node_full.push(t.elapsed());
        node_objects = held.len();
        let (_, e) = changed_workload(a, 99 % a.workloads.max(1), round + 100)?;
        let delta = ConfigUpdate {
            resources: vec![e.resource],
            ..ConfigUpdate::default()
        };
        let t = Instant::now();
        weir_control::client::apply(&mut held, delta, &MeshSettings::default())
            .map_err(|e| anyhow!("{e}"))?;
        t_node_delta.push(t.elapsed());
    }

    let full = median(t_full);
    let delta = median(t_wdelta);
    let avg = snapshot_bytes.iter().sum::<usize>() / snapshot_bytes.len().max(1);
    let max = snapshot_bytes.iter().copied().max().unwrap_or(0);
    let min = snapshot_bytes.iter().copied().min().unwrap_or(0);
    let ok = |d: Duration, target: Duration| if d <= target { "ok" } else { "MISSED" };
    let mut t = String::new();
    let _ = writeln!(t, "| figure | value | target |");
    let _ = writeln!(t, "| --- | --- | --- |");
    let _ = writeln!(
        t,
        "| config: validate + split {documents} documents ({objects} objects) | {} | |",
        ms(median(t_load))
    );
    let _ = writeln!(t, "| index (distributor) | {} | |", ms(median(t_index)));
    let _ = writeln!(
        t,
        "| **full computation**: {} node snapshots built + encoded | **{}** ({:.3} of target) | ≤ {} {} |",
        a.nodes,
        ms(full),
        full.as_secs_f64() / TARGET_FULL.as_secs_f64(),
        ms(TARGET_FULL),
        ok(full, TARGET_FULL)
    );
    let _ = writeln!(
        t,
        "| snapshot size per node: average / min / max | {} / {} / {} | |",
        kib(avg),
        kib(min),
        kib(max)
    );
    let _ = writeln!(
        t,
        "| all snapshots | {} | |",
        kib(snapshot_bytes.iter().sum())
    );
    let _ = writeln!(
        t,
        "| **one-workload delta** to {} affected nodes (computed, queued, encoded) | **{}** ({:.3} of target), {} in {} messages ({} B each) | ≤ {} {} |",
        wdelta.0,
        ms(delta),
        delta.as_secs_f64() / TARGET_DELTA.as_secs_f64(),
        kib(wdelta.1),
        wdelta.0,
        wdelta.1 / wdelta.0.max(1),
        ms(TARGET_DELTA),
        ok(delta, TARGET_DELTA)
    );
    let _ = writeln!(
        t,
        "| one-workload delta from a whole new catalog (diff of {objects} objects first) | {}, {} in {} messages | |",
        ms(median(t_wdelta_diff)),
        kib(wdelta_diff.1),
        wdelta_diff.0
    );
    let _ = writeln!(
        t,
        "| one-policy delta (namespace policy) | {}, {} in {} messages | |",
        ms(median(t_pdelta)),
        kib(pdelta.1),
        pdelta.0
    );
    let _ = writeln!(
        t,
        "| node: config from a snapshot (strict loader, {} objects) | {} | |",
        node_objects,
        ms(median(t_node_full))
    );
    let _ = writeln!(
        t,
        "| node: config after a one-workload delta (rebuilt whole) | {} | |",
        ms(median(t_node_delta))
    );
    println!();
    println!("{t}");
    Ok(())
}
