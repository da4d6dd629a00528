use std::sync::Arc;

use rustls::pki_types::ServerName;

use super::*;

/// The bytes a real rustls client sends first.
fn client_hello(name: &str, sni: bool) -> Vec<u8> {
    let mut config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(rustls::RootCertStore::empty())
    .with_no_client_auth();
    config.enable_sni = sni;
    config.alpn_protocols = vec![b"mqtt".to_vec()];
    let name = ServerName::try_from(name.to_owned()).unwrap();
    let mut conn = rustls::ClientConnection::new(Arc::new(config), name).unwrap();
    let mut out = Vec::new();
    while conn.wants_write() {
        conn.write_tls(&mut out).unwrap();
    }
    out
}

#[test]
fn finds_the_sni_of_a_real_client_hello() {
    let bytes = client_hello("Broker-0.Kafka.Example.com", true);
    let hello = parse_client_hello(&bytes).unwrap().unwrap();
    assert_eq!(hello.sni.as_deref(), Some("broker-0.kafka.example.com"));
    assert_eq!(hello.len, bytes.len());
    // Bytes after the ClientHello (e.g. early data) are not part of it.
    let mut more = bytes.clone();
    more.extend_from_slice(b"\x17\x03\x03\x00\x01x");
    assert_eq!(parse_client_hello(&more).unwrap().unwrap().len, bytes.len());
}

#[test]
fn no_sni_when_the_client_sends_none() {
    let bytes = client_hello("mqtt.example.com", false);
    assert_eq!(parse_client_hello(&bytes).unwrap().unwrap().sni, None);
    // rustls sends no SNI for an IP address either.
    let bytes = client_hello("198.18.0.2", true);
    assert_eq!(parse_client_hello(&bytes).unwrap().unwrap().sni, None);
}

#[test]
fn every_truncation_asks_for_more() {
    let bytes = client_hello("a.example.com", true);
    for n in 0..bytes.len() {
        assert_eq!(
            parse_client_hello(&bytes[..n]),
            Ok(None),
            "prefix of {n} bytes"
        );
    }
}

#[test]
fn a_client_hello_split_over_records_is_reassembled() {
    let bytes = client_hello("split.example.com", true);
    let body = &bytes[5..];
    let (a, b) = body.split_at(40);
    let mut split = Vec::new();
    for part in [a, b] {
        split.extend_from_slice(&[22, 3, 1]);
        split.extend_from_slice(&(part.len() as u16).to_be_bytes());
        split.extend_from_slice(part);
    }
    let hello = parse_client_hello(&split).unwrap().unwrap();
    assert_eq!(hello.sni.as_deref(), Some("split.example.com"));
    assert_eq!(hello.len, split.len());
}

#[test]
fn plaintext_is_not_tls() {
    for text in [
        &b"GET / HTTP/1.1\r\n"[..],
        b"\x10\x0c\x00\x04MQTT",
        b"G",
        b"\x16\x01",
    ] {
        assert_eq!(
            parse_client_hello(text),
            Err(ClientHelloError::NotTls),
            "{text:?}"
        );
    }
}

#[test]
fn malformed_and_oversized_input_is_refused() {
    let bytes = client_hello("a.example.com", true);
    // A ServerHello-typed handshake message.
    let mut wrong = bytes.clone();
    wrong[5] = 2;
    assert!(matches!(
        parse_client_hello(&wrong),
        Err(ClientHelloError::Malformed(_))
    ));
    // A record length beyond the TLS limit.
    assert!(matches!(
        parse_client_hello(&[22, 3, 1, 0x48, 0x01]),
        Err(ClientHelloError::Malformed(_))
    ));
    // A handshake message announcing more than the gateway buffers.
    assert_eq!(
        parse_client_hello(&[22, 3, 1, 0, 4, 1, 0x01, 0, 0]),
        Err(ClientHelloError::TooLarge)
    );
    // Lengths inside the body that overrun it: corrupt every byte in turn
    // and check that nothing panics.
    for i in 5..bytes.len() {
        for v in [0u8, 0xff] {
            let mut b = bytes.clone();
            b[i] = v;
            let _ = parse_client_hello(&b);
        }
    }
    // An SNI that is not a host name.
    let mut bad = bytes.clone();
    let at = bad.windows(13).position(|w| w == b"a.example.com").unwrap();
    bad[at] = b'/';
    assert_eq!(
        parse_client_hello(&bad),
        Err(ClientHelloError::Malformed(
            "the server name is not a host name"
        ))
    );
}

#[tokio::test]
async fn reads_from_a_socket_and_keeps_the_bytes() {
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    let bytes = client_hello("mqtt.example.com", true);
    let sent = bytes.clone();
    let client = tokio::spawn(async move {
        use tokio::io::AsyncWriteExt;
        let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
        // Dribble it in small pieces.
        for chunk in sent.chunks(7) {
            s.write_all(chunk).await.unwrap();
            s.flush().await.unwrap();
        }
        s
    });
    let (mut server, _) = l.accept().await.unwrap();
    let mut buf = BytesMut::new();
    let hello = read_client_hello(&mut server, &mut buf, Duration::from_secs(5))
        .await
        .unwrap();
    assert_eq!(hello.sni.as_deref(), Some("mqtt.example.com"));
    assert_eq!(&buf[..], &bytes[..]);
    drop(client.await.unwrap());

    // A client that closes half-way.
    let partial = bytes[..20].to_vec();
    let client = tokio::spawn(async move {
        use tokio::io::AsyncWriteExt;
        let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
        s.write_all(&partial).await.unwrap();
    });
    let (mut server, _) = l.accept().await.unwrap();
    client.await.unwrap();
    let mut buf = BytesMut::new();
    assert_eq!(
        read_client_hello(&mut server, &mut buf, Duration::from_secs(5)).await,
        Err(ClientHelloError::Truncated)
    );
}
