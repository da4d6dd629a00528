//! End-to-end tests of `weir gateway`: the real binary in its own network
//! namespace, real TLS clients in an "outside" namespace that resolves the
//! gateway's host names through `/etc/netns/<ns>/hosts`, real servers behind
//! it (mosquitto over MQTT/TLS, `openssl s_server`, python TCP servers, a
//! mesh Workload behind a `weir node`).
//!
//! Needs root, iproute2, iptables, tcpdump, python3, openssl and mosquitto
//! (+ mosquitto-clients); `WEIR_SKIP_NETNS_TESTS=1` skips them where they
//! cannot run. Tests run one at a time (`common::serial`).

mod common;

use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::OnceLock;
use std::time::Duration;

use common::gateway::{Gateway, NetnsHosts, Pki};
use common::{python, serial, start_servers, wait_for, Ca, NodeProxy, TempDir};
use weir_testing::{require_root, Host, HostChild, TestNet};

const OUTSIDE_IP: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 2);
const GATEWAY_IP: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 3);
const BACKEND_A_IP: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 4);
const BACKEND_B_IP: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 5);

const CONNECTIONS: &str = "weir_gateway_connections_total";
const ERRORS: &str = "weir_gateway_connection_errors_total";
const RECEIVED: &str = "weir_gateway_received_bytes_total";
const SENT: &str = "weir_gateway_sent_bytes_total";
const RELOADS: &str = "weir_config_reloads_total";

// ---------------------------------------------------------------------------
// A TLS client (python's ssl module)

const TLS_CLIENT_PY: &str = r#"
import json, socket, ssl, sys
host, port, sni, cafile, cert, key, payload, maxver = sys.argv[1:9]
res = {"connected": False, "handshake": False, "reply": "", "version": None, "error": None}
try:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    if cafile == "-":
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
    else:
        ctx.load_verify_locations(cafile)
    if cert != "-":
        ctx.load_cert_chain(cert, key)
    if maxver == "1.2":
        ctx.maximum_version = ssl.TLSVersion.TLSv1_2
    s = socket.create_connection((host, int(port)), timeout=5)
    res["connected"] = True
    t = ctx.wrap_socket(s, server_hostname=None if sni == "-" else sni)
    res["handshake"] = True
    res["version"] = t.version()
    t.sendall(payload.encode() + b"\n")
    buf = b""
    while b"\n" not in buf:
        d = t.recv(65536)
        if not d:
            break
        buf += d
    res["reply"] = buf.decode(errors="replace")
except Exception as e:
    res["error"] = repr(e)
print(json.dumps(res), flush=True)
"#;

fn tls_client_script() -> &'static Path {
    static SCRIPT: OnceLock<PathBuf> = OnceLock::new();
    SCRIPT.get_or_init(|| {
        let dir = std::env::temp_dir();
        let p = dir.join("weir-e2e-tls-client.py");
        let tmp = dir.join(format!(".weir-e2e-tls-client-{}.py", std::process::id()));
        std::fs::write(&tmp, TLS_CLIENT_PY).unwrap();
        std::fs::rename(&tmp, &p).unwrap();
        p
    })
}

#[derive(Debug, Default)]
struct TlsResult {
    handshake: bool,
    reply: String,
    version: Option<String>,
    error: Option<String>,
}

#[derive(Clone, Copy, Default)]
struct TlsOpts<'a> {
    ca: Option<&'a str>,
    cert: Option<(&'a str, &'a str)>,
    tls12: bool,
}

/// Connects from `host` to `ip:port` with TLS (SNI `sni`), sends `payload`
/// and a newline, reads one line back.
fn tls_client(
    host: &Host,
    ip: Ipv4Addr,
    port: u16,
    sni: &str,
    payload: &str,
    o: TlsOpts<'_>,
) -> TlsResult {
    let (cert, key) = o.cert.unwrap_or(("-", "-"));
    let out = host.exec(
        "timeout",
        &[
            "20",
            python(),
            "-u",
            &tls_client_script().to_string_lossy(),
            &ip.to_string(),
            &port.to_string(),
            sni,
            o.ca.unwrap_or("-"),
            cert,
            key,
            payload,
            if o.tls12 { "1.2" } else { "-" },
        ],
    );
    let raw = String::from_utf8_lossy(&out.stdout);
    let v: serde_json::Value = serde_json::from_str(raw.trim()).unwrap_or_else(|e| {
        panic!(
            "TLS client printed no result ({e}): {raw} {}",
            String::from_utf8_lossy(&out.stderr)
        )
    });
    TlsResult {
        handshake: v["handshake"].as_bool().unwrap_or(false),
        reply: v["reply"].as_str().unwrap_or_default().to_owned(),
        version: v["version"].as_str().map(str::to_owned),
        error: v["error"].as_str().map(str::to_owned),
    }
}

