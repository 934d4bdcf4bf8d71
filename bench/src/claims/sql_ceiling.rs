//! The SQL ceiling of `bench claims`: W tasks running a single-row
//! `UPDATE t SET used = used + 1, generation = generation + 1 WHERE id = ?` (autocommit)
//! over T rows of a scratch table, on the same server as the candidate. That is the least a
//! Placement-style claim costs (it also reads usage, writes allocation rows and checks the
//! generation in a transaction). The scratch database (MySQL/MariaDB) or table (PostgreSQL)
//! is named after the run and dropped afterwards.

use crate::error::{Context, Result, bail};
use sqlx::AssertSqlSafe;
use unicell::store::{Scheme, StoreUrl};

use super::workload::{Outcome, Workload, measure};
use crate::candidate::Candidate;
use crate::progress;

fn backend_err(e: sqlx::Error) -> unicell::Error {
    unicell::Error::backend("sql-ceiling", e)
}

/// Measures the ceiling for `cand` (a mysql://, mariadb:// or postgres:// URL).
pub async fn run(cand: &Candidate, w: &Workload, tag: &str) -> Result<Outcome> {
    let parsed = StoreUrl::parse(&cand.url)?;
    let mut base = parsed.expose().clone();
    base.set_query(None);
    let name = format!("unicell_ceiling_{}", tag.replace('-', "_"));
    let conns = w.tasks.clamp(1, 32) as u32;
    match parsed.scheme() {
        Scheme::MySql => {
            let mut server = base.clone();
            // sqlx knows MariaDB as mysql://.
            let server_str = server.as_str().replacen("mariadb://", "mysql://", 1);
            server = url::Url::parse(&server_str).context("bad SQL URL")?;
            server.set_path("/");
            let admin = sqlx::mysql::MySqlPoolOptions::new()
                .max_connections(1)
                .connect(server.as_str())
                .await
                .with_context(|| format!("cannot connect to {parsed}"))?;
            sqlx::query(AssertSqlSafe(format!("CREATE DATABASE `{name}`")))
                .execute(&admin)
                .await
                .context("create scratch database")?;
            let mut db = server.clone();
            db.set_path(&format!("/{name}"));
            let result = async {
                let pool = sqlx::mysql::MySqlPoolOptions::new()
                    .max_connections(conns)
                    .connect(db.as_str())
                    .await
                    .context("connect to scratch database")?;
                sqlx::query(
                    "CREATE TABLE ceiling (id INT PRIMARY KEY, used BIGINT NOT NULL, \
                     generation BIGINT NOT NULL) ENGINE=InnoDB",
                )
                .execute(&pool)
                .await
                .context("create scratch table")?;
                for id in 0..w.trees as i64 {
                    sqlx::query("INSERT INTO ceiling (id, used, generation) VALUES (?, 0, 0)")
                        .bind(id)
                        .execute(&pool)
                        .await
                        .context("fill the scratch table")?;
                }
                let bar = progress::bar("ceiling sql", w.claims as u64);
                let out = measure("single-row UPDATE (autocommit)".into(), w, bar, move |tree| {
                    let pool = pool.clone();
                    async move {
                        sqlx::query(
                            "UPDATE ceiling SET used = used + 1, generation = generation + 1 \
                                 WHERE id = ?",
                        )
                        .bind(tree as i64)
                        .execute(&pool)
                        .await
                        .map(|_| ())
                        .map_err(backend_err)
                    }
                })
                .await?;
                Ok::<_, crate::Error>(out)
            }
            .await;
            let dropped = sqlx::query(AssertSqlSafe(format!("DROP DATABASE `{name}`"))).execute(&admin).await;
            let out = result?;
            dropped.context("drop scratch database")?;
            Ok(out)
        }
        Scheme::Postgres => {
            // The scratch table goes into the server's maintenance database: the URL's own
            // database may not exist yet (the SQL store creates it).
            base.set_path("/postgres");
            let pool = sqlx::postgres::PgPoolOptions::new()
                .max_connections(conns)
                .connect(base.as_str())
                .await
                .with_context(|| format!("cannot connect to {parsed}"))?;
            sqlx::query(AssertSqlSafe(format!(
                "CREATE TABLE {name} (id INT PRIMARY KEY, used BIGINT NOT NULL, \
                 generation BIGINT NOT NULL)"
            )))
            .execute(&pool)
            .await
            .context("create scratch table")?;
            let result = async {
                sqlx::query(AssertSqlSafe(format!(
                    "INSERT INTO {name} (id, used, generation) \
                     SELECT g, 0, 0 FROM generate_series(0, $1) g"
                )))
                .bind(w.trees as i32 - 1)
                .execute(&pool)
                .await
                .context("fill the scratch table")?;
                let bar = progress::bar("ceiling sql", w.claims as u64);
                let sql: std::sync::Arc<str> = format!(
                    "UPDATE {name} SET used = used + 1, generation = generation + 1 \
                     WHERE id = $1"
                )
                .into();
                let p = pool.clone();
                let out = measure("single-row UPDATE (autocommit)".into(), w, bar, move |tree| {
                    let pool = p.clone();
                    let sql = sql.clone();
                    async move {
                        sqlx::query(AssertSqlSafe(sql))
                            .bind(tree as i32)
                            .execute(&pool)
                            .await
                            .map(|_| ())
                            .map_err(backend_err)
                    }
                })
                .await?;
                Ok::<_, crate::Error>(out)
            }
            .await;
            let dropped = sqlx::query(AssertSqlSafe(format!("DROP TABLE {name}"))).execute(&pool).await;
            let out = result?;
            dropped.context("drop scratch table")?;
            Ok(out)
        }
        other => bail!(Measurement, "no SQL ceiling for {other}://"),
    }
}
