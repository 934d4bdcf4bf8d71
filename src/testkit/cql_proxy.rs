//! A loopback proxy that lets the `scylla` crate (native protocol v4 only) talk to Apache
//! Cassandra 2.1.0 (native protocol v3 only), the one real CQL server these machines can
//! run (see [`cassandra`](super::cassandra)). Not part of any store: a client of the CQL
//! backend in production talks to ScyllaDB or Cassandra >= 3 directly.
//!
//! The two protocol versions differ in very little for what the driver uses, and the proxy
//! rewrites exactly that, frame by frame, in both directions:
//!
//! * the frame version byte: `0x04` -> `0x03` on requests, `0x83` -> `0x84` on responses;
//! * `STARTUP`: `CQL_VERSION` becomes `3.0.0` (2.1.0 rejects the driver's `4.0.0`);
//! * `SUPPORTED`: `COMPRESSION` is removed, so the driver never negotiates compression;
//! * a `Prepared` result: v4 carries a partition-key count (and indexes) after the flags and
//!   column count of the bind metadata, v3 does not, so a count of 0 is inserted (the driver
//!   then routes without token awareness: any node coordinates any request, which costs a
//!   hop in a cluster and nothing on one node);
//! * 2.1.0's `system.local` has no `rpc_address` column (added in 2.1.6), which the driver's
//!   topology query selects: the proxy removes it from that query's text and adds it back to
//!   the result metadata and to every row, with the proxy's own address as its value, so the
//!   driver keeps talking to the proxy;
//! * `STATUS_CHANGE` and `TOPOLOGY_CHANGE` events name a node by its native address
//!   (`rpc_address` and the server's own port): the proxy gives them its own port, so that
//!   the driver can match the node it announces with the one it reaches through a proxy.
//!
//! In a cluster ([`CassandraCluster`](super::cassandra::CassandraCluster)) each node has its
//! own proxy, on the node's address and one port common to all proxies. The driver reaches a
//! peer at the `rpc_address` that `system.peers` gives (2.1.0 has that column there) with the
//! port of its control connection (the scylla driver's `query_peers` builds every peer's
//! address that way), that is, at the peer's proxy: `system.peers` needs no rewriting.
//!
//! What the proxy does NOT translate, and the backend therefore never uses: `UNSET` values
//! (v4 only; 2.1.0 would store them as null) and v4-only error codes. Static columns read on
//! pages after the first come back null from 2.1.0 (a server bug), which is why the backend
//! reads each provider tree in one page.

use std::collections::HashMap;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

const OP_ERROR: u8 = 0x00;
const OP_STARTUP: u8 = 0x01;
const OP_SUPPORTED: u8 = 0x06;
const OP_QUERY: u8 = 0x07;
const OP_RESULT: u8 = 0x08;
const OP_PREPARE: u8 = 0x09;
const OP_EXECUTE: u8 = 0x0A;
const OP_EVENT: u8 = 0x0C;

const FLAG_TRACING: u8 = 0x02;

const RESULT_ROWS: i32 = 0x0002;
const RESULT_PREPARED: i32 = 0x0004;

const FLAG_GLOBAL_TABLES_SPEC: i32 = 0x0001;
const FLAG_HAS_MORE_PAGES: i32 = 0x0002;
const FLAG_NO_METADATA: i32 = 0x0004;

/// A running proxy. Dropping it stops accepting connections and closes the open ones.
#[derive(Debug)]
pub struct CqlProxy {
    addr: SocketAddr,
    runtime: Option<tokio::runtime::Runtime>,
    stats: Arc<Counters>,
}

/// What a proxy has seen since it started: how a client (re)connected and how much it sent
/// through, which is how a test tells what the driver did with a node that went down.
#[derive(Debug, Default)]
struct Counters {
    accepted: AtomicU64,
    upstream_refused: AtomicU64,
    requests: AtomicU64,
}

