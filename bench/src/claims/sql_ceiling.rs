//! The SQL ceiling of `bench claims`: W tasks running the cheapest conditional update of
//! one row, `UPDATE t SET used = used + 1 WHERE id = ? AND used + 1 <= total` (autocommit,
//! so one commit and its fsync each), through sqlx (the client the SQL baseline uses) with
//! as many connections as tasks, over T rows of a scratch table on the server of the
//! candidate's API database (where the baseline's claims go). A row the update did not
//! change counts as a failure; afterwards the rows' `used` must sum to the successful
//! updates. That is the least a Placement-style claim costs (it also reads usage, writes
//! allocation rows and checks the generation in a transaction). The scratch database
//! (MySQL/MariaDB) or table (PostgreSQL) is named after the run and dropped afterwards.

use crate::error::{Context, Result, bail};
use sqlx::AssertSqlSafe;
use unicell::store::{Scheme, StoreUrl};

use super::workload::{Outcome, Workload, measure};
use crate::candidate::Candidate;
use crate::progress;

fn backend_err(e: sqlx::Error) -> unicell::Error {
    unicell::Error::backend("sql-ceiling", e)
}

const WHAT: &str = "UPDATE ... SET used = used + 1 WHERE id = ? AND used + 1 <= total (autocommit, sqlx)";

/// One conditional update's outcome: applied, or refused for capacity.
fn applied(rows: u64) -> unicell::Result<()> {
    if rows == 1 { Ok(()) } else { Err(unicell::Error::backend("ceiling", "the ceiling's row is full")) }
}

/// The rows must hold exactly the successful updates.
fn check_sum(sum: i64, out: &Outcome) -> Result<()> {
    if sum != out.ok as i64 {
        bail!(Measurement, "the SQL ceiling reported {} applied updates but its rows sum to {sum}", out.ok);
    }
    Ok(())
}

/// Measures the ceiling for `cand` (a mysql://, mariadb:// or postgres:// URL).
pub async fn run(cand: &Candidate, w: &Workload, tag: &str) -> Result<Outcome> {
    let parsed = StoreUrl::parse(&cand.url)?;
    let mut base = parsed.expose().clone();
    base.set_query(None);
    let name = format!("unicell_ceiling_{}", tag.replace('-', "_"));
    let conns = w.tasks.clamp(1, 64) as u32;
    let total = (w.claims / w.trees + 1) as i64 * 2;
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
                     total BIGINT NOT NULL) ENGINE=InnoDB",
                )
                .execute(&pool)
                .await
                .context("create scratch table")?;
                for ids in (0..w.trees as i64).collect::<Vec<_>>().chunks(1000) {
                    let values = vec!["(?, 0, ?)"; ids.len()].join(", ");
                    let mut q =
                        sqlx::query(AssertSqlSafe(format!("INSERT INTO ceiling (id, used, total) VALUES {values}")));
                    for id in ids {
                        q = q.bind(*id).bind(total);
                    }
                    q.execute(&pool).await.context("fill the scratch table")?;
                }
                let bar = progress::bar("ceiling sql", w.claims as u64);
                let p = pool.clone();
                let out = measure(WHAT.into(), w, bar, move |tree| {
                    let pool = p.clone();
                    async move {
                        let r = sqlx::query("UPDATE ceiling SET used = used + 1 WHERE id = ? AND used + 1 <= total")
                            .bind(tree as i64)
                            .execute(&pool)
                            .await
                            .map_err(backend_err)?;
                        applied(r.rows_affected())
                    }
                })
                .await?;
                let (sum,): (i64,) = sqlx::query_as("SELECT CAST(COALESCE(SUM(used), 0) AS SIGNED) FROM ceiling")
                    .fetch_one(&pool)
                    .await
                    .context("read the scratch table back")?;
                check_sum(sum, &out)?;
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
                 total BIGINT NOT NULL)"
            )))
            .execute(&pool)
            .await
            .context("create scratch table")?;
            let result = async {
                sqlx::query(AssertSqlSafe(format!(
                    "INSERT INTO {name} (id, used, total) \
                     SELECT g, 0, $2 FROM generate_series(0, $1) g"
                )))
                .bind(w.trees as i32 - 1)
                .bind(total)
                .execute(&pool)
                .await
                .context("fill the scratch table")?;
                let bar = progress::bar("ceiling sql", w.claims as u64);
                let sql: std::sync::Arc<str> =
                    format!("UPDATE {name} SET used = used + 1 WHERE id = $1 AND used + 1 <= total").into();
                let p = pool.clone();
                let out = measure(WHAT.into(), w, bar, move |tree| {
                    let pool = p.clone();
                    let sql = sql.clone();
                    async move {
                        let r = sqlx::query(AssertSqlSafe(sql))
                            .bind(tree as i32)
                            .execute(&pool)
                            .await
                            .map_err(backend_err)?;
                        applied(r.rows_affected())
                    }
                })
                .await?;
                let (sum,): (i64,) =
                    sqlx::query_as(AssertSqlSafe(format!("SELECT COALESCE(SUM(used), 0)::BIGINT FROM {name}")))
                        .fetch_one(&pool)
                        .await
                        .context("read the scratch table back")?;
                check_sum(sum, &out)?;
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
