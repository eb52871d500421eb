//! Command-line behaviour that needs no services: configuration errors, --help, healthcheck.

mod common;

use common::binary;

#[tokio::test]
async fn bad_configuration_exits_non_zero_with_a_clear_message() {
    let out = std::process::Command::new(binary())
        .env_clear()
        .env("SINK_URL", "ftp://nope")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("SINK_URL must be"), "{text}");

    let help = std::process::Command::new(binary())
        .arg("--help")
        .output()
        .unwrap();
    let help = String::from_utf8_lossy(&help.stdout);
    for var in [
        "SOURCE_URL",
        "SINK_URL",
        "INTERVAL_SECONDS",
        "PREFECT_API_URL",
        "PREFECT_API_KEY",
        "SLACK_WEBHOOK_URL",
        "PRICE_THRESHOLD_VARIABLE",
        "PRICE_THRESHOLD_BLOCK",
        "PRICE_THRESHOLD",
        "--iterations",
        "healthcheck",
    ] {
        assert!(help.contains(var), "--help lacks {var}");
    }
}

#[tokio::test]
async fn healthcheck_reflects_recent_iterations() {
    let dir = tempfile::tempdir().unwrap();
    let health = dir.path().join("h/health");
    let check = || {
        std::process::Command::new(binary())
            .env_clear()
            .env("HEALTH_FILE", &health)
            .arg("healthcheck")
            .status()
            .unwrap()
            .code()
    };
    assert_eq!(check(), Some(1), "no iteration yet");
    let out = std::process::Command::new(binary())
        .env_clear()
        .env("HEALTH_FILE", &health)
        .env("SOURCE_URL", "simulated")
        .env(
            "SINK_URL",
            format!("file://{}", dir.path().join("lake").display()),
        )
        .args(["--iterations", "1"])
        .output()
        .unwrap();
    assert!(out.status.success());
    assert_eq!(check(), Some(0));
    std::fs::write(
        &health,
        r#"{"last_iteration_end_unix":1000,"pause_seconds":10}"#,
    )
    .unwrap();
    assert_eq!(check(), Some(1), "stale");
}