// ---------------------------------------------------------------------------
// The gateway process

/// `weir gateway` running inside `host` (its own network namespace, like a
/// gateway pod). Admin endpoints on that namespace's loopback, read with
/// curl from inside it. Killed on drop; its log is printed if the test panics.
/// A `weir gateway` config: gateway documents plus whatever else.
fn write_config(dir: &TempDir, docs: &str) -> PathBuf {
    dir.write("gateway.yaml", docs);
    dir.path().to_owned()
}

// ---------------------------------------------------------------------------
// Backends

/// mosquitto with a TLS listener on 8883 inside `host`.
fn mosquitto(host: &Host, dir: &TempDir, ca: &str, cert: &str, key: &str) -> HostChild {
    let conf = dir.write(
        "mosquitto.conf",
        &format!(
            "user root\nlistener 8883 0.0.0.0\ncafile {ca}\ncertfile {cert}\nkeyfile {key}\nallow_anonymous true\npersistence false\nlog_dest stderr\n"
        ),
    );
    let mut cmd = host.command("mosquitto");
    cmd.arg("-c")
        .arg(&conf)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    let child = host.spawn_command(cmd);
    wait_listening(host, 8883);
    child
}

/// `openssl s_server -rev` (replies to each line with the line reversed).
fn rev_server(host: &Host, port: u16, cert: &str, key: &str) -> HostChild {
    let mut cmd = host.command("openssl");
    cmd.args([
        "s_server",
        "-accept",
        &port.to_string(),
        "-cert",
        cert,
        "-key",
        key,
        "-rev",
        "-quiet",
    ])
    .stdin(Stdio::null())
    .stdout(Stdio::null())
    .stderr(Stdio::null());
    let child = host.spawn_command(cmd);
    wait_listening(host, port);
    child
}

fn wait_listening(host: &Host, port: u16) {
    let ok = wait_for(Duration::from_secs(10), || {
        let out = host.exec("ss", &["-Htln", &format!("sport = :{port}")]);
        !String::from_utf8_lossy(&out.stdout).trim().is_empty()
    });
    assert!(ok, "nothing listens on port {port} in {}", host.name);
}

fn mosquitto_pub(
    host: &Host,
    ca: &str,
    name: &str,
    topic: &str,
    message: &str,
) -> std::process::Output {
    host.exec(
        "timeout",
        &[
            "20",
            "mosquitto_pub",
            "-h",
            name,
            "-p",
            "8883",
            "--cafile",
            ca,
            "-t",
            topic,
            "-m",
            message,
            "-r",
            "-q",
            "1",
        ],
    )
}

fn mosquitto_sub(host: &Host, ca: &str, name: &str, topic: &str) -> std::process::Output {
    host.exec(
        "timeout",
        &[
            "20",
            "mosquitto_sub",
            "-h",
            name,
            "-p",
            "8883",
            "--cafile",
            ca,
            "-t",
            topic,
            "-C",
            "1",
            "-W",
            "10",
        ],
    )
}

