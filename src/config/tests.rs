use super::*;
use crate::kinds;

fn load_str(toml: &str) -> Result<Config, ConfigError> {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("c.toml");
    std::fs::write(&path, toml).unwrap();
    Config::load(Some(&path))
}

#[test]
fn socket_mode_as_string_or_number() {
    assert_eq!(
        load_str("[socket]\nmode = \"0600\"").unwrap().socket.mode,
        0o600
    );
    assert_eq!(load_str("[socket]\nmode = 640").unwrap().socket.mode, 0o640);
    let e = load_str("[socket]\nmode = 698").unwrap_err();
    assert!(e.to_string().starts_with("socket.mode"), "{e}");
}

#[test]
fn defaults_alone_are_valid() {
    let c = Config::from_raw(defaults()).unwrap();
    assert_eq!(c.ladder, Ladder::documented());
    assert_eq!(c.ninjapay.budget_requests, 1000);
    assert_eq!(c.ninjapay.budget_window, Duration::from_secs(600));
    assert_eq!(c.kinds.len(), 4);
    assert_eq!(c.socket.mode, 0o660);
}

#[test]
fn file_overrides_and_extends_kinds() {
    let c = load_str(
        r#"
        [ninjapay]
        api_key = "sk_live_secret"
        prod_base_url = "http://127.0.0.1:9"
        [schedule]
        first_check = ["100ms", "120ms"]
        steps = [{ every = "10ms", for = "50ms" }, { every = "40ms" }]
        timeout = "1s"
        [kinds.p2p]
        url = "{prod}/other"
        [kinds.custom]
        method = "GET"
        url = "{prod}/v9/check"
        id_field = "ref"
        auth_header = "Authorization"
        status_pointer = "/result/state"
        status_map = { open = "pending", done = "succeeded" }
        "#,
    )
    .unwrap();
    assert_eq!(c.kinds["p2p"].url, "http://127.0.0.1:9/other");
    assert_eq!(c.kinds["p2p"].id_field, "tid");
    assert_eq!(c.kinds["custom"].status_pointer, "/result/state");
    assert_eq!(c.ladder.timeout_ms(), 1000);
    let shown = c.to_redacted_toml().unwrap();
    assert!(!shown.contains("sk_live_secret"), "{shown}");
    // It is TOML that reads back, with the secret's place kept and marked.
    let back: toml::Table = toml::from_str(&shown).unwrap();
    assert_eq!(back["kinds"]["p2p"]["id_field"].as_str(), Some("tid"));
    assert_eq!(back["ninjapay"]["api_key"].as_str(), Some("<redacted>"));
    assert!(!format!("{c:?}").contains("sk_live_secret"));
}

#[test]
fn bad_callback_prefixes_are_refused_with_the_key() {
    for bad in [
        "hooks.example.com",
        "ftp://hooks.example.com",
        "https://u:p@hooks.example.com",
        "https://hooks.example.com/?a=1",
    ] {
        let e = load_str(&format!(
            "[webhooks]\nsecret = \"whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw\"\nallowed_callback_prefixes = [{bad:?}]"
        ))
        .unwrap_err();
        assert!(
            e.to_string()
                .starts_with("webhooks.allowed_callback_prefixes[0]"),
            "{bad}: {e}"
        );
    }
}

#[test]
fn plain_http_carries_the_key_only_to_this_machine() {
    for ok in [
        "http://127.0.0.1:9",
        "http://127.3.4.5",
        "http://localhost:8080",
        "http://[::1]:9",
        "https://prod.ninjapay.me",
    ] {
        assert!(
            load_str(&format!("[ninjapay]\nprod_base_url = {ok:?}")).is_ok(),
            "{ok}"
        );
    }
    for bad in [
        "http://prod.ninjapay.me",
        "http://10.0.0.5:80",
        "http://[::2]",
    ] {
        let e = load_str(&format!("[ninjapay]\napi_base_url = {bad:?}")).unwrap_err();
        assert!(e.to_string().starts_with("ninjapay.api_base_url"), "{e}");
        assert!(e.to_string().contains("in clear"), "{e}");
    }
    // A kind's own endpoint carries the key as well.
    let e = load_str("[kinds.p2p]\nurl = \"http://example.com/check\"").unwrap_err();
    assert!(e.to_string().starts_with("kinds.p2p.url"), "{e}");
}

