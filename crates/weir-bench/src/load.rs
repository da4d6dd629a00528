//! Load generators. Both run as child processes of the benchmark re-exec'd
//! inside a host's network namespace (`ip netns exec <ns> weir-bench __serve`
//! / `__client ...`), so every socket they create lives in that namespace.
//!
//! Wire protocol (client → server): the first byte picks the mode.
//! - `S` sink: frames of [`FRAME`] bytes; the first byte of a frame is 1 on
//!   the last one. The server then answers 24 bytes: nanoseconds (on its own
//!   clock) at which the first and last frame were complete, and the bytes
//!   received after the first frame. No half-close is needed, so a proxy that
//!   mishandles half-close cannot distort the figure.
//! - `E` echo: everything read is written back, until EOF.
//! - `H` hold: the server answers one byte (proving the whole path is up),
//!   then waits for EOF.
//!
//! Clients print one line `RESULT key=value ...` on stdout.

use std::io::{BufRead, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::{Arc, Barrier};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use hdrhistogram::Histogram;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// Size of one bulk frame (and of each write in the throughput test).
pub const FRAME: usize = 128 * 1024;
/// Request and response size of the latency test.
pub const RR_SIZE: usize = 1024;
/// Request and response size of the connection-rate test.
pub const CPS_SIZE: usize = 64;
const IO_TIMEOUT: Duration = Duration::from_secs(15);
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

// ---------------------------------------------------------------- server

/// Runs the server on `0.0.0.0:port` forever; prints `READY` once listening.
pub fn serve(port: u16) -> Result<()> {
    let base = Instant::now();
    accept_forever(
        SocketAddr::from(([0, 0, 0, 0], port)),
        "server",
        move |stream| async move {
            if let Err(e) = handle(stream, base).await {
                eprintln!("weir-bench server: connection: {e:#}");
            }
        },
    )
}

/// Bytes each direction of [`relay`] moves per read and write: as much as
/// the node proxy reads at once (weir-hbone's read-ahead and the
/// forwarder's largest chunk are 256 KiB too).
const RELAY_BUF: usize = 256 * 1024;

/// A plain TCP relay (the `--relay` reference path): accepts on `listen`,
/// connects each connection to `to` and copies both ways, with no TLS, no
/// HTTP/2 and no policy. Two of them in a row have the node proxies' shape
/// (three TCP connections, two user-space passes), so what they reach is
/// the ceiling of any such proxy on this machine. Prints `READY` once
/// listening; runs until killed.
pub fn relay(listen: SocketAddr, to: SocketAddr) -> Result<()> {
    accept_forever(listen, "relay", move |mut inbound| async move {
        let mut outbound = match tokio::net::TcpStream::connect(to).await {
            Ok(s) => s,
            Err(e) => {
                eprintln!("weir-bench relay: connect {to}: {e}");
                return;
            }
        };
        let _ = inbound.set_nodelay(true);
        let _ = outbound.set_nodelay(true);
        let _ = tokio::io::copy_bidirectional_with_sizes(
            &mut inbound,
            &mut outbound,
            RELAY_BUF,
            RELAY_BUF,
        )
        .await;
    })
}

/// Listens on `addr` in a tokio runtime with two worker threads (as many
/// as a node proxy has by default; for the relay, one thread gave the same
/// round trip: +48.7 against +43.4 µs), prints `READY`, and runs `on_conn`
/// for every connection, forever. Accept errors (EMFILE and friends) back
/// off instead of spinning.
fn accept_forever<F, Fut>(addr: SocketAddr, who: &'static str, on_conn: F) -> Result<()>
where
    F: Fn(tokio::net::TcpStream) -> Fut + Send + 'static,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    rt.block_on(async move {
        let socket = tokio::net::TcpSocket::new_v4()?;
        socket.set_reuseaddr(true)?;
        socket.bind(addr)?;
        let listener = socket.listen(4096)?;
        println!("READY");
        std::io::stdout().flush()?;
        loop {
            match listener.accept().await {
                Ok((stream, _)) => {
                    tokio::spawn(on_conn(stream));
                }
                Err(e) => {
                    eprintln!("weir-bench {who}: accept: {e}");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            }
        }
    })
}