fn text(o: &std::process::Output) -> String {
    format!(
        "status {}, stdout {:?}, stderr {:?}",
        o.status,
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

const GATEWAY_NS: &str = "istio-system";

// ---------------------------------------------------------------------------
// Tests

/// PASSTHROUGH with two real protocols on one port: MQTT (mosquitto) and a
/// line protocol over `openssl s_server`, routed by SNI to two backends (a
/// ServiceEntry with a STATIC endpoint, one with a DNS endpoint the gateway
/// resolves). Unknown SNI and a plaintext client are refused and counted,
/// and the gateway keeps serving.
#[test]
fn passthrough_routes_two_protocols_by_sni() {
    if !require_root() {
        return;
    }
    let _serial = serial();
    let net = TestNet::new("gwpass");
    let outside = net.add_host("outside", OUTSIDE_IP);
    let gw_host = net.add_host("gateway", GATEWAY_IP);
    let mqtt_host = net.add_host("mqtt", BACKEND_A_IP);
    let echo_host = net.add_host("echo", BACKEND_B_IP);
    let _outside_names = NetnsHosts::new(
        &outside,
        &[
            (GATEWAY_IP, "mqtt.example.com"),
            (GATEWAY_IP, "echo.example.com"),
            (GATEWAY_IP, "unknown.example.com"),
        ],
    );
    // The gateway resolves the echo backend's DNS endpoint through its own hosts file.
    let _gw_names = NetnsHosts::new(&gw_host, &[(BACKEND_B_IP, "echo-backend.internal.test")]);

    let pki = Pki::new("gwpass-pki");
    let ca = pki.ca("backend-ca");
    let (mqtt_cert, mqtt_key) = pki.leaf(
        "backend-ca",
        "mqtt",
        "/CN=mqtt.example.com",
        &["mqtt.example.com"],
        false,
    );
    let (echo_cert, echo_key) = pki.leaf(
        "backend-ca",
        "echo",
        "/CN=echo.example.com",
        &["echo.example.com"],
        false,
    );
    let _mosquitto = mosquitto(&mqtt_host, &pki.dir, &ca, &mqtt_cert, &mqtt_key);
    let _echo = rev_server(&echo_host, 8443, &echo_cert, &echo_key);

    let cfg = TempDir::new("gwpass-cfg");
    let config = write_config(
        &cfg,
        &format!(
            r#"
apiVersion: networking.istio.io/v1
kind: Gateway
metadata: {{name: edge, namespace: {GATEWAY_NS}}}
spec:
  selector: {{istio: ingressgateway}}
  servers:
  - port: {{number: 8883, name: tls-passthrough, protocol: TLS}}
    hosts: ["*.example.com"]
    tls: {{mode: PASSTHROUGH}}
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {{name: mqtt, namespace: messaging}}
spec:
  hosts: [mqtt.example.com]
  gateways: [{GATEWAY_NS}/edge]
  tls:
  - match: [{{port: 8883, sniHosts: [mqtt.example.com]}}]
    route: [{{destination: {{host: broker-0.mqtt.internal.test, port: {{number: 8883}}}}}}]
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {{name: broker-0, namespace: messaging}}
spec:
  hosts: [broker-0.mqtt.internal.test]
  location: MESH_EXTERNAL
  ports: [{{number: 8883, name: tls-mqtt, protocol: TLS}}]
  resolution: STATIC
  endpoints: [{{address: {BACKEND_A_IP}}}]
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {{name: echo, namespace: messaging}}
spec:
  hosts: [echo.example.com]
  gateways: [{GATEWAY_NS}/edge]
  tls:
  - match: [{{sniHosts: [echo.example.com]}}]
    route: [{{destination: {{host: echo.internal.test, port: {{number: 443}}}}}}]
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {{name: echo, namespace: messaging}}
spec:
  hosts: [echo.internal.test]
  ports: [{{number: 443, name: tls, protocol: TLS, targetPort: 8443}}]
  resolution: DNS
  endpoints: [{{address: echo-backend.internal.test}}]
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {{name: private, namespace: messaging}}
spec:
  hosts: [private.example.com]
  gateways: [{GATEWAY_NS}/edge]
  tls:
  - match: [{{sniHosts: [private.example.com]}}]
    route: [{{destination: {{host: private.internal.test, port: {{number: 443}}}}}}]
---
# Visible in its own namespace only: not to the gateway (Istio's exportTo).
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {{name: private, namespace: messaging}}
spec:
  hosts: [private.internal.test]
  exportTo: ["."]
  ports: [{{number: 443, name: tls, protocol: TLS, targetPort: 8443}}]
  resolution: STATIC
  endpoints: [{{address: {BACKEND_B_IP}}}]
"#
        ),
    );
    let state = TempDir::new("gwpass-ca");
    let gw = Gateway::start(&gw_host, &config, Ca::StateDir(state.path()), &[]);

    // MQTT: publish a retained message, read it back, both by host name.
    let out = mosquitto_pub(
        &outside,
        &ca,
        "mqtt.example.com",
        "weir/test",
        "MQTT-MARKER-31337",
    );
    assert!(
        out.status.success(),
        "mosquitto_pub through the gateway: {}\n{}",
        text(&out),
        gw.log_text()
    );
    let out = mosquitto_sub(&outside, &ca, "mqtt.example.com", "weir/test");
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("MQTT-MARKER-31337"),
        "mosquitto_sub through the gateway: {}\n{}",
        text(&out),
        gw.log_text()
    );
    let mqtt_route = [
        ("listener", "8883"),
        ("route", "messaging/mqtt#tls[0]"),
        ("mode", "PASSTHROUGH"),
    ];
    gw.expect_metric_at_least(CONNECTIONS, &mqtt_route, 2.0);

    // The second protocol, through the same port, to the other backend.
    let echo = |what: &str| {
        let r = tls_client(
            &outside,
            GATEWAY_IP,
            8883,
            "echo.example.com",
            "hello-weir",
            TlsOpts {
                ca: Some(&ca),
                ..Default::default()
            },
        );
        assert!(
            r.handshake && r.reply.contains("riew-olleh"),
            "{what}: {r:?}\n{}",
            gw.log_text()
        );
    };
    echo("echo through the gateway");
    let echo_route = [("listener", "8883"), ("route", "messaging/echo#tls[0]")];
    gw.expect_metric_at_least(CONNECTIONS, &echo_route, 1.0);
    gw.expect_metric_at_least(RECEIVED, &echo_route, "hello-weir\n".len() as f64);
    gw.expect_metric_at_least(SENT, &echo_route, "riew-olleh\n".len() as f64);
    // Istio's metrics: a ServiceEntry host outside the mesh, plain TCP.
    gw.expect_metric_at_least(
        "istio_tcp_connections_closed_total",
        &[
            ("reporter", "source"),
            ("destination_service", "echo.internal.test"),
            ("destination_service_namespace", "messaging"),
            ("destination_workload", "unknown"),
            ("source_principal", "unknown"),
            ("connection_security_policy", "unknown"),
        ],
        1.0,
    );

    // Unknown SNI: refused with a TLS alert, counted.
    let r = tls_client(
        &outside,
        GATEWAY_IP,
        8883,
        "unknown.example.com",
        "x",
        TlsOpts {
            ca: Some(&ca),
            ..Default::default()
        },
    );
    assert!(!r.handshake, "unknown SNI must not get through: {r:?}");
    assert!(
        r.error
            .as_deref()
            .unwrap_or_default()
            .to_ascii_uppercase()
            .contains("UNRECOGNIZED_NAME"),
        "the client should see unrecognized_name: {r:?}"
    );
    gw.expect_metric_at_least(
        ERRORS,
        &[("listener", "8883"), ("reason", "unknown_sni")],
        1.0,
    );

    // A route to a ServiceEntry not exported to the gateway's namespace:
    // refused, and the log says why.
    let r = tls_client(
        &outside,
        GATEWAY_IP,
        8883,
        "private.example.com",
        "hello-weir",
        TlsOpts {
            ca: Some(&ca),
            ..Default::default()
        },
    );
    assert!(
        !r.reply.contains("riew-olleh"),
        "a ServiceEntry exported to its own namespace only was reached: {r:?}"
    );
    gw.expect_metric_at_least(
        ERRORS,
        &[("listener", "8883"), ("reason", "unknown_destination")],
        1.0,
    );
    assert!(
        gw.log_text().contains("not exported to namespace"),
        "no log line naming exportTo:\n{}",
        gw.log_text()
    );

    // A plaintext client on the TLS port.
    let r = common::client(&outside, GATEWAY_IP, 8883, "PLAIN-TEXT-CLIENT");
    assert!(r.reply.is_empty(), "a plaintext client got a reply: {r:?}");
    gw.expect_metric_at_least(ERRORS, &[("listener", "8883"), ("reason", "not_tls")], 1.0);
    assert!(
        gw.log_text().contains("not TLS"),
        "no log line for the plaintext client"
    );

    // Everything else still works.
    echo("echo after the refused connections");
    let out = mosquitto_sub(&outside, &ca, "mqtt.example.com", "weir/test");
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("MQTT-MARKER-31337"),
        "{}",
        text(&out)
    );
    assert!(gw.metric("weir_gateway_active_connections", &[]) >= 0.0);
}

