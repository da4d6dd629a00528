//! Who a TLS client is, from the certificate it presented: the
//! [`Principal`] Kafka authorization and the logs use.

use rustls_pki_types::CertificateDer;
use weir_core::kafka::Principal;
use weir_core::SpiffeId;
use x509_parser::der_parser::oid::Oid;
use x509_parser::extensions::GeneralName;
use x509_parser::prelude::{FromDer, X509Certificate, X509Name};

/// The principal of a client that presented `chain` (leaf first):
///
/// - a SPIFFE URI SAN (`spiffe://td/ns/x/sa/y`) of a certificate the mesh
///   CA issued (`mesh` says whether it did) → [`Principal::Spiffe`];
/// - otherwise → [`Principal::Certificate`] with the subject as an RFC 4514
///   string (most specific RDN first, as Kafka's SSL principal prints it,
///   e.g. `CN=billing,O=Example`) and every SAN as a string (DNS names,
///   URIs, e-mail addresses, IP addresses), so a SPIFFE URI from another CA
///   is only a SAN, which cannot match a mesh identity;
/// - no certificate (or one that does not parse, which a verifier would
///   have refused anyway) → [`Principal::Anonymous`].
pub fn principal_of(chain: Option<&[CertificateDer<'_>]>, mesh: impl Fn() -> bool) -> Principal {
    let Some(leaf) = chain.and_then(<[_]>::first) else {
        return Principal::Anonymous;
    };
    let Ok((_, cert)) = X509Certificate::from_der(leaf.as_ref()) else {
        return Principal::Anonymous;
    };
    let mut sans = Vec::new();
    if let Ok(Some(ext)) = cert.subject_alternative_name() {
        for name in &ext.value.general_names {
            match name {
                GeneralName::URI(u) => {
                    if u.starts_with("spiffe://") {
                        if let Ok(id) = u.parse::<SpiffeId>() {
                            if mesh() {
                                return Principal::Spiffe(id);
                            }
                        }
                    }
                    sans.push((*u).to_owned());
                }
                GeneralName::DNSName(d) => sans.push((*d).to_owned()),
                GeneralName::RFC822Name(e) => sans.push((*e).to_owned()),
                GeneralName::IPAddress(b) => {
                    if let Some(ip) = ip_of(b) {
                        sans.push(ip.to_string());
                    }
                }
                _ => {}
            }
        }
    }
    Principal::Certificate {
        subject: rfc4514(cert.subject()),
        sans,
    }
}

fn ip_of(b: &[u8]) -> Option<std::net::IpAddr> {
    match b.len() {
        4 => <[u8; 4]>::try_from(b).ok().map(std::net::IpAddr::from),
        16 => <[u8; 16]>::try_from(b).ok().map(std::net::IpAddr::from),
        _ => None,
    }
}

/// Short names RFC 4514 (and Kafka) print for common attribute types.
fn short_name(oid: &Oid<'_>) -> Option<&'static str> {
    Some(match oid.to_id_string().as_str() {
        "2.5.4.3" => "CN",
        "2.5.4.6" => "C",
        "2.5.4.7" => "L",
        "2.5.4.8" => "ST",
        "2.5.4.9" => "STREET",
        "2.5.4.10" => "O",
        "2.5.4.11" => "OU",
        "0.9.2342.19200300.100.1.25" => "DC",
        "0.9.2342.19200300.100.1.1" => "UID",
        _ => return None,
    })
}

/// Escapes an attribute value as RFC 4514 §2.4 requires.
fn escape(v: &str, out: &mut String) {
    let last = v.chars().count().saturating_sub(1);
    for (i, c) in v.chars().enumerate() {
        let special = matches!(c, '"' | '+' | ',' | ';' | '<' | '>' | '\\')
            || (i == 0 && (c == '#' || c == ' '))
            || (i == last && c == ' ');
        if special {
            out.push('\\');
        }
        if c == '\0' {
            out.push_str("\\00");
        } else {
            out.push(c);
        }
    }
}

/// The subject as RFC 4514 writes it: RDNs in reverse order of the
/// certificate's encoding, `,` between RDNs, `+` inside a multi-valued RDN.
pub fn rfc4514(name: &X509Name<'_>) -> String {
    let mut out = String::new();
    for (i, rdn) in name
        .iter()
        .collect::<Vec<_>>()
        .into_iter()
        .rev()
        .enumerate()
    {
        if i > 0 {
            out.push(',');
        }
        for (j, atv) in rdn.iter().enumerate() {
            if j > 0 {
                out.push('+');
            }
            match short_name(atv.attr_type()) {
                Some(s) => out.push_str(s),
                None => out.push_str(&atv.attr_type().to_id_string()),
            }
            out.push('=');
            match atv.as_str() {
                Ok(v) => escape(v, &mut out),
                Err(_) => {
                    out.push('#');
                    for b in atv.attr_value().data.iter() {
                        out.push_str(&format!("{b:02x}"));
                    }
                }
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cert(params: rcgen::CertificateParams) -> CertificateDer<'static> {
        let key = rcgen::KeyPair::generate().unwrap();
        params.self_signed(&key).unwrap().der().clone()
    }

    #[test]
    fn spiffe_uri_san_gives_a_mesh_principal() {
        let mut p = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        p.subject_alt_names = vec![rcgen::SanType::URI(
            "spiffe://cluster.local/ns/apps/sa/billing"
                .try_into()
                .unwrap(),
        )];
        let c = cert(p);
        assert_eq!(
            principal_of(Some(&[c]), || true),
            Principal::Spiffe("spiffe://cluster.local/ns/apps/sa/billing".parse().unwrap())
        );
    }

    /// A SPIFFE URI in a certificate the mesh CA did not issue is a SAN
    /// like any other, not a mesh identity.
    #[test]
    fn a_spiffe_uri_from_another_ca_is_only_a_san() {
        let mut p = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        let mut dn = rcgen::DistinguishedName::new();
        dn.push(rcgen::DnType::CommonName, "impostor");
        p.distinguished_name = dn;
        p.subject_alt_names = vec![rcgen::SanType::URI(
            "spiffe://cluster.local/ns/apps/sa/producer"
                .try_into()
                .unwrap(),
        )];
        let c = cert(p);
        assert_eq!(
            principal_of(Some(&[c]), || false),
            Principal::Certificate {
                subject: "CN=impostor".to_owned(),
                sans: vec!["spiffe://cluster.local/ns/apps/sa/producer".to_owned()],
            }
        );
    }

    #[test]
    fn other_certificates_give_subject_and_sans() {
        let mut p = rcgen::CertificateParams::new(vec!["client.example.com".to_owned()]).unwrap();
        let mut dn = rcgen::DistinguishedName::new();
        dn.push(rcgen::DnType::CountryName, "DE");
        dn.push(rcgen::DnType::OrganizationName, "Example, Inc");
        dn.push(rcgen::DnType::CommonName, "billing");
        p.distinguished_name = dn;
        p.subject_alt_names.push(rcgen::SanType::Rfc822Name(
            "ops@example.com".try_into().unwrap(),
        ));
        p.subject_alt_names
            .push(rcgen::SanType::IpAddress("198.18.0.9".parse().unwrap()));
        let c = cert(p);
        assert_eq!(
            principal_of(Some(&[c]), || true),
            Principal::Certificate {
                subject: "CN=billing,O=Example\\, Inc,C=DE".to_owned(),
                sans: vec![
                    "client.example.com".to_owned(),
                    "ops@example.com".to_owned(),
                    "198.18.0.9".to_owned()
                ],
            }
        );
    }

    #[test]
    fn no_certificate_is_anonymous() {
        assert_eq!(principal_of(None, || true), Principal::Anonymous);
        assert_eq!(principal_of(Some(&[]), || true), Principal::Anonymous);
        let junk = CertificateDer::from(vec![1u8, 2, 3]);
        assert_eq!(principal_of(Some(&[junk]), || true), Principal::Anonymous);
    }
}
