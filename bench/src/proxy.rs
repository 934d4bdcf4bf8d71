//! A delaying TCP proxy: the stand-in for a wide-area link between sites (this kernel has no
//! netem).
//!
//! It listens on a loopback port only and forwards each accepted connection to one upstream
//! address. Every chunk of bytes read from either side is delivered to the other side one
//! `delay` later; chunks are pipelined (a chunk read while an earlier one waits is not
//! delayed twice), so the link behaves like latency, not like a slow link. A request/response
//! exchange therefore pays `2 * delay` (one round trip). Tokio's timer has millisecond
//! granularity: the first chunk of a burst is delivered up to about a millisecond late, and
//! the chunks read right after it (due within one tick of it) go out with it rather than each
//! paying a tick; a zero delay forwards at once.
//!
//! Bounded: at most [`MAX_CONNECTIONS`] connections at a time (more are refused by closing
//! them) and at most [`QUEUE_CHUNKS`] chunks in flight per direction (the reader waits).
//! Dropping the proxy stops the listener and every connection.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

use crate::error::{Context, Result};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, watch};
use tokio::time::Instant;

/// Connections served at once; further ones are closed on accept.
pub const MAX_CONNECTIONS: usize = 512;
/// Chunks queued per direction of a connection before the reader waits.
pub const QUEUE_CHUNKS: usize = 256;
const CHUNK: usize = 64 * 1024;
/// The timer's granularity: chunks due sooner than this are written at once.
const TICK: Duration = Duration::from_millis(1);

/// A running proxy. Dropping it shuts it down.
#[derive(Debug)]
pub struct DelayProxy {
    addr: SocketAddr,
    stop: watch::Sender<bool>,
}

impl DelayProxy {
    /// Starts a proxy on `127.0.0.1:<free port>` to `upstream` (`host:port`) with a one-way
    /// delay of `delay` in each direction.
    pub async fn start(upstream: &str, delay: Duration) -> Result<Self> {
        let listener =
            TcpListener::bind(("127.0.0.1", 0)).await.context("cannot bind a loopback port for the delay proxy")?;
        let addr = listener.local_addr().context("cannot read the delay proxy's address")?;
        let delay_us = Arc::new(AtomicU64::new(micros(delay)));
        let (stop, stopped) = watch::channel(false);
        let active = Arc::new(AtomicUsize::new(0));
        tokio::spawn(accept_loop(listener, upstream.to_string(), delay_us, stopped, active));
        tracing::debug!(%addr, %upstream, ?delay, "delay proxy started");
        Ok(DelayProxy { addr, stop })
    }

    /// The loopback address clients connect to.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }
}

impl Drop for DelayProxy {
    fn drop(&mut self) {
        let _ = self.stop.send(true);
    }
}

fn micros(d: Duration) -> u64 {
    u64::try_from(d.as_micros()).unwrap_or(u64::MAX)
}

async fn accept_loop(
    listener: TcpListener,
    upstream: String,
    delay_us: Arc<AtomicU64>,
    mut stopped: watch::Receiver<bool>,
    active: Arc<AtomicUsize>,
) {
    loop {
        let accepted = tokio::select! {
            _ = stopped.changed() => return,
            a = listener.accept() => a,
        };
        let (client, _) = match accepted {
            Ok(c) => c,
            Err(e) => {
                tracing::warn!("delay proxy accept failed: {e}");
                tokio::time::sleep(Duration::from_millis(10)).await;
                continue;
            }
        };
        if active.load(Ordering::Relaxed) >= MAX_CONNECTIONS {
            tracing::warn!("delay proxy at {MAX_CONNECTIONS} connections; refusing one");
            drop(client);
            continue;
        }
        active.fetch_add(1, Ordering::Relaxed);
        let (upstream, delay_us, stopped, active) =
            (upstream.clone(), delay_us.clone(), stopped.clone(), active.clone());
        tokio::spawn(async move {
            if let Err(e) = serve(client, &upstream, delay_us, stopped).await {
                tracing::debug!("delay proxy connection ended: {e:#}");
            }
            active.fetch_sub(1, Ordering::Relaxed);
        });
    }
}

