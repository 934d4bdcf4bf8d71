//! The Nova API in process (the router driven directly, no sockets) on the memory store:
//! version documents, auth, microversions, flavors, zones, and a table of bad input that
//! must be answered with the right 4xx in Nova's error format, never a 500.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use axum::body::Body;
use axum::http::{HeaderMap, Method, Request, StatusCode};
use http_body_util::BodyExt;
use serde_json::{Value, json};
use tower::ServiceExt;
use unicell::api::{ApiConfig, ApiState, nova};
use unicell::model::*;
use unicell::store::Store;
use unicell::store::memory::MemoryStore;

struct Api {
    router: axum::Router,
    store: Arc<dyn Store>,
}

struct Reply {
    status: StatusCode,
    headers: HeaderMap,
    body: Value,
}

impl Api {
    async fn new() -> Api {
        let store: Arc<dyn Store> = Arc::new(MemoryStore::new());
        Self::on(store).await
    }

    async fn on(store: Arc<dyn Store>) -> Api {
        let state = ApiState::new(store.clone(), ApiConfig::default(), None).await.expect("state");
        Api { router: nova::router(state), store }
    }

    async fn call(&self, method: Method, path: &str, headers: &[(&str, &str)], body: Option<Vec<u8>>) -> Reply {
        let mut req = Request::builder().method(method).uri(path).header("host", "nova.test:8774");
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        let req = req.body(body.map(Body::from).unwrap_or_else(Body::empty)).expect("request");
        let resp = self.router.clone().oneshot(req).await.expect("infallible");
        let status = resp.status();
        let headers = resp.headers().clone();
        let bytes = resp.into_body().collect().await.expect("body").to_bytes();
        let body = if bytes.is_empty() {
            Value::Null
        } else {
            serde_json::from_slice(&bytes)
                .unwrap_or_else(|e| panic!("{path}: response is not JSON ({e}): {}", String::from_utf8_lossy(&bytes)))
        };
        Reply { status, headers, body }
    }

    async fn get(&self, path: &str, token: &str) -> Reply {
        self.call(Method::GET, path, &[("x-auth-token", token)], None).await
    }
}

fn flavor(id: &str, vcpus: i64, ram: i64, disk: i64) -> Flavor {
    Flavor {
        id: FlavorId::new(id).unwrap(),
        name: id.to_string(),
        vcpus,
        memory_mb: ram,
        root_gb: disk,
        ephemeral_gb: 0,
        swap_mb: 0,
        extra_specs: BTreeMap::new(),
    }
}

/// Asserts a Nova error body: one key named after the status, with code and message.
fn assert_fault(r: &Reply, status: u16, what: &str) {
    assert_eq!(r.status.as_u16(), status, "{what}: {}", r.body);
    let obj = r.body.as_object().unwrap_or_else(|| panic!("{what}: error body is not an object: {}", r.body));
    assert_eq!(obj.len(), 1, "{what}: {}", r.body);
    let (_, inner) = obj.iter().next().unwrap();
    assert_eq!(inner["code"], json!(status), "{what}: {}", r.body);
    assert!(inner["message"].as_str().is_some_and(|m| !m.is_empty()), "{what}: {}", r.body);
}

#[tokio::test]
async fn version_documents_need_no_token_and_link_to_the_host() {
    let api = Api::new().await;
    let r = api.call(Method::GET, "/", &[], None).await;
    assert_eq!(r.status, StatusCode::OK);
    let v = &r.body["versions"][0];
    assert_eq!(v["id"], "v2.1");
    assert_eq!(v["min_version"], "2.1");
    assert_eq!(v["version"], nova::VERSIONS.max.to_string());
    assert_eq!(v["links"][0], json!({"rel": "self", "href": "http://nova.test:8774/v2.1/"}));
    for path in ["/v2.1", "/v2.1/"] {
        let r = api.call(Method::GET, path, &[], None).await;
        assert_eq!(r.status, StatusCode::OK, "{path}");
        assert_eq!(r.body["version"]["id"], "v2.1");
        assert_eq!(r.body["version"]["links"][0]["rel"], "self");
        assert_eq!(r.body["version"]["media-types"][0]["base"], "application/json");
    }
    let r = api.call(Method::GET, "/identity/v3", &[], None).await;
    assert_eq!(r.body["version"]["id"], "v3.14");
}

#[tokio::test]
async fn auth_and_microversions() {
    let api = Api::new().await;
    let r = api.call(Method::GET, "/v2.1/flavors", &[], None).await;
    assert_fault(&r, 401, "no token");
    assert!(r.body.get("unauthorized").is_some());

    let r = api.get("/v2.1/flavors", "demo:demo").await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(r.headers["openstack-api-version"], "compute 2.1");
    assert_eq!(r.headers["x-openstack-nova-api-version"], "2.1");
    let vary: Vec<_> = r.headers.get_all("vary").iter().map(|v| v.to_str().unwrap().to_string()).collect();
    assert!(vary.contains(&"OpenStack-API-Version".to_string()), "{vary:?}");
    assert!(vary.contains(&"X-OpenStack-Nova-API-Version".to_string()), "{vary:?}");

    let r = api
        .call(
            Method::GET,
            "/v2.1/flavors",
            &[("x-auth-token", "demo"), ("openstack-api-version", "compute latest")],
            None,
        )
        .await;
    assert_eq!(r.headers["openstack-api-version"], format!("compute {}", nova::VERSIONS.max).as_str());
    let r = api
        .call(Method::GET, "/v2.1/flavors", &[("x-auth-token", "demo"), ("x-openstack-nova-api-version", "2.55")], None)
        .await;
    assert_eq!(r.headers["x-openstack-nova-api-version"], "2.55");
}