#[test]
fn retention_is_a_period_or_zero_and_not_shorter_than_the_learners_memory() {
    let c = Config::from_raw(defaults()).unwrap();
    assert_eq!(c.keep_finished, Some(Duration::from_secs(90 * 86_400)));
    assert_eq!(c.webhooks.keep_delivered, None);
    let c =
        load_str("[database]\nkeep_finished = \"0\"\n[webhooks]\nkeep_delivered = \"7d\"").unwrap();
    assert_eq!(c.keep_finished, None);
    assert_eq!(
        c.webhooks.keep_delivered,
        Some(Duration::from_secs(7 * 86_400))
    );
    // The learner's memory, from the one function the scheduler uses: twelve lifetimes
    // of 10 minutes (the timeout and the budget window).
    let memory = crate::scheduler::memory_horizon_ms(600_000, 600_000);
    assert_eq!(memory, 2 * 3_600_000);
    let e = load_str("[database]\nkeep_finished = \"119m\"").unwrap_err();
    assert!(e.to_string().starts_with("database.keep_finished"), "{e}");
    assert!(e.to_string().contains("2h"), "{e}");
    assert!(load_str("[database]\nkeep_finished = \"2h\"\n[reconcile]\nafter = []").is_ok());
    // It follows the lifetime: a 20-minute timeout needs four hours.
    let e =
        load_str("[schedule]\ntimeout = \"20m\"\n[database]\nkeep_finished = \"3h\"").unwrap_err();
    assert!(e.to_string().contains("4h"), "{e}");
    // Nor shorter than the longest reconciliation schedule (72 h by default).
    let e = load_str("[database]\nkeep_finished = \"2d\"").unwrap_err();
    assert!(e.to_string().starts_with("database.keep_finished"), "{e}");
    assert!(e.to_string().contains("reconciliation"), "{e}");
    assert!(load_str("[database]\nkeep_finished = \"3d\"").is_ok());
    // `0` as a bare number, as TOML may and the environment always gives it.
    assert_eq!(
        load_str("[database]\nkeep_finished = 0")
            .unwrap()
            .keep_finished,
        None
    );
}

/// Defaults are written once: what `defaults()` shows is what an empty `Raw` (every
/// key unset) validates to, and the ladder is the documented one.
#[test]
fn defaults_shown_are_the_defaults_applied() {
    let shown = Config::from_raw(defaults()).unwrap();
    // The base URLs and kinds have no fallback: they are required, given by defaults().
    let mut bare = Raw {
        kinds: kinds::presets(),
        ..Default::default()
    };
    bare.ninjapay.prod_base_url = defaults().ninjapay.prod_base_url;
    bare.ninjapay.api_base_url = defaults().ninjapay.api_base_url;
    let applied = Config::from_raw(bare).unwrap();
    assert_eq!(shown.ladder, Ladder::documented());
    assert_eq!(applied.ladder, Ladder::documented());
    assert_eq!(shown.keep_finished, applied.keep_finished);
    assert_eq!(
        format!("{:?}", shown.socket),
        format!("{:?}", applied.socket)
    );
    assert_eq!(
        format!("{:?}", shown.ninjapay),
        format!("{:?}", applied.ninjapay)
    );
    assert_eq!(shown.webhooks.timeout, applied.webhooks.timeout);
    assert_eq!(shown.webhooks.max_in_flight, applied.webhooks.max_in_flight);
    assert_eq!(shown.log.level, applied.log.level);
    assert_eq!(shown.log.json, applied.log.json);
    assert_eq!(shown.webhooks.retry, applied.webhooks.retry);
    let after = |c: &Config| -> Vec<Vec<i64>> {
        c.kinds
            .values()
            .map(|k| k.reconcile_after.clone())
            .collect()
    };
    assert_eq!(after(&shown), after(&applied));
    assert!(!after(&applied)[0].is_empty());
}

