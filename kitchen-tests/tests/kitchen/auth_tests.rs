//! Tests of the kitchen's API keys: from a file, from the environment (in a child process, so
//! no test sees another's variable), and what `--help` shows of them.

use std::path::PathBuf;

use clap::CommandFactory;

use super::*;

/// A file of this test's own (named after it and the process), removed when dropped.
struct TempFile(PathBuf);

impl TempFile {
    fn new(name: &str, text: &str) -> Self {
        let path = std::env::temp_dir().join(format!("kitchen-{}-{name}", std::process::id()));
        std::fs::write(&path, text).unwrap();
        Self(path)
    }

    fn path(&self) -> &str {
        self.0.to_str().unwrap()
    }
}

impl Drop for TempFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// The status of a chat request with this bearer key (none: no `Authorization`).
async fn chat_status(addr: SocketAddr, key: Option<&str>) -> StatusCode {
    let bearer = key.map(|key| format!("Bearer {key}"));
    let headers: Vec<(&str, &str)> = bearer
        .iter()
        .map(|bearer| ("authorization", bearer.as_str()))
        .collect();
    post(addr, &order("hi", false), &headers).await.status()
}

#[tokio::test(start_paused = true)]
async fn keys_from_the_key_file_are_accepted_with_those_of_the_flag() {
    let file = TempFile::new(
        "keys-accepted",
        "# the kitchen's keys\nfile-key-1\n\n   file-key-2  \n# retired: old-key\n",
    );
    let kitchen = kitchen(&[
        "--api-keys-file",
        file.path(),
        "--api-key",
        "flag-key",
        "--tokens",
        "2",
    ])
    .await;
    for key in ["file-key-1", "file-key-2", "flag-key"] {
        assert_eq!(
            chat_status(kitchen.addr, Some(key)).await,
            StatusCode::OK,
            "{key}"
        );
    }
    for key in [
        None,
        Some("old-key"),
        Some("# retired: old-key"),
        Some("file-key"),
    ] {
        assert_eq!(
            chat_status(kitchen.addr, key).await,
            StatusCode::UNAUTHORIZED,
            "{key:?}"
        );
    }
}

#[test]
fn a_key_file_that_cannot_be_read_or_holds_no_key_is_refused_when_parsed() {
    let parse = |path: &str| Config::try_parse_from(["kitchen", "--api-keys-file", path]);
    let error = parse("/nonexistent/kitchen-keys").unwrap_err().to_string();
    assert!(error.contains("cannot read it"), "{error}");
    let empty = TempFile::new("keys-empty", "# nothing yet\n\n");
    let error = parse(empty.path()).unwrap_err().to_string();
    assert!(error.contains("holds no key"), "{error}");
    let bad = TempFile::new("keys-bad", "good-key\nbad key\n");
    let error = parse(bad.path()).unwrap_err().to_string();
    assert!(error.contains("line 2"), "{error}");
}

#[test]
fn api_keys_come_from_kitchen_api_keys_unseen_in_the_help() {
    let command = Config::command();
    let arg = command
        .get_arguments()
        .find(|arg| arg.get_long() == Some("api-key"))
        .unwrap();
    assert_eq!(
        arg.get_env(),
        Some(std::ffi::OsStr::new("KITCHEN_API_KEYS"))
    );
    assert!(arg.is_hide_env_values_set(), "--help would print the keys");
    assert_eq!(arg.get_value_delimiter(), Some(','));
    // Comma-separated, as the variable is; a bad key is refused.
    let config = Config::try_parse_from(["kitchen", "--api-key", "a-key,b-key"]).unwrap();
    assert_eq!(config.api_keys.len(), 2);
    assert!(Config::try_parse_from(["kitchen", "--api-key", "a-key,,b-key"]).is_err());
}

#[test]
fn the_upstream_key_comes_from_kitchen_upstream_key_unseen_in_the_help() {
    let command = Config::command();
    let arg = command
        .get_arguments()
        .find(|arg| arg.get_long() == Some("upstream-key"))
        .unwrap();
    assert_eq!(
        arg.get_env(),
        Some(std::ffi::OsStr::new("KITCHEN_UPSTREAM_KEY"))
    );
    assert!(arg.is_hide_env_values_set(), "--help would print the key");
}

/// The child process's half of `keys_from_kitchen_api_keys_are_accepted`: it reads the keys
/// its parent put in `KITCHEN_API_KEYS`; run without the variable, it checks that no key is
/// then required.
#[tokio::test(start_paused = true)]
#[ignore = "run by keys_from_kitchen_api_keys_are_accepted, in a child process with KITCHEN_API_KEYS"]
async fn keys_from_the_environment_in_a_child_process() {
    let config = || Config::try_parse_from(["kitchen", "--addr", "127.0.0.1:0"]).unwrap();
    let kitchen = start(config()).await;
    if std::env::var_os("KITCHEN_API_KEYS").is_none() {
        assert_eq!(chat_status(kitchen.addr, None).await, StatusCode::OK);
        return;
    }
    assert_eq!(config().api_keys.len(), 2);
    for key in ["env-key-1", "env-key-2"] {
        assert_eq!(
            chat_status(kitchen.addr, Some(key)).await,
            StatusCode::OK,
            "{key}"
        );
    }
    assert_eq!(
        chat_status(kitchen.addr, None).await,
        StatusCode::UNAUTHORIZED
    );
    // The command line wins over the variable.
    let flagged =
        Config::try_parse_from(["kitchen", "--addr", "127.0.0.1:0", "--api-key", "flag-key"])
            .unwrap();
    let flagged = start(flagged).await;
    assert_eq!(
        chat_status(flagged.addr, Some("env-key-1")).await,
        StatusCode::UNAUTHORIZED
    );
    assert_eq!(
        chat_status(flagged.addr, Some("flag-key")).await,
        StatusCode::OK
    );
}

#[test]
fn keys_from_kitchen_api_keys_are_accepted() {
    let test = "auth_tests::keys_from_the_environment_in_a_child_process";
    let output = std::process::Command::new(std::env::current_exe().unwrap())
        .args([test, "--exact", "--ignored", "--nocapture"])
        .env("KITCHEN_API_KEYS", "env-key-1,env-key-2")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success() && stdout.contains("1 passed"),
        "the child failed:\n{stdout}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
}
