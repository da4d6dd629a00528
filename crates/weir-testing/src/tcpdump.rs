//! Packet capture on the test bridge.

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::mpsc;
use std::time::{Duration, Instant};

static NEXT_CAPTURE: AtomicU32 = AtomicU32::new(0);

/// A running `tcpdump -A` in a hub namespace. [`Tcpdump::stop`] returns the
/// text: one header line per packet (`IP 198.18.0.2.40000 > 198.18.0.3.15008:
/// Flags [P.] ...`) followed by the payload in ASCII, non-printable bytes as
/// `.`. Grep it for a plaintext marker to prove it did not cross the wire.
pub struct Tcpdump {
    child: Option<Child>,
    out: PathBuf,
}

impl Tcpdump {
    pub(crate) fn start(netns: &str, ifname: &str, filter: &str) -> Tcpdump {
        assert!(
            crate::find_in_path("tcpdump").is_some(),
            "tcpdump not found on PATH (apt-get install -y tcpdump)"
        );
        let out = std::env::temp_dir().join(format!(
            "{netns}-tcpdump-{}.txt",
            NEXT_CAPTURE.fetch_add(1, Ordering::Relaxed)
        ));
        let file = std::fs::File::create(&out)
            .unwrap_or_else(|e| panic!("cannot create {}: {e}", out.display()));
        let mut cmd = Command::new("ip");
        // -n: no DNS; -l: line-buffered so stop() sees everything written;
        // -A: payload in ASCII; -s 0: whole packets.
        cmd.args(["netns", "exec", netns, "tcpdump", "-i", ifname])
            .args(["-n", "-l", "-A", "-s", "0"])
            .args(filter.split_whitespace())
            .stdin(Stdio::null())
            .stdout(file)
            .stderr(Stdio::piped());
        let mut child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {cmd:?}: {e}"));
        // tcpdump says "listening on <if>" once the capture is armed; packets
        // sent before that would be missed.
        let stderr = child.stderr.take().expect("stderr piped");
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            let mut lines = BufReader::new(stderr).lines();
            let mut early = String::new();
            for line in lines.by_ref().map_while(Result::ok) {
                if line.contains("listening on") {
                    let _ = tx.send(Ok(()));
                    break;
                }
                early.push_str(&line);
                early.push('\n');
            }
            let _ = tx.send(Err(early));
            // Keep draining so tcpdump never blocks on a full pipe.
            for _ in lines {}
        });
        let mut capture = Tcpdump {
            child: Some(child),
            out,
        };
        match rx.recv_timeout(Duration::from_secs(10)) {
            Ok(Ok(())) => capture,
            Ok(Err(stderr)) => {
                capture.kill();
                panic!("tcpdump on {ifname} in {netns} exited: {stderr}")
            }
            Err(_) => {
                capture.kill();
                panic!("tcpdump on {ifname} in {netns} did not start within 10s")
            }
        }
    }

    /// Stops the capture and returns everything it printed.
    pub fn stop(mut self) -> String {
        // Let packets still in flight reach the capture before stopping.
        std::thread::sleep(Duration::from_millis(200));
        if let Some(mut child) = self.child.take() {
            // SIGINT makes tcpdump flush and exit cleanly.
            let _ = Command::new("kill")
                .args(["-INT", &child.id().to_string()])
                .status();
            let deadline = Instant::now() + Duration::from_secs(5);
            while Instant::now() < deadline {
                if matches!(child.try_wait(), Ok(Some(_))) {
                    break;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            let _ = child.kill();
            let _ = child.wait();
        }
        std::fs::read_to_string(&self.out).unwrap_or_else(|e| {
            panic!("cannot read capture {}: {e}", self.out.display());
        })
    }

    fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for Tcpdump {
    fn drop(&mut self) {
        self.kill();
        let _ = std::fs::remove_file(&self.out);
    }
}