#[tokio::test]
async fn flavors_list_detail_show_and_paging() {
    let api = Api::new().await;
    for (i, f) in [flavor("1", 1, 512, 1), flavor("2", 1, 2048, 20), flavor("3", 2, 4096, 40)].iter().enumerate() {
        let mut f = f.clone();
        if i == 2 {
            f.extra_specs.insert("hw:cpu_policy".into(), "dedicated".into());
        }
        api.store.put_flavor(&f).await.unwrap();
    }
    let r = api.get("/v2.1/flavors", "demo").await;
    let ids: Vec<_> = r.body["flavors"].as_array().unwrap().iter().map(|f| f["id"].clone()).collect();
    assert_eq!(ids, vec![json!("1"), json!("2"), json!("3")]);
    assert_eq!(r.body["flavors"][0]["links"][0]["href"], "http://nova.test:8774/v2.1/flavors/1");
    assert_eq!(r.body["flavors"][0]["links"][1]["href"], "http://nova.test:8774/flavors/1");
    assert!(r.body.get("flavors_links").is_none());

    let r = api.get("/v2.1/flavors/detail?limit=2", "demo").await;
    assert_eq!(r.body["flavors"].as_array().unwrap().len(), 2);
    assert_eq!(r.body["flavors"][0]["swap"], "");
    assert_eq!(r.body["flavors"][0]["os-flavor-access:is_public"], true);
    assert_eq!(r.body["flavors_links"][0]["href"], "http://nova.test:8774/v2.1/flavors/detail?limit=2&marker=2");
    let r = api.get("/v2.1/flavors/detail?limit=2&marker=2", "demo").await;
    assert_eq!(r.body["flavors"].as_array().unwrap().len(), 1);
    assert!(r.body.get("flavors_links").is_none());
    let r = api.get("/v2.1/flavors?minRam=2048&sort_key=memory_mb&sort_dir=desc", "demo").await;
    let ids: Vec<_> = r.body["flavors"].as_array().unwrap().iter().map(|f| f["id"].clone()).collect();
    assert_eq!(ids, vec![json!("3"), json!("2")]);

    let r = api
        .call(
            Method::GET,
            "/v2.1/flavors/3",
            &[("x-auth-token", "demo"), ("openstack-api-version", "compute 2.75")],
            None,
        )
        .await;
    assert_eq!(r.body["flavor"]["swap"], 0);
    assert_eq!(r.body["flavor"]["description"], Value::Null);
    assert_eq!(r.body["flavor"]["extra_specs"]["hw:cpu_policy"], "dedicated");

    // Admins: is_public=None lists all, false lists none (every flavor is public).
    assert_eq!(api.get("/v2.1/flavors?is_public=None", "admin").await.body["flavors"].as_array().unwrap().len(), 3);
    assert_eq!(api.get("/v2.1/flavors?is_public=false", "admin").await.body["flavors"].as_array().unwrap().len(), 0);
    assert_eq!(api.get("/v2.1/flavors?is_public=false", "demo").await.body["flavors"].as_array().unwrap().len(), 3);
    assert_fault(&api.get("/v2.1/flavors?is_public=maybe", "admin").await, 400, "is_public=maybe");
    assert_fault(&api.get("/v2.1/flavors/nope", "demo").await, 404, "unknown flavor");
}

#[tokio::test]
async fn availability_zones() {
    let api = Api::new().await;
    let cell = Cell { id: CellId::new_v4(), name: "cell0".into(), disabled: false };
    api.store.put_cell(&cell).await.unwrap();
    for (name, az, enabled) in [("h1", Some("az1"), true), ("h2", None, true), ("h3", Some("az9"), false)] {
        api.store
            .put_host(&Host {
                name: name.into(),
                cell: cell.id,
                root_provider: ProviderId::new_v4(),
                node: name.into(),
                enabled,
                disabled_reason: None,
                last_heartbeat: Timestamp::now(),
                availability_zone: az.map(str::to_string),
                capabilities: BTreeMap::new(),
            })
            .await
            .unwrap();
    }
    let r = api.get("/v2.1/os-availability-zone", "demo").await;
    assert_eq!(
        r.body,
        json!({"availabilityZoneInfo": [
            {"zoneName": "az1", "zoneState": {"available": true}, "hosts": null},
            {"zoneName": "nova", "zoneState": {"available": true}, "hosts": null},
            {"zoneName": "az9", "zoneState": {"available": false}, "hosts": null},
        ]})
    );
    assert_fault(&api.get("/v2.1/os-availability-zone/detail", "demo").await, 403, "detail for a member");
    let r = api.get("/v2.1/os-availability-zone/detail", "admin").await;
    assert_eq!(r.body["availabilityZoneInfo"][0]["hosts"]["h1"]["nova-compute"]["available"], true);
}

/// One row of the bad-input table: what, method, path, headers, body, expected status.
type BadCase = (&'static str, Method, &'static str, Vec<(&'static str, &'static str)>, Option<Vec<u8>>, u16);

