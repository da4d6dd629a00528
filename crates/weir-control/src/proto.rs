//! The wire messages of `proto/control.proto`, written by hand with
//! `#[derive(prost::Message)]` so that building needs no `protoc`. The test
//! at the bottom checks every field number and wire type against the
//! `.proto` file.

use bytes::Bytes;

/// gRPC service name of the CA service.
pub const CERTIFICATE_SERVICE: &str = "weir.control.v1.CertificateService";
/// Path of `CertificateService/CreateCertificate`.
pub const CREATE_CERTIFICATE_PATH: &str = "/weir.control.v1.CertificateService/CreateCertificate";
/// gRPC service name of the config service.
pub const CONFIG_SERVICE: &str = "weir.control.v1.ConfigService";
/// Path of `ConfigService/StreamConfig`.
pub const STREAM_CONFIG_PATH: &str = "/weir.control.v1.ConfigService/StreamConfig";

/// Metadata entry naming the node (or gateway) the caller claims to be.
pub const NODE_HEADER: &str = "x-weir-node";

/// `StreamConfigRequest.role` of a node proxy.
pub const ROLE_NODE: &str = "node";
/// `StreamConfigRequest.role` of a gateway.
pub const ROLE_GATEWAY: &str = "gateway";

/// A certificate signing request for one SPIFFE id.
#[derive(Clone, PartialEq, prost::Message)]
pub struct CreateCertificateRequest {
    /// PEM PKCS#10 request; its SAN must be empty or exactly `identity`.
    #[prost(string, tag = "1")]
    pub csr: String,
    /// Requested lifetime in seconds; 0 means the control plane's maximum.
    #[prost(int64, tag = "2")]
    pub validity_duration: i64,
    /// The SPIFFE id asked for.
    #[prost(string, tag = "3")]
    pub identity: String,
}

/// The signed chain.
#[derive(Clone, PartialEq, prost::Message)]
pub struct CreateCertificateResponse {
    /// PEM certificates, leaf first, the mesh root last.
    #[prost(string, repeated, tag = "1")]
    pub cert_chain: Vec<String>,
}

/// Identifies a config object: kind, namespace, name.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord, prost::Message)]
pub struct ResourceKey {
    /// The document's `kind`.
    #[prost(string, tag = "1")]
    pub kind: String,
    /// `metadata.namespace` (`default` when absent).
    #[prost(string, tag = "2")]
    pub namespace: String,
    /// `metadata.name`.
    #[prost(string, tag = "3")]
    pub name: String,
}

/// A resource the node holds, with its content hash.
#[derive(Clone, PartialEq, prost::Message)]
pub struct ResourceVersion {
    /// Which resource.
    #[prost(message, optional, tag = "1")]
    pub key: Option<ResourceKey>,
    /// Its [`Resource::version`].
    #[prost(string, tag = "2")]
    pub version: String,
}

/// Opens a node's config stream.
#[derive(Clone, PartialEq, prost::Message)]
pub struct StreamConfigRequest {
    /// Everything the node holds (after a disconnect); empty for a full snapshot.
    #[prost(message, repeated, tag = "1")]
    pub known: Vec<ResourceVersion>,
    /// [`ROLE_NODE`] or [`ROLE_GATEWAY`].
    #[prost(string, tag = "2")]
    pub role: String,
}

/// The mesh settings a config was validated with.
#[derive(Clone, PartialEq, prost::Message)]
pub struct MeshSettings {
    /// The SPIFFE trust domain.
    #[prost(string, tag = "1")]
    pub trust_domain: String,
    /// Istio's root namespace.
    #[prost(string, tag = "2")]
    pub root_namespace: String,
}

/// One config object as a YAML document.
#[derive(Clone, PartialEq, prost::Message)]
pub struct Resource {
    /// Which resource.
    #[prost(message, optional, tag = "1")]
    pub key: Option<ResourceKey>,
    /// Content hash of `document`.
    #[prost(string, tag = "2")]
    pub version: String,
    /// One YAML document, UTF-8, as `weir check` reads it.
    #[prost(bytes = "bytes", tag = "3")]
    pub document: Bytes,
}

/// A snapshot or a delta of one node's view.
#[derive(Clone, PartialEq, prost::Message)]
pub struct ConfigUpdate {
    /// The control plane's config version after this update.
    #[prost(uint64, tag = "1")]
    pub version: u64,
    /// The node's view is exactly `resources` (drop everything else).
    #[prost(bool, tag = "2")]
    pub full: bool,
    /// Added or changed resources.
    #[prost(message, repeated, tag = "3")]
    pub resources: Vec<Resource>,
    /// Resources no longer in the view.
    #[prost(message, repeated, tag = "4")]
    pub removed: Vec<ResourceKey>,
    /// The control-plane instance (changes on restart).
    #[prost(string, tag = "5")]
    pub control_plane: String,
    /// The mesh settings the config was validated with.
    #[prost(message, optional, tag = "6")]
    pub mesh: Option<MeshSettings>,
}

