//! The request mix: seeded build requests against a [`Cloud`]'s flavors, server groups and
//! availability zones, and the request spec Nova's API would send for one flavor.

use std::collections::BTreeMap;

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde::Serialize;

use super::Cloud;
use super::seeded::uuid_from;
use crate::error::{Error, Result};
use crate::model::*;

/// One build request: a spec and its instances.
#[derive(Debug, Clone)]
pub struct BuildRequest {
    /// The spec (the conductor sets `instance_uuid` and `num_instances`).
    pub spec: RequestSpec,
    /// The instances to build.
    pub instances: Vec<Instance>,
}

/// The shape of a generated request stream.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct RequestMix {
    /// Requests.
    pub requests: usize,
    /// Share of requests that ask for 2 or 3 instances (all or nothing).
    pub multi_share: f64,
    /// Share of requests in a server group.
    pub group_share: f64,
    /// Share of requests naming an availability zone.
    pub az_share: f64,
    /// Seed.
    pub seed: u64,
}

/// The request spec of `num_instances` instances of `flavor` (the first one `first`) for
/// `project`/`user`, with no hints, image properties or destination.
pub fn request_spec(flavor: Flavor, first: InstanceId, num_instances: u32, project: &str, user: &str) -> RequestSpec {
    RequestSpec {
        instance_uuid: first,
        flavor,
        image_properties: BTreeMap::new(),
        is_bfv: false,
        num_instances,
        project_id: project.to_string(),
        user_id: user.to_string(),
        availability_zone: None,
        hints: SchedulerHints::default(),
        requested_destination: None,
        ignore_hosts: Vec::new(),
        force_hosts: Vec::new(),
    }
}

/// Generates `mix.requests` requests against `cloud` (deterministic in `mix.seed`): a
/// flavor by the cloud's weights, 2 or 3 instances for `multi_share` of them, a server group
/// (and its project) for `group_share`, an availability zone for `az_share`. Fails when the
/// cloud has no flavor.
pub fn generate(cloud: &Cloud, mix: &RequestMix) -> Result<Vec<BuildRequest>> {
    let mut rng = StdRng::seed_from_u64(mix.seed ^ 0x005E_ED0F_B01D);
    let mut out = Vec::with_capacity(mix.requests);
    for r in 0..mix.requests {
        let flavor = cloud
            .pick_flavor(&mut rng)
            .ok_or_else(|| Error::invalid("cloud", "has no flavor to build requests from"))?
            .clone();
        let n = if rng.random_bool(mix.multi_share.clamp(0.0, 1.0)) { rng.random_range(2..=3) } else { 1 };
        let mut project = format!("project{}", rng.random_range(0..10));
        let mut hints = SchedulerHints::default();
        if !cloud.groups.is_empty() && rng.random_bool(mix.group_share.clamp(0.0, 1.0)) {
            let g = &cloud.groups[rng.random_range(0..cloud.groups.len())];
            hints.group = Some(g.id);
            project = g.project_id.clone();
        }
        let availability_zone = (!cloud.aggregates.is_empty() && rng.random_bool(mix.az_share.clamp(0.0, 1.0)))
            .then(|| cloud.aggregates[rng.random_range(0..cloud.aggregates.len())].availability_zone.clone())
            .flatten();
        let instances: Vec<Instance> = (0..n)
            .map(|k| {
                let mut i = Instance::new_building(
                    InstanceId(uuid_from(&mut rng)),
                    &format!("vm-{r}-{k}"),
                    &project,
                    "demo",
                    flavor.id.clone(),
                );
                i.availability_zone = availability_zone.clone();
                i
            })
            .collect();
        let mut spec = request_spec(flavor, instances[0].uuid, n, &project, "demo");
        spec.availability_zone = availability_zone;
        spec.hints = hints;
        out.push(BuildRequest { spec, instances });
    }
    Ok(out)
}
