//! A throwaway `redis-server` with the append-only file on and `appendfsync everysec`
//! (every acknowledged write is on disk within a second), on a free loopback port, for the
//! durable Redis figures of `bench schedule`. The server is this process's child; it is
//! killed and its directory removed when the handle is dropped.

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::error::{Context, Result, bail};

/// A running throwaway Redis server.
#[derive(Debug)]
pub struct AofRedis {
    child: Child,
    dir: std::path::PathBuf,
    /// Its port on 127.0.0.1.
    pub port: u16,
}

impl AofRedis {
    /// Starts `redis-server` (from `PATH`) with `appendonly yes`, `appendfsync everysec`,
    /// no RDB snapshots, on a free port, and waits until it answers.
    pub async fn start() -> Result<AofRedis> {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .context("finding a free port for the throwaway redis-server")?
            .port();
        let dir = std::env::temp_dir().join(format!("unicell-bench-redis-{port}-{}", std::process::id()));
        std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        let child = Command::new("redis-server")
            .args(["--port", &port.to_string(), "--bind", "127.0.0.1", "--appendonly", "yes"])
            .args(["--appendfsync", "everysec", "--save", "", "--protected-mode", "yes"])
            .arg("--dir")
            .arg(&dir)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .context("starting redis-server (is it installed? apt-get install redis-server)")?;
        let server = AofRedis { child, dir, port };
        let t = Instant::now();
        loop {
            if tokio::net::TcpStream::connect(("127.0.0.1", port)).await.is_ok()
                && unicell::store::open(&server.url()).await.is_ok()
            {
                return Ok(server);
            }
            if t.elapsed() > Duration::from_secs(15) {
                bail!(Measurement, "the throwaway redis-server on port {port} did not answer within 15 s");
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Its URL.
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }
}

impl Drop for AofRedis {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
