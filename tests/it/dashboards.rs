//! The Grafana dashboard (deploy/grafana/ninjapoll.json) and the alert rules
//! (deploy/prometheus/ninjapoll-alerts.yml) against what a real daemon exports: every metric
//! and label named in every query and alert expression exists in a scrape of `/metrics`
//! over the metrics listener, and every exported family is on the dashboard or listed in
//! deploy/grafana/left-off.txt with a reason. The dashboard imports as it is: valid JSON,
//! a stable uid, the datasource chosen on import. (`promtool check rules` and `promtool
//! test rules` check the rules' syntax and logic in .ci/run.)
//!
//! PromQL is read minimally, enough for these files: metric names (`ninjapoll_…`), the
//! label matchers in braces after them, and the labels of `by`/`without`/`on`/`ignoring`/
//! `group_left`/`group_right` and of `label_values(…, label)`.

use ninjapoll_test_support::*;
use serde_json::Value;
use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::time::{Duration, Instant};

const DASHBOARD: &str = "deploy/grafana/ninjapoll.json";
const LEFT_OFF: &str = "deploy/grafana/left-off.txt";
const ALERTS: &str = "deploy/prometheus/ninjapoll-alerts.yml";
const ALERT_TESTS: &str = "deploy/prometheus/ninjapoll-alerts.test.yml";
/// Labels Prometheus adds to every series it scrapes.
const TARGET_LABELS: [&str; 2] = ["instance", "job"];
/// The datasource every panel, target and variable names: the input chosen on import.
const DATASOURCE: &str = "${DS_PROMETHEUS}";

fn read(path: &str) -> String {
    let full = Path::new(env!("CARGO_MANIFEST_DIR")).join(path);
    std::fs::read_to_string(&full).unwrap_or_else(|e| panic!("{}: {e}", full.display()))
}

/// What a scrape exports: each family's type, and its samples' label sets.
#[derive(Debug, Default)]
struct Exported {
    types: BTreeMap<String, String>,
    samples: BTreeMap<String, Vec<BTreeMap<String, String>>>,
}

impl Exported {
    fn parse(text: &str) -> Self {
        let mut e = Exported::default();
        for line in text.lines() {
            if let Some(rest) = line.strip_prefix("# TYPE ") {
                let mut f = rest.split_whitespace();
                let (name, kind) = (f.next().unwrap(), f.next().unwrap());
                e.types.insert(name.to_string(), kind.to_string());
                e.samples.entry(name.to_string()).or_default();
            } else if !line.starts_with('#') && !line.trim().is_empty() {
                let (series, _value) = line.rsplit_once(' ').expect("a sample line");
                let (name, labels) = match series.split_once('{') {
                    Some((name, rest)) => (name, parse_matchers(rest.trim_end_matches('}'))),
                    None => (series, Vec::new()),
                };
                let (family, _) = e
                    .family_of(name)
                    .unwrap_or_else(|| panic!("sample {name} of no # TYPE family"));
                e.samples.get_mut(&family).unwrap().push(
                    labels
                        .into_iter()
                        .map(|(label, _, value)| (label, value))
                        .collect(),
                );
            }
        }
        e
    }

    /// The family a series name belongs to (a histogram's `_bucket`, `_sum` and `_count`
    /// are its own), and whether it is a `_bucket` (which has `le`).
    fn family_of(&self, name: &str) -> Option<(String, bool)> {
        if self.types.contains_key(name) {
            return Some((name.to_string(), false));
        }
        ["_bucket", "_sum", "_count"].iter().find_map(|suffix| {
            let base = name.strip_suffix(suffix)?;
            (self.types.get(base).map(String::as_str) == Some("histogram"))
                .then(|| (base.to_string(), *suffix == "_bucket"))
        })
    }

    fn labels(&self, family: &str) -> BTreeSet<String> {
        self.samples[family]
            .iter()
            .flat_map(|s| s.keys().cloned())
            .filter(|l| l != "le")
            .collect()
    }
}

