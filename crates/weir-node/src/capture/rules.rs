//! iptables rules that send a pod's TCP traffic to the in-pod listeners, and
//! the routing that lets the proxy reach the app from the client's address.
//!
//! Capture lives in two dedicated chains of the `nat` table, jumped to from
//! the built-in chains, so removal is exact (weir never edits rules it did not
//! write) and both install and remove are idempotent:
//!
//! ```text
//! *nat
//! -A PREROUTING -p tcp -j WEIR_PREROUTING
//! -A OUTPUT -p tcp -j WEIR_OUTPUT
//! -A WEIR_OUTPUT -m mark --mark 0x539/0xfff -j RETURN       # the proxy's own sockets
//! -A WEIR_OUTPUT -o lo -j RETURN                            # pod-local traffic
//! -A WEIR_OUTPUT -d 127.0.0.0/8 -j RETURN                   # loopback
//! -A WEIR_OUTPUT -p tcp -j REDIRECT --to-ports 15001        # everything else: outbound capture
//! -A WEIR_PREROUTING -m mark --mark 0x539/0xfff -j RETURN   # marked by the proxy
//! -A WEIR_PREROUTING -p tcp --dport 15008 -j RETURN         # HBONE: served directly
//! -A WEIR_PREROUTING -p tcp -j REDIRECT --to-ports 15006    # plaintext inbound
//! ```
//!
//! (Each rule also carries an `-m comment` saying why, visible in
//! `iptables-save`.) The rules are applied with one `iptables-restore
//! --noflush` transaction run inside the pod's namespace, so a pod never sees
//! a half-installed rule set.
//!
//! **Source address preservation.** The proxy connects to the app from the
//! client's address (an `IP_TRANSPARENT` socket bound to it), as ztunnel
//! does, so the app, its logs and its own ACLs see the real caller. The
//! app's replies are addressed to that foreign address; these rules and
//! routes hand them back to the proxy's socket instead of the pod's default
//! route:
//!
//! ```text
//! *mangle
//! -A PREROUTING -p tcp -j WEIR_PREROUTING
//! -A OUTPUT -p tcp -j WEIR_OUTPUT
//! -A WEIR_PREROUTING -m mark --mark 0x539/0xfff -j CONNMARK --set-xmark 0x111/0xfff
//! -A WEIR_OUTPUT -m connmark --mark 0x111/0xfff -j CONNMARK --restore-mark --nfmask 0xffffffff --ctmask 0xffffffff
//! ip rule add pref 32765 fwmark 0x111/0xfff iif lo lookup 100
//! ip route replace local 0.0.0.0/0 dev lo table 100
//! ```
//!
//! The proxy's packets enter the pod through `lo` carrying its mark, so
//! their connection is marked 0x111; the app's replies on that connection
//! get the mark back and the rule routes them locally, to the proxy.
//! Installed as a second step ([`CaptureRules::install_source_routing`]):
//! if it fails, capture still works and the proxy connects from the pod's
//! own address.
//!
//! Compared with Istio's in-pod rules (`istio-cni`, chains `ISTIO_OUTPUT` /
//! `ISTIO_PRERT`): same marks (0x539 and 0x111 under mask 0xfff), same
//! ports, same route table (100), same `-o lo` exemption, which also covers
//! the proxy delivering inbound traffic to the app. Not copied: TPROXY for
//! inbound (weir uses `REDIRECT` and `SO_ORIGINAL_DST` both ways) and DNS
//! capture (weir does not proxy DNS). IPv4 only for now.

use std::fmt::Write as _;
use std::io;
use std::net::Ipv4Addr;
use std::process::{Command, Stdio};

use super::Netns;

/// The mark the proxy sets (SO_MARK) on its own sockets in a pod, so the
/// pod's capture rules let them through. Same value as Istio's ztunnel.
pub const PROXY_MARK: u32 = 0x539;
/// The bits of the packet mark that belong to the proxy.
pub const PROXY_MARK_MASK: u32 = 0xfff;
/// The mark of connections the proxy opened to the app (and so of the app's
/// replies), which the source-routing rule delivers back to the proxy.
/// Same value as Istio's in-pod mark.
pub const SOURCE_MARK: u32 = 0x111;
/// The routing table holding the `local` route for marked replies (Istio: 100).
pub const SOURCE_ROUTE_TABLE: u32 = 100;
/// Priority of the rule that sends marked replies to [`SOURCE_ROUTE_TABLE`]:
/// just before the `main` table (32766), as the kernel would place it.
pub const SOURCE_RULE_PRIORITY: u32 = 32765;

