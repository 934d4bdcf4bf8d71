//! Opening stores by URL: clear errors for bad input, and no secret ever printed.

use unicell::Error;
use unicell::store::{StoreUrl, open};

#[tokio::test]
async fn memory_url_opens_the_embedded_store() {
    let store = open("memory://").await.unwrap();
    assert_eq!(store.backend(), "memory");
    assert_eq!(store.describe(), "memory://");
}

#[tokio::test]
async fn garbage_and_unknown_schemes_are_invalid_input_naming_the_problem() {
    for (url, needle) in [("not a url", "not a URL"), ("ftp://x", "unknown scheme"), ("", "not a URL")] {
        match open(url).await {
            Err(Error::InvalidInput { field, message }) => {
                assert_eq!(field, "store url");
                assert!(message.contains(needle), "{message}");
            }
            other => panic!("{url:?}: expected InvalidInput, got {other:?}"),
        }
    }
}

#[tokio::test]
async fn errors_never_carry_the_password() {
    for url in ["nosuch://admin:hunter2@db.example:1/x", "nosuch://admin:hunter2@[::1"] {
        let err = open(url).await.unwrap_err().to_string();
        assert!(!err.contains("hunter2"), "{err}");
    }
    let u = StoreUrl::parse("redis://:hunter2@127.0.0.1:6379/0?prefix=t").unwrap();
    assert!(!format!("{u} {u:?}").contains("hunter2"));
}
