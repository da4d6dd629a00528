//! Who is calling: node proxies and gateways authenticate every call.
//!
//! Local mode: a bootstrap token per node (and per gateway) in a YAML file
//! ([`TokenFile`]); the caller sends `authorization: Bearer <token>` and
//! `x-weir-node: <name>`. Cluster mode (`weir_kube::KubeAuthenticator`)
//! implements [`Authenticator`] with Kubernetes TokenReview: the node
//! proxy's ServiceAccount token, bound to its pod and node.

use std::collections::{BTreeMap, HashMap};
use std::future::Future;
use std::path::Path;
use std::pin::Pin;

use serde::Deserialize;
use weir_core::SpiffeId;

use crate::Error;

/// Shortest token accepted in a token file (bytes).
pub const MIN_TOKEN_LEN: usize = 16;

/// An authenticated caller.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Caller {
    /// A node proxy: may have identities of Workloads on its node signed,
    /// and sees its node's view of the config.
    Node {
        /// The node's name (Workloads' `spec.node`).
        name: String,
    },
    /// A gateway: may have its registered identities signed, and sees the
    /// whole config.
    Gateway {
        /// The gateway's name.
        name: String,
        /// The identities it may have signed.
        identities: Vec<SpiffeId>,
    },
}

impl Caller {
    /// The node or gateway name.
    pub fn name(&self) -> &str {
        match self {
            Caller::Node { name } | Caller::Gateway { name, .. } => name,
        }
    }
}

/// Why a caller was not authenticated.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    /// No `authorization: Bearer` metadata.
    #[error(
        "no bearer token: send `authorization: Bearer <token>` (weir node --control-token-file)"
    )]
    MissingToken,
    /// No `x-weir-node` metadata.
    #[error("no node name: send `x-weir-node: <node>` (weir node --node)")]
    MissingNode,
    /// The name is not registered.
    #[error("node {0:?} is not registered with this control plane (--node-tokens)")]
    UnknownNode(String),
    /// The token is not the name's token.
    #[error("wrong token for node {0:?}")]
    WrongToken(String),
    /// The authentication backend failed (e.g. TokenReview unreachable).
    #[error("cannot authenticate: {0}")]
    Backend(String),
}

impl AuthError {
    /// What the caller is told. An unknown name and a wrong token read the
    /// same, so a peer without a token cannot learn which names are
    /// registered; the log keeps the difference.
    pub fn to_caller(&self) -> String {
        match self {
            AuthError::UnknownNode(name) | AuthError::WrongToken(name) => format!(
                "not authenticated as {name:?}: the name is not registered or the token is not its token"
            ),
            AuthError::Backend(_) => {
                "the control plane cannot authenticate callers now (see its log)".to_owned()
            }
            other => other.to_string(),
        }
    }
}

/// The future an [`Authenticator`] returns.
pub type AuthFuture<'a> = Pin<Box<dyn Future<Output = Result<Caller, AuthError>> + Send + 'a>>;

/// Checks a call's credentials: the claimed node name and bearer token.
pub trait Authenticator: Send + Sync + 'static {
    /// Authenticates `node` with `token`.
    fn authenticate<'a>(&'a self, node: &'a str, token: &'a str) -> AuthFuture<'a>;
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawTokenFile {
    #[serde(default)]
    nodes: BTreeMap<String, String>,
    #[serde(default)]
    gateways: BTreeMap<String, RawGateway>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawGateway {
    token: String,
    #[serde(default)]
    identities: Vec<String>,
}

/// Bootstrap tokens of the nodes and gateways (`weir control --node-tokens`):
///
/// ```yaml
/// nodes:
///   node-a: 3f9c0d5e8b7a41c2a6d4e1f0b9c8d7e6   # node name: token
/// gateways:
///   ingress:
///     token: 7d1e2f3a4b5c6d7e8f9a0b1c2d3e4f5a
///     identities: [spiffe://cluster.local/ns/istio-system/sa/weir-gateway]
/// ```
///
/// Every token is at least [`MIN_TOKEN_LEN`] bytes and names one caller.
#[derive(Clone)]
pub struct TokenFile {
    callers: HashMap<String, (ring::digest::Digest, Caller)>,
}

impl std::fmt::Debug for TokenFile {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never print tokens.
        let mut names: Vec<&String> = self.callers.keys().collect();
        names.sort();
        f.debug_struct("TokenFile")
            .field("callers", &names)
            .finish()
    }
}

fn digest(token: &str) -> ring::digest::Digest {
    ring::digest::digest(&ring::digest::SHA256, token.as_bytes())
}

