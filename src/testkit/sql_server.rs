//! Throwaway MariaDB and PostgreSQL servers started from the installed binaries (Debian
//! packages `mariadb-server` and `postgresql`), each with its own data directory on a free
//! loopback port: the extra server instances a Nova-style deployment puts its cell databases
//! on. Each runs with the engine's default durability (InnoDB's
//! `innodb_flush_log_at_trx_commit=1`, PostgreSQL's `fsync=on`, `synchronous_commit=on`),
//! so a benchmark on them pays the same commit cost as on the machine's main servers.
//!
//! * MariaDB: `mariadb-install-db` then `mariadbd --skip-grant-tables` (no accounts: anyone
//!   who can reach the loopback port is root, acceptable for a throwaway server), URL
//!   `mysql://root@127.0.0.1:<port>`.
//! * PostgreSQL: `initdb -A trust -U postgres` then `postgres`, URL
//!   `postgres://postgres@127.0.0.1:<port>`. PostgreSQL refuses to run as root, so when this
//!   process is root both run as the `postgres` user through `setpriv` (which execs, so the
//!   child is the postmaster itself).
//!
//! A server is stopped (SIGTERM, then SIGKILL after 10 s) and its directory removed when
//! dropped. [`SqlServer::kill`] and [`SqlServer::restart`] crash it and bring it back on
//! the same port and data directory, as a fault benchmark loses a cell's database server.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use super::{LaunchError, TempDir, find_binary, free_port};

/// A running throwaway SQL server.
#[derive(Debug)]
pub struct SqlServer {
    child: Option<Child>,
    /// Its port on 127.0.0.1.
    pub port: u16,
    kind: SqlKind,
    dir: TempDir,
    /// The server's command line (program and arguments), kept to restart it as it was.
    argv: Vec<std::ffi::OsString>,
}

/// Which engine.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SqlKind {
    /// MariaDB (`mariadbd`).
    MariaDb,
    /// PostgreSQL (`postgres`).
    Postgres,
}

impl SqlServer {
    /// Starts a server of `kind`; `Err` says what is missing or how it failed (with its
    /// log's tail).
    pub fn start(kind: SqlKind) -> Result<SqlServer, LaunchError> {
        match kind {
            SqlKind::MariaDb => start_mariadb(),
            SqlKind::Postgres => start_postgres(),
        }
    }

    /// The server's URL without a database: `mysql://root@127.0.0.1:<port>` or
    /// `postgres://postgres@127.0.0.1:<port>`.
    pub fn url(&self) -> String {
        match self.kind {
            SqlKind::MariaDb => format!("mysql://root@127.0.0.1:{}", self.port),
            SqlKind::Postgres => format!("postgres://postgres@127.0.0.1:{}", self.port),
        }
    }

    /// The engine.
    pub fn kind(&self) -> SqlKind {
        self.kind
    }

    /// Kills the server with SIGKILL (a crash: no clean shutdown) and reaps it. The data
    /// directory is kept for [`restart`](Self::restart).
    pub fn kill(&mut self) -> Result<(), LaunchError> {
        if let Some(mut c) = self.child.take() {
            c.kill().map_err(|e| LaunchError::new("SIGKILL of the SQL server", e))?;
            c.wait().map_err(|e| LaunchError::new("reaping the SQL server", e))?;
        }
        Ok(())
    }

    /// Starts the killed server again, same command line, port and data (crash recovery
    /// runs), and waits until it listens.
    pub fn restart(&mut self) -> Result<(), LaunchError> {
        if self.child.is_some() {
            return Err(LaunchError("the SQL server is running: kill it first".into()));
        }
        let (program, args) =
            self.argv.split_first().ok_or_else(|| LaunchError::from("the SQL server has no command line"))?;
        let (out, err) = log_file(self.dir.path())?;
        let child = Command::new(program)
            .args(args)
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .spawn()
            .map_err(|e| LaunchError::new("restarting the SQL server", e))?;
        self.child = Some(child);
        self.wait_ready(Duration::from_secs(90))
    }

