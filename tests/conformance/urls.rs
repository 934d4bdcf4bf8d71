//! Opening stores by URL: clear errors for bad input, and no secret ever printed
//! (`urls::*`).

use libtest_mimic::Trial;
use unicell::Error;
use unicell::store::{StoreUrl, open};

use crate::support::plain_trial;

/// The URL trials.
pub fn trials() -> Vec<Trial> {
    vec![
        plain_trial("urls::memory_url_opens_the_embedded_store", memory_url_opens_the_embedded_store),
        plain_trial(
            "urls::garbage_and_unknown_schemes_are_invalid_input_naming_the_problem",
            garbage_and_unknown_schemes_are_invalid_input_naming_the_problem,
        ),
        plain_trial("urls::errors_never_carry_the_password", errors_never_carry_the_password),
    ]
}

async fn memory_url_opens_the_embedded_store() -> Result<(), String> {
    let store = open("memory://").await.map_err(|e| e.to_string())?;
    if store.backend() != "memory" || store.describe() != "memory://" {
        return Err(format!("memory:// opened {} ({})", store.backend(), store.describe()));
    }
    Ok(())
}

async fn garbage_and_unknown_schemes_are_invalid_input_naming_the_problem() -> Result<(), String> {
    for (url, needle) in [("not a url", "not a URL"), ("ftp://x", "unknown scheme"), ("", "not a URL")] {
        match open(url).await {
            Err(Error::InvalidInput { field, message }) => {
                if field != "store url" || !message.contains(needle) {
                    return Err(format!("{url:?}: InvalidInput {field:?} {message:?} does not say {needle:?}"));
                }
            }
            other => return Err(format!("{url:?}: expected InvalidInput, got {other:?}")),
        }
    }
    Ok(())
}

async fn errors_never_carry_the_password() -> Result<(), String> {
    for url in ["nosuch://admin:hunter2@db.example:1/x", "nosuch://admin:hunter2@[::1"] {
        let err = match open(url).await {
            Ok(s) => return Err(format!("{url}: opened {}", s.describe())),
            Err(e) => e.to_string(),
        };
        if err.contains("hunter2") {
            return Err(format!("password leaked: {err}"));
        }
    }
    let u = StoreUrl::parse("redis://:hunter2@127.0.0.1:6379/0?prefix=t").map_err(|e| e.to_string())?;
    if format!("{u} {u:?}").contains("hunter2") {
        return Err(format!("password leaked: {u}"));
    }
    Ok(())
}