/// Compares two digests without an early exit.
fn same(a: &ring::digest::Digest, b: &ring::digest::Digest) -> bool {
    let (a, b) = (a.as_ref(), b.as_ref());
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

impl TokenFile {
    /// Reads and checks a token file.
    pub fn load(path: &Path) -> Result<Self, Error> {
        let text = std::fs::read_to_string(path).map_err(|e| Error::TokenFile {
            path: path.to_owned(),
            reason: format!("cannot read: {e}"),
        })?;
        Self::parse(&text).map_err(|reason| Error::TokenFile {
            path: path.to_owned(),
            reason,
        })
    }

    /// Parses a token file's text.
    pub fn parse(text: &str) -> Result<Self, String> {
        let raw: RawTokenFile = serde_yaml_ng::from_str(text).map_err(|e| e.to_string())?;
        let mut callers = HashMap::new();
        let mut tokens: HashMap<Vec<u8>, String> = HashMap::new();
        let mut add = |name: String, token: String, caller: Caller| -> Result<(), String> {
            if name.is_empty() {
                return Err("a node or gateway name is empty".to_owned());
            }
            let token = token.trim().to_owned();
            if token.len() < MIN_TOKEN_LEN {
                return Err(format!(
                    "the token of {name:?} is shorter than {MIN_TOKEN_LEN} bytes; use a random one (e.g. `openssl rand -hex 16`)"
                ));
            }
            let d = digest(&token);
            if let Some(other) = tokens.insert(d.as_ref().to_vec(), name.clone()) {
                return Err(format!(
                    "{name:?} and {other:?} have the same token; give each its own"
                ));
            }
            if callers.insert(name.clone(), (d, caller)).is_some() {
                return Err(format!("{name:?} is both a node and a gateway"));
            }
            Ok(())
        };
        for (name, token) in raw.nodes {
            add(name.clone(), token, Caller::Node { name })?;
        }
        for (name, g) in raw.gateways {
            let identities = g
                .identities
                .iter()
                .map(|s| {
                    s.parse::<SpiffeId>()
                        .map_err(|e| format!("gateway {name:?}: identity {s:?}: {e}"))
                })
                .collect::<Result<Vec<_>, _>>()?;
            add(
                name.clone(),
                g.token,
                Caller::Gateway {
                    name: name.clone(),
                    identities,
                },
            )?;
        }
        Ok(Self { callers })
    }

    /// How many nodes and gateways are registered.
    pub fn len(&self) -> usize {
        self.callers.len()
    }

    /// Whether no caller is registered.
    pub fn is_empty(&self) -> bool {
        self.callers.is_empty()
    }

    fn check(&self, node: &str, token: &str) -> Result<Caller, AuthError> {
        if node.is_empty() {
            return Err(AuthError::MissingNode);
        }
        if token.is_empty() {
            return Err(AuthError::MissingToken);
        }
        let (expected, caller) = self
            .callers
            .get(node)
            .ok_or_else(|| AuthError::UnknownNode(node.to_owned()))?;
        if same(expected, &digest(token)) {
            Ok(caller.clone())
        } else {
            Err(AuthError::WrongToken(node.to_owned()))
        }
    }
}

impl Authenticator for TokenFile {
    fn authenticate<'a>(&'a self, node: &'a str, token: &'a str) -> AuthFuture<'a> {
        let result = self.check(node, token);
        Box::pin(async move { result })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const FILE: &str = "nodes:
  node-a: aaaaaaaaaaaaaaaaaaaaaaaa
  node-b: bbbbbbbbbbbbbbbbbbbbbbbb
gateways:
  ingress:
    token: gggggggggggggggggggggggg
    identities: [spiffe://cluster.local/ns/istio-system/sa/weir-gateway]
";

    #[tokio::test(flavor = "current_thread")]
    async fn tokens_authenticate_their_node_only() {
        let t = TokenFile::parse(FILE).unwrap();
        assert_eq!(t.len(), 3);
        assert_eq!(
            t.authenticate("node-a", "aaaaaaaaaaaaaaaaaaaaaaaa").await,
            Ok(Caller::Node {
                name: "node-a".into()
            })
        );
        // node-b's token does not make you node-a.
        assert_eq!(
            t.authenticate("node-a", "bbbbbbbbbbbbbbbbbbbbbbbb").await,
            Err(AuthError::WrongToken("node-a".into()))
        );
        assert_eq!(
            t.authenticate("node-z", "aaaaaaaaaaaaaaaaaaaaaaaa").await,
            Err(AuthError::UnknownNode("node-z".into()))
        );
        assert_eq!(
            t.authenticate("node-a", "").await,
            Err(AuthError::MissingToken)
        );
        assert_eq!(
            t.authenticate("", "aaaaaaaaaaaaaaaaaaaaaaaa").await,
            Err(AuthError::MissingNode)
        );
        let gw = t
            .authenticate("ingress", "gggggggggggggggggggggggg")
            .await
            .unwrap();
        assert!(matches!(gw, Caller::Gateway { ref identities, .. } if identities.len() == 1));
        // Tokens are never printed.
        assert!(!format!("{t:?}").contains("aaaa"));
        // The caller cannot tell an unknown name from a wrong token.
        assert_eq!(
            AuthError::UnknownNode("n".into()).to_caller(),
            AuthError::WrongToken("n".into()).to_caller()
        );
        assert!(!AuthError::Backend("secret detail".into())
            .to_caller()
            .contains("secret"));
    }

    #[test]
    fn bad_files_are_explained() {
        let short = TokenFile::parse("nodes: {a: short}").unwrap_err();
        assert!(short.contains("shorter than"), "{short}");
        let dup = TokenFile::parse("nodes: {a: xxxxxxxxxxxxxxxxxxxx, b: xxxxxxxxxxxxxxxxxxxx}")
            .unwrap_err();
        assert!(dup.contains("same token"), "{dup}");
        let unknown = TokenFile::parse("node: {a: xxxxxxxxxxxxxxxxxxxx}").unwrap_err();
        assert!(unknown.contains("unknown field"), "{unknown}");
        let bad_id = TokenFile::parse(
            "gateways: {g: {token: xxxxxxxxxxxxxxxxxxxx, identities: [not-an-id]}}",
        )
        .unwrap_err();
        assert!(bad_id.contains("not-an-id"), "{bad_id}");
    }
}