#[cfg(test)]
mod tests {
    use std::collections::{BTreeMap, BTreeSet};

    use prost::Message;

    use super::*;

    /// message → {(field number, wire type)} from the `.proto` file.
    fn proto_fields() -> BTreeMap<String, BTreeSet<(u32, u8)>> {
        let text = include_str!("../proto/control.proto");
        let mut out: BTreeMap<String, BTreeSet<(u32, u8)>> = BTreeMap::new();
        let mut current: Option<String> = None;
        for line in text.lines() {
            let line = line.split("//").next().unwrap_or("").trim();
            if let Some(rest) = line.strip_prefix("message ") {
                let name = rest.trim_end_matches('{').trim().to_owned();
                out.entry(name.clone()).or_default();
                current = Some(name);
            } else if line == "}" {
                current = None;
            } else if let (Some(msg), Some((lhs, rhs))) = (&current, line.split_once('=')) {
                let number: u32 = rhs.trim().trim_end_matches(';').trim().parse().unwrap();
                let ty = lhs.split_whitespace().rev().nth(1).unwrap();
                let wire = match ty {
                    "int64" | "uint64" | "bool" => 0,
                    _ => 2, // string, bytes, messages
                };
                out.get_mut(msg).unwrap().insert((number, wire));
            }
        }
        out
    }

    /// The (field number, wire type) pairs present in an encoding.
    fn wire_fields(mut buf: &[u8]) -> BTreeSet<(u32, u8)> {
        let mut out = BTreeSet::new();
        while !buf.is_empty() {
            let key = prost::encoding::decode_varint(&mut buf).unwrap();
            let (number, wire) = ((key >> 3) as u32, (key & 7) as u8);
            out.insert((number, wire));
            match wire {
                0 => {
                    prost::encoding::decode_varint(&mut buf).unwrap();
                }
                2 => {
                    let len = prost::encoding::decode_varint(&mut buf).unwrap() as usize;
                    buf = &buf[len..];
                }
                other => panic!("unexpected wire type {other}"),
            }
        }
        out
    }

    #[test]
    fn messages_match_the_proto_file() {
        let key = ResourceKey {
            kind: "k".into(),
            namespace: "n".into(),
            name: "x".into(),
        };
        let encoded: BTreeMap<&str, Vec<u8>> = [
            (
                "CreateCertificateRequest",
                CreateCertificateRequest {
                    csr: "c".into(),
                    validity_duration: 1,
                    identity: "i".into(),
                }
                .encode_to_vec(),
            ),
            (
                "CreateCertificateResponse",
                CreateCertificateResponse {
                    cert_chain: vec!["a".into()],
                }
                .encode_to_vec(),
            ),
            ("ResourceKey", key.encode_to_vec()),
            (
                "ResourceVersion",
                ResourceVersion {
                    key: Some(key.clone()),
                    version: "v".into(),
                }
                .encode_to_vec(),
            ),
            (
                "StreamConfigRequest",
                StreamConfigRequest {
                    known: vec![ResourceVersion::default()],
                    role: "node".into(),
                }
                .encode_to_vec(),
            ),
            (
                "MeshSettings",
                MeshSettings {
                    trust_domain: "t".into(),
                    root_namespace: "r".into(),
                }
                .encode_to_vec(),
            ),
            (
                "Resource",
                Resource {
                    key: Some(key.clone()),
                    version: "v".into(),
                    document: Bytes::from_static(b"d"),
                }
                .encode_to_vec(),
            ),
            (
                "ConfigUpdate",
                ConfigUpdate {
                    version: 1,
                    full: true,
                    resources: vec![Resource::default()],
                    removed: vec![key.clone()],
                    control_plane: "c".into(),
                    mesh: Some(MeshSettings::default()),
                }
                .encode_to_vec(),
            ),
        ]
        .into_iter()
        .collect();
        let proto = proto_fields();
        assert_eq!(
            proto.keys().map(String::as_str).collect::<Vec<_>>(),
            encoded.keys().copied().collect::<Vec<_>>(),
            "messages in control.proto vs src/proto.rs"
        );
        for (name, bytes) in &encoded {
            assert_eq!(
                &wire_fields(bytes),
                &proto[*name],
                "{name}: (field number, wire type) in src/proto.rs vs control.proto"
            );
        }
        assert!(include_str!("../proto/control.proto").contains(&format!(
            "package {};",
            CONFIG_SERVICE.trim_end_matches(".ConfigService")
        )));
    }
}