async fn handle(mut s: tokio::net::TcpStream, base: Instant) -> Result<()> {
    let mut mode = [0u8; 1];
    if s.read(&mut mode).await? == 0 {
        return Ok(());
    }
    match mode[0] {
        b'S' => {
            let mut buf = vec![0u8; FRAME];
            let mut first = None;
            let mut bytes = 0u64;
            loop {
                s.read_exact(&mut buf).await?;
                let now = base.elapsed().as_nanos() as u64;
                if first.is_none() {
                    first = Some(now);
                } else {
                    bytes += FRAME as u64;
                }
                if buf[0] == 1 {
                    let mut out = [0u8; 24];
                    out[..8].copy_from_slice(&first.unwrap_or(now).to_le_bytes());
                    out[8..16].copy_from_slice(&now.to_le_bytes());
                    out[16..].copy_from_slice(&bytes.to_le_bytes());
                    s.write_all(&out).await?;
                    break;
                }
            }
            drain(&mut s).await
        }
        b'E' => {
            s.set_nodelay(true)?;
            let mut buf = vec![0u8; 16 * 1024];
            loop {
                let n = s.read(&mut buf).await?;
                if n == 0 {
                    return Ok(());
                }
                s.write_all(&buf[..n]).await?;
            }
        }
        b'H' => {
            s.write_all(b"k").await?;
            drain(&mut s).await
        }
        other => bail!("unknown mode byte {other:#x}"),
    }
}

async fn drain(s: &mut tokio::net::TcpStream) -> Result<()> {
    let mut buf = [0u8; 64];
    while s.read(&mut buf).await? != 0 {}
    Ok(())
}

// ---------------------------------------------------------------- clients

fn connect(addr: SocketAddr) -> Result<TcpStream> {
    let s = TcpStream::connect_timeout(&addr, CONNECT_TIMEOUT)
        .with_context(|| format!("connect {addr}"))?;
    s.set_read_timeout(Some(IO_TIMEOUT))?;
    s.set_write_timeout(Some(IO_TIMEOUT))?;
    Ok(s)
}

/// Bulk throughput of `streams` parallel connections for `secs` seconds.
/// Prints bytes, the server-side interval, MB/s and Gbit/s.
pub fn throughput(addr: SocketAddr, streams: usize, secs: f64) -> Result<()> {
    let barrier = Arc::new(Barrier::new(streams));
    let handles: Vec<_> = (0..streams)
        .map(|_| {
            let barrier = barrier.clone();
            std::thread::spawn(move || -> Result<(u64, u64, u64)> {
                let mut s = connect(addr)?;
                let mut frame = vec![0x5au8; FRAME];
                frame[0] = 0;
                s.write_all(b"S")?;
                barrier.wait();
                let deadline = Instant::now() + Duration::from_secs_f64(secs);
                loop {
                    let last = Instant::now() >= deadline;
                    frame[0] = u8::from(last);
                    s.write_all(&frame).context("bulk write")?;
                    if last {
                        break;
                    }
                }
                let mut st = [0u8; 24];
                s.read_exact(&mut st)
                    .context("reading the server's byte count")?;
                let word = |i: usize| {
                    u64::from_le_bytes(st[i * 8..i * 8 + 8].try_into().expect("8 bytes"))
                };
                Ok((word(0), word(1), word(2)))
            })
        })
        .collect();
    let mut first = u64::MAX;
    let mut last = 0u64;
    let mut bytes = 0u64;
    for h in handles {
        let (f, l, b) = h
            .join()
            .map_err(|_| anyhow::anyhow!("stream thread panicked"))??;
        first = first.min(f);
        last = last.max(l);
        bytes += b;
    }
    let secs = (last.saturating_sub(first)) as f64 / 1e9;
    if secs <= 0.0 {
        bail!("no measurable interval");
    }
    let bps = bytes as f64 / secs;
    println!(
        "RESULT bytes={bytes} secs={secs:.3} mbps={:.1} gbitps={:.3}",
        bps / 1e6,
        bps * 8.0 / 1e9
    );
    Ok(())
}