/// The smallest `keep_finished` is the learner's memory as the scheduler computes it
/// (`scheduler::memory_horizon_ms`, the one function), for whatever ladder and window are
/// configured: a minute less is refused naming the key, the memory itself is accepted.
#[test]
fn keep_finished_is_at_least_the_schedulers_memory_horizon() {
    let (timeout, window) = (Duration::from_secs(20 * 60), Duration::from_secs(30 * 60));
    let memory_ms = crate::scheduler::memory_horizon_ms(
        i64::try_from(timeout.as_millis()).unwrap(),
        i64::try_from(window.as_millis()).unwrap(),
    );
    let memory = Duration::from_millis(u64::try_from(memory_ms).unwrap());
    assert!(memory > 2 * window, "more than two lifetimes: {memory:?}");
    let with_keep = |keep: Duration| {
        load_str(&format!(
            "[schedule]\ntimeout = \"{}\"\n[ninjapay]\nbudget_window = \"{}\"\n\
             [reconcile]\nafter = []\n[database]\nkeep_finished = \"{}\"",
            humantime::format_duration(timeout),
            humantime::format_duration(window),
            humantime::format_duration(keep),
        ))
    };
    let e = with_keep(memory - Duration::from_secs(60)).unwrap_err();
    assert!(e.to_string().starts_with("database.keep_finished"), "{e}");
    assert!(
        e.to_string()
            .contains(&humantime::format_duration(memory).to_string()),
        "{e}"
    );
    assert_eq!(with_keep(memory).unwrap().keep_finished, Some(memory));
}

/// Extreme durations are refused naming the key, never wrapped or panicking; a
/// likely typo is a warning.
#[test]
fn extreme_values_are_refused_with_the_key() {
    for (toml, key) in [
        (
            "[database]\nkeep_finished = \"300000000years\"",
            "database.keep_finished",
        ),
        (
            "[webhooks]\nkeep_delivered = \"300000000years\"",
            "webhooks.keep_delivered",
        ),
        (
            "[ninjapay]\nbudget_window = \"584000000000years\"",
            "ninjapay.budget_window",
        ),
        (
            "[ninjapay]\nbudget_window = \"2d\"",
            "ninjapay.budget_window",
        ),
        (
            "[ninjapay]\nrequest_timeout = \"1000years\"",
            "ninjapay.request_timeout",
        ),
        (
            "[schedule]\ntimeout = \"584000000000years\"",
            "schedule.timeout",
        ),
        (
            "[webhooks]\nretry = [\"5s\", \"584000000000years\"]",
            "webhooks.retry[1]",
        ),
    ] {
        let e = load_str(toml).unwrap_err();
        assert!(e.to_string().starts_with(key), "{toml}: {e}");
    }
    let c = load_str("[ninjapay]\nbudget_window = \"1s\"").unwrap();
    assert!(
        c.warnings
            .iter()
            .any(|w| w.starts_with("ninjapay.budget_window")),
        "{:?}",
        c.warnings
    );
    // A 1-byte webhook key: accepted, with a warning.
    let c = load_str("[webhooks]\nsecret = \"whsec_QQ==\"").unwrap();
    assert!(
        c.warnings.iter().any(|w| w.starts_with("webhooks.secret")),
        "{:?}",
        c.warnings
    );
}

/// No magnitude of any duration key panics: each is accepted or refused.
#[test]
fn no_duration_magnitude_panics() {
    let keys = [
        ("database", "keep_finished"),
        ("webhooks", "keep_delivered"),
        ("ninjapay", "budget_window"),
        ("ninjapay", "request_timeout"),
        ("socket", "header_timeout"),
        ("schedule", "timeout"),
        ("webhooks", "timeout"),
    ];
    let mut rng = fastrand::Rng::with_seed(7);
    for _ in 0..300 {
        let (section, key) = keys[rng.usize(..keys.len())];
        let secs = match rng.u8(..4) {
            0 => rng.u64(..100),
            1 => rng.u64(..1 << 40),
            2 => u64::MAX - rng.u64(..1000),
            _ => 1u64 << rng.u32(..64),
        };
        let toml = format!("[{section}]\n{key} = \"{secs}s\"");
        let _ = load_str(&toml);
    }
}