/// A snapshot of a proxy's counters.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ProxyStats {
    /// Client connections accepted.
    pub accepted: u64,
    /// Of those, closed at once because the server did not accept the proxy's connection
    /// (the node was down).
    pub upstream_refused: u64,
    /// Request frames forwarded to the server.
    pub requests: u64,
}

impl std::fmt::Display for ProxyStats {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} connections accepted ({} closed at once, node down), {} requests forwarded",
            self.accepted, self.upstream_refused, self.requests
        )
    }
}

impl CqlProxy {
    /// Starts a proxy on a free loopback port in front of `upstream` (a v3 server), on its
    /// own small runtime so that it outlives the runtimes of its callers (a test harness gives
    /// each test its own).
    pub fn start(upstream: SocketAddr) -> io::Result<CqlProxy> {
        Self::start_on(SocketAddr::from(([127, 0, 0, 1], 0)), upstream)
    }

    /// Like [`start`](Self::start), listening on `listen` (port 0: a free one). A cluster's
    /// proxies listen on their node's address and one common port, which is what lets the
    /// driver find each of them from `system.peers` (see the module documentation).
    /// While `upstream` is down the proxy accepts connections and closes them at once, as
    /// a refused connection would.
    pub fn start_on(listen: SocketAddr, upstream: SocketAddr) -> io::Result<CqlProxy> {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("cql-proxy")
            .enable_all()
            .build()?;
        let listener = runtime.block_on(TcpListener::bind(listen))?;
        let addr = listener.local_addr()?;
        let stats = Arc::new(Counters::default());
        let counters = stats.clone();
        runtime.spawn(async move {
            loop {
                let Ok((client, _)) = listener.accept().await else {
                    continue;
                };
                counters.accepted.fetch_add(1, Ordering::Relaxed);
                let counters = counters.clone();
                tokio::spawn(async move {
                    match TcpStream::connect(upstream).await {
                        Ok(server) => {
                            let _ = serve(client, server, addr, &counters).await;
                        }
                        Err(_) => {
                            counters.upstream_refused.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                });
            }
        });
        Ok(CqlProxy { addr, runtime: Some(runtime), stats })
    }

    /// Its counters so far.
    pub fn stats(&self) -> ProxyStats {
        ProxyStats {
            accepted: self.stats.accepted.load(Ordering::Relaxed),
            upstream_refused: self.stats.upstream_refused.load(Ordering::Relaxed),
            requests: self.stats.requests.load(Ordering::Relaxed),
        }
    }

    /// Where clients connect.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }
}

impl Drop for CqlProxy {
    fn drop(&mut self) {
        if let Some(rt) = self.runtime.take() {
            rt.shutdown_background();
        }
    }
}

/// What to do with the response to a given stream id.
#[derive(Clone, Debug)]
enum Fix {
    /// Add an `rpc_address` column at this index to the rows of this result.
    AddColumnToRows(usize),
    /// A `PREPARE` of the topology query: add the column to the result metadata and remember
    /// the statement id, so that its `EXECUTE` results get the column too.
    PreparedTopology(usize),
}

#[derive(Default)]
struct ConnState {
    pending: HashMap<i16, Fix>,
    topology_ids: HashMap<Vec<u8>, usize>,
}

async fn serve(client: TcpStream, server: TcpStream, own: SocketAddr, counters: &Arc<Counters>) -> io::Result<()> {
    client.set_nodelay(true)?;
    server.set_nodelay(true)?;
    let (mut cr, mut cw) = client.into_split();
    let (mut sr, mut sw) = server.into_split();
    let state = Arc::new(Mutex::new(ConnState::default()));
    let st = state.clone();
    let counters = counters.clone();
    let up = tokio::spawn(async move {
        loop {
            let Some((mut header, body)) = read_frame(&mut cr).await? else {
                break;
            };
            counters.requests.fetch_add(1, Ordering::Relaxed);
            let body = translate_request(&mut header, body, &st);
            write_frame(&mut sw, &header, &body).await?;
        }
        sw.shutdown().await?;
        Ok::<(), io::Error>(())
    });
    loop {
        let Some((mut header, body)) = read_frame(&mut sr).await? else {
            break;
        };
        let body = translate_response(&mut header, body, &state, own);
        write_frame(&mut cw, &header, &body).await?;
    }
    up.abort();
    Ok(())
}

async fn read_frame<R: AsyncReadExt + Unpin>(r: &mut R) -> io::Result<Option<([u8; 9], Vec<u8>)>> {
    let mut header = [0u8; 9];
    match r.read_exact(&mut header).await {
        Ok(_) => {}
        Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => return Ok(None),
        Err(e) => return Err(e),
    }
    let len = u32::from_be_bytes([header[5], header[6], header[7], header[8]]) as usize;
    let mut body = vec![0u8; len];
    r.read_exact(&mut body).await?;
    Ok(Some((header, body)))
}

async fn write_frame<W: AsyncWriteExt + Unpin>(w: &mut W, header: &[u8; 9], body: &[u8]) -> io::Result<()> {
    let mut out = Vec::with_capacity(9 + body.len());
    out.extend_from_slice(&header[..5]);
    out.extend_from_slice(&(body.len() as u32).to_be_bytes());
    out.extend_from_slice(body);
    w.write_all(&out).await
}

fn stream_id(header: &[u8; 9]) -> i16 {
    i16::from_be_bytes([header[2], header[3]])
}

fn translate_request(header: &mut [u8; 9], body: Vec<u8>, state: &Mutex<ConnState>) -> Vec<u8> {
    if header[0] & 0x7f == 4 {
        header[0] = (header[0] & 0x80) | 3;
    }
    let stream = stream_id(header);
    match header[4] {
        OP_STARTUP => rewrite_startup(&body).unwrap_or(body),
        OP_QUERY | OP_PREPARE => {
            let Some((query, rest_at)) = read_long_string(&body, 0) else {
                return body;
            };
            let Some((rewritten, index)) = strip_rpc_address(&query) else {
                return body;
            };
            let fix = if header[4] == OP_QUERY { Fix::AddColumnToRows(index) } else { Fix::PreparedTopology(index) };
            lock(state).pending.insert(stream, fix);
            let mut out = Vec::with_capacity(body.len());
            out.extend_from_slice(&(rewritten.len() as i32).to_be_bytes());
            out.extend_from_slice(rewritten.as_bytes());
            out.extend_from_slice(&body[rest_at..]);
            out
        }
        OP_EXECUTE => {
            if let Some((id, _)) = read_short_bytes(&body, 0) {
                let mut st = lock(state);
                if let Some(index) = st.topology_ids.get(&id).copied() {
                    st.pending.insert(stream, Fix::AddColumnToRows(index));
                }
            }
            body
        }
        _ => body,
    }
}

fn translate_response(header: &mut [u8; 9], body: Vec<u8>, state: &Mutex<ConnState>, own: SocketAddr) -> Vec<u8> {
    let own_ip = own.ip();
    if header[0] & 0x7f == 3 {
        header[0] = (header[0] & 0x80) | 4;
    }
    let stream = stream_id(header);
    let fix = if stream >= 0 { lock(state).pending.remove(&stream) } else { None };
    match header[4] {
        OP_SUPPORTED => rewrite_supported(&body).unwrap_or(body),
        // A traced response starts with the 16-byte tracing session id.
        OP_RESULT if header[1] & FLAG_TRACING != 0 && body.len() >= 16 => {
            match rewrite_result(&body[16..], fix, state, own_ip) {
                Some(rest) => [&body[..16], &rest[..]].concat(),
                None => body,
            }
        }
        OP_RESULT => rewrite_result(&body, fix, state, own_ip).unwrap_or(body),
        OP_EVENT => rewrite_event(&body, own.port()).unwrap_or(body),
        OP_ERROR => body,
        _ => body,
    }
}

fn lock(m: &Mutex<ConnState>) -> std::sync::MutexGuard<'_, ConnState> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// `SELECT a, rpc_address, b FROM system.local ...` -> (`SELECT a, b FROM ...`, 1).
fn strip_rpc_address(query: &str) -> Option<(String, usize)> {
    let lower = query.to_ascii_lowercase();
    if !lower.contains("system.local") || !lower.contains("rpc_address") {
        return None;
    }
    let select_end = lower.find("select")? + "select".len();
    let from = lower.find(" from ")?;
    let columns: Vec<&str> = query[select_end..from].split(',').map(str::trim).collect();
    let index = columns.iter().position(|c| c.eq_ignore_ascii_case("rpc_address"))?;
    let kept: Vec<&str> = columns.iter().enumerate().filter(|(i, _)| *i != index).map(|(_, c)| *c).collect();
    Some((format!("SELECT {}{}", kept.join(", "), &query[from..]), index))
}

/// A `STATUS_CHANGE` or `TOPOLOGY_CHANGE` event with the port of its `[inet]` replaced by
/// `port` (the proxy's); other events unchanged (`None`).
fn rewrite_event(body: &[u8], port: u16) -> Option<Vec<u8>> {
    let mut pos = 0;
    let kind = read_string(body, &mut pos)?;
    if kind != "STATUS_CHANGE" && kind != "TOPOLOGY_CHANGE" {
        return None;
    }
    read_string(body, &mut pos)?;
    let n = usize::from(*body.get(pos)?);
    let port_at = pos + 1 + n;
    body.get(port_at..port_at + 4)?;
    let mut out = body.to_vec();
    out[port_at..port_at + 4].copy_from_slice(&i32::from(port).to_be_bytes());
    Some(out)
}

fn rewrite_startup(body: &[u8]) -> Option<Vec<u8>> {
    let mut pos = 0;
    let n = read_u16(body, &mut pos)?;
    let mut pairs = Vec::new();
    for _ in 0..n {
        let k = read_string(body, &mut pos)?;
        let v = read_string(body, &mut pos)?;
        pairs.push((k, v));
    }
    let mut out = Vec::new();
    let kept: Vec<(String, String)> =
        pairs.into_iter().map(|(k, v)| if k == "CQL_VERSION" { (k, "3.0.0".to_string()) } else { (k, v) }).collect();
    out.extend_from_slice(&(kept.len() as u16).to_be_bytes());
    for (k, v) in kept {
        write_string(&mut out, &k);
        write_string(&mut out, &v);
    }
    Some(out)
}

fn rewrite_supported(body: &[u8]) -> Option<Vec<u8>> {
    let mut pos = 0;
    let n = read_u16(body, &mut pos)?;
    let mut entries = Vec::new();
    for _ in 0..n {
        let k = read_string(body, &mut pos)?;
        let m = read_u16(body, &mut pos)?;
        let mut vs = Vec::new();
        for _ in 0..m {
            vs.push(read_string(body, &mut pos)?);
        }
        if k != "COMPRESSION" {
            entries.push((k, vs));
        }
    }
    let mut out = Vec::new();
    out.extend_from_slice(&(entries.len() as u16).to_be_bytes());
    for (k, vs) in entries {
        write_string(&mut out, &k);
        out.extend_from_slice(&(vs.len() as u16).to_be_bytes());
        for v in vs {
            write_string(&mut out, &v);
        }
    }
    Some(out)
}

fn rewrite_result(body: &[u8], fix: Option<Fix>, state: &Mutex<ConnState>, own_ip: IpAddr) -> Option<Vec<u8>> {
    let mut pos = 0;
    let kind = read_i32(body, &mut pos)?;
    match kind {
        RESULT_PREPARED => {
            let (id, after_id) = read_short_bytes(body, pos)?;
            pos = after_id;
            let mut out = body[..pos].to_vec();
            // Bind metadata: flags, column count, then (v4 only) the partition-key count.
            let flags = read_i32(body, &mut pos)?;
            let count = read_i32(body, &mut pos)?;
            out.extend_from_slice(&flags.to_be_bytes());
            out.extend_from_slice(&count.to_be_bytes());
            out.extend_from_slice(&0i32.to_be_bytes());
            let specs_start = pos;
            skip_column_specs(body, &mut pos, flags, count)?;
            out.extend_from_slice(&body[specs_start..pos]);
            match fix {
                Some(Fix::PreparedTopology(index)) => {
                    lock(state).topology_ids.insert(id, index);
                    let (meta, _) = add_column_to_metadata(body, pos, index)?;
                    out.extend_from_slice(&meta);
                }
                _ => out.extend_from_slice(&body[pos..]),
            }
            Some(out)
        }
        RESULT_ROWS => {
            let Some(Fix::AddColumnToRows(index)) = fix else {
                return None;
            };
            let (meta, (mut pos, count)) = add_column_to_metadata(body, pos, index)?;
            let mut out = body[..4].to_vec();
            out.extend_from_slice(&meta);
            let rows = read_i32(body, &mut pos)?;
            out.extend_from_slice(&rows.to_be_bytes());
            let ip: Vec<u8> = match own_ip {
                IpAddr::V4(v4) => v4.octets().to_vec(),
                IpAddr::V6(v6) => v6.octets().to_vec(),
            };
            for _ in 0..rows {
                for col in 0..=count {
                    if col == index {
                        out.extend_from_slice(&(ip.len() as i32).to_be_bytes());
                        out.extend_from_slice(&ip);
                    }
                    if col == count {
                        break;
                    }
                    let start = pos;
                    let len = read_i32(body, &mut pos)?;
                    if len > 0 {
                        pos = pos.checked_add(len as usize)?;
                    }
                    out.extend_from_slice(body.get(start..pos)?);
                }
            }
            Some(out)
        }
        _ => None,
    }
}

/// Re-encodes rows metadata starting at `pos` with an `inet` column named `rpc_address`
/// inserted at `index`. Returns the new metadata and (position after the old metadata,
/// old column count).
fn add_column_to_metadata(body: &[u8], mut pos: usize, index: usize) -> Option<(Vec<u8>, (usize, usize))> {
    let flags = read_i32(body, &mut pos)?;
    let count = read_i32(body, &mut pos)?;
    let mut out = Vec::new();
    out.extend_from_slice(&flags.to_be_bytes());
    out.extend_from_slice(&(count + 1).to_be_bytes());
    if flags & FLAG_HAS_MORE_PAGES != 0 {
        let start = pos;
        let len = read_i32(body, &mut pos)?;
        if len > 0 {
            pos += len as usize;
        }
        out.extend_from_slice(body.get(start..pos)?);
    }
    if flags & FLAG_NO_METADATA != 0 {
        return Some((out, (pos, count as usize)));
    }
    let global = flags & FLAG_GLOBAL_TABLES_SPEC != 0;
    let mut table = (String::from("system"), String::from("local"));
    if global {
        let start = pos;
        let ks = read_string(body, &mut pos)?;
        let t = read_string(body, &mut pos)?;
        table = (ks, t);
        out.extend_from_slice(body.get(start..pos)?);
    }
    let mut specs: Vec<Vec<u8>> = Vec::new();
    for _ in 0..count {
        let start = pos;
        if !global {
            read_string(body, &mut pos)?;
            read_string(body, &mut pos)?;
        }
        read_string(body, &mut pos)?;
        skip_option(body, &mut pos)?;
        specs.push(body.get(start..pos)?.to_vec());
    }
    let mut rpc = Vec::new();
    if !global {
        write_string(&mut rpc, &table.0);
        write_string(&mut rpc, &table.1);
    }
    write_string(&mut rpc, "rpc_address");
    rpc.extend_from_slice(&0x0010u16.to_be_bytes()); // inet
    specs.insert(index.min(specs.len()), rpc);
    for s in specs {
        out.extend_from_slice(&s);
    }
    Some((out, (pos, count as usize)))
}

fn skip_column_specs(body: &[u8], pos: &mut usize, flags: i32, count: i32) -> Option<()> {
    let global = flags & FLAG_GLOBAL_TABLES_SPEC != 0;
    if global {
        read_string(body, pos)?;
        read_string(body, pos)?;
    }
    for _ in 0..count {
        if !global {
            read_string(body, pos)?;
            read_string(body, pos)?;
        }
        read_string(body, pos)?;
        skip_option(body, pos)?;
    }
    Some(())
}

fn skip_option(body: &[u8], pos: &mut usize) -> Option<()> {
    let id = read_u16(body, pos)?;
    match id {
        0x0000 => {
            read_string(body, pos)?;
        }
        0x0020 | 0x0022 => skip_option(body, pos)?,
        0x0021 => {
            skip_option(body, pos)?;
            skip_option(body, pos)?;
        }
        0x0030 => {
            read_string(body, pos)?;
            read_string(body, pos)?;
            let n = read_u16(body, pos)?;
            for _ in 0..n {
                read_string(body, pos)?;
                skip_option(body, pos)?;
            }
        }
        0x0031 => {
            let n = read_u16(body, pos)?;
            for _ in 0..n {
                skip_option(body, pos)?;
            }
        }
        _ => {}
    }
    Some(())
}

fn read_u16(b: &[u8], pos: &mut usize) -> Option<u16> {
    let v = u16::from_be_bytes([*b.get(*pos)?, *b.get(*pos + 1)?]);
    *pos += 2;
    Some(v)
}

fn read_i32(b: &[u8], pos: &mut usize) -> Option<i32> {
    let s = b.get(*pos..*pos + 4)?;
    *pos += 4;
    Some(i32::from_be_bytes([s[0], s[1], s[2], s[3]]))
}

fn read_string(b: &[u8], pos: &mut usize) -> Option<String> {
    let n = read_u16(b, pos)? as usize;
    let s = b.get(*pos..*pos + n)?;
    *pos += n;
    String::from_utf8(s.to_vec()).ok()
}

fn write_string(out: &mut Vec<u8>, s: &str) {
    out.extend_from_slice(&(s.len() as u16).to_be_bytes());
    out.extend_from_slice(s.as_bytes());
}

fn read_long_string(b: &[u8], mut pos: usize) -> Option<(String, usize)> {
    let n = read_i32(b, &mut pos)?;
    let n = usize::try_from(n).ok()?;
    let s = b.get(pos..pos + n)?;
    Some((String::from_utf8(s.to_vec()).ok()?, pos + n))
}

fn read_short_bytes(b: &[u8], mut pos: usize) -> Option<(Vec<u8>, usize)> {
    let n = read_u16(b, &mut pos)? as usize;
    let s = b.get(pos..pos + n)?;
    Some((s.to_vec(), pos + n))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(kind: &str, change: &str, ip: [u8; 4], port: i32) -> Vec<u8> {
        let mut b = Vec::new();
        write_string(&mut b, kind);
        write_string(&mut b, change);
        b.push(4);
        b.extend_from_slice(&ip);
        b.extend_from_slice(&port.to_be_bytes());
        b
    }

    /// The driver matches a node's UP/DOWN event with the address it reaches the node at:
    /// the proxy's port must replace the server's.
    #[test]
    fn status_and_topology_events_get_the_proxy_port() {
        for kind in ["STATUS_CHANGE", "TOPOLOGY_CHANGE"] {
            let out = rewrite_event(&event(kind, "UP", [127, 0, 0, 2], 9042), 9043).unwrap();
            assert_eq!(out, event(kind, "UP", [127, 0, 0, 2], 9043));
        }
    }

    #[test]
    fn other_and_truncated_events_are_left_alone() {
        let mut schema = Vec::new();
        write_string(&mut schema, "SCHEMA_CHANGE");
        write_string(&mut schema, "CREATED");
        assert_eq!(rewrite_event(&schema, 9043), None);
        let whole = event("STATUS_CHANGE", "DOWN", [127, 0, 0, 3], 9042);
        assert_eq!(rewrite_event(&whole[..whole.len() - 1], 9043), None);
    }
}
