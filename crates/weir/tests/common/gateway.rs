//! Helpers for end-to-end tests of `weir gateway`: a gateway process in
//! its own network namespace ([`Gateway`]), host names for a namespace
//! ([`NetnsHosts`]) and test certificates made with the openssl CLI
//! ([`Pki`]).

use std::fs::File;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use weir_testing::{Host, HostChild};

use super::{metric_lines, metric_sum, python, wait_for, Ca, TempDir};

// ---------------------------------------------------------------------------
// Host names for a namespace

/// `/etc/netns/<ns>/hosts`: `ip netns exec` bind-mounts it over
/// `/etc/hosts`, so programs in that namespace resolve these names.
/// Removed on drop.
pub struct NetnsHosts {
    pub dir: PathBuf,
}

impl NetnsHosts {
    pub fn new(host: &Host, entries: &[(Ipv4Addr, &str)]) -> NetnsHosts {
        let dir = Path::new("/etc/netns").join(&host.name);
        std::fs::create_dir_all(&dir).unwrap();
        let mut text = String::from("127.0.0.1 localhost\n::1 localhost\n");
        for (ip, name) in entries {
            text += &format!("{ip} {name}\n");
        }
        std::fs::write(dir.join("hosts"), text).unwrap();
        NetnsHosts { dir }
    }
}

impl Drop for NetnsHosts {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

// ---------------------------------------------------------------------------
// Certificates (openssl)

/// Test CAs and leaf certificates made with the openssl CLI (P-256).
pub struct Pki {
    pub dir: TempDir,
}

impl Pki {
    pub fn new(tag: &str) -> Pki {
        Pki {
            dir: TempDir::new(tag),
        }
    }

