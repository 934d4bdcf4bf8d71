//! Placement's `GET /allocation_candidates` as SQL on the API database, and Nova's
//! HostManager reads of compute nodes from the cell databases: the queries of the
//! Nova-faithful scheduler ([`CandidateQueries`]; what is and is not reproduced is in
//! [`crate::store::candidates`]).
//!
//! The candidate query is Placement's `_get_providers_with_resource` for each class, joined
//! into one statement over roots: an inner join on the class's inventory, a left join on
//! the class's usage (`SUM(used) GROUP BY resource_provider_id`, a derived table as
//! Placement writes it), the capacity and unit checks in the `WHERE`, traits and aggregates
//! as `EXISTS` subqueries, then `LIMIT`. The provider summaries are the candidate trees read
//! in the same read-only snapshot (one transaction, as Placement's reader context).

use async_trait::async_trait;

use crate::error::{Error, Result};
use crate::model::{CellId, GroupId, Host, ProviderId, ProviderTree};
use crate::store::candidates::{CandidateQueries, CandidateQuery};
use crate::store::sql::SqlStore;
use crate::store::sql::conn::{Arg, Sql};
use crate::store::sql::trees::{Fail, Sel};

/// The candidate statement and its arguments (pure, so tests can read it).
fn candidate_sql(q: &CandidateQuery, sum_type: &str) -> Result<(String, Vec<Arg>)> {
    if q.resources.is_empty() {
        return Err(Error::invalid("allocation_candidates.resources", "at least one resource class is required"));
    }
    if let Some((c, a)) = q.resources.iter().find(|(_, a)| **a < 1) {
        return Err(Error::invalid("allocation_candidates.resources", format!("{c} amount {a} must be at least 1")));
    }
    if q.limit == Some(0) {
        return Err(Error::invalid("allocation_candidates.limit", "must be at least 1 (None: no limit)"));
    }
    let mut joins = String::new();
    let mut join_args = Vec::new();
    let mut wheres = vec!["rp.parent_provider_id IS NULL".to_string()];
    let mut where_args = Vec::new();
    for (n, (class, amount)) in q.resources.iter().enumerate() {
        joins.push_str(&format!(
            " JOIN inventories i{n} ON i{n}.resource_provider_id = rp.id AND i{n}.resource_class = ? \
             LEFT JOIN (SELECT resource_provider_id, CAST(SUM(used) AS {sum_type}) AS used FROM allocations \
             WHERE resource_class = ? GROUP BY resource_provider_id) u{n} ON u{n}.resource_provider_id = rp.id"
        ));
        join_args.push(Arg::Str(class.to_string()));
        join_args.push(Arg::Str(class.to_string()));
        wheres.push(format!(
            "COALESCE(u{n}.used, 0) + ? <= (i{n}.total - i{n}.reserved) * i{n}.allocation_ratio \
             AND i{n}.min_unit <= ? AND i{n}.max_unit >= ? AND MOD(?, i{n}.step_size) = 0"
        ));
        where_args.extend([Arg::I64(*amount), Arg::I64(*amount), Arg::I64(*amount), Arg::I64(*amount)]);
    }
    for t in &q.required {
        wheres.push(
            "EXISTS (SELECT 1 FROM resource_provider_traits t WHERE t.resource_provider_id = rp.id AND t.trait = ?)"
                .into(),
        );
        where_args.push(Arg::Str(t.to_string()));
    }
    for t in &q.forbidden {
        wheres.push(
            "NOT EXISTS (SELECT 1 FROM resource_provider_traits t WHERE t.resource_provider_id = rp.id \
             AND t.trait = ?)"
                .into(),
        );
        where_args.push(Arg::Str(t.to_string()));
    }
    for set in q.member_of.iter().filter(|s| !s.is_empty()) {
        wheres.push(format!(
            "EXISTS (SELECT 1 FROM resource_provider_aggregates a WHERE a.resource_provider_id = rp.id \
             AND a.aggregate_uuid IN ({}))",
            vec!["?"; set.len()].join(", ")
        ));
        where_args.extend(set.iter().map(|a| Arg::Str(a.to_string())));
    }
    if !q.forbidden_aggregates.is_empty() {
        wheres.push(format!(
            "NOT EXISTS (SELECT 1 FROM resource_provider_aggregates a WHERE a.resource_provider_id = rp.id \
             AND a.aggregate_uuid IN ({}))",
            vec!["?"; q.forbidden_aggregates.len()].join(", ")
        ));
        where_args.extend(q.forbidden_aggregates.iter().map(|a| Arg::Str(a.to_string())));
    }
    let mut sql = format!("SELECT rp.id FROM resource_providers rp{joins} WHERE {}", wheres.join(" AND "));
    let mut args = join_args;
    args.extend(where_args);
    if let Some(l) = q.limit {
        sql.push_str(" LIMIT ?");
        args.push(Arg::I64(i64::try_from(l).unwrap_or(i64::MAX)));
    }
    Ok((sql, args))
}