/// SIMPLE and MUTUAL termination with file-mounted certificates, to a plain
/// TCP backend; MUTUAL refuses clients without a certificate or with one
/// from another CA; TLS 1.2 clients are served too.
#[test]
fn simple_and_mutual_termination() {
    if !require_root() {
        return;
    }
    let _serial = serial();
    let net = TestNet::new("gwterm");
    let outside = net.add_host("outside", OUTSIDE_IP);
    let gw_host = net.add_host("gateway", GATEWAY_IP);
    let backend = net.add_host("backend", BACKEND_A_IP);
    let _server = start_servers(
        &backend,
        &[(9000, "PLAIN-BACKEND-4242"), (9001, "MUTUAL-BACKEND-4343")],
    );

    let pki = Pki::new("gwterm-pki");
    let edge_ca = pki.ca("edge-ca");
    let (gw_cert, gw_key) = pki.leaf(
        "edge-ca",
        "gw",
        "/CN=secure.example.com",
        &["secure.example.com", "mtls.example.com"],
        false,
    );
    let client_ca = pki.ca("client-ca");
    let client = pki.leaf("client-ca", "client", "/O=Example/CN=billing", &[], true);
    pki.ca("rogue-ca");
    let rogue = pki.leaf("rogue-ca", "rogue", "/CN=billing/O=Example", &[], true);

    let cfg = TempDir::new("gwterm-cfg");
    let config = write_config(
        &cfg,
        &format!(
            r#"
apiVersion: networking.istio.io/v1
kind: Gateway
metadata: {{name: edge, namespace: {GATEWAY_NS}}}
spec:
  selector: {{istio: ingressgateway}}
  servers:
  - port: {{number: 9443, name: tls-simple, protocol: TLS}}
    hosts: [secure.example.com]
    tls: {{mode: SIMPLE, serverCertificate: {gw_cert}, privateKey: {gw_key}}}
  - port: {{number: 9444, name: tls-mutual, protocol: TLS}}
    hosts: [mtls.example.com]
    tls:
      mode: MUTUAL
      serverCertificate: {gw_cert}
      privateKey: {gw_key}
      caCertificates: {client_ca}
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {{name: plain, namespace: apps}}
spec:
  hosts: [secure.example.com, mtls.example.com]
  gateways: [{GATEWAY_NS}/edge]
  tcp:
  - match: [{{port: 9443}}]
    route: [{{destination: {{host: {BACKEND_A_IP}, port: {{number: 9000}}}}}}]
  tls:
  - match: [{{sniHosts: [mtls.example.com]}}]
    route: [{{destination: {{host: {BACKEND_A_IP}, port: {{number: 9001}}}}}}]
"#
        ),
    );
    let state = TempDir::new("gwterm-ca");
    let gw = Gateway::start(&gw_host, &config, Ca::StateDir(state.path()), &[]);

    // SIMPLE, TLS 1.3 and 1.2: the backend sees a connection from the gateway.
    for tls12 in [false, true] {
        let r = tls_client(
            &outside,
            GATEWAY_IP,
            9443,
            "secure.example.com",
            "hi",
            TlsOpts {
                ca: Some(&edge_ca),
                tls12,
                ..Default::default()
            },
        );
        assert!(
            r.reply.contains("PLAIN-BACKEND-4242")
                && r.reply.contains(&format!("peer={GATEWAY_IP}")),
            "SIMPLE (tls12={tls12}): {r:?}\n{}",
            gw.log_text()
        );
        assert_eq!(
            r.version.as_deref(),
            Some(if tls12 { "TLSv1.2" } else { "TLSv1.3" })
        );
    }
    gw.expect_metric_at_least(
        CONNECTIONS,
        &[
            ("listener", "9443"),
            ("route", "apps/plain#tcp[0]"),
            ("mode", "SIMPLE"),
        ],
        2.0,
    );
    gw.expect_metric_at_least(RECEIVED, &[("listener", "9443")], 6.0);

    // MUTUAL with a client certificate from the CA.
    let r = tls_client(
        &outside,
        GATEWAY_IP,
        9444,
        "mtls.example.com",
        "hi",
        TlsOpts {
            ca: Some(&edge_ca),
            cert: Some((&client.0, &client.1)),
            ..Default::default()
        },
    );
    assert!(
        r.reply.contains("MUTUAL-BACKEND-4343"),
        "MUTUAL with a certificate: {r:?}\n{}",
        gw.log_text()
    );
    gw.expect_metric_at_least(
        CONNECTIONS,
        &[
            ("listener", "9444"),
            ("route", "apps/plain#tls[0]"),
            ("mode", "MUTUAL"),
        ],
        1.0,
    );
    assert!(
        gw.log_text().contains("CN=billing,O=Example"),
        "the access log names the client's subject"
    );

    // Without a certificate, and with one from another CA: refused.
    let r = tls_client(
        &outside,
        GATEWAY_IP,
        9444,
        "mtls.example.com",
        "hi",
        TlsOpts {
            ca: Some(&edge_ca),
            ..Default::default()
        },
    );
    assert!(
        !r.reply.contains("MUTUAL-BACKEND"),
        "MUTUAL without a certificate got through: {r:?}"
    );
    gw.expect_metric_at_least(
        ERRORS,
        &[("listener", "9444"), ("reason", "no_client_certificate")],
        1.0,
    );
    let r = tls_client(
        &outside,
        GATEWAY_IP,
        9444,
        "mtls.example.com",
        "hi",
        TlsOpts {
            ca: Some(&edge_ca),
            cert: Some((&rogue.0, &rogue.1)),
            ..Default::default()
        },
    );
    assert!(
        !r.reply.contains("MUTUAL-BACKEND"),
        "MUTUAL with a foreign certificate got through: {r:?}"
    );
    gw.expect_metric_at_least(
        ERRORS,
        &[("listener", "9444"), ("reason", "bad_client_certificate")],
        1.0,
    );

    // The SIMPLE listener is unaffected.
    let r = tls_client(
        &outside,
        GATEWAY_IP,
        9443,
        "secure.example.com",
        "hi",
        TlsOpts {
            ca: Some(&edge_ca),
            ..Default::default()
        },
    );
    assert!(r.reply.contains("PLAIN-BACKEND-4242"), "{r:?}");
}