/// A label matcher: `(label, op, value)`.
type Matcher = (String, String, String);

/// `label="value", label=~"re"` → `(label, op, value)`, values unescaped.
fn parse_matchers(text: &str) -> Vec<Matcher> {
    let mut out = Vec::new();
    let mut chars = text.chars().peekable();
    loop {
        while chars.peek().is_some_and(|c| c.is_whitespace() || *c == ',') {
            chars.next();
        }
        let label: String =
            std::iter::from_fn(|| chars.next_if(|c| c.is_alphanumeric() || *c == '_')).collect();
        if label.is_empty() {
            assert!(chars.peek().is_none(), "cannot read matchers {text:?}");
            return out;
        }
        while chars.next_if(|c| c.is_whitespace()).is_some() {}
        let op: String = std::iter::from_fn(|| chars.next_if(|c| "=!~".contains(*c))).collect();
        assert!(
            ["=", "!=", "=~", "!~"].contains(&op.as_str()),
            "matcher {label}{op} in {text:?}"
        );
        while chars.next_if(|c| c.is_whitespace()).is_some() {}
        assert_eq!(chars.next(), Some('"'), "a quoted value in {text:?}");
        let mut value = String::new();
        loop {
            match chars.next() {
                Some('\\') => {
                    let c = chars.next().expect("an escaped character");
                    value.push(if c == 'n' { '\n' } else { c });
                }
                Some('"') => break,
                Some(c) => value.push(c),
                None => panic!("unterminated value in {text:?}"),
            }
        }
        out.push((label, op, value));
    }
}

/// What one PromQL expression names.
#[derive(Debug, Default)]
struct Named {
    /// Metric names with their matchers.
    metrics: Vec<(String, Vec<Matcher>)>,
    /// Labels of `by (…)`, `on (…)` and the like.
    grouping: Vec<String>,
}

fn read_promql(expr: &str) -> Named {
    let mut named = Named::default();
    let chars: Vec<char> = expr.chars().collect();
    let mut i = 0;
    let word = |i: &mut usize| -> String {
        let start = *i;
        while *i < chars.len() && (chars[*i].is_alphanumeric() || chars[*i] == '_') {
            *i += 1;
        }
        chars[start..*i].iter().collect()
    };
    let skip_space = |i: &mut usize| {
        while *i < chars.len() && chars[*i].is_whitespace() {
            *i += 1;
        }
    };
    // The text up to the bracket closing the one at `i`, and the index after it.
    let enclosed = |i: usize, open: char, close: char| -> (String, usize) {
        assert_eq!(chars[i], open);
        let mut j = i + 1;
        let mut in_string = false;
        while j < chars.len() {
            match chars[j] {
                '\\' if in_string => j += 1,
                '"' => in_string = !in_string,
                c if c == close && !in_string => break,
                _ => {}
            }
            j += 1;
        }
        assert!(j < chars.len(), "unclosed {open} in {expr:?}");
        (chars[i + 1..j].iter().collect(), j + 1)
    };
    while i < chars.len() {
        let c = chars[i];
        if c == '"' {
            let mut j = i + 1;
            while j < chars.len() && chars[j] != '"' {
                j += if chars[j] == '\\' { 2 } else { 1 };
            }
            i = j + 1;
        } else if c == '[' {
            i = enclosed(i, '[', ']').1;
        } else if c == '{' {
            // A selector with no name (`{__name__=…}`) is not used here.
            panic!("a bare selector in {expr:?}");
        } else if c.is_alphabetic() || c == '_' {
            let w = word(&mut i);
            skip_space(&mut i);
            let next = chars.get(i).copied();
            match w.as_str() {
                "by" | "without" | "on" | "ignoring" | "group_left" | "group_right"
                    if next == Some('(') =>
                {
                    let (labels, after) = enclosed(i, '(', ')');
                    named.grouping.extend(
                        labels
                            .split(',')
                            .map(|l| l.trim().to_string())
                            .filter(|l| !l.is_empty()),
                    );
                    i = after;
                }
                "label_values" if next == Some('(') => {
                    let (args, after) = enclosed(i, '(', ')');
                    let (selector, label) = args
                        .rsplit_once(',')
                        .unwrap_or_else(|| panic!("label_values(SELECTOR, LABEL): {expr:?}"));
                    let inner = read_promql(selector);
                    named.metrics.extend(inner.metrics);
                    named.grouping.push(label.trim().to_string());
                    i = after;
                }
                _ if w.starts_with("ninjapoll_") => {
                    let matchers = if next == Some('{') {
                        let (m, after) = enclosed(i, '{', '}');
                        i = after;
                        parse_matchers(&m)
                    } else {
                        Vec::new()
                    };
                    named.metrics.push((w, matchers));
                }
                _ if next == Some('{') => {
                    // Another metric (`up`): its matchers are not ours to check.
                    i = enclosed(i, '{', '}').1;
                }
                _ => {}
            }
        } else {
            i += 1;
        }
    }
    named
}