/// Name of weir's chain jumped to from `nat OUTPUT`.
pub const OUTPUT_CHAIN: &str = "WEIR_OUTPUT";
/// Name of weir's chain jumped to from `nat PREROUTING`.
pub const PREROUTING_CHAIN: &str = "WEIR_PREROUTING";

/// (built-in chain, weir chain) pairs.
const JUMPS: [(&str, &str); 2] = [("PREROUTING", PREROUTING_CHAIN), ("OUTPUT", OUTPUT_CHAIN)];

/// Errors installing or removing capture rules.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The namespace could not be entered.
    #[error("cannot enter the pod network namespace: {0}")]
    Netns(#[source] io::Error),
    /// iptables or ip could not be started.
    #[error("cannot run {program} in network namespace {netns}: {source} (is it installed in the proxy's image and on PATH?)")]
    Spawn {
        program: &'static str,
        netns: String,
        #[source]
        source: io::Error,
    },
    /// iptables or ip ran and failed.
    #[error("{program} failed in network namespace {netns} ({status}): {stderr} ({hint})")]
    Failed {
        program: &'static str,
        netns: String,
        status: String,
        stderr: String,
        /// What the proxy or the kernel may lack.
        hint: &'static str,
    },
}

impl Error {
    /// A short, stable label for metrics.
    pub fn metric_label(&self) -> &'static str {
        match self {
            Error::Netns(_) => "netns",
            Error::Spawn { program: "ip", .. } => "ip_spawn",
            Error::Spawn { .. } => "iptables_spawn",
            Error::Failed { program: "ip", .. } => "ip_failed",
            Error::Failed { .. } => "iptables_failed",
        }
    }
}

/// The capture configuration for one pod.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CaptureRules {
    /// Mark on the proxy's own sockets; matched under [`Self::proxy_mark_mask`].
    pub proxy_mark: u32,
    /// Mask applied when matching [`Self::proxy_mark`].
    pub proxy_mark_mask: u32,
    /// Where the pod's outgoing TCP is redirected (Istio: 15001).
    pub outbound_port: u16,
    /// Where plaintext inbound TCP is redirected (Istio: 15006).
    pub inbound_plaintext_port: u16,
    /// HBONE port, left alone so the proxy's 15008 listener gets it directly.
    pub hbone_port: u16,
    /// Source address of kubelet health probes after node-level SNAT, if
    /// the node does that (Istio uses 169.254.7.127). Probes from it skip
    /// inbound capture so STRICT mTLS cannot fail them. `None`: no exemption.
    pub probe_source: Option<Ipv4Addr>,
    /// Connection mark of the proxy's connections to the app (Istio: 0x111),
    /// matched under [`Self::proxy_mark_mask`].
    pub source_mark: u32,
    /// Routing table of the `local` route for the app's replies (Istio: 100).
    pub source_table: u32,
}

impl Default for CaptureRules {
    fn default() -> Self {
        CaptureRules {
            proxy_mark: PROXY_MARK,
            proxy_mark_mask: PROXY_MARK_MASK,
            outbound_port: 15001,
            inbound_plaintext_port: 15006,
            hbone_port: 15008,
            probe_source: None,
            source_mark: SOURCE_MARK,
            source_table: SOURCE_ROUTE_TABLE,
        }
    }
}

/// One rule: its iptables matches, its target, and why it exists.
struct Rule {
    matches: String,
    target: String,
    why: &'static str,
}

impl CaptureRules {
    fn mark_match(&self) -> String {
        format!(
            "-m mark --mark {:#x}/{:#x}",
            self.proxy_mark, self.proxy_mark_mask
        )
    }

    /// Rules of `WEIR_OUTPUT` (traffic the pod originates), in order.
    fn output_rules(&self) -> Vec<Rule> {
        vec![
            Rule {
                matches: self.mark_match(),
                target: "RETURN".into(),
                why: "the proxy sockets carry its mark so are never captured again",
            },
            Rule {
                matches: "-o lo".into(),
                target: "RETURN".into(),
                why: "pod-local traffic (to the pod IP or from proxy to app) stays in the pod",
            },
            Rule {
                matches: "-d 127.0.0.0/8".into(),
                target: "RETURN".into(),
                why: "loopback destinations are never meshed",
            },
            Rule {
                matches: "-p tcp".into(),
                target: format!("REDIRECT --to-ports {}", self.outbound_port),
                why: "all other TCP from the pod goes to the outbound listener",
            },
        ]
    }