/// Upstream to a mesh Workload goes over HBONE with the gateway's own SPIFFE
/// identity: the Workload's node proxy sees that principal (its metrics
/// name it), an AuthorizationPolicy allowing only the gateway lets it in,
/// and one that no longer allows it refuses it (counted at the gateway).
#[test]
fn hbone_upstream_carries_the_gateway_identity() {
    if !require_root() {
        return;
    }
    let _serial = serial();
    let net = TestNet::new("gwhbone");
    let outside = net.add_host("outside", OUTSIDE_IP);
    let gw_host = net.add_host("gateway", GATEWAY_IP);
    let app_host = net.add_host("app", BACKEND_A_IP);
    let _server = start_servers(&app_host, &[(9000, "MESH-APP-REPLY-777")]);

    let pki = Pki::new("gwhbone-pki");
    let edge_ca = pki.ca("edge-ca");
    let (gw_cert, gw_key) = pki.leaf(
        "edge-ca",
        "gw",
        "/CN=app.example.com",
        &["app.example.com"],
        false,
    );

    let gateway_principal = format!("cluster.local/ns/{GATEWAY_NS}/sa/weir-gateway");
    let policy = |principal: &str| {
        format!(
            "apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {{name: only-gateway, namespace: apps}}\n\
             spec:\n  selector: {{matchLabels: {{app: app}}}}\n  action: ALLOW\n  rules:\n  - from: [{{source: {{principals: [\"{principal}\"]}}}}]\n"
        )
    };
    let cfg = TempDir::new("gwhbone-cfg");
    cfg.write(
        "mesh.yaml",
        &(common::workload("app", "apps", "app", &app_host, "node-b")
            + "---\napiVersion: weir.dev/v1alpha1\nkind: Service\nmetadata: {name: app, namespace: apps}\nspec:\n  selector: {app: app}\n  ports: [{name: tcp, port: 80, targetPort: 9000}]\n"
            + "---\napiVersion: security.istio.io/v1\nkind: PeerAuthentication\nmetadata: {name: strict, namespace: apps}\nspec: {mtls: {mode: STRICT}}\n"),
    );
    cfg.write("policy.yaml", &policy(&gateway_principal));
    cfg.write(
        "gateway.yaml",
        &format!(
            r#"
apiVersion: networking.istio.io/v1
kind: Gateway
metadata: {{name: edge, namespace: {GATEWAY_NS}}}
spec:
  selector: {{istio: ingressgateway}}
  servers:
  - port: {{number: 9443, name: tls-app, protocol: TLS}}
    hosts: ["apps/app.example.com"]
    tls: {{mode: SIMPLE, serverCertificate: {gw_cert}, privateKey: {gw_key}}}
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {{name: app, namespace: apps}}
spec:
  hosts: [app.example.com]
  gateways: [{GATEWAY_NS}/edge]
  tls:
  - match: [{{sniHosts: [app.example.com]}}]
    route: [{{destination: {{host: app, port: {{number: 80}}}}}}]
"#
        ),
    );
    let state = TempDir::new("gwhbone-ca");
    let node = NodeProxy::start_ready("node-b", &[cfg.path()], Ca::StateDir(state.path()), &[]);
    let gw = Gateway::start(&gw_host, cfg.path(), Ca::StateDir(state.path()), &[]);

    let capture = net.tcpdump_filtered(weir_testing::BRIDGE, "tcp");
    let r = tls_client(
        &outside,
        GATEWAY_IP,
        9443,
        "app.example.com",
        "THROUGH-THE-MESH-55",
        TlsOpts {
            ca: Some(&edge_ca),
            ..Default::default()
        },
    );
    let wire = capture.stop();
    assert!(
        r.reply.contains("MESH-APP-REPLY-777"),
        "client -> gateway -> HBONE -> app: {r:?}\n{}",
        gw.log_text()
    );
    assert!(
        wire.contains(&format!("> {BACKEND_A_IP}.15008:")),
        "the gateway did not use HBONE (port 15008):\n{wire}"
    );
    assert!(
        !wire.contains(&format!("{BACKEND_A_IP}.9000")),
        "plaintext to the app port on the wire:\n{wire}"
    );
    assert!(
        !wire.contains("THROUGH-THE-MESH-55"),
        "payload in clear text on the wire:\n{wire}"
    );

    let gateway_id = format!("spiffe://{gateway_principal}");
    node.expect_metric_at_least(
        "istio_tcp_connections_opened_total",
        &[
            ("reporter", "destination"),
            ("source_principal", gateway_id.as_str()),
            ("destination_workload", "app"),
            ("connection_security_policy", "mutual_tls"),
            ("response_flags", "-"),
        ],
        1.0,
    );
    gw.expect_metric_at_least(
        CONNECTIONS,
        &[
            ("listener", "9443"),
            ("route", "apps/app#tls[0]"),
            ("mode", "SIMPLE"),
        ],
        1.0,
    );
    // Istio's metrics, as an ingress gateway reports them.
    let istio = [
        ("reporter", "source"),
        ("source_workload", "weir-gateway"),
        ("source_workload_namespace", GATEWAY_NS),
        ("source_principal", gateway_id.as_str()),
        ("destination_workload", "app"),
        ("destination_workload_namespace", "apps"),
        ("destination_service", "app.apps.svc.cluster.local"),
        ("destination_service_name", "app"),
        ("destination_service_namespace", "apps"),
        ("connection_security_policy", "mutual_tls"),
        ("request_protocol", "tcp"),
    ];
    gw.expect_metric_at_least("istio_tcp_connections_opened_total", &istio, 1.0);
    gw.expect_metric_at_least("istio_tcp_connections_closed_total", &istio, 1.0);
    gw.expect_metric_at_least(
        "istio_tcp_received_bytes_total",
        &istio,
        "THROUGH-THE-MESH-55".len() as f64,
    );
    gw.expect_metric_at_least(
        "istio_tcp_sent_bytes_total",
        &istio,
        "MESH-APP-REPLY-777".len() as f64,
    );

    // The policy stops allowing the gateway: the node refuses its tunnel.
    // (A connection admitted just before the node reloads is closed by the
    // reload instead, which the gateway sees as a reset, not a refusal:
    // so wait for a refused one.)
    cfg.write(
        "policy.yaml",
        &policy("cluster.local/ns/apps/sa/someone-else"),
    );
    let upstream_denied = [("listener", "9443"), ("reason", "upstream_denied")];
    let denied = wait_for(Duration::from_secs(15), || {
        let r = tls_client(
            &outside,
            GATEWAY_IP,
            9443,
            "app.example.com",
            "x",
            TlsOpts {
                ca: Some(&edge_ca),
                ..Default::default()
            },
        );
        !r.reply.contains("MESH-APP-REPLY-777") && gw.metric(ERRORS, &upstream_denied) >= 1.0
    });
    assert!(
        denied,
        "the node kept admitting the gateway after the policy changed\n{}",
        node.log_text()
    );
    gw.expect_metric_at_least(
        ERRORS,
        &[("listener", "9443"), ("reason", "upstream_denied")],
        1.0,
    );
    node.expect_metric_at_least(
        "istio_tcp_connections_failed_total",
        &[
            ("reporter", "destination"),
            ("source_principal", gateway_id.as_str()),
            ("response_flags", "DENY"),
        ],
        1.0,
    );
}