const HOST_COLS: &str = super::catalog::HOST_COLS;

#[async_trait]
impl CandidateQueries for SqlStore {
    async fn allocation_candidates(&self, query: &CandidateQuery) -> Result<Vec<ProviderTree>> {
        let (sql, args) = candidate_sql(query, self.dialect.pick("SIGNED", "BIGINT"))?;
        let r: std::result::Result<Vec<ProviderTree>, Fail> = async {
            let mut tx = self.api.begin_snapshot().await?;
            let ids: Vec<i64> =
                tx.fetch_all(self.sql(sql), args).await?.iter().map(|r| r.i64(0)).collect::<Result<_>>()?;
            let trees =
                if ids.is_empty() { Vec::new() } else { self.load_trees(&mut tx, Sel::Roots(&ids)).await?.trees };
            tx.commit().await?;
            Ok(trees)
        }
        .await;
        match r {
            Ok(t) => Ok(t),
            Err(Fail::Err(e)) => Err(e),
            Err(Fail::Retry) => {
                Err(Error::Timeout { backend: "sql", message: "allocation candidates read kept conflicting".into() })
            }
        }
    }

    async fn hosts_by_root(&self, roots: &[(ProviderId, Option<CellId>)]) -> Result<Vec<Host>> {
        // Group the roots by cell database; a root of no known cell is asked of every one.
        let mut per_slot: Vec<Vec<String>> = vec![Vec::new(); self.cells.len()];
        for (root, cell) in roots {
            match cell {
                Some(c) => per_slot[self.slot_of(*c).await?].push(root.to_string()),
                None => per_slot.iter_mut().for_each(|v| v.push(root.to_string())),
            }
        }
        let futs = per_slot.into_iter().enumerate().filter(|(_, v)| !v.is_empty()).map(|(slot, uuids)| async move {
            let sql = self.stmts.adapt(&format!(
                "SELECT {HOST_COLS} FROM compute_nodes WHERE root_provider_uuid IN ({})",
                vec!["?"; uuids.len()].join(", ")
            ));
            self.cells[slot].pool.fetch_all(Sql::Dynamic(sql.into()), uuids.into_iter().map(Arg::Str).collect()).await
        });
        let mut hosts = Vec::new();
        for rows in futures::future::try_join_all(futs).await? {
            for r in &rows {
                hosts.push(super::catalog::host_from(r)?);
            }
        }
        Ok(hosts)
    }

    async fn group_roots(&self, group: GroupId) -> Result<Vec<(ProviderId, Option<CellId>)>> {
        let rows = self
            .api
            .fetch_all(
                "SELECT DISTINCT rp.uuid, rp.cell_uuid FROM tree_consumers tc \
                 JOIN resource_providers rp ON rp.id = tc.root_provider_id WHERE tc.group_uuid = ?",
                crate::sql_args![group.to_string()],
            )
            .await?;
        rows.iter().map(|r| Ok((ProviderId(r.uuid(0)?), r.opt_uuid(1)?.map(CellId)))).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{AggregateId, ResourceClass, Trait};
    use std::collections::BTreeSet;

    #[test]
    fn one_join_per_class_and_placeholders_match_arguments() {
        let q = CandidateQuery {
            resources: [(ResourceClass::Vcpu, 2), (ResourceClass::MemoryMb, 2048)].into_iter().collect(),
            required: BTreeSet::from([Trait::new("HW_CPU_X86_AVX2").unwrap()]),
            forbidden: BTreeSet::from([Trait::new("COMPUTE_STATUS_DISABLED").unwrap()]),
            member_of: vec![BTreeSet::from([AggregateId::new_v4(), AggregateId::new_v4()])],
            forbidden_aggregates: BTreeSet::from([AggregateId::new_v4()]),
            limit: Some(1000),
        };
        let (sql, args) = candidate_sql(&q, "SIGNED").unwrap();
        assert_eq!(sql.matches('?').count(), args.len());
        assert_eq!(sql.matches("JOIN inventories").count(), 2);
        assert!(sql.contains("rp.parent_provider_id IS NULL"), "roots only: {sql}");
        assert!(sql.ends_with("LIMIT ?"));
    }

    #[test]
    fn bad_queries_are_refused_with_the_field_named() {
        let e = candidate_sql(&CandidateQuery::default(), "SIGNED").unwrap_err();
        assert!(e.to_string().contains("resources"), "{e}");
        let q = CandidateQuery {
            resources: [(ResourceClass::Vcpu, 1)].into_iter().collect(),
            limit: Some(0),
            ..Default::default()
        };
        assert!(candidate_sql(&q, "SIGNED").unwrap_err().to_string().contains("limit"));
    }
}
