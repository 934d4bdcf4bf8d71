//! The Nova API in process (the router driven directly, no sockets) on the memory store:
//! version documents, auth, microversions, flavors, zones, and a table of bad input that
//! must be answered with the right 4xx in Nova's error format, never a 500.

use std::collections::BTreeMap;
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
    ];
    for (what, method, path, headers, body, status) in cases {
        let r = api.call(method, path, &headers, body).await;
        assert_fault(&r, status, what);
    }
}