    /// The last lines of the server's log (for failure messages).
    pub fn log_tail(&self) -> String {
        log_tail(self.dir.path())
    }

    fn wait_ready(&mut self, within: Duration) -> Result<(), LaunchError> {
        let start = Instant::now();
        while start.elapsed() < within {
            if let Some(c) = &mut self.child
                && let Ok(Some(status)) = c.try_wait()
            {
                return Err(LaunchError(format!("the server exited with {status}; log tail:\n{}", self.log_tail())));
            }
            if std::net::TcpStream::connect_timeout(
                &std::net::SocketAddr::from(([127, 0, 0, 1], self.port)),
                Duration::from_millis(200),
            )
            .is_ok()
            {
                return Ok(());
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        Err(LaunchError(format!(
            "the server did not listen on 127.0.0.1:{} within {within:?}; log tail:\n{}",
            self.port,
            self.log_tail()
        )))
    }
}

impl Drop for SqlServer {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            // A clean shutdown leaves no shared memory or lock files behind.
            let _ = Command::new("kill").arg("-TERM").arg(c.id().to_string()).status();
            let deadline = Instant::now() + Duration::from_secs(10);
            while Instant::now() < deadline {
                if matches!(c.try_wait(), Ok(Some(_))) {
                    return;
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// A command's program and arguments, to start it again.
fn argv_of(cmd: &Command) -> Vec<std::ffi::OsString> {
    std::iter::once(cmd.get_program().to_os_string()).chain(cmd.get_args().map(|a| a.to_os_string())).collect()
}

fn log_tail(dir: &Path) -> String {
    let s = std::fs::read_to_string(dir.join("server.log")).unwrap_or_default();
    let lines: Vec<&str> = s.lines().collect();
    lines[lines.len().saturating_sub(20)..].join("\n")
}

fn log_file(dir: &Path) -> Result<(std::fs::File, std::fs::File), LaunchError> {
    let f = std::fs::File::create(dir.join("server.log")).map_err(|e| LaunchError::new("creating the log file", e))?;
    let g = f.try_clone().map_err(|e| LaunchError::new("creating the log file", e))?;
    Ok((f, g))
}

fn run_setup(mut cmd: Command, what: &str, dir: &Path) -> Result<(), LaunchError> {
    let (out, err) = log_file(dir)?;
    let status = cmd
        .stdin(Stdio::null())
        .stdout(out)
        .stderr(err)
        .status()
        .map_err(|e| LaunchError::new(format!("running {what}"), e))?;
    if !status.success() {
        return Err(LaunchError(format!("{what} failed with {status}: {}", log_tail(dir))));
    }
    Ok(())
}

fn start_mariadb() -> Result<SqlServer, LaunchError> {
    let server = find_binary("mariadbd").ok_or("mariadbd is not installed (Debian package mariadb-server)")?;
    let install = find_binary("mariadb-install-db")
        .ok_or("mariadb-install-db is not installed (Debian package mariadb-server)")?;
    let dir = TempDir::new("mariadb")?;
    let data = dir.path().join("data");
    let mut cmd = Command::new(install);
    cmd.arg("--no-defaults")
        .arg(format!("--datadir={}", data.display()))
        .arg("--user=root")
        .arg("--auth-root-authentication-method=normal")
        .arg("--skip-test-db");
    run_setup(cmd, "mariadb-install-db", dir.path())?;
    let port = free_port(false)?;
    let (out, err) = log_file(dir.path())?;
    let mut cmd = Command::new(server);
    cmd.arg("--no-defaults")
        .arg(format!("--datadir={}", data.display()))
        .arg(format!("--socket={}", dir.path().join("mysqld.sock").display()))
        .arg(format!("--pid-file={}", dir.path().join("mysqld.pid").display()))
        .arg(format!("--port={port}"))
        .args(["--bind-address=127.0.0.1", "--user=root", "--skip-grant-tables", "--max-connections=1000"]);
    let argv = argv_of(&cmd);
    let child = cmd
        .stdin(Stdio::null())
        .stdout(out)
        .stderr(err)
        .spawn()
        .map_err(|e| LaunchError::new("starting mariadbd", e))?;
    let mut s = SqlServer { child: Some(child), port, kind: SqlKind::MariaDb, dir, argv };
    s.wait_ready(Duration::from_secs(60))?;
    Ok(s)
}

/// Directory of the newest installed PostgreSQL's binaries (`/usr/lib/postgresql/N/bin`).
fn postgres_bin() -> Result<PathBuf, LaunchError> {
    let mut versions: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .map_err(|_| LaunchError::from("PostgreSQL is not installed (Debian package postgresql)"))?
        .filter_map(|e| e.ok())
        .filter_map(|e| {
            let v = e.file_name().to_string_lossy().parse::<u32>().ok()?;
            let bin = e.path().join("bin");
            bin.join("postgres").is_file().then_some((v, bin))
        })
        .collect();
    versions.sort();
    versions.pop().map(|(_, b)| b).ok_or_else(|| LaunchError::from("no /usr/lib/postgresql/*/bin/postgres found"))
}

/// Whether this process runs as root (PostgreSQL refuses to).
fn is_root() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| s.lines().find(|l| l.starts_with("Uid:")).map(|l| l.split_whitespace().nth(1) == Some("0")))
        .unwrap_or(false)
}

/// `program` run as the `postgres` user when this process is root (through `setpriv`, which
/// execs), else as this user.
fn as_postgres(program: &Path) -> Result<Command, LaunchError> {
    if !is_root() {
        return Ok(Command::new(program));
    }
    let setpriv = find_binary("setpriv").ok_or("setpriv is not installed (Debian package util-linux)")?;
    let mut c = Command::new(setpriv);
    c.args(["--reuid=postgres", "--regid=postgres", "--init-groups", "--"]).arg(program);
    Ok(c)
}

fn start_postgres() -> Result<SqlServer, LaunchError> {
    let bin = postgres_bin()?;
    let dir = TempDir::new("postgres")?;
    if is_root() {
        let st = Command::new("chown")
            .arg("postgres:postgres")
            .arg(dir.path())
            .status()
            .map_err(|e| LaunchError::new("chown of the data directory", e))?;
        if !st.success() {
            return Err(LaunchError(format!("chown postgres {} failed: {st}", dir.path().display())));
        }
    }
    let data = dir.path().join("data");
    let mut cmd = as_postgres(&bin.join("initdb"))?;
    cmd.arg("-D").arg(&data).args(["-A", "trust", "-U", "postgres", "--no-sync", "-E", "UTF8"]);
    // The log is written by this process (root), the data directory by postgres.
    run_setup(cmd, "initdb", dir.path())?;
    let port = free_port(false)?;
    let (out, err) = log_file(dir.path())?;
    let mut cmd = as_postgres(&bin.join("postgres"))?;
    cmd.arg("-D").arg(&data).arg("-p").arg(port.to_string()).arg("-k").arg(dir.path()).args([
        "-c",
        "listen_addresses=127.0.0.1",
        "-c",
        "max_connections=1000",
        "-c",
        "shared_buffers=64MB",
    ]);
    let argv = argv_of(&cmd);
    let child = cmd
        .stdin(Stdio::null())
        .stdout(out)
        .stderr(err)
        .spawn()
        .map_err(|e| LaunchError::new("starting postgres", e))?;
    let mut s = SqlServer { child: Some(child), port, kind: SqlKind::Postgres, dir, argv };
    s.wait_ready(Duration::from_secs(60))?;
    Ok(s)
}