    /// Rules of `WEIR_PREROUTING` (traffic arriving at the pod), in order.
    fn prerouting_rules(&self) -> Vec<Rule> {
        let mut rules = vec![
            Rule {
                matches: self.mark_match(),
                target: "RETURN".into(),
                why: "packets already marked by the proxy are not captured",
            },
            Rule {
                matches: format!("-p tcp --dport {}", self.hbone_port),
                target: "RETURN".into(),
                why: "HBONE is served by the proxy listener directly",
            },
        ];
        if let Some(probe) = self.probe_source {
            rules.push(Rule {
                matches: format!("-s {probe}/32"),
                target: "RETURN".into(),
                why: "kubelet health probes (SNATed) bypass mTLS",
            });
        }
        rules.push(Rule {
            matches: "-p tcp".into(),
            target: format!("REDIRECT --to-ports {}", self.inbound_plaintext_port),
            why: "all other inbound TCP is plaintext: send it to the inbound listener",
        });
        rules
    }

    /// Rules of the `mangle` chains that mark the proxy's connections to the
    /// app and hand the mark to the app's replies (source preservation).
    fn source_rules(&self) -> [(&'static str, Vec<Rule>); 2] {
        let (mark, mask) = (self.source_mark, self.proxy_mark_mask);
        [
            (
                OUTPUT_CHAIN,
                vec![Rule {
                    matches: format!("-m connmark --mark {mark:#x}/{mask:#x}"),
                    target: "CONNMARK --restore-mark --nfmask 0xffffffff --ctmask 0xffffffff"
                        .into(),
                    why: "the app's replies to the proxy get the mark that routes them back to it",
                }],
            ),
            (
                PREROUTING_CHAIN,
                vec![Rule {
                    matches: self.mark_match(),
                    target: format!("CONNMARK --set-xmark {mark:#x}/{mask:#x}"),
                    why: "connections the proxy opens to the app are marked",
                }],
            ),
        ]
    }

    /// The `iptables-restore --noflush` input that installs the capture
    /// rules, given the current `iptables-save -t nat` output. Declaring a
    /// chain creates it or flushes it, so reinstalling replaces the rules
    /// instead of duplicating them; jumps are only added when missing.
    pub fn install_script(&self, current_nat: &str) -> String {
        table_install_script(
            "nat",
            current_nat,
            &[
                (OUTPUT_CHAIN, self.output_rules()),
                (PREROUTING_CHAIN, self.prerouting_rules()),
            ],
        )
    }

    /// Like [`Self::install_script`], for the `mangle` rules of source
    /// preservation, given the current `iptables-save -t mangle` output.
    pub fn source_script(&self, current_mangle: &str) -> String {
        table_install_script("mangle", current_mangle, &self.source_rules())
    }

    /// The `ip` commands (arguments) that route the app's marked replies to
    /// the proxy, run after `source_rule("del")` has cleared an earlier copy
    /// of the rule.
    pub fn source_routes(&self) -> [Vec<String>; 2] {
        [self.source_rule("add"), self.source_route("replace")]
    }

    /// `ip -4 rule <verb> ...` for the rule sending the app's marked replies
    /// (only what the pod itself sends: `iif lo`) to the source table.
    pub fn source_rule(&self, verb: &str) -> Vec<String> {
        let mark = format!("{:#x}/{:#x}", self.source_mark, self.proxy_mark_mask);
        let (pref, table) = (
            SOURCE_RULE_PRIORITY.to_string(),
            self.source_table.to_string(),
        );
        [
            "-4", "rule", verb, "pref", &pref, "fwmark", &mark, "iif", "lo", "lookup", &table,
        ]
        .map(String::from)
        .to_vec()
    }

    /// Deletes every copy of the source-routing rule in the current thread's
    /// namespace (`ip rule del` removes one per call and fails once none is
    /// left; bounded, in case it keeps succeeding).
    fn delete_source_rules(&self, netns: &str) {
        for _ in 0..8 {
            if ip(netns, &self.source_rule("del")).is_err() {
                break;
            }
        }
    }

    /// `ip -4 route <verb> ...` for the source table's `local` route.
    pub fn source_route(&self, verb: &str) -> Vec<String> {
        let table = self.source_table.to_string();
        [
            "-4",
            "route",
            verb,
            "local",
            "0.0.0.0/0",
            "dev",
            "lo",
            "table",
            &table,
        ]
        .map(String::from)
        .to_vec()
    }

    /// The `iptables-restore --noflush` input that removes every weir jump
    /// and chain of `table` present in `current` (its `iptables-save -t
    /// <table>` output), or `None` if nothing is there.
    pub fn remove_script(table: &str, current: &str) -> Option<String> {
        let present = ChainState::parse(current);
        if present.jumps.is_empty() && present.chains.is_empty() {
            return None;
        }
        let mut s = format!("*{table}\n");
        for (builtin, _, rest) in &present.jumps {
            let _ = writeln!(s, "-D {builtin} {rest}");
        }
        for chain in &present.chains {
            let _ = writeln!(s, "-F {chain}");
        }
        for chain in &present.chains {
            let _ = writeln!(s, "-X {chain}");
        }
        s.push_str("COMMIT\n");
        Some(s)
    }

    /// Installs (or replaces) the capture rules in `netns`.
    pub fn install(&self, netns: &Netns) -> Result<(), Error> {
        let name = netns.to_string();
        netns
            .run(|| {
                let current = iptables_save(&name, "nat")?;
                iptables_restore(&name, &self.install_script(&current), NAT_HINT)
            })
            .map_err(Error::Netns)??;
        tracing::info!(netns = %name, "capture rules installed");
        Ok(())
    }

    /// Installs (or replaces) the `mangle` rules and the routes that let the
    /// proxy connect to the app from the client's address. Capture works
    /// without them; the caller decides what a failure means.
    pub fn install_source_routing(&self, netns: &Netns) -> Result<(), Error> {
        let name = netns.to_string();
        netns
            .run(|| {
                let current = iptables_save(&name, "mangle")?;
                iptables_restore(&name, &self.source_script(&current), MANGLE_HINT)?;
                // `ip rule add` would add a second copy: clear the old first.
                self.delete_source_rules(&name);
                for args in self.source_routes() {
                    ip(&name, &args)?;
                }
                Ok(())
            })
            .map_err(Error::Netns)??;
        tracing::debug!(netns = %name, "source routing installed");
        Ok(())
    }

    /// Removes weir's capture rules, source-routing rules and routes from
    /// `netns`. Removing what is not there is not an error; the first
    /// failure is returned after trying everything.
    pub fn remove(netns: &Netns) -> Result<(), Error> {
        let name = netns.to_string();
        let rules = CaptureRules::default();
        let removed = netns
            .run(|| {
                let mut removed = false;
                let mut first_error = None;
                for (table, hint) in [("nat", NAT_HINT), ("mangle", MANGLE_HINT)] {
                    let result = iptables_save(&name, table).and_then(|current| {
                        match Self::remove_script(table, &current) {
                            Some(script) => iptables_restore(&name, &script, hint).map(|()| true),
                            None => Ok(false),
                        }
                    });
                    match result {
                        Ok(r) => removed |= r,
                        Err(e) => {
                            first_error.get_or_insert(e);
                        }
                    }
                }
                // Not there (or `ip` missing, where nothing was installed
                // either) is the normal case for these two.
                rules.delete_source_rules(&name);
                let _ = ip(&name, &rules.source_route("del"));
                match first_error {
                    Some(e) => Err(e),
                    None => Ok(removed),
                }
            })
            .map_err(Error::Netns)??;
        if removed {
            tracing::info!(netns = %name, "capture rules removed");
        }
        Ok(())
    }
}

/// What to check when `iptables-restore` fails on each table.
const NAT_HINT: &str =
    "does the proxy have CAP_NET_ADMIN, and is the nat table / xt_REDIRECT available?";
const MANGLE_HINT: &str =
    "does the proxy have CAP_NET_ADMIN, and are the mangle table / xt_connmark available?";
const IP_HINT: &str = "does the proxy have CAP_NET_ADMIN?";

/// The `iptables-restore --noflush` input that creates (or flushes) weir's
/// `chains` in `table`, fills them, and adds the jumps from the built-in
/// chains that `current` (`iptables-save -t <table>`) lacks.
fn table_install_script(table: &str, current: &str, chains: &[(&str, Vec<Rule>)]) -> String {
    let present = ChainState::parse(current);
    let mut s = format!("*{table}\n");
    for (_, chain) in JUMPS {
        let _ = writeln!(s, ":{chain} - [0:0]");
    }
    for (builtin, chain) in JUMPS {
        if !present
            .jumps
            .iter()
            .any(|(b, c, _)| b == builtin && c == chain)
        {
            // Insert first so earlier rules in the pod cannot bypass capture.
            let _ = writeln!(s, "-I {builtin} 1 -p tcp -j {chain}");
        }
    }
    for (chain, rules) in chains {
        for rule in rules {
            let _ = writeln!(
                s,
                "-A {chain} {} -m comment --comment \"weir: {}\" -j {}",
                rule.matches, rule.why, rule.target
            );
        }
    }
    s.push_str("COMMIT\n");
    s
}

/// The weir-owned parts of one table of an `iptables-save` dump.
#[derive(Debug, Default)]
struct ChainState {
    /// (built-in chain, weir chain, rule spec after `-A <builtin> `).
    jumps: Vec<(String, String, String)>,
    /// weir chains that exist.
    chains: Vec<String>,
}

impl ChainState {
    fn parse(save: &str) -> ChainState {
        let ours = |c: &str| JUMPS.iter().any(|(_, chain)| *chain == c);
        let mut state = ChainState::default();
        for line in save.lines().map(str::trim) {
            if let Some(decl) = line.strip_prefix(':') {
                if let Some(chain) = decl.split_whitespace().next().filter(|c| ours(c)) {
                    state.chains.push(chain.to_string());
                }
            } else if let Some(rule) = line.strip_prefix("-A ") {
                let Some((builtin, rest)) = rule.split_once(' ') else {
                    continue;
                };
                let mut words = rest.split_whitespace();
                let target = std::iter::from_fn(|| words.next())
                    .skip_while(|w| *w != "-j")
                    .nth(1);
                if let Some(target) = target.filter(|t| ours(t) && !ours(builtin)) {
                    state
                        .jumps
                        .push((builtin.to_string(), target.to_string(), rest.to_string()));
                }
            }
        }
        state
    }
}

fn iptables_save(netns: &str, table: &str) -> Result<String, Error> {
    let hint = if table == "nat" {
        NAT_HINT
    } else {
        MANGLE_HINT
    };
    run("iptables-save", &["-t", table], netns, hint)
}

/// Runs `ip <args>` (iproute2) in the current thread's namespace.
fn ip(netns: &str, args: &[String]) -> Result<(), Error> {
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    run("ip", &args, netns, IP_HINT).map(drop)
}

/// Runs `program args` in the current thread's namespace; its stdout, or
/// an error with its stderr and command line.
fn run(
    program: &'static str,
    args: &[&str],
    netns: &str,
    hint: &'static str,
) -> Result<String, Error> {
    let out = Command::new(program)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .map_err(|source| Error::Spawn {
            program,
            netns: netns.to_string(),
            source,
        })?;
    if !out.status.success() {
        return Err(Error::Failed {
            program,
            netns: netns.to_string(),
            status: out.status.to_string(),
            stderr: format!(
                "{} [{program} {}]",
                String::from_utf8_lossy(&out.stderr).trim(),
                args.join(" ")
            ),
            hint,
        });
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

fn iptables_restore(netns: &str, script: &str, hint: &'static str) -> Result<(), Error> {
    use std::io::Write as _;
    let spawn_err = |source| Error::Spawn {
        program: "iptables-restore",
        netns: netns.to_string(),
        source,
    };
    // -w: wait for the xtables lock instead of failing when another process
    // (another pod's install) holds it.
    let mut child = Command::new("iptables-restore")
        .args(["--noflush", "-w", "10"])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(spawn_err)?;
    if let Some(mut stdin) = child.stdin.take() {
        stdin.write_all(script.as_bytes()).map_err(spawn_err)?;
    }
    let out = child.wait_with_output().map_err(spawn_err)?;
    if !out.status.success() {
        return Err(Error::Failed {
            program: "iptables-restore",
            netns: netns.to_string(),
            status: out.status.to_string(),
            stderr: format!(
                "{} [input: {}]",
                String::from_utf8_lossy(&out.stderr).trim(),
                script.replace('\n', "; ")
            ),
            hint,
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const EMPTY: &str = "*nat\n:PREROUTING ACCEPT [0:0]\n:INPUT ACCEPT [0:0]\n:OUTPUT ACCEPT [0:0]\n:POSTROUTING ACCEPT [0:0]\nCOMMIT\n";

    #[test]
    fn install_script_from_scratch() {
        let script = CaptureRules::default().install_script(EMPTY);
        let expected = "\
*nat
:WEIR_PREROUTING - [0:0]
:WEIR_OUTPUT - [0:0]
-I PREROUTING 1 -p tcp -j WEIR_PREROUTING
-I OUTPUT 1 -p tcp -j WEIR_OUTPUT
-A WEIR_OUTPUT -m mark --mark 0x539/0xfff -m comment --comment \"weir: the proxy sockets carry its mark so are never captured again\" -j RETURN
-A WEIR_OUTPUT -o lo -m comment --comment \"weir: pod-local traffic (to the pod IP or from proxy to app) stays in the pod\" -j RETURN
-A WEIR_OUTPUT -d 127.0.0.0/8 -m comment --comment \"weir: loopback destinations are never meshed\" -j RETURN
-A WEIR_OUTPUT -p tcp -m comment --comment \"weir: all other TCP from the pod goes to the outbound listener\" -j REDIRECT --to-ports 15001
-A WEIR_PREROUTING -m mark --mark 0x539/0xfff -m comment --comment \"weir: packets already marked by the proxy are not captured\" -j RETURN
-A WEIR_PREROUTING -p tcp --dport 15008 -m comment --comment \"weir: HBONE is served by the proxy listener directly\" -j RETURN
-A WEIR_PREROUTING -p tcp -m comment --comment \"weir: all other inbound TCP is plaintext: send it to the inbound listener\" -j REDIRECT --to-ports 15006
COMMIT
";
        assert_eq!(script, expected);
    }

    #[test]
    fn reinstall_does_not_duplicate_jumps() {
        let save = "*nat\n:PREROUTING ACCEPT [0:0]\n:OUTPUT ACCEPT [0:0]\n:WEIR_OUTPUT - [0:0]\n:WEIR_PREROUTING - [0:0]\n-A PREROUTING -p tcp -j WEIR_PREROUTING\n-A OUTPUT -p tcp -j WEIR_OUTPUT\n-A WEIR_OUTPUT -o lo -j RETURN\nCOMMIT\n";
        let script = CaptureRules::default().install_script(save);
        assert!(!script.contains("-I "), "{script}");
        // The chains are still declared, which flushes them before refilling.
        assert!(script.contains(":WEIR_OUTPUT - [0:0]\n"));
        assert!(script.contains(":WEIR_PREROUTING - [0:0]\n"));
    }

    #[test]
    fn custom_ports_mark_and_probe() {
        let rules = CaptureRules {
            proxy_mark: 0x42,
            proxy_mark_mask: 0xff,
            outbound_port: 1,
            inbound_plaintext_port: 2,
            hbone_port: 3,
            probe_source: Some(Ipv4Addr::new(169, 254, 7, 127)),
            source_mark: 0x7,
            source_table: 7,
        };
        let mangle = rules.source_script("");
        assert!(mangle.contains("-m mark --mark 0x42/0xff -m comment"));
        assert!(mangle.contains("-j CONNMARK --set-xmark 0x7/0xff\n"));
        assert!(mangle.contains("-m connmark --mark 0x7/0xff -m comment"));
        assert!(rules.source_routes()[1].ends_with(&["table".into(), "7".into()]));
        let script = rules.install_script("");
        assert!(script.contains("-A WEIR_OUTPUT -m mark --mark 0x42/0xff -m comment"));
        assert!(script.contains("listener\" -j REDIRECT --to-ports 1\n"));
        assert!(script.contains("-A WEIR_PREROUTING -p tcp --dport 3 -m comment"));
        assert!(script.contains("-A WEIR_PREROUTING -s 169.254.7.127/32 -m comment"));
        assert!(script.contains("listener\" -j REDIRECT --to-ports 2\n"));
        // The probe exemption comes before the catch-all redirect.
        let probe = script.find("169.254.7.127").unwrap();
        let redirect = script.find("--to-ports 2").unwrap();
        assert!(probe < redirect);
    }

    #[test]
    fn remove_script_is_exact() {
        assert_eq!(CaptureRules::remove_script("nat", EMPTY), None);
        assert_eq!(CaptureRules::remove_script("nat", ""), None);
        let save = "\
*nat
:PREROUTING ACCEPT [0:0]
:OUTPUT ACCEPT [0:0]
:WEIR_OUTPUT - [0:0]
:WEIR_PREROUTING - [0:0]
:OTHER - [0:0]
-A PREROUTING -p tcp -j WEIR_PREROUTING
-A OUTPUT -j OTHER
-A OUTPUT -p tcp -j WEIR_OUTPUT
-A OUTPUT -p tcp -j WEIR_OUTPUT
-A WEIR_OUTPUT -p tcp -j REDIRECT --to-ports 15001
-A OTHER -d 10.0.0.0/8 -j RETURN
COMMIT
";
        let script = CaptureRules::remove_script("nat", save).unwrap();
        assert_eq!(
            script,
            "\
*nat
-D PREROUTING -p tcp -j WEIR_PREROUTING
-D OUTPUT -p tcp -j WEIR_OUTPUT
-D OUTPUT -p tcp -j WEIR_OUTPUT
-F WEIR_OUTPUT
-F WEIR_PREROUTING
-X WEIR_OUTPUT
-X WEIR_PREROUTING
COMMIT
"
        );
    }

    #[test]
    fn error_labels() {
        let e = Error::Failed {
            program: "iptables-restore",
            netns: "/var/run/netns/x".into(),
            status: "exit status: 1".into(),
            stderr: "boom".into(),
            hint: NAT_HINT,
        };
        assert_eq!(e.metric_label(), "iptables_failed");
        assert!(e.to_string().contains("CAP_NET_ADMIN"));
    }

    #[test]
    fn source_preservation_rules_and_routes() {
        let rules = CaptureRules::default();
        let save = "*mangle\n:PREROUTING ACCEPT [0:0]\n:OUTPUT ACCEPT [0:0]\nCOMMIT\n";
        assert_eq!(
            rules.source_script(save),
            "\
*mangle
:WEIR_PREROUTING - [0:0]
:WEIR_OUTPUT - [0:0]
-I PREROUTING 1 -p tcp -j WEIR_PREROUTING
-I OUTPUT 1 -p tcp -j WEIR_OUTPUT
-A WEIR_OUTPUT -m connmark --mark 0x111/0xfff -m comment --comment \"weir: the app's replies to the proxy get the mark that routes them back to it\" -j CONNMARK --restore-mark --nfmask 0xffffffff --ctmask 0xffffffff
-A WEIR_PREROUTING -m mark --mark 0x539/0xfff -m comment --comment \"weir: connections the proxy opens to the app are marked\" -j CONNMARK --set-xmark 0x111/0xfff
COMMIT
"
        );
        let [rule, route] = rules.source_routes();
        assert_eq!(
            rule.join(" "),
            "-4 rule add pref 32765 fwmark 0x111/0xfff iif lo lookup 100"
        );
        assert_eq!(
            route.join(" "),
            "-4 route replace local 0.0.0.0/0 dev lo table 100"
        );
        assert_eq!(
            rules.source_rule("del").join(" "),
            "-4 rule del pref 32765 fwmark 0x111/0xfff iif lo lookup 100"
        );
        assert_eq!(
            rules.source_route("del").join(" "),
            "-4 route del local 0.0.0.0/0 dev lo table 100"
        );
        // Removal names the table it edits.
        let installed = "*mangle\n:PREROUTING ACCEPT [0:0]\n:WEIR_PREROUTING - [0:0]\n\
                         -A PREROUTING -p tcp -j WEIR_PREROUTING\nCOMMIT\n";
        assert_eq!(
            CaptureRules::remove_script("mangle", installed).unwrap(),
            "*mangle\n-D PREROUTING -p tcp -j WEIR_PREROUTING\n-F WEIR_PREROUTING\n-X WEIR_PREROUTING\nCOMMIT\n"
        );
    }
}
