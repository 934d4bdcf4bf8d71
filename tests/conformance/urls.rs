//! Opening stores by URL: clear errors for bad input, and no secret ever printed
//! (`urls::*`).

use libtest_mimic::Trial;
use unicell::Error;
use unicell::store::{StoreUrl, open};

use crate::support::{Why, plain_trial};

/// The URL trials.
pub fn trials() -> Vec<Trial> {
    vec![
        plain_trial("urls::memory_url_opens_the_embedded_store", memory_url_opens_the_embedded_store),
        plain_trial(
            "urls::garbage_and_unknown_schemes_are_invalid_input_naming_the_problem",
            garbage_and_unknown_schemes_are_invalid_input_naming_the_problem,
        ),
        plain_trial("urls::errors_never_carry_the_password", errors_never_carry_the_password),
        plain_trial(
            "urls::harness_fails_a_reachable_server_whose_store_does_not_open",
            harness_fails_a_reachable_server_whose_store_does_not_open,
        ),
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

/// The harness's rule, checked on itself: a server that accepts connections but whose
/// store does not open (here a listener that never answers, so the open times out, a
/// retryable error) makes the trials FAIL; only a port where nothing listens skips them.
async fn harness_fails_a_reachable_server_whose_store_does_not_open() -> Result<(), String> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.map_err(|e| e.to_string())?;
    let port = listener.local_addr().map_err(|e| e.to_string())?.port();
    let hold = tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((conn, _)) = listener.accept().await {
            held.push(conn); // accept, never answer
        }
    });
    let mute = format!("redis://:hunter2@127.0.0.1:{port}/0?timeout_ms=300&connect_timeout_ms=300&retries=0");
    let outcome = match open(&mute).await {
        Ok(s) => Err(format!("a mute server opened as {}", s.describe())),
        Err(e) => match Why::from_open_error("mute", &mute, &e).await {
            Why::Fail(reason) if !reason.contains("hunter2") => Ok(()),
            other => Err(format!("a reachable but mute server gave {other:?} for {e}")),
        },
    };
    hold.abort();
    outcome?;
    // Nothing listens on a port just released.
    let closed = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").map_err(|e| e.to_string())?;
        l.local_addr().map_err(|e| e.to_string())?.port()
    };
    let dead = format!("redis://127.0.0.1:{closed}/0?timeout_ms=300&connect_timeout_ms=300&retries=0");
    match open(&dead).await {
        Ok(s) => Err(format!("a closed port opened as {}", s.describe())),
        Err(e) if !e.is_retryable() => Err(format!("unreachable server gave a non-retryable {e}")),
        Err(e) => match Why::from_open_error("dead", &dead, &e).await {
            Why::Skip(_) => Ok(()),
            other => Err(format!("an unreachable server gave {other:?}")),
        },
    }
}