/// Checks one expression against the scrape; returns the families it names.
fn check_expr(exported: &Exported, place: &str, expr: &str) -> BTreeSet<String> {
    let named = read_promql(expr);
    let mut families = BTreeSet::new();
    let mut labels_in_reach: BTreeSet<String> =
        TARGET_LABELS.iter().map(|l| l.to_string()).collect();
    for (metric, matchers) in &named.metrics {
        let (family, bucket) = exported.family_of(metric).unwrap_or_else(|| {
            panic!(
                "{place}: `{metric}` is not exported by the daemon (in {expr:?}); the families are: {:?}",
                exported.types.keys().collect::<Vec<_>>()
            )
        });
        let labels = exported.labels(&family);
        assert!(
            !exported.samples[&family].is_empty() || matchers.is_empty(),
            "{place}: `{family}` has no samples in the test's scrape, so its labels cannot be checked; make tests/it/dashboards.rs produce one"
        );
        for (label, op, value) in matchers {
            let known = labels.contains(label)
                || TARGET_LABELS.contains(&label.as_str())
                || (bucket && label == "le");
            assert!(
                known,
                "{place}: `{metric}` has no label `{label}` (it has {labels:?}) in {expr:?}"
            );
            // A literal value must be one the daemon writes (a typo matches nothing).
            if op == "=" && !value.contains('$') && !TARGET_LABELS.contains(&label.as_str()) {
                assert!(
                    exported.samples[&family]
                        .iter()
                        .any(|s| s.get(label) == Some(value)),
                    "{place}: no `{family}` series has {label}=\"{value}\" (in {expr:?})"
                );
            }
        }
        labels_in_reach.extend(labels);
        if bucket {
            labels_in_reach.insert("le".into());
        }
        families.insert(family);
    }
    for label in &named.grouping {
        assert!(
            labels_in_reach.contains(label),
            "{place}: groups or matches by `{label}`, which none of {families:?} has (in {expr:?})"
        );
    }
    families
}

/// Every query of the dashboard: `(where, expr)` of each panel target (rows' panels too)
/// and each template variable.
fn dashboard_queries(dash: &Value) -> Vec<(String, String)> {
    fn panels<'a>(list: &'a Value, out: &mut Vec<&'a Value>) {
        for p in list.as_array().into_iter().flatten() {
            out.push(p);
            panels(&p["panels"], out);
        }
    }
    let mut all = Vec::new();
    panels(&dash["panels"], &mut all);
    let mut queries = Vec::new();
    for p in all.iter().filter(|p| p["type"] != "row") {
        let title = p["title"].as_str().expect("every panel has a title");
        let targets = p["targets"].as_array().map(Vec::as_slice).unwrap_or(&[]);
        assert!(!targets.is_empty(), "panel {title:?} has no query");
        for t in targets {
            let expr = t["expr"]
                .as_str()
                .unwrap_or_else(|| panic!("panel {title:?}: a target without expr"));
            queries.push((format!("{DASHBOARD} panel {title:?}"), expr.to_string()));
        }
    }
    for v in dash["templating"]["list"].as_array().into_iter().flatten() {
        let query = match &v["query"] {
            Value::String(q) => q.clone(),
            q => q["query"].as_str().unwrap_or_default().to_string(),
        };
        if v["type"] == "query" {
            queries.push((format!("{DASHBOARD} variable ${}", v["name"]), query));
        }
    }
    queries
}