#[test]
fn metrics_listen_only_on_loopback() {
    let c = load_str("[metrics]\nlisten = \"127.0.0.1:9464\"").unwrap();
    assert_eq!(c.metrics_listen, Some("127.0.0.1:9464".parse().unwrap()));
    assert!(load_str("[metrics]\nlisten = \"[::1]:9464\"").is_ok());
    for bad in ["0.0.0.0:9464", "192.168.1.5:9464", "localhost:9464", "9464"] {
        let e = load_str(&format!("[metrics]\nlisten = \"{bad}\"")).unwrap_err();
        assert!(e.to_string().starts_with("metrics.listen"), "{bad}: {e}");
    }
}

#[test]
fn refusals_name_the_key() {
    let e = load_str("[schedule]\nsteps = [{ every = \"0s\" }]").unwrap_err();
    assert!(e.to_string().starts_with("schedule.steps[0].every"), "{e}");
    let e = load_str("[schedule]\nfirst_check = [\"25s\", \"20s\"]").unwrap_err();
    assert!(e.to_string().starts_with("schedule.first_check"), "{e}");
    let e = load_str("[schedule]\ntimeout = \"5s\"").unwrap_err();
    assert!(e.to_string().starts_with("schedule.timeout"), "{e}");
    let e = load_str("[ninjapay]\nbudget_window = \"soon\"").unwrap_err();
    assert!(e.to_string().starts_with("ninjapay.budget_window: "), "{e}");
    assert!(e.to_string().contains("\"soon\" is not a duration"), "{e}");
    for share in ["0", "0.01", "0.95", "1", "-0.2", "nan", "inf"] {
        let e = load_str(&format!("[ninjapay]\nbacklog_share = {share}")).unwrap_err();
        assert!(e.to_string().starts_with("ninjapay.backlog_share: "), "{e}");
        assert!(e.to_string().contains("between 0.05 and 0.9"), "{e}");
    }
    let e = load_str("[ninjapay]\nbacklog_share = \"half\"").unwrap_err();
    assert!(e.to_string().contains("backlog_share"), "{e}");
    let c = load_str("[ninjapay]\nbacklog_share = 0.5").unwrap();
    assert_eq!(c.ninjapay.backlog_share.get(), 0.5);
    assert_eq!(
        load_str("").unwrap().ninjapay.backlog_share,
        BacklogShare::DEFAULT
    );
    let e = load_str("[webhooks]\nretry = [\"5s\", \"5 fortnights\"]").unwrap_err();
    assert!(e.to_string().starts_with("webhooks.retry[1]: "), "{e}");
    assert!(e.to_string().contains("\"5 fortnights\""), "{e}");
    assert!(
        e.to_string().contains("unknown time unit \"fortnights\""),
        "{e}"
    );
    let e = load_str("[schedule]\nsteps = [{ every = \"3s\", for = \"1x\" }]").unwrap_err();
    assert!(e.to_string().starts_with("schedule.steps[0].for: "), "{e}");
    assert!(e.to_string().contains("\"1x\""), "{e}");
    let e = load_str("[ninjapay]\nbogus = 1").unwrap_err();
    assert!(e.to_string().contains("bogus"), "{e}");
    let e = load_str("[webhooks]\nurl = \"http://127.0.0.1:1/x\"").unwrap_err();
    assert!(e.to_string().starts_with("webhooks.secret"), "{e}");
}

const SHOP2: &str = r#"
    [ninjapay]
    api_key = "key-default"
    [webhooks]
    url = "https://shop.example/hooks"
    secret = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
    [accounts.shop2]
    api_key = "key-shop2"
    budget_requests = 500
    [accounts.shop2.webhooks]
    url = "https://shop2.example/hooks"
    secret = "whsec_c2hvcDItc2VjcmV0LXNoYXJlZC1ub3doZXJlLi4u"
    [accounts.shop3]
    api_key = "key-shop3"
    budget_window = "5m"