async fn serve(
    client: TcpStream,
    upstream: &str,
    delay_us: Arc<AtomicU64>,
    mut stopped: watch::Receiver<bool>,
) -> Result<()> {
    let server = TcpStream::connect(upstream).await.with_context(|| format!("delay proxy cannot reach {upstream}"))?;
    let _ = client.set_nodelay(true);
    let _ = server.set_nodelay(true);
    let (cr, cw) = client.into_split();
    let (sr, sw) = server.into_split();
    let up = pump(cr, sw, delay_us.clone());
    let down = pump(sr, cw, delay_us);
    tokio::select! {
        _ = stopped.changed() => Ok(()),
        r = async { tokio::try_join!(up, down) } => r.map(|_| ()).context("delay proxy connection"),
    }
}

/// Copies `from` to `to`, delivering each chunk `delay` after it was read.
async fn pump<R, W>(mut from: R, mut to: W, delay_us: Arc<AtomicU64>) -> std::io::Result<()>
where
    R: AsyncReadExt + Unpin + Send + 'static,
    W: AsyncWriteExt + Unpin + Send + 'static,
{
    let (tx, mut rx) = mpsc::channel::<(Instant, Vec<u8>)>(QUEUE_CHUNKS);
    let reader = async move {
        let mut buf = vec![0u8; CHUNK];
        loop {
            let n = from.read(&mut buf).await?;
            if n == 0 {
                break; // EOF: dropping tx ends the writer after the queued chunks.
            }
            let due = Instant::now() + Duration::from_micros(delay_us.load(Ordering::Relaxed));
            if tx.send((due, buf[..n].to_vec())).await.is_err() {
                break;
            }
        }
        Ok::<_, std::io::Error>(())
    };
    let writer = async move {
        // Tokio's timer rounds every sleep up to its next millisecond tick; sleeping for
        // each of the many chunks of a large response, read microseconds apart, would add a
        // tick per chunk. So the writer sleeps until the first chunk of a burst is due and
        // then writes every chunk due within one tick of that deadline without sleeping again.
        let mut woke_for: Option<Instant> = None;
        while let Some((due, chunk)) = rx.recv().await {
            let same_burst = woke_for.is_some_and(|w| due <= w + TICK);
            if !same_burst && due > Instant::now() {
                tokio::time::sleep_until(due).await;
                woke_for = Some(due);
            }
            to.write_all(&chunk).await?;
        }
        let _ = to.shutdown().await;
        Ok::<_, std::io::Error>(())
    };
    tokio::try_join!(reader, writer)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn delays_a_round_trip_and_forwards_bytes() {
        // A tiny echo server.
        let echo = TcpListener::bind(("127.0.0.1", 0)).await.unwrap();
        let echo_addr = echo.local_addr().unwrap();
        tokio::spawn(async move {
            loop {
                let (mut s, _) = echo.accept().await.unwrap();
                tokio::spawn(async move {
                    let mut b = [0u8; 1024];
                    loop {
                        let n = s.read(&mut b).await.unwrap_or(0);
                        if n == 0 || s.write_all(&b[..n]).await.is_err() {
                            break;
                        }
                    }
                });
            }
        });
        let proxy = DelayProxy::start(&echo_addr.to_string(), Duration::from_millis(30)).await.unwrap();
        let mut c = TcpStream::connect(proxy.addr()).await.unwrap();
        let t = std::time::Instant::now();
        c.write_all(b"ping").await.unwrap();
        let mut b = [0u8; 4];
        c.read_exact(&mut b).await.unwrap();
        let rtt = t.elapsed();
        assert_eq!(&b, b"ping");
        assert!(rtt >= Duration::from_millis(60), "round trip took only {rtt:?}");
        // Pipelined: ten requests sent back to back cost about one round trip, not ten.
        let t = std::time::Instant::now();
        for _ in 0..10 {
            c.write_all(b"pong").await.unwrap();
        }
        let mut all = [0u8; 40];
        c.read_exact(&mut all).await.unwrap();
        assert_eq!(&all[..4], b"pong");
        assert!(t.elapsed() < Duration::from_millis(300), "{:?}", t.elapsed());
        // Dropping the proxy closes the connection.
        drop(proxy);
        let n = tokio::time::timeout(Duration::from_secs(5), c.read(&mut b))
            .await
            .expect("the connection should close")
            .unwrap_or(0);
        assert_eq!(n, 0);
    }
}
