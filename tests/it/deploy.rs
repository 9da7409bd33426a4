//! The service files in `deploy/` agree with each other and with the binary: the packaged
//! configuration is accepted by `ninjapoll check-config` and names the socket the socket
//! unit listens on, with its mode, and a database in the service's state directory; the
//! unit runs the binary where the package puts it, on the configuration it installs, as
//! the user and group sysusers.d creates. (`deploy/check-package`, run by `.ci/run`, checks
//! the built .deb itself with systemd's tools.)

use std::path::Path;
use std::process::Command;

fn read(path: &str) -> String {
    let full = Path::new(env!("CARGO_MANIFEST_DIR")).join(path);
    std::fs::read_to_string(&full).unwrap_or_else(|e| panic!("{}: {e}", full.display()))
}

/// Every value of `key=` in a unit file (comments skipped).
fn unit_values(unit: &str, key: &str) -> Vec<String> {
    unit.lines()
        .map(str::trim)
        .filter(|l| !l.starts_with('#') && !l.starts_with(';'))
        .filter_map(|l| l.split_once('='))
        .filter(|(k, _)| k.trim() == key)
        .map(|(_, v)| v.trim().to_owned())
        .collect()
}

fn unit_value(unit: &str, key: &str) -> String {
    let v = unit_values(unit, key);
    assert_eq!(v.len(), 1, "{key}= should be set once: {v:?}");
    v[0].clone()
}

/// The packaged configuration as the binary reads it (check-config's TOML, secrets
/// redacted), with no `NINJAPOLL_*` variable of the test's environment in the way.
fn packaged_config() -> serde_json::Value {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_ninjapoll"));
    cmd.args(["check-config", "--config"])
        .arg(Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy/ninjapoll.toml"));
    for (k, _) in std::env::vars_os() {
        if k.to_string_lossy().starts_with("NINJAPOLL_") {
            cmd.env_remove(k);
        }
    }
    let out = cmd.output().expect("run check-config");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "check-config refuses deploy/ninjapoll.toml: {}{}",
        stdout,
        String::from_utf8_lossy(&out.stderr)
    );
    let shown = stdout.split_once('\n').map_or("", |(_, rest)| rest);
    let table: toml::Table =
        toml::from_str(shown).expect("check-config prints TOML after its first line");
    serde_json::to_value(table).expect("TOML as JSON, for indexing")
}

#[test]
fn the_packaged_config_names_the_socket_the_socket_unit_listens_on() {
    let config = packaged_config();
    let socket = read("deploy/ninjapoll.socket");
    assert_eq!(
        config["socket"]["path"],
        unit_value(&socket, "ListenStream"),
        "socket.path (where the CLI looks) must be ninjapoll.socket's ListenStream="
    );
    assert_eq!(config["socket"]["mode"], unit_value(&socket, "SocketMode"));
    let service = read("deploy/ninjapoll.service");
    assert_eq!(
        unit_value(&socket, "SocketGroup"),
        unit_value(&service, "Group")
    );

    // The database lives in the state directory systemd creates for the service, and the
    // socket in its runtime directory.
    let state = format!("/var/lib/{}/", unit_value(&service, "StateDirectory"));
    let db = config["database"]["path"].as_str().expect("database.path");
    assert!(db.starts_with(&state), "{db} is not in {state}");
    let runtime = format!("/run/{}/", unit_value(&service, "RuntimeDirectory"));
    let sock = config["socket"]["path"].as_str().expect("socket.path");
    assert!(sock.starts_with(&runtime), "{sock} is not in {runtime}");
    // The key comes from the credential, not the file.
    assert!(config["ninjapay"]["api_key"].is_null());
}

#[test]
fn the_unit_runs_the_packaged_binary_on_the_packaged_config_as_the_sysusers_user() {
    let service = read("deploy/ninjapoll.service");
    let cargo = read("Cargo.toml");
    // cargo-deb's assets: the binary to /usr/bin, deploy/ninjapoll.toml to /etc/ninjapoll/.
    assert!(cargo.contains(r#"["target/release/ninjapoll", "usr/bin/", "755"]"#));
    assert!(cargo.contains(r#"["deploy/ninjapoll.toml", "etc/ninjapoll/", "640"]"#));
    let cmd = unit_value(&service, "ExecStart");
    assert_eq!(
        cmd,
        "/usr/bin/ninjapoll run --config /etc/ninjapoll/ninjapoll.toml"
    );
    let sysusers = read("deploy/sysusers.d/ninjapoll.conf");
    let user = unit_value(&service, "User");
    assert!(
        sysusers
            .lines()
            .any(|l| l.split_whitespace().take(2).eq(["u", user.as_str()])),
        "sysusers.d does not create the user {user} (and its group)"
    );
    assert_eq!(unit_value(&service, "Group"), user);

    // The credential the unit loads is the file the daemon is told to read.
    assert_eq!(unit_value(&service, "LoadCredential"), "ninjapay-api-key");
    assert_eq!(
        unit_value(&service, "Environment"),
        "NINJAPOLL_NINJAPAY__API_KEY_FILE=%d/ninjapay-api-key"
    );
    // The protocol the daemon speaks (tests/systemd.rs) is the one the unit asks for.
    assert_eq!(unit_value(&service, "Type"), "notify");
    assert_eq!(unit_value(&service, "NotifyAccess"), "main");
    assert!(!unit_value(&service, "WatchdogSec").is_empty());
    assert!(unit_value(&service, "After")
        .split_whitespace()
        .any(|u| u == "time-sync.target"));
}