"#;

#[test]
fn accounts_default_to_ninjapay_and_webhooks_and_keep_their_own_settings() {
    let c = load_str(SHOP2).unwrap();
    let names: Vec<&str> = c.accounts.keys().map(|a| a.as_str()).collect();
    assert_eq!(names, ["default", "shop2", "shop3"]);
    let d = &c.accounts["default"];
    assert_eq!(d.api_key.as_ref().unwrap().expose(), "key-default");
    assert_eq!(d.budget_requests, 1000);
    let s2 = &c.accounts["shop2"];
    assert_eq!(s2.api_key.as_ref().unwrap().expose(), "key-shop2");
    assert_eq!(s2.budget_requests, 500);
    assert_eq!(s2.budget_window, Duration::from_secs(600));
    assert_eq!(
        s2.webhooks.url.as_deref(),
        Some("https://shop2.example/hooks")
    );
    assert_ne!(s2.webhooks.secrets, d.webhooks.secrets);
    let s3 = &c.accounts["shop3"];
    assert_eq!(s3.budget_requests, 1000);
    assert_eq!(s3.budget_window, Duration::from_secs(300));
    assert_eq!(s3.webhooks.url, d.webhooks.url);
    assert_eq!(s3.webhooks.secrets, d.webhooks.secrets);
    let shown = c.to_redacted_toml().unwrap();
    assert!(!shown.contains("key-shop2"), "{shown}");
    assert!(!shown.contains("c2hvcDI"), "{shown}");
}

#[test]
fn an_existing_config_is_the_default_account_alone() {
    let c = Config::from_raw(defaults()).unwrap();
    assert_eq!(c.accounts.len(), 1);
    assert!(c.accounts["default"].api_key.is_none());
}

#[test]
fn an_account_without_a_key_a_shared_key_or_an_unknown_setting_is_refused_by_name() {
    let e = load_str("[accounts.shop2]\nbudget_requests = 10").unwrap_err();
    assert!(e.to_string().starts_with("accounts.shop2.api_key:"), "{e}");
    let e =
        load_str("[ninjapay]\napi_key = \"k1\"\n[accounts.shop2]\napi_key = \"k1\"").unwrap_err();
    assert!(e.to_string().starts_with("accounts.shop2.api_key:"), "{e}");
    assert!(e.to_string().contains("ninjapay.api_key"), "{e}");
    let e = load_str("[accounts.a]\napi_key = \"k1\"\n[accounts.b]\napi_key = \"k1\"").unwrap_err();
    assert!(e.to_string().starts_with("accounts.b.api_key:"), "{e}");
    assert!(e.to_string().contains("accounts.a.api_key"), "{e}");
    let e = load_str("[accounts.shop2]\napi_key = \"k2\"\nbudget = 5").unwrap_err();
    assert!(e.to_string().contains("budget"), "{e}");
    assert!(e.to_string().contains("accounts.shop2"), "{e}");
    let e = load_str("[accounts.shop2]\napi_key = \"k2\"\n[accounts.shop2.webhooks]\nurl = \"https://x.example\"\nsecrett = \"x\"").unwrap_err();
    assert!(e.to_string().contains("secrett"), "{e}");
    let e = load_str("[accounts.Shop2]\napi_key = \"k2\"").unwrap_err();
    assert!(e.to_string().starts_with("accounts.Shop2:"), "{e}");
    let e = load_str("[accounts.default]\napi_key = \"k2\"").unwrap_err();
    assert!(e.to_string().starts_with("accounts.default:"), "{e}");
    let e = load_str("[accounts.shop2]\napi_key = \"k2\"\nbudget_window = \"400d\"").unwrap_err();
    assert!(
        e.to_string().starts_with("accounts.shop2.budget_window"),
        "{e}"
    );
    let e = load_str("[accounts.shop2]\napi_key = \"k2\"\nbudget_requests = 0").unwrap_err();
    assert!(
        e.to_string().starts_with("accounts.shop2.budget_requests"),
        "{e}"
    );
}