/// Round-trip latency of `RR_SIZE`-byte request/response on one connection.
pub fn latency(addr: SocketAddr, warmup: usize, count: usize, max_secs: f64) -> Result<()> {
    let mut s = connect(addr)?;
    s.set_nodelay(true)?;
    s.write_all(b"E")?;
    let req = [0x61u8; RR_SIZE];
    let mut resp = [0u8; RR_SIZE];
    let mut hist = Histogram::<u64>::new_with_bounds(1, 60_000_000_000, 3)?;
    let start = Instant::now();
    let limit = Duration::from_secs_f64(max_secs);
    for i in 0..warmup + count {
        let t = Instant::now();
        s.write_all(&req)?;
        s.read_exact(&mut resp).context("reading the echo")?;
        if i >= warmup {
            hist.record(t.elapsed().as_nanos().max(1) as u64)?;
            if start.elapsed() > limit {
                break;
            }
        }
    }
    let us = |q: f64| hist.value_at_quantile(q) as f64 / 1e3;
    println!(
        "RESULT count={} p50_us={:.1} p90_us={:.1} p99_us={:.1} p999_us={:.1} mean_us={:.1} max_us={:.1}",
        hist.len(),
        us(0.5),
        us(0.9),
        us(0.99),
        us(0.999),
        hist.mean() / 1e3,
        hist.max() as f64 / 1e3
    );
    Ok(())
}

/// Connections per second: `workers` loops of connect, `CPS_SIZE`-byte
/// request/response, close, for `secs` seconds.
pub fn cps(addr: SocketAddr, workers: usize, secs: f64) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs_f64(secs);
    let start = Instant::now();
    let handles: Vec<_> = (0..workers)
        .map(|_| {
            std::thread::spawn(move || -> (u64, u64, Option<String>) {
                let (mut ok, mut failed, mut first_err) = (0u64, 0u64, None);
                let mut req = [0x62u8; CPS_SIZE + 1];
                req[0] = b'E';
                let mut resp = [0u8; CPS_SIZE];
                while Instant::now() < deadline {
                    let r = (|| -> Result<()> {
                        let mut s = connect(addr)?;
                        s.set_nodelay(true)?;
                        s.write_all(&req)?;
                        s.read_exact(&mut resp).context("reading the response")?;
                        Ok(())
                    })();
                    match r {
                        Ok(()) => ok += 1,
                        Err(e) => {
                            failed += 1;
                            first_err.get_or_insert_with(|| format!("{e:#}"));
                            std::thread::sleep(Duration::from_millis(10));
                        }
                    }
                }
                (ok, failed, first_err)
            })
        })
        .collect();
    let (mut ok, mut failed, mut err) = (0, 0, None);
    for h in handles {
        let (o, f, e) = h.join().map_err(|_| anyhow::anyhow!("worker panicked"))?;
        ok += o;
        failed += f;
        if err.is_none() {
            err = e;
        }
    }
    let secs = start.elapsed().as_secs_f64();
    if let Some(e) = err {
        eprintln!("weir-bench cps: {failed} failed connections, first error: {e}");
    }
    println!(
        "RESULT ok={ok} failed={failed} secs={secs:.3} cps={:.0}",
        ok as f64 / secs
    );
    Ok(())
}

/// Opens `n` connections (each confirmed end to end by the server's one-byte
/// answer), prints `RESULT held=<n> secs=<s>`, keeps them idle until stdin
/// is closed, then closes them.
pub fn hold(addr: SocketAddr, n: usize) -> Result<()> {
    const CHUNK: usize = 200;
    let start = Instant::now();
    let mut held: Vec<TcpStream> = Vec::with_capacity(n);
    let mut error = None;
    'outer: while held.len() < n {
        let mut chunk = Vec::with_capacity(CHUNK);
        for _ in 0..CHUNK.min(n - held.len()) {
            match connect(addr).and_then(|mut s| {
                s.write_all(b"H")?;
                Ok(s)
            }) {
                Ok(s) => chunk.push(s),
                Err(e) => {
                    error = Some(format!("{e:#}"));
                    break;
                }
            }
        }
        for mut s in chunk {
            let mut ack = [0u8; 1];
            match s.read_exact(&mut ack) {
                Ok(()) => held.push(s),
                Err(e) => {
                    error.get_or_insert_with(|| format!("waiting for the server's ack: {e}"));
                }
            }
        }
        if error.is_some() {
            break 'outer;
        }
    }
    if let Some(e) = &error {
        eprintln!(
            "weir-bench hold: stopped after {} connections: {e}",
            held.len()
        );
    }
    println!(
        "RESULT held={} secs={:.3} complete={}",
        held.len(),
        start.elapsed().as_secs_f64(),
        u8::from(error.is_none())
    );
    std::io::stdout().flush()?;
    // Wait for the parent to close our stdin.
    let mut line = String::new();
    while std::io::stdin().lock().read_line(&mut line)? != 0 {
        line.clear();
    }
    drop(held);
    Ok(())
}