/// Malformed requests: each gets the right 4xx in Nova's format, never a 500.
#[tokio::test]
async fn bad_input_table() {
    let api = Api::new().await;
    let token = ("x-auth-token", "demo");
    let cases: Vec<BadCase> = vec![
        ("no token", Method::GET, "/v2.1/flavors", vec![], None, 401),
        ("empty token", Method::GET, "/v2.1/flavors", vec![("x-auth-token", "")], None, 401),
        ("token without user", Method::GET, "/v2.1/flavors", vec![("x-auth-token", ":p")], None, 401),
        (
            "bad microversion",
            Method::GET,
            "/v2.1/flavors",
            vec![token, ("openstack-api-version", "compute 2.x")],
            None,
            400,
        ),
        (
            "leading zero",
            Method::GET,
            "/v2.1/flavors",
            vec![token, ("openstack-api-version", "compute 2.01")],
            None,
            400,
        ),
        ("legacy bad", Method::GET, "/v2.1/flavors", vec![token, ("x-openstack-nova-api-version", "two")], None, 400),
        ("too new", Method::GET, "/v2.1/flavors", vec![token, ("openstack-api-version", "compute 2.999")], None, 406),
        ("too old", Method::GET, "/v2.1/flavors", vec![token, ("openstack-api-version", "compute 2.0")], None, 406),
        ("major 3", Method::GET, "/v2.1/flavors", vec![token, ("openstack-api-version", "compute 3.0")], None, 406),
        ("negative limit", Method::GET, "/v2.1/flavors?limit=-1", vec![token], None, 400),
        ("text limit", Method::GET, "/v2.1/flavors?limit=ten", vec![token], None, 400),
        ("unknown flavor marker", Method::GET, "/v2.1/flavors?marker=nope", vec![token], None, 400),
        ("bad sort key", Method::GET, "/v2.1/flavors?sort_key=color", vec![token], None, 400),
        ("bad sort dir", Method::GET, "/v2.1/flavors?sort_dir=up", vec![token], None, 400),
        ("bad minRam", Method::GET, "/v2.1/flavors?minRam=lots", vec![token], None, 400),
        (
            "unknown param at 2.75",
            Method::GET,
            "/v2.1/flavors?color=red",
            vec![token, ("openstack-api-version", "compute 2.75")],
            None,
            400,
        ),
        ("unknown path", Method::GET, "/v2.1/nothing-here", vec![token], None, 404),
        ("unknown root path", Method::GET, "/nothing", vec![], None, 404),
        ("wrong method", Method::PATCH, "/v2.1/flavors", vec![token], None, 405),
        ("server uuid", Method::GET, "/v2.1/servers/not-a-uuid", vec![token], None, 404),
        ("unknown server", Method::DELETE, "/v2.1/servers/6f0b6b3e-3b7e-4a3f-9b38-1d8f0c7c2a11", vec![token], None, 404),
        ("marker not uuid", Method::GET, "/v2.1/servers?marker=abc", vec![token], None, 400),
        ("server limit", Method::GET, "/v2.1/servers/detail?limit=-5", vec![token], None, 400),
        ("bad status 2.38", Method::GET, "/v2.1/servers?status=SLEEPY", vec![token, ("openstack-api-version", "compute 2.38")], None, 400),
        ("deleted for member", Method::GET, "/v2.1/servers?status=DELETED", vec![token], None, 403),
        ("sort order", Method::GET, "/v2.1/servers?sort_key=display_name", vec![token], None, 400),
        ("bad sort dir", Method::GET, "/v2.1/servers?sort_key=created_at&sort_dir=sideways", vec![token], None, 400),
        ("changes-since", Method::GET, "/v2.1/servers?changes-since=yesterday", vec![token], None, 400),
        ("bad name regex", Method::GET, "/v2.1/servers?name=(", vec![token], None, 400),
        ("unknown list param 2.75", Method::GET, "/v2.1/servers?flavour=1", vec![token, ("openstack-api-version", "compute 2.75")], None, 400),
        ("not JSON", Method::POST, "/v2.1/servers", vec![token, ("content-type", "application/json")], Some(b"{nope".to_vec()), 400),
        ("empty body", Method::POST, "/v2.1/servers", vec![token], Some(Vec::new()), 400),
        ("JSON array", Method::POST, "/v2.1/servers", vec![token], Some(b"[]".to_vec()), 400),
        ("xml", Method::POST, "/v2.1/servers", vec![token, ("content-type", "application/xml")], Some(b"<server/>".to_vec()), 415),
        ("huge body", Method::POST, "/v2.1/servers", vec![token], Some(vec![b' '; 200_000]), 413),
        ("no server key", Method::POST, "/v2.1/servers", vec![token], Some(br#"{"srv": {}}"#.to_vec()), 400),
        ("unknown field", Method::POST, "/v2.1/servers", vec![token], Some(br#"{"server": {"name": "a", "flavorRef": "1", "imageRef": "i", "colour": 1}}"#.to_vec()), 400),
        ("no name", Method::POST, "/v2.1/servers", vec![token], Some(br#"{"server": {"flavorRef": "1", "imageRef": "i"}}"#.to_vec()), 400),
        ("name not string", Method::POST, "/v2.1/servers", vec![token], Some(br#"{"server": {"name": 5, "flavorRef": "1", "imageRef": "i"}}"#.to_vec()), 400),
        ("unknown flavor", Method::POST, "/v2.1/servers", vec![token], Some(br#"{"server": {"name": "a", "flavorRef": "nope", "imageRef": "i"}}"#.to_vec()), 400),
        ("no image", Method::POST, "/v2.1/servers", vec![token], Some(br#"{"server": {"name": "a", "flavorRef": "1"}}"#.to_vec()), 400),
        ("min > max", Method::POST, "/v2.1/servers", vec![token], Some(br#"{"server": {"name": "a", "flavorRef": "1", "imageRef": "i", "min_count": 3, "max_count": 2}}"#.to_vec()), 400),
        ("count zero", Method::POST, "/v2.1/servers", vec![token], Some(br#"{"server": {"name": "a", "flavorRef": "1", "imageRef": "i", "min_count": 0}}"#.to_vec()), 400),
        ("networks at 2.37", Method::POST, "/v2.1/servers", vec![token, ("openstack-api-version", "compute 2.37")], Some(br#"{"server": {"name": "a", "flavorRef": "1", "imageRef": "i"}}"#.to_vec()), 400),
        ("bad group hint", Method::POST, "/v2.1/servers", vec![token], Some(br#"{"server": {"name": "a", "flavorRef": "1", "imageRef": "i"}, "os:scheduler_hints": {"group": "nope"}}"#.to_vec()), 400),
        ("metadata not object", Method::POST, "/v2.1/servers", vec![token], Some(br#"{"server": {"name": "a", "flavorRef": "1", "imageRef": "i", "metadata": []}}"#.to_vec()), 400),
    ];
    for (what, method, path, headers, body, status) in cases {
        let r = api.call(method, path, &headers, body).await;
        assert_fault(&r, status, what);
    }
}

/// `n` hosts of 4 VCPU / 8 GiB / 100 GB in one cell, zone `az1`, and flavor `small`
/// (1 VCPU, 1 GiB, 10 GB).
async fn small_cloud(store: &Arc<dyn Store>, n: usize) {
    let cell = Cell { id: CellId::new_v4(), name: "cell1".into(), disabled: false };
    store.put_cell(&cell).await.unwrap();
    for h in 0..n {
        let root = ProviderId::new_v4();
        let name = format!("host{h}");
        store
            .create_provider(&NewProvider {
                id: root,
                name: name.clone(),
                parent: None,
                cell: Some(cell.id),
                inventories: BTreeMap::from([
                    (ResourceClass::Vcpu, Inventory::with_total(4)),
                    (ResourceClass::MemoryMb, Inventory::with_total(8192)),
                    (ResourceClass::DiskGb, Inventory::with_total(100)),
                ]),
                traits: Default::default(),
                aggregates: Default::default(),
            })
            .await
            .unwrap();
        store
            .put_host(&Host {
                name: name.clone(),
                cell: cell.id,
                root_provider: root,
                node: name,
                enabled: true,
                disabled_reason: None,
                last_heartbeat: Timestamp::now(),
                availability_zone: Some("az1".into()),
                capabilities: BTreeMap::new(),
            })
            .await
            .unwrap();
    }
    store.put_flavor(&flavor("small", 1, 1024, 10)).await.unwrap();
}

fn server_body(name: &str) -> Vec<u8> {
    serde_json::to_vec(
        &json!({"server": {"name": name, "imageRef": "70a599e0-31e7-49b7-b260-868f441e862b", "flavorRef": "small"}}),
    )
    .unwrap()
}

async fn wait_settled(api: &Api, id: &str, token: &str) -> Value {
    for _ in 0..500 {
        let r = api.get(&format!("/v2.1/servers/{id}"), token).await;
        if r.body["server"]["status"] != "BUILD" {
            return r.body["server"].clone();
        }
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    panic!("server {id} still building");
}

#[tokio::test]
async fn servers_create_show_list_delete() {
    let api = Api::new().await;
    small_cloud(&api.store, 2).await;
    let json_ct = ("content-type", "application/json");
    let r = api
        .call(Method::POST, "/v2.1/servers", &[("x-auth-token", "alice:p1"), json_ct], Some(server_body("vm one")))
        .await;
    assert_eq!(r.status, StatusCode::ACCEPTED, "{}", r.body);
    let id = r.body["server"]["id"].as_str().unwrap().to_string();
    assert_eq!(r.headers["location"], format!("http://nova.test:8774/v2.1/servers/{id}").as_str());
    assert!(r.body["server"]["adminPass"].is_string());
    assert_eq!(r.body["server"]["security_groups"], json!([{"name": "default"}]));

    let s = wait_settled(&api, &id, "alice:p1").await;
    assert_eq!(s["status"], "ACTIVE", "{s}");
    assert_eq!(s["image"]["id"], "70a599e0-31e7-49b7-b260-868f441e862b");
    assert_eq!(s["flavor"]["id"], "small");
    assert_eq!(s["OS-EXT-STS:power_state"], 1);
    assert!(s.get("OS-EXT-SRV-ATTR:host").is_none(), "members do not see the host");
    assert_eq!(s["OS-EXT-AZ:availability_zone"], "az1");
    let claims = api.store.allocations(ConsumerId(uuid::Uuid::parse_str(&id).unwrap())).await.unwrap();
    assert_eq!(claims.len(), 1);

    // Admin view at the highest microversion.
    let r = api
        .call(
            Method::GET,
            &format!("/v2.1/servers/{id}"),
            &[("x-auth-token", "admin"), ("openstack-api-version", "compute latest")],
            None,
        )
        .await;
    let s = &r.body["server"];
    assert!(s["OS-EXT-SRV-ATTR:host"].as_str().unwrap().starts_with("host"));
    assert_eq!(s["OS-EXT-SRV-ATTR:hostname"], "vm-one");
    assert_eq!(s["flavor"]["original_name"], "small");
    assert_eq!(s["host_status"], "UP");
    assert_eq!(s["server_groups"], json!([]));
    assert_eq!(s["scheduler_hints"], json!({}));
    assert_eq!(s["image"]["properties"], json!({}));

    // Another project neither lists nor shows it.
    assert_eq!(api.get("/v2.1/servers", "bob:p2").await.body["servers"], json!([]));
    assert_fault(&api.get(&format!("/v2.1/servers/{id}"), "bob:p2").await, 403, "other project");

    // Delete: 204, gone, claim released.
    let r = api.call(Method::DELETE, &format!("/v2.1/servers/{id}"), &[("x-auth-token", "alice:p1")], None).await;
    assert_eq!(r.status, StatusCode::NO_CONTENT);
    assert_fault(&api.get(&format!("/v2.1/servers/{id}"), "alice:p1").await, 404, "deleted server");
    assert_eq!(api.get("/v2.1/servers", "alice:p1").await.body["servers"], json!([]));
    let claims = api.store.allocations(ConsumerId(uuid::Uuid::parse_str(&id).unwrap())).await.unwrap();
    assert!(claims.is_empty());
}

#[tokio::test]
async fn servers_paging_newest_first_and_limits() {
    let api = Api::new().await;
    small_cloud(&api.store, 4).await;
    let token = ("x-auth-token", "alice:p1");
    let mut created = Vec::new();
    for n in 0..7 {
        let r = api.call(Method::POST, "/v2.1/servers", &[token], Some(server_body(&format!("vm{n}")))).await;
        assert_eq!(r.status, StatusCode::ACCEPTED, "{}", r.body);
        created.push(r.body["server"]["id"].as_str().unwrap().to_string());
    }
    created.reverse();
    let mut seen = Vec::new();
    let mut path = "/v2.1/servers/detail?limit=3".to_string();
    loop {
        let r = api.get(&path, "alice:p1").await;
        assert_eq!(r.status, StatusCode::OK, "{}", r.body);
        let page = r.body["servers"].as_array().unwrap();
        seen.extend(page.iter().map(|s| s["id"].as_str().unwrap().to_string()));
        match r.body.get("servers_links") {
            Some(links) => {
                assert_eq!(page.len(), 3);
                let href = links[0]["href"].as_str().unwrap();
                path = href.trim_start_matches("http://nova.test:8774").to_string();
            }
            None => break,
        }
    }
    assert_eq!(seen, created, "every server once, newest first");
    assert_eq!(api.get("/v2.1/servers?limit=0", "alice:p1").await.body["servers"], json!([]));
    let last = created.last().unwrap();
    assert_eq!(api.get(&format!("/v2.1/servers?marker={last}"), "alice:p1").await.body["servers"], json!([]));
    let r = api.get(&format!("/v2.1/servers?marker={}", uuid::Uuid::new_v4()), "alice:p1").await;
    assert_fault(&r, 400, "unknown marker");
    assert!(r.body["badRequest"]["message"].as_str().unwrap().starts_with("marker ["));
    let r = api.get("/v2.1/servers?name=vm[36]", "alice:p1").await;
    assert_eq!(r.body["servers"].as_array().unwrap().len(), 2, "{}", r.body);
    // all_tenants is for admins.
    assert_fault(&api.get("/v2.1/servers?all_tenants=1", "alice:p1").await, 403, "all_tenants member");
    assert_eq!(api.get("/v2.1/servers?all_tenants=1", "admin").await.body["servers"].as_array().unwrap().len(), 7);
    assert_eq!(api.get("/v2.1/servers", "admin").await.body["servers"], json!([]));
}

#[tokio::test]
async fn multi_create_is_all_or_nothing() {
    let api = Api::new().await;
    small_cloud(&api.store, 1).await;
    // Four VCPUs: five instances cannot all fit, so none is placed.
    let body = json!({"server": {"name": "many", "imageRef": "x", "flavorRef": "small", "min_count": 5}});
    let r = api
        .call(Method::POST, "/v2.1/servers", &[("x-auth-token", "p")], Some(serde_json::to_vec(&body).unwrap()))
        .await;
    assert_eq!(r.status, StatusCode::ACCEPTED, "{}", r.body);
    let list = api.get("/v2.1/servers", "p").await.body["servers"].as_array().unwrap().clone();
    assert_eq!(list.len(), 5);
    for s in list {
        let s = wait_settled(&api, s["id"].as_str().unwrap(), "p").await;
        assert_eq!(s["status"], "ERROR", "{s}");
        assert_eq!(s["fault"]["code"], 500);
        assert!(s["fault"]["message"].as_str().unwrap().starts_with("No valid host"));
    }
    let body = json!({"server": {"name": "four", "imageRef": "x", "flavorRef": "small", "max_count": 4}});
    let r = api
        .call(Method::POST, "/v2.1/servers", &[("x-auth-token", "q")], Some(serde_json::to_vec(&body).unwrap()))
        .await;
    assert_eq!(r.status, StatusCode::ACCEPTED);
    let list = api.get("/v2.1/servers", "q").await.body["servers"].as_array().unwrap().clone();
    let names: BTreeSet<_> = list.iter().map(|s| s["name"].as_str().unwrap().to_string()).collect();
    assert_eq!(names, BTreeSet::from(["four-1".into(), "four-2".into(), "four-3".into(), "four-4".into()]));
    for s in list {
        assert_eq!(wait_settled(&api, s["id"].as_str().unwrap(), "q").await["status"], "ACTIVE");
    }
}

/// Leaves behind what a replica killed mid-build leaves: a BUILDING instance with its
/// request spec and a claim on `host0`, under a lease of replica `dead` that expired.
async fn orphan_build(store: &Arc<dyn Store>, attempts: u32) -> InstanceId {
    let id = InstanceId::new_v4();
    let flavor = store.get_flavor(&FlavorId::new("small").unwrap()).await.unwrap();
    let leases = store.leases().expect("memory store has leases");
    leases
        .create_lease(&unicell::store::leases::BuildLease {
            instance: id,
            owner: "dead".into(),
            expires_at: Timestamp::now().minus(std::time::Duration::from_secs(60)),
            version: 1,
            attempts,
        })
        .await
        .unwrap();
    let inst = Instance::new_building(id, "orphan", "p1", "u1", flavor.id.clone());
    store.create_instance(&inst).await.unwrap();
    store
        .put_request_spec(&RequestSpec {
            instance_uuid: id,
            flavor: flavor.clone(),
            image_properties: BTreeMap::new(),
            is_bfv: false,
            num_instances: 1,
            project_id: "p1".into(),
            user_id: "u1".into(),
            availability_zone: None,
            hints: Default::default(),
            requested_destination: None,
            ignore_hosts: vec![],
            force_hosts: vec![],
        })
        .await
        .unwrap();
    let host = store.get_host("host0").await.unwrap();
    store
        .claim(&ClaimRequest {
            consumer: ConsumerId::from(id),
            project_id: "p1".into(),
            user_id: "u1".into(),
            allocations: BTreeMap::from([(
                host.root_provider,
                BTreeMap::from([
                    (ResourceClass::Vcpu, 1),
                    (ResourceClass::MemoryMb, 1024),
                    (ResourceClass::DiskGb, 10),
                ]),
            )]),
            group: None,
        })
        .await
        .unwrap();
    id
}

async fn replica(store: Arc<dyn Store>) -> ApiState {
    let config = ApiConfig { replica: "survivor".into(), ..ApiConfig::default() };
    ApiState::new(store, config, None).await.unwrap()
}

async fn settled_instance(store: &Arc<dyn Store>, id: InstanceId) -> Instance {
    for _ in 0..500 {
        let i = store.get_instance(id).await.unwrap();
        if i.vm_state != VmState::Building && store.leases().unwrap().get_lease(id).await.unwrap().is_none() {
            return i;
        }
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    panic!("{id} never settled");
}

#[tokio::test]
async fn a_dead_replicas_build_is_rescheduled_by_the_reaper() {
    let store: Arc<dyn Store> = Arc::new(MemoryStore::new());
    small_cloud(&store, 2).await;
    let id = orphan_build(&store, 0).await;
    let survivor = replica(store.clone()).await;
    assert_eq!(survivor.builds().reap_once().await.unwrap(), 1);
    let inst = settled_instance(&store, id).await;
    assert_eq!(inst.vm_state, VmState::Active, "{inst:?}");
    let held = store.allocations(ConsumerId::from(id)).await.unwrap();
    assert_eq!(held.len(), 1, "exactly its claim");
    assert!(unicell::store::audit::audit(store.as_ref(), &Default::default()).await.unwrap().is_clean());
    // Nothing left to reap.
    assert_eq!(survivor.builds().reap_once().await.unwrap(), 0);
}

#[tokio::test]
async fn a_build_interrupted_too_often_goes_to_error_without_its_claim() {
    let store: Arc<dyn Store> = Arc::new(MemoryStore::new());
    small_cloud(&store, 2).await;
    let id = orphan_build(&store, 5).await;
    let survivor = replica(store.clone()).await;
    assert_eq!(survivor.builds().reap_once().await.unwrap(), 1);
    let inst = settled_instance(&store, id).await;
    assert_eq!(inst.vm_state, VmState::Error);
    assert!(inst.fault.unwrap().message.contains("interrupted"));
    assert!(store.allocations(ConsumerId::from(id)).await.unwrap().is_empty());
    assert!(unicell::store::audit::audit(store.as_ref(), &Default::default()).await.unwrap().is_clean());
}

#[tokio::test]
async fn a_lease_without_its_instance_releases_the_claim() {
    let store: Arc<dyn Store> = Arc::new(MemoryStore::new());
    small_cloud(&store, 1).await;
    let id = orphan_build(&store, 0).await;
    store.delete_instance(id).await.unwrap();
    let survivor = replica(store.clone()).await;
    assert_eq!(survivor.builds().reap_once().await.unwrap(), 1);
    for _ in 0..500 {
        if store.leases().unwrap().get_lease(id).await.unwrap().is_none() {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    assert!(store.leases().unwrap().get_lease(id).await.unwrap().is_none());
    assert!(store.allocations(ConsumerId::from(id)).await.unwrap().is_empty());
}

/// The conductor gives up on a build without recording its outcome (every write of the
/// instance fails, including the one that would put it in ERROR): the replica must not drop
/// the lease of an instance left BUILDING, or nobody would ever finish it. The lease is
/// left to expire and a reaper reschedules the build.
#[tokio::test]
async fn a_build_that_ends_still_building_keeps_its_lease_for_the_reaper() {
    use unicell::testkit::faulty::{Faults, FaultyStore};
    let memory: Arc<dyn Store> = Arc::new(MemoryStore::new());
    small_cloud(&memory, 1).await;
    let faults = Faults::new();
    let store: Arc<dyn Store> = FaultyStore::new(memory.clone(), faults.clone());
    let mut config = ApiConfig { replica: "flaky".into(), ..ApiConfig::default() };
    config.conductor.store_backoff = std::time::Duration::from_millis(1);
    config.builds.lease_ttl = std::time::Duration::from_millis(300);
    config.builds.renew_every = std::time::Duration::from_millis(50);
    config.builds.reap_every = std::time::Duration::from_secs(3600);
    let state = ApiState::new(store.clone(), config, None).await.unwrap();
    let api = Api { router: nova::router(state.clone()), store: store.clone() };
    // Enough failures for the spawning write and for every retry of the ERROR write.
    let retries = ApiConfig::default().conductor.store_retries + 1;
    faults.fail_next("update_instance", 2 * retries);
    let r = api.call(Method::POST, "/v2.1/servers", &[("x-auth-token", "p")], Some(server_body("flaky"))).await;
    assert_eq!(r.status, StatusCode::ACCEPTED, "{:?}", r.body);
    let id: InstanceId = r.body["server"]["id"].as_str().unwrap().parse().unwrap();
    for _ in 0..500 {
        if state.builds().in_flight() == 0 {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    assert_eq!(state.builds().in_flight(), 0, "the build ended");
    assert_eq!(faults.injected().get("update_instance"), Some(&u64::from(2 * retries)));
    assert_eq!(memory.get_instance(id).await.unwrap().vm_state, VmState::Building);
    assert_eq!(state.builds().leases_held(), 0, "no longer renewed");
    assert!(memory.leases().unwrap().get_lease(id).await.unwrap().is_some(), "the lease is kept for a reaper");
    // Once it expired, a reaper (here this very replica) takes the build over.
    tokio::time::sleep(std::time::Duration::from_millis(400)).await;
    assert_eq!(state.builds().reap_once().await.unwrap(), 1);
    let inst = settled_instance(&memory, id).await;
    assert_eq!(inst.vm_state, VmState::Active, "{inst:?}");
    assert_eq!(memory.allocations(ConsumerId::from(id)).await.unwrap().len(), 1, "exactly its claim");
    assert!(unicell::store::audit::audit(memory.as_ref(), &Default::default()).await.unwrap().is_clean());
}

#[tokio::test]
async fn live_leases_are_not_taken_and_finished_builds_drop_theirs() {
    let api = Api::new().await;
    small_cloud(&api.store, 1).await;
    let r = api.call(Method::POST, "/v2.1/servers", &[("x-auth-token", "p")], Some(server_body("leased"))).await;
    let id = r.body["server"]["id"].as_str().unwrap().to_string();
    assert_eq!(wait_settled(&api, &id, "p").await["status"], "ACTIVE");
    let uuid: InstanceId = id.parse().unwrap();
    for _ in 0..500 {
        if api.store.leases().unwrap().get_lease(uuid).await.unwrap().is_none() {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    assert!(api.store.leases().unwrap().list_leases().await.unwrap().is_empty(), "lease deleted after the build");
    let other = replica(api.store.clone()).await;
    assert_eq!(other.builds().reap_once().await.unwrap(), 0);
}

async fn post(api: &Api, path: &str, token: &str, version: &str, body: Value) -> Reply {
    api.call(
        Method::POST,
        path,
        &[("x-auth-token", token), ("openstack-api-version", version)],
        Some(serde_json::to_vec(&body).unwrap()),
    )
    .await
}

#[tokio::test]
async fn server_groups_create_list_show_delete_and_schedule() {
    let api = Api::new().await;
    small_cloud(&api.store, 3).await;

    // 2.1: `policies` (one of affinity / anti-affinity) and an empty `metadata`.
    let r = post(
        &api,
        "/v2.1/os-server-groups",
        "alice:p1",
        "compute 2.1",
        json!({"server_group": {"name": "web", "policies": ["anti-affinity"]}}),
    )
    .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    let g = &r.body["server_group"];
    let keys: BTreeSet<&str> = g.as_object().unwrap().keys().map(String::as_str).collect();
    assert_eq!(keys, BTreeSet::from(["id", "name", "policies", "members", "metadata"]));
    assert_eq!(g["policies"], json!(["anti-affinity"]));
    let anti = g["id"].as_str().unwrap().to_string();

    // Soft policies only from 2.15; rules only from 2.64 and only with anti-affinity.
    for (version, body, status) in [
        ("compute 2.14", json!({"server_group": {"name": "s", "policies": ["soft-affinity"]}}), 400),
        ("compute 2.1", json!({"server_group": {"name": "s", "policies": ["affinity", "anti-affinity"]}}), 400),
        ("compute 2.1", json!({"server_group": {"name": "s", "policies": []}}), 400),
        ("compute 2.1", json!({"server_group": {"name": " s", "policies": ["affinity"]}}), 400),
        ("compute 2.1", json!({"server_group": {"name": "s", "policy": "affinity"}}), 400),
        ("compute 2.64", json!({"server_group": {"name": "s", "policies": ["affinity"]}}), 400),
        (
            "compute 2.64",
            json!({"server_group": {"name": "s", "policy": "affinity", "rules": {"max_server_per_host": 2}}}),
            400,
        ),
        (
            "compute 2.64",
            json!({"server_group": {"name": "s", "policy": "anti-affinity", "rules": {"max_server_per_host": 0}}}),
            400,
        ),
        ("compute 2.64", json!({"server_group": {"name": "s", "policy": "anti-affinity", "rules": {"other": 1}}}), 400),
        ("compute 2.64", json!({"server_group": {"name": "s", "policy": "nearby"}}), 400),
        ("compute 2.64", json!({"group": {}}), 400),
    ] {
        let r = post(&api, "/v2.1/os-server-groups", "alice:p1", version, body.clone()).await;
        assert_fault(&r, status, &format!("{version} {body}"));
    }
    let r = post(
        &api,
        "/v2.1/os-server-groups",
        "alice:p1",
        "compute 2.64",
        json!({"server_group": {"name": "db", "policy": "anti-affinity", "rules": {"max_server_per_host": "2"}}}),
    )
    .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    let g = &r.body["server_group"];
    let keys: BTreeSet<&str> = g.as_object().unwrap().keys().map(String::as_str).collect();
    assert_eq!(keys, BTreeSet::from(["id", "name", "policy", "rules", "members", "project_id", "user_id"]));
    assert_eq!(g["rules"], json!({"max_server_per_host": 2}));
    assert_eq!((g["project_id"].as_str(), g["user_id"].as_str()), (Some("p1"), Some("alice")));
    let r = post(
        &api,
        "/v2.1/os-server-groups",
        "alice:p1",
        "compute 2.15",
        json!({"server_group": {"name": "near", "policies": ["affinity"]}}),
    )
    .await;
    let affinity = r.body["server_group"]["id"].as_str().unwrap().to_string();

    // Three anti-affinity servers land on three hosts; a fourth finds no host.
    let mut members = BTreeSet::new();
    for i in 0..4 {
        let body = json!({"server": {"name": format!("a{i}"), "imageRef": "x", "flavorRef": "small"},
                          "os:scheduler_hints": {"group": anti}});
        let r = post(&api, "/v2.1/servers", "alice:p1", "compute 2.1", body).await;
        assert_eq!(r.status, StatusCode::ACCEPTED, "{}", r.body);
        members.insert(r.body["server"]["id"].as_str().unwrap().to_string());
    }
    let mut hosts = BTreeSet::new();
    let mut errors = 0;
    for id in &members {
        let s = wait_settled(&api, id, "alice:p1").await;
        if s["status"] == "ERROR" {
            errors += 1;
            continue;
        }
        assert_eq!(s["status"], "ACTIVE", "{s}");
        let admin = api
            .call(
                Method::GET,
                &format!("/v2.1/servers/{id}"),
                &[("x-auth-token", "admin"), ("openstack-api-version", "compute 2.71")],
                None,
            )
            .await;
        assert_eq!(admin.body["server"]["server_groups"], json!([anti]));
        assert!(
            hosts.insert(admin.body["server"]["OS-EXT-SRV-ATTR:host"].as_str().unwrap().to_string()),
            "two on one host"
        );
    }
    assert_eq!((hosts.len(), errors), (3, 1));

    // Affinity plus same_host / different_host hints.
    let mut near_hosts = BTreeSet::new();
    for i in 0..2 {
        let body = json!({"server": {"name": format!("n{i}"), "imageRef": "x", "flavorRef": "small"},
                          "os:scheduler_hints": {"group": affinity}});
        let r = post(&api, "/v2.1/servers", "alice:p1", "compute 2.1", body).await;
        let id = r.body["server"]["id"].as_str().unwrap().to_string();
        assert_eq!(wait_settled(&api, &id, "alice:p1").await["status"], "ACTIVE");
        let admin = api.call(Method::GET, &format!("/v2.1/servers/{id}"), &[("x-auth-token", "admin")], None).await;
        near_hosts.insert(admin.body["server"]["OS-EXT-SRV-ATTR:host"].as_str().unwrap().to_string());
    }
    assert_eq!(near_hosts.len(), 1, "affinity members share a host");

    // Show: members are the live servers; another project gets 403, a bad id 404.
    let r =
        api.call(Method::GET, &format!("/v2.1/os-server-groups/{anti}"), &[("x-auth-token", "alice:p1")], None).await;
    assert_eq!(r.status, StatusCode::OK);
    let listed: BTreeSet<String> =
        r.body["server_group"]["members"].as_array().unwrap().iter().map(|m| m.as_str().unwrap().to_string()).collect();
    assert_eq!(listed, members);
    assert_fault(&api.get(&format!("/v2.1/os-server-groups/{anti}"), "bob:p2").await, 403, "other project's group");
    assert_fault(&api.get("/v2.1/os-server-groups/nope", "alice:p1").await, 404, "bad group id");
    assert_fault(
        &api.get(&format!("/v2.1/os-server-groups/{}", uuid::Uuid::new_v4()), "alice:p1").await,
        404,
        "unknown group",
    );

    // List: own project only; all_projects for admins; offset and limit.
    assert_eq!(api.get("/v2.1/os-server-groups", "alice:p1").await.body["server_groups"].as_array().unwrap().len(), 3);
    assert_eq!(api.get("/v2.1/os-server-groups", "bob:p2").await.body["server_groups"], json!([]));
    assert_fault(&api.get("/v2.1/os-server-groups?all_projects=1", "bob:p2").await, 403, "all_projects for a member");
    assert_eq!(api.get("/v2.1/os-server-groups", "admin").await.body["server_groups"], json!([]));
    assert_eq!(
        api.get("/v2.1/os-server-groups?all_projects=1", "admin").await.body["server_groups"].as_array().unwrap().len(),
        3
    );
    assert_eq!(
        api.get("/v2.1/os-server-groups?limit=1&offset=2", "alice:p1").await.body["server_groups"]
            .as_array()
            .unwrap()
            .len(),
        1
    );
    assert_fault(&api.get("/v2.1/os-server-groups?limit=-1", "alice:p1").await, 400, "negative limit");

    // Delete: 204 then 404.
    let r = api
        .call(Method::DELETE, &format!("/v2.1/os-server-groups/{affinity}"), &[("x-auth-token", "alice:p1")], None)
        .await;
    assert_eq!(r.status, StatusCode::NO_CONTENT);
    let r = api
        .call(Method::DELETE, &format!("/v2.1/os-server-groups/{affinity}"), &[("x-auth-token", "alice:p1")], None)
        .await;
    assert_fault(&r, 404, "deleting twice");
}

/// Nova 2.69 on a real outage: the SQL baseline with cell 1's database on a MariaDB server of
/// its own (the API and cell 0 databases on another), both started here; cell 1's server is
/// stopped, then the API lists and shows servers at 2.69 and 2.68. Ignored (with a message)
/// where `mariadbd` is not installed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn down_cell_servers_are_unknown_at_2_69_and_skipped_before() {
    use unicell::store::StoreUrl;
    use unicell::store::sql::SqlStore;
    use unicell::testkit::sql_server::{SqlKind, SqlServer};
    let start = || tokio::task::spawn_blocking(|| SqlServer::start(SqlKind::MariaDb));
    let (a, b) = match (start().await.expect("join"), start().await.expect("join")) {
        (Ok(a), Ok(b)) => (a, b),
        (Err(e), _) | (_, Err(e)) => {
            eprintln!("skipped: cannot start MariaDB servers: {e}");
            return;
        }
    };
    let url = |down: &str| {
        format!(
            "{}/nova?cell_url={}&cell_url={}&cell_timeout=3s&down_cell={down}",
            a.url(),
            url_escape(&format!("{}/nova_c0", a.url())),
            url_escape(&format!("{}/nova_c1", b.url()))
        )
    };
    let store: Arc<dyn Store> =
        Arc::new(SqlStore::open(&StoreUrl::parse(&url("skip")).expect("url")).await.expect("open skip store"));
    let (c0, c1) = (CellId::new_v4(), CellId::new_v4());
    store.put_cell(&Cell { id: c0, name: "c0".into(), disabled: false }).await.unwrap();
    store.put_cell(&Cell { id: c1, name: "c1".into(), disabled: false }).await.unwrap();
    store.put_flavor(&flavor("small", 1, 512, 1)).await.unwrap();
    let t0 = Timestamp::now();
    let (mut up, mut down, mut all) = (Vec::new(), Vec::new(), Vec::new());
    for k in 0..6u64 {
        let mut i = Instance::new_building(
            InstanceId::new_v4(),
            &format!("vm{k}"),
            "p1",
            "alice",
            FlavorId::new("small").unwrap(),
        );
        i.created_at = t0.plus(std::time::Duration::from_secs(k));
        i.updated_at = i.created_at;
        i.vm_state = VmState::Active;
        i.task_state = None;
        i.cell = Some(if k % 2 == 0 { c0 } else { c1 });
        store.create_instance(&i).await.unwrap();
        all.push(i.uuid.to_string());
        if k % 2 == 0 { up.push(i.uuid.to_string()) } else { down.push(i.uuid.to_string()) }
    }
    up.reverse();
    down.reverse();
    all.reverse();
    let failing: Arc<dyn Store> = Arc::new(
        SqlStore::open(&StoreUrl::parse(&(url("fail") + "&create=false")).expect("url"))
            .await
            .expect("open fail store"),
    );
    let api = Api::on(store.clone()).await;
    let api_fail = Api::on(failing.clone()).await;
    let at = |v: &'static str| [("x-auth-token", "alice:p1"), ("openstack-api-version", v)];
    let ids = |r: &Reply| -> Vec<String> {
        r.body["servers"].as_array().expect("servers").iter().map(|s| s["id"].as_str().unwrap().to_string()).collect()
    };
    let r = api.call(Method::GET, "/v2.1/servers", &at("compute 2.69"), None).await;
    assert_eq!(ids(&r), all, "before the stop: {}", r.body);

    tokio::task::spawn_blocking(move || drop(b)).await.unwrap();

    // 2.69, no filters: cell 1's servers first, as UNKNOWN stubs, then cell 0's.
    for (api, what) in [(&api, "skip"), (&api_fail, "fail")] {
        let r = api.call(Method::GET, "/v2.1/servers", &at("compute 2.69"), None).await;
        assert_eq!(r.status, StatusCode::OK, "{what}: {}", r.body);
        assert_eq!(ids(&r), [down.clone(), up.clone()].concat(), "{what}: {}", r.body);
        let stub = &r.body["servers"][0];
        assert_eq!(stub["status"], "UNKNOWN", "{stub}");
        assert!(stub.get("name").is_none() && stub.get("tenant_id").is_none(), "basic stub: {stub}");
        assert_eq!(stub["links"][0]["href"], format!("http://nova.test:8774/v2.1/servers/{}", down[0]));
        assert_eq!(r.body["servers"][3]["name"], "vm4");
        let r = api.call(Method::GET, "/v2.1/servers/detail", &at("compute 2.69"), None).await;
        assert_eq!(ids(&r), [down.clone(), up.clone()].concat(), "{what} detail: {}", r.body);
        let stub = &r.body["servers"][0];
        assert_eq!(stub["status"], "UNKNOWN");
        assert_eq!(stub["tenant_id"], "p1");
        assert_eq!(stub["created"], view_time(t0.plus(std::time::Duration::from_secs(5))));
        assert!(stub.get("flavor").is_none(), "the detail list shows no flavor for a stub: {stub}");
        assert_eq!(r.body["servers"][3]["status"], "ACTIVE");
        // Paging (or sorting, or a filter) turns the stubs off: Nova's default applies.
        let r = api.call(Method::GET, "/v2.1/servers?limit=10", &at("compute 2.69"), None).await;
        match what {
            "skip" => assert_eq!(ids(&r), up, "skip with paging: {}", r.body),
            _ => assert_fault(&r, 503, "fail with paging"),
        }
    }
    // 2.68: skipped (down_cell=skip, Nova's default) or a 503 naming the cell database.
    let r = api.call(Method::GET, "/v2.1/servers/detail", &at("compute 2.68"), None).await;
    assert_eq!(ids(&r), up, "2.68 skips the down cell: {}", r.body);
    let r = api_fail.call(Method::GET, "/v2.1/servers", &at("compute 2.68"), None).await;
    assert_fault(&r, 503, "2.68 without skipping");
    let msg = r.body["serviceUnavailable"]["message"].as_str().unwrap_or_default();
    assert!(msg.contains("nova_c1"), "the fault names the cell database: {msg}");
    // Show: the minimal form at 2.69, an error before.
    let path = format!("/v2.1/servers/{}", down[1]);
    let r = api.call(Method::GET, &path, &at("compute 2.69"), None).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    let s = &r.body["server"];
    assert_eq!(s["status"], "UNKNOWN");
    assert_eq!(s["tenant_id"], "p1");
    assert_eq!(s["OS-EXT-STS:power_state"], 0);
    assert_eq!(s["user_id"], "UNKNOWN", "no request spec was stored for it: {s}");
    assert!(s.get("name").is_none(), "{s}");
    assert_fault(&api.call(Method::GET, &path, &at("compute 2.68"), None).await, 503, "show at 2.68");
    assert_fault(
        &api.call(Method::GET, &path, &[("x-auth-token", "bob:p2"), ("openstack-api-version", "compute 2.69")], None)
            .await,
        403,
        "another project's unknown server",
    );
    drop(api);
    drop(api_fail);
    tokio::task::spawn_blocking(move || drop(a)).await.unwrap();
}

/// Percent-encodes a URL given as a query parameter value.
fn url_escape(s: &str) -> String {
    url::form_urlencoded::byte_serialize(s.as_bytes()).collect()
}

/// The `created` of a server as the API shows it.
fn view_time(t: Timestamp) -> String {
    let s = t.to_string();
    match s.split_once('.') {
        Some((head, _)) => format!("{head}Z"),
        None => s,
    }
}