/// Listeners follow the config: a new server opens its port, an invalid
/// change is refused (the previous config keeps serving), a removed server
/// closes its port; SIGTERM drains and exits.
#[test]
fn reload_adds_and_removes_listeners() {
    if !require_root() {
        return;
    }
    let _serial = serial();
    let net = TestNet::new("gwreload");
    let outside = net.add_host("outside", OUTSIDE_IP);
    let gw_host = net.add_host("gateway", GATEWAY_IP);
    let backend = net.add_host("backend", BACKEND_A_IP);
    let _server = start_servers(
        &backend,
        &[(9000, "TCP-BACKEND-1"), (9001, "TCP-BACKEND-2")],
    );

    let server = |port: u16| {
        format!("  - port: {{number: {port}, name: tcp-{port}, protocol: TCP}}\n    hosts: ['*']\n")
    };
    let docs = |servers: &str| {
        format!(
            "apiVersion: networking.istio.io/v1\nkind: Gateway\nmetadata: {{name: edge, namespace: {GATEWAY_NS}}}\nspec:\n  selector: {{istio: ingressgateway}}\n  servers:\n{servers}\
             ---\napiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: {{name: tcp, namespace: apps}}\nspec:\n  hosts: ['*']\n  gateways: [{GATEWAY_NS}/edge]\n  tcp:\n\
             \x20 - match: [{{port: 7000}}]\n    route: [{{destination: {{host: {BACKEND_A_IP}, port: {{number: 9000}}}}}}]\n\
             \x20 - match: [{{port: 7001}}]\n    route: [{{destination: {{host: {BACKEND_A_IP}, port: {{number: 9001}}}}}}]\n"
        )
    };
    let cfg = TempDir::new("gwreload-cfg");
    let config = write_config(&cfg, &docs(&server(7000)));
    let state = TempDir::new("gwreload-ca");
    let mut gw = Gateway::start(&gw_host, &config, Ca::StateDir(state.path()), &[]);

    let r = common::client(&outside, GATEWAY_IP, 7000, "hi");
    assert!(
        r.reply.contains("TCP-BACKEND-1"),
        "{r:?}\n{}",
        gw.log_text()
    );
    assert!(
        !common::client(&outside, GATEWAY_IP, 7001, "hi").connected,
        "7001 is not configured yet"
    );

    // Add a server: its port opens.
    cfg.write("gateway.yaml", &docs(&(server(7000) + &server(7001))));
    let opened = wait_for(Duration::from_secs(10), || {
        common::client(&outside, GATEWAY_IP, 7001, "hi")
            .reply
            .contains("TCP-BACKEND-2")
    });
    assert!(
        opened,
        "port 7001 did not open after the reload\n{}",
        gw.log_text()
    );

    // An invalid change is refused; both ports keep working.
    cfg.write(
        "gateway.yaml",
        &docs(
            &(server(7000)
                + "  - port: {number: 7002, name: udp, protocol: UDP}\n    hosts: ['*']\n"),
        ),
    );
    gw.expect_metric_at_least(RELOADS, &[("result", "error")], 1.0);
    assert!(
        gw.log_text()
            .contains("\"UDP\" is not a protocol weir gateways carry"),
        "the refusal names the problem"
    );
    assert!(common::client(&outside, GATEWAY_IP, 7001, "hi")
        .reply
        .contains("TCP-BACKEND-2"));
    let (_, dump) = gw.get(15000, "/config_dump");
    assert!(
        dump.contains("last_error") && dump.contains("UDP"),
        "config_dump shows the refused reload: {dump}"
    );

    // Remove the second server: its port closes, the first stays.
    cfg.write("gateway.yaml", &docs(&server(7000)));
    let closed = wait_for(Duration::from_secs(10), || {
        !common::client(&outside, GATEWAY_IP, 7001, "hi").connected
    });
    assert!(
        closed,
        "port 7001 still open after its server was removed\n{}",
        gw.log_text()
    );
    assert!(common::client(&outside, GATEWAY_IP, 7000, "hi")
        .reply
        .contains("TCP-BACKEND-1"));
    assert!(gw.metric(RELOADS, &[("result", "success")]) >= 2.0);

    assert!(
        gw.terminate(Duration::from_secs(10)),
        "the gateway did not exit on SIGTERM\n{}",
        gw.log_text()
    );
    assert!(gw.log_text().contains("gateway stopped"));
}