/// Every `"datasource"` in the dashboard, with where it is.
fn datasources(v: &Value, at: &str, out: &mut Vec<(String, Value)>) {
    match v {
        Value::Object(map) => {
            for (k, x) in map {
                let here = format!("{at}.{k}");
                if k == "datasource" {
                    out.push((here.clone(), x.clone()));
                }
                datasources(x, &here, out);
            }
        }
        Value::Array(items) => {
            for (i, x) in items.iter().enumerate() {
                datasources(x, &format!("{at}[{i}]"), out);
            }
        }
        _ => {}
    }
}

/// The alert rules, minimally read: `(alert, expr, summary)`, block scalars (`>-`, `|`)
/// joined into one line.
fn alert_rules(yaml: &str) -> Vec<(String, String, String)> {
    let lines: Vec<&str> = yaml.lines().collect();
    let indent = |l: &str| l.len() - l.trim_start().len();
    // The value of the key on line `i`, with any block under it.
    let value = |i: usize, key: &str| -> String {
        let line = lines[i];
        let inline = line.trim_start()[key.len() + 1..].trim();
        if !inline.starts_with(['>', '|']) {
            return inline.to_string();
        }
        let mut parts = Vec::new();
        for l in &lines[i + 1..] {
            if !l.trim().is_empty() && indent(l) <= indent(line) {
                break;
            }
            parts.push(l.trim());
        }
        parts.join(" ").trim().to_string()
    };
    let mut rules: Vec<(String, String, String)> = Vec::new();
    for (i, l) in lines.iter().enumerate() {
        let t = l.trim_start();
        if let Some(name) = t.strip_prefix("- alert:") {
            rules.push((name.trim().to_string(), String::new(), String::new()));
        } else if t.starts_with("expr:") {
            rules.last_mut().expect("expr in an alert").1 = value(i, "expr");
        } else if t.starts_with("summary:") {
            rules.last_mut().expect("summary in an alert").2 = value(i, "summary");
        }
    }
    rules
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_dashboard_and_the_alert_rules_name_only_what_the_daemon_exports() {
    // The dashboard imports as it is.
    let dash: Value = serde_json::from_str(&read(DASHBOARD))
        .unwrap_or_else(|e| panic!("{DASHBOARD} is not JSON: {e}"));
    assert_eq!(
        dash["uid"], "ninjapoll",
        "a stable uid: links and provisioning keep working"
    );
    assert!(dash["schemaVersion"].as_u64().unwrap_or(0) >= 36);
    assert!(dash["id"].is_null(), "no instance's id baked in");
    let inputs = dash["__inputs"].as_array().expect("__inputs");
    assert!(
        inputs
            .iter()
            .any(|i| i["name"] == "DS_PROMETHEUS" && i["pluginId"] == "prometheus"),
        "the Prometheus datasource is an input chosen on import: {inputs:?}"
    );
    let mut ds = Vec::new();
    datasources(&dash, "", &mut ds);
    assert!(!ds.is_empty());
    for (at, d) in &ds {
        let uid = match d {
            Value::String(s) => s.as_str(),
            d => d["uid"].as_str().unwrap_or_default(),
        };
        assert_eq!(
            uid, DATASOURCE,
            "{DASHBOARD}{at}: a datasource baked in ({d}); use {{\"type\": \"prometheus\", \"uid\": \"{DATASOURCE}\"}}"
        );
    }
    let mut ids = BTreeSet::new();
    fn ids_of(list: &Value, ids: &mut BTreeSet<u64>) {
        for p in list.as_array().into_iter().flatten() {
            let id = p["id"].as_u64().expect("every panel has an id");
            assert!(ids.insert(id), "panel id {id} twice");
            ids_of(&p["panels"], ids);
        }
    }
    ids_of(&dash["panels"], &mut ids);

    // A daemon exporting every family with samples: a payment checked to its end, its
    // event delivered and then deleted by retention.
    let fake = FakeNinjapay::start(FakeOptions::default()).await.unwrap();
    let receiver = WebhookReceiver::start(WEBHOOK_SECRET).await;
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let d = spawn_daemon(
        &fake.base_url(),
        DaemonConfig {
            webhooks: Some((receiver.url().to_string(), WEBHOOK_SECRET.to_string())),
            extra_toml: format!("[metrics]\nlisten = \"127.0.0.1:{port}\"\n"),
            env: vec![("NINJAPOLL_WEBHOOKS__KEEP_DELIVERED".into(), "200ms".into())],
            ..DaemonConfig::default()
        },
    )
    .await;
    fake.script("p2p", "D1", Script::pending_then(Kind::P2p, 1, "approved"));
    assert_eq!(d.enqueue("p2p", "D1", None).await.0, 201);
    d.wait_final("p2p", "D1", Duration::from_secs(5)).await;
    receiver.wait_deliveries(1, Duration::from_secs(5)).await;
    let deadline = Instant::now() + Duration::from_secs(10);
    let text = loop {
        let text = reqwest::get(format!("http://127.0.0.1:{port}/metrics"))
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        if text.contains("ninjapoll_retention_deleted_rows_total{") {
            break text;
        }
        assert!(
            Instant::now() < deadline,
            "retention never deleted the delivered event:\n{text}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let exported = Exported::parse(&text);
    assert!(exported.types.len() > 20, "{text}");
    // The figures only the alert rules read are real: the process started during this
    // test, and the scheduler reported within its tick.
    let value = |name: &str| -> f64 {
        text.lines()
            .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
            .unwrap_or_else(|| panic!("no sample {name}:\n{text}"))
    };
    let started = value("ninjapoll_start_time_seconds");
    let now = now_ms() as f64 / 1000.0;
    assert!(started <= now && started > now - 60.0, "{started} vs {now}");
    assert!(
        value("ninjapoll_scheduler_report_age_seconds") < 5.0,
        "{text}"
    );

    // Every query names what is exported.
    let mut on_dashboard = BTreeSet::new();
    for (place, expr) in dashboard_queries(&dash) {
        on_dashboard.extend(check_expr(&exported, &place, &expr));
    }

    // Every exported family is on the dashboard, or left off on purpose.
    let left_off: BTreeMap<String, String> = read(LEFT_OFF)
        .lines()
        .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
        .map(|l| {
            let (name, why) = l.trim().split_once(char::is_whitespace).unwrap_or((l, ""));
            assert!(
                !why.trim().is_empty(),
                "{LEFT_OFF}: `{name}` needs a reason after its name"
            );
            (name.to_string(), why.trim().to_string())
        })
        .collect();
    for name in left_off.keys() {
        assert!(
            exported.types.contains_key(name),
            "{LEFT_OFF} lists `{name}`, which the daemon does not export: remove the line"
        );
        assert!(
            !on_dashboard.contains(name),
            "{LEFT_OFF} lists `{name}`, which {DASHBOARD} shows: remove the line"
        );
    }
    for family in exported.types.keys() {
        assert!(
            on_dashboard.contains(family) || left_off.contains_key(family),
            "the daemon exports `{family}`, which is neither on {DASHBOARD} nor in {LEFT_OFF}: add a panel that queries it, or a line `{family}  <why an operator does not need it>` to {LEFT_OFF}"
        );
    }

    // The alert rules: each says what to do, names what is exported, and has a promtool
    // unit test.
    let rules = alert_rules(&read(ALERTS));
    let tests = read(ALERT_TESTS);
    let wanted = [
        "NinjapollDown",
        "NinjapollKeyCannotKeepUp",
        "NinjapollCheckWaitedAWindow",
        "NinjapayRefusesKey",
        "NinjapollDatabaseWritesFailing",
        "NinjapollWebhookEventsDead",
        "NinjapollSchedulerStalled",
        "NinjapollRestarting",
    ];
    let names: Vec<&str> = rules.iter().map(|(n, _, _)| n.as_str()).collect();
    assert_eq!(names, wanted, "{ALERTS}");
    for (name, expr, summary) in &rules {
        assert!(!expr.is_empty(), "{ALERTS}: {name} has no expr");
        assert!(
            summary.len() > 40,
            "{ALERTS}: {name}'s summary must say what to do: {summary:?}"
        );
        let families = check_expr(&exported, &format!("{ALERTS} {name}"), expr);
        assert!(
            !families.is_empty() || expr.contains("up{"),
            "{ALERTS}: {name} names no ninjapoll metric: {expr:?}"
        );
        assert!(
            tests.contains(&format!("alertname: {name}\n")),
            "{ALERT_TESTS} has no alert_rule_test for {name}"
        );
    }
}

#[test]
fn promql_is_read_well_enough_to_catch_a_wrong_name_or_label() {
    let e = read_promql(
        r#"histogram_quantile(0.9, sum by (pool, le) (rate(ninjapoll_check_lateness_seconds_bucket{instance=~"$instance",pool=~"$pool"}[$__rate_interval]))) > on (pool) group_left ninjapoll_budget_window_seconds"#,
    );
    let names: Vec<&str> = e.metrics.iter().map(|(m, _)| m.as_str()).collect();
    assert_eq!(
        names,
        [
            "ninjapoll_check_lateness_seconds_bucket",
            "ninjapoll_budget_window_seconds"
        ]
    );
    assert_eq!(
        e.metrics[0].1,
        [
            ("instance".into(), "=~".into(), "$instance".into()),
            ("pool".into(), "=~".into(), "$pool".into())
        ]
    );
    assert_eq!(e.grouping, ["pool", "le", "pool"]);
    let e = read_promql(r#"label_values(ninjapoll_pending{x="a\"b,c"}, kind)"#);
    assert_eq!(
        e.metrics,
        [(
            "ninjapoll_pending".to_string(),
            vec![("x".to_string(), "=".to_string(), "a\"b,c".to_string())]
        )]
    );
    assert_eq!(e.grouping, ["kind"]);
    assert!(read_promql(r#"up{job="ninjapoll"} == 0"#)
        .metrics
        .is_empty());

    let exported = Exported::parse(
        "# TYPE ninjapoll_pending gauge\nninjapoll_pending{pool=\"default\",kind=\"p2p\"} 1\n\
         # TYPE ninjapoll_latency_seconds histogram\nninjapoll_latency_seconds_bucket{kind=\"p2p\",le=\"+Inf\"} 1\n\
         ninjapoll_latency_seconds_sum{kind=\"p2p\"} 0.1\nninjapoll_latency_seconds_count{kind=\"p2p\"} 1\n",
    );
    let fails = |expr: &str| {
        let exported = &exported;
        std::panic::catch_unwind(|| check_expr(exported, "test", expr)).is_err()
    };
    assert!(!fails(
        r#"sum by (kind) (ninjapoll_pending{pool="default"})"#
    ));
    assert!(!fails(
        r#"histogram_quantile(0.5, sum by (le) (rate(ninjapoll_latency_seconds_bucket{kind="p2p"}[5m])))"#
    ));
    assert!(fails("ninjapoll_pendin"), "a misspelt name");
    assert!(
        fails(r#"ninjapoll_pending{pol="default"}"#),
        "a misspelt label"
    );
    assert!(
        fails(r#"ninjapoll_pending{pool="defualt"}"#),
        "a value never written"
    );
    assert!(
        fails("sum by (state) (ninjapoll_pending)"),
        "grouping by a label it lacks"
    );
    assert!(
        fails(r#"ninjapoll_latency_seconds_count{le="1"}"#),
        "le only on buckets"
    );
    assert!(
        fails("ninjapoll_pending_bucket"),
        "buckets only of histograms"
    );
}
