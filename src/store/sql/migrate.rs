//! The schema runner: applies `schema/sql/<dialect>/<part>/NNNN_*.sql` (embedded at compile
//! time, so an installed binary needs no files) in version order, once per database.
//!
//! Each database records what it has in `unicell_migrations (part, version)`. The runner
//! holds a lock while it checks and applies (`GET_LOCK` on MariaDB, a transaction-scoped
//! advisory lock on PostgreSQL), so stores opened concurrently against a fresh database do
//! not race each other's `CREATE TABLE`. The files themselves are idempotent too.

use crate::error::Result;
use crate::store::sql::conn::{Dialect, Pool, map_err};

/// Which schema a database gets.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Part {
    /// The API database (Nova API DB + Placement).
    Api,
    /// A cell database.
    Cell,
}

impl Part {
    fn name(self) -> &'static str {
        match self {
            Part::Api => "api",
            Part::Cell => "cell",
        }
    }
}

struct Migration {
    version: i64,
    sql: &'static str,
}

const MYSQL_API: &[Migration] = &[
    Migration { version: 1, sql: include_str!("../../../schema/sql/mysql/api/0001_api.sql") },
    Migration { version: 2, sql: include_str!("../../../schema/sql/mysql/api/0002_unicell.sql") },
    Migration { version: 3, sql: include_str!("../../../schema/sql/mysql/api/0003_placement.sql") },
    Migration { version: 4, sql: include_str!("../../../schema/sql/mysql/api/0004_instance_mapping_stubs.sql") },
];
const MYSQL_CELL: &[Migration] = &[
    Migration { version: 1, sql: include_str!("../../../schema/sql/mysql/cell/0001_cell.sql") },
    Migration { version: 2, sql: include_str!("../../../schema/sql/mysql/cell/0002_unicell.sql") },
    Migration { version: 3, sql: include_str!("../../../schema/sql/mysql/cell/0003_compute_node_uuid.sql") },
];
const PG_API: &[Migration] = &[
    Migration { version: 1, sql: include_str!("../../../schema/sql/postgres/api/0001_api.sql") },
    Migration { version: 2, sql: include_str!("../../../schema/sql/postgres/api/0002_unicell.sql") },
    Migration { version: 3, sql: include_str!("../../../schema/sql/postgres/api/0003_placement.sql") },
    Migration { version: 4, sql: include_str!("../../../schema/sql/postgres/api/0004_instance_mapping_stubs.sql") },
];
const PG_CELL: &[Migration] = &[
    Migration { version: 1, sql: include_str!("../../../schema/sql/postgres/cell/0001_cell.sql") },
    Migration { version: 2, sql: include_str!("../../../schema/sql/postgres/cell/0002_unicell.sql") },
    Migration { version: 3, sql: include_str!("../../../schema/sql/postgres/cell/0003_compute_node_uuid.sql") },
];

/// Applies every migration of `part` that `pool`'s database lacks.
pub async fn migrate(pool: &Pool, part: Part) -> Result<()> {
    let dialect = pool.dialect();
    let migrations = match (dialect, part) {
        (Dialect::MySql, Part::Api) => MYSQL_API,
        (Dialect::MySql, Part::Cell) => MYSQL_CELL,
        (Dialect::Postgres, Part::Api) => PG_API,
        (Dialect::Postgres, Part::Cell) => PG_CELL,
    };
    let mut tx = pool.begin().await.map_err(map_err)?;
    match dialect {
        Dialect::MySql => {
            tx.execute("SELECT GET_LOCK('unicell_migrate', 60)", vec![]).await.map_err(map_err)?;
        }
        Dialect::Postgres => {
            tx.execute("SELECT pg_advisory_xact_lock(727274)", vec![]).await.map_err(map_err)?;
        }
    }
    tx.execute_unprepared(
        "CREATE TABLE IF NOT EXISTS unicell_migrations (part VARCHAR(16) NOT NULL, \
         version BIGINT NOT NULL, PRIMARY KEY (part, version))",
    )
    .await
    .map_err(map_err)?;
    let done = tx
        .fetch_all("SELECT version FROM unicell_migrations WHERE part = ?", crate::sql_args![part.name()])
        .await
        .map_err(map_err)?;
    let mut applied = Vec::new();
    for row in done {
        applied.push(row.i64(0)?);
    }
    for m in migrations {
        if applied.contains(&m.version) {
            continue;
        }
        tracing::info!(part = part.name(), version = m.version, "applying SQL migration");
        tx.execute_unprepared(m.sql).await.map_err(map_err)?;
        tx.execute(
            "INSERT INTO unicell_migrations (part, version) VALUES (?, ?)",
            crate::sql_args![part.name(), m.version],
        )
        .await
        .map_err(map_err)?;
    }
    if dialect == Dialect::MySql {
        tx.execute("SELECT RELEASE_LOCK('unicell_migrate')", vec![]).await.map_err(map_err)?;
    }
    tx.commit().await.map_err(map_err)?;
    Ok(())
}
