//! A kind as the configuration writes it, and the four presets of SPEC section 2 as
//! configuration defaults.

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// A kind as written in the configuration; every field optional so that a user's table
/// merges over a preset's.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawKind {
    /// `GET` or `POST`.
    pub method: Option<String>,
    /// Endpoint; `{prod}` and `{api}` expand to the configured base URLs.
    pub url: Option<String>,
    /// Name of the parameter that carries the payment id.
    pub id_field: Option<String>,
    /// `query` or `json` (a JSON body `{id_field: id}`).
    pub id_in: Option<String>,
    /// Header that carries the API key.
    pub auth_header: Option<String>,
    /// JSON pointer to the raw status (within each list item for list kinds).
    pub status_pointer: Option<String>,
    /// JSON pointer to an envelope flag that must be `true` (else the answer is an error).
    pub ok_pointer: Option<String>,
    /// Raw status (matched case-insensitively) → state.
    #[serde(default)]
    pub status_map: BTreeMap<String, String>,
    /// Fixed query parameters sent with every request.
    #[serde(default)]
    pub query: BTreeMap<String, String>,
    /// Makes the kind a list endpoint: one request answers every pending payment it lists.
    pub list: Option<RawList>,
    /// This kind's own API key (else `ninjapay.api_key`); budgets are per key.
    #[serde(default, deserialize_with = "crate::secret::secret_text")]
    pub api_key: Option<String>,
    /// A file holding this kind's own API key.
    pub api_key_file: Option<std::path::PathBuf>,
    /// This kind's reconciliation schedule (ages since the start), instead of
    /// `reconcile.after`; `[]` turns it off for the kind.
    pub reconcile_after: Option<Vec<humantime_serde::Serde<std::time::Duration>>>,
    /// Final states (besides `timed_out`) that the provider documents a later move from
    /// (a quote's `succeeded` may be `refunded`): payments ending in them stay watched.
    pub reconcile_states: Option<Vec<String>>,
}

/// List-endpoint settings of a kind.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawList {
    /// JSON pointer to the array of items ("" for a top-level array).
    pub items_pointer: Option<String>,
    /// JSON pointer, within an item, to its id.
    pub item_id_pointer: Option<String>,
    /// Query parameter that bounds the page size.
    pub limit_param: Option<String>,
    /// Largest page asked for.
    pub max_limit: Option<u32>,
    /// JSON pointer, within an item, to its creation time (unix seconds or milliseconds):
    /// tells whether a full page reaches back far enough for an absent payment to be
    /// really absent.
    pub created_pointer: Option<String>,
}

fn preset(
    method: &str,
    url: &str,
    id_field: &str,
    id_in: &str,
    auth: &str,
    status: &str,
    map: &[(&str, &str)],
) -> RawKind {
    RawKind {
        method: Some(method.into()),
        url: Some(url.into()),
        id_field: Some(id_field.into()),
        id_in: Some(id_in.into()),
        auth_header: Some(auth.into()),
        status_pointer: Some(status.into()),
        status_map: map
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
        ..RawKind::default()
    }
}

/// The presets of SPEC section 2, as configuration defaults.
pub fn presets() -> BTreeMap<String, RawKind> {
    let mut m = BTreeMap::new();
    m.insert(
        "p2p".into(),
        preset(
            "GET",
            "{prod}/uapi/v1/p2p/paymentLink/checkPayment",
            "tid",
            "query",
            "Authorization",
            "/status",
            &[
                ("pending", "pending"),
                ("approved", "succeeded"),
                ("declined", "failed"),
            ],
        ),
    );
    m.insert(
        "quote".into(),
        preset(
            "GET",
            "{prod}/sapi/v1/checkQuote",
            "tid",
            "query",
            "Authorization",
            "/status",
            &[
                ("pending", "pending"),
                ("success", "succeeded"),
                ("completed", "succeeded"),
                ("failed", "failed"),
                ("expired", "expired"),
                ("refunded", "refunded"),
            ],
        ),
    );
    // Ninjapay documents a quote's `success` turning `refunded`.
    if let Some(quote) = m.get_mut("quote") {
        quote.reconcile_states = Some(vec!["succeeded".into()]);
    }
    let mut paywall = preset(
        "POST",
        "{api}/webextension/api/v1/fiat/paywall/trx-status",
        "order_id",
        "json",
        "x-api-key",
        "/data/trxStatus",
        &[
            ("pending", "pending"),
            ("success", "succeeded"),
            ("failed", "failed"),
            ("failure", "failed"),
        ],
    );
    paywall.ok_pointer = Some("/status".into());
    m.insert("paywall".into(), paywall);
    let mut btc = preset(
        "GET",
        "{prod}/sapi/v1/history",
        "tid",
        "query",
        "Authorization",
        "/status",
        &[
            ("undefined", "pending"),
            ("pending", "pending"),
            ("paid", "succeeded"),
            ("declined", "failed"),
        ],
    );
    btc.list = Some(RawList {
        items_pointer: Some(String::new()),
        item_id_pointer: Some("/tid".into()),
        limit_param: Some("limit".into()),
        max_limit: Some(1000),
        created_pointer: Some("/created_at".into()),
    });
    m.insert("btc".into(), btc);
    m
}