    pub fn openssl(&self, args: &[&str]) {
        let out = std::process::Command::new("openssl")
            .args(args)
            .current_dir(self.dir.path())
            .output()
            .expect("run openssl");
        assert!(
            out.status.success(),
            "openssl {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    pub fn path(&self, name: &str) -> String {
        self.dir.join(name).to_string_lossy().into_owned()
    }

    /// A CA: `<name>.pem`, `<name>.key`.
    pub fn ca(&self, name: &str) -> String {
        self.openssl(&[
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
            "-keyout",
            &format!("{name}.key"),
            "-out",
            &format!("{name}.pem"),
            "-days",
            "2",
            "-subj",
            &format!("/CN={name}/O=weir tests"),
            "-addext",
            "basicConstraints=critical,CA:TRUE",
            "-addext",
            "keyUsage=critical,keyCertSign,cRLSign",
        ]);
        self.path(&format!("{name}.pem"))
    }

    /// A leaf `<name>.pem`/`<name>.key` signed by `ca`, with DNS SANs;
    /// `client` makes it a client certificate. Returns (cert, key).
    pub fn leaf(
        &self,
        ca: &str,
        name: &str,
        subject: &str,
        dns: &[&str],
        client: bool,
    ) -> (String, String) {
        self.openssl(&[
            "req",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
            "-keyout",
            &format!("{name}.key"),
            "-out",
            &format!("{name}.csr"),
            "-subj",
            subject,
        ]);
        let mut ext = String::from("basicConstraints=CA:FALSE\n");
        if !dns.is_empty() {
            // A DNS name, or a typed entry such as `URI:spiffe://...`.
            let sans: Vec<String> = dns
                .iter()
                .map(|d| {
                    if d.contains(':') {
                        (*d).to_owned()
                    } else {
                        format!("DNS:{d}")
                    }
                })
                .collect();
            ext += &format!("subjectAltName={}\n", sans.join(","));
        }
        ext += if client {
            "extendedKeyUsage=clientAuth\n"
        } else {
            "extendedKeyUsage=serverAuth\n"
        };
        self.dir.write(&format!("{name}.ext"), &ext);
        self.openssl(&[
            "x509",
            "-req",
            "-in",
            &format!("{name}.csr"),
            "-CA",
            &format!("{ca}.pem"),
            "-CAkey",
            &format!("{ca}.key"),
            "-CAcreateserial",
            "-days",
            "2",
            "-out",
            &format!("{name}.pem"),
            "-extfile",
            &format!("{name}.ext"),
        ]);
        (
            self.path(&format!("{name}.pem")),
            self.path(&format!("{name}.key")),
        )
    }
}

pub struct Gateway {
    pub host: Host,
    pub child: Option<HostChild>,
    pub log: PathBuf,
    pub _logdir: TempDir,
}

impl Gateway {
    pub fn start(host: &Host, config: &Path, ca: Ca<'_>, extra: &[&str]) -> Gateway {
        let logdir = TempDir::new("gw-log");
        let log = logdir.join("gateway.log");
        let file = File::create(&log).unwrap();
        let mut cmd = host.command(env!("CARGO_BIN_EXE_weir"));
        cmd.arg("gateway").arg("--config").arg(config);
        match ca {
            Ca::StateDir(d) => {
                cmd.arg("--state-dir").arg(d);
            }
            Ca::Files(d) => {
                cmd.arg("--ca-cert")
                    .arg(d.join("ca-cert.pem"))
                    .arg("--ca-key")
                    .arg(d.join("ca-key.pem"));
            }
        }
        cmd.args(["--reload-interval", "1s", "--drain-timeout", "1s"]);
        cmd.args(extra);
        if std::env::var_os("RUST_LOG").is_none() {
            cmd.env("RUST_LOG", "info");
        }
        cmd.stdin(Stdio::null())
            .stdout(file.try_clone().unwrap())
            .stderr(file);
        let child = host.spawn_command(cmd);
        let mut g = Gateway {
            host: host.clone(),
            child: Some(child),
            log,
            _logdir: logdir,
        };
        g.wait_ready();
        g
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// `GET http://127.0.0.1:<port><path>` from inside the gateway's
    /// namespace; returns (status code, body).
    pub fn get(&self, port: u16, path: &str) -> (String, String) {
        const GET_PY: &str = "import sys, urllib.request, urllib.error\n\
try:\n    r = urllib.request.urlopen(sys.argv[1], timeout=5); code, body = r.status, r.read()\n\
except urllib.error.HTTPError as e:\n    code, body = e.code, e.read()\n\
except Exception as e:\n    code, body = 0, repr(e).encode()\n\
sys.stdout.write(body.decode(errors='replace') + '\\n' + str(code))\n";
        let out = self.host.exec(
            python(),
            &["-c", GET_PY, &format!("http://127.0.0.1:{port}{path}")],
        );
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        let (body, code) = text.rsplit_once('\n').unwrap_or(("", &text));
        (code.trim().to_owned(), body.to_owned())
    }

    pub fn wait_ready(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Some(Ok(Some(status))) = self.child.as_mut().map(|c| c.child_mut().try_wait()) {
                panic!(
                    "gateway exited ({status}) before it was ready; log:\n{}",
                    self.log_text()
                );
            }
            let (code, _) = self.get(15021, "/healthz/ready");
            if code == "200" {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "gateway not ready within 20s (HTTP {code}); log:\n{}",
                self.log_text()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    pub fn metrics_text(&self) -> String {
        let (code, body) = self.get(15020, "/metrics");
        assert_eq!(
            code,
            "200",
            "GET /metrics: {body}\nlog:\n{}",
            self.log_text()
        );
        body
    }

    pub fn metric(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        metric_sum(&self.metrics_text(), name, labels)
    }

    #[track_caller]
    pub fn expect_metric_at_least(&self, name: &str, labels: &[(&str, &str)], min: f64) -> f64 {
        let mut value = 0.0;
        let mut text = String::new();
        let ok = wait_for(Duration::from_secs(10), || {
            text = self.metrics_text();
            value = metric_sum(&text, name, labels);
            value >= min
        });
        assert!(
            ok,
            "gateway: expected {name}{labels:?} >= {min}, got {value}. Lines:\n{}\n--- log:\n{}",
            metric_lines(&text, name),
            self.log_text()
        );
        value
    }

    /// SIGTERM; returns whether it exited on its own within `grace`.
    pub fn terminate(&mut self, grace: Duration) -> bool {
        let Some(mut child) = self.child.take() else {
            return false;
        };
        let pid = child.id().to_string();
        let _ = std::process::Command::new("kill")
            .args(["-TERM", &pid])
            .status();
        let deadline = Instant::now() + grace;
        while Instant::now() < deadline {
            if let Ok(Some(_)) = child.child_mut().try_wait() {
                return true;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        child.kill();
        false
    }
}

impl Drop for Gateway {
    fn drop(&mut self) {
        let verbose = std::env::var_os("WEIR_E2E_LOGS").is_some_and(|v| v == "1");
        if let Some(c) = self.child.take() {
            c.kill();
        }
        if verbose || std::thread::panicking() {
            eprintln!(
                "===== log of the gateway =====\n{}\n===== end =====",
                self.log_text()
            );
        }
    }
}
