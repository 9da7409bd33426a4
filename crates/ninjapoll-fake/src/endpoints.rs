//! The four check endpoints: their paths, methods, auth headers and answer bodies, shaped
//! as the provider's documentation shows them.

use axum::http::Method;
use serde_json::{json, Value};
use std::time::{SystemTime, UNIX_EPOCH};

/// The p2p check's path.
pub(crate) const P2P_PATH: &str = "/uapi/v1/p2p/paymentLink/checkPayment";
/// The quote check's path.
pub(crate) const QUOTE_PATH: &str = "/sapi/v1/checkQuote";
/// The paywall check's path.
pub(crate) const PAYWALL_PATH: &str = "/webextension/api/v1/fiat/paywall/trx-status";
/// The history's path (the btc kind).
pub(crate) const BTC_PATH: &str = "/sapi/v1/history";

/// The four check endpoints the fake serves.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Kind {
    /// P2P payment link: `GET /uapi/v1/p2p/paymentLink/checkPayment?tid=`.
    P2p,
    /// Fiat x Web3 quote: `GET /sapi/v1/checkQuote?tid=`.
    Quote,
    /// UPI paywall: `POST /webextension/api/v1/fiat/paywall/trx-status`.
    Paywall,
    /// BTC transactions, found in the list `GET /sapi/v1/history`.
    Btc,
}

impl Kind {
    /// All kinds, in a stable order.
    pub const ALL: [Kind; 4] = [Kind::P2p, Kind::Quote, Kind::Paywall, Kind::Btc];

    /// Parses a kind name as used in ninjapoll (`p2p`, `quote`, `paywall`, `btc`).
    pub fn parse(name: &str) -> Option<Kind> {
        Kind::ALL.into_iter().find(|k| k.as_str() == name)
    }

    /// The kind's name as used in ninjapoll.
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::P2p => "p2p",
            Kind::Quote => "quote",
            Kind::Paywall => "paywall",
            Kind::Btc => "btc",
        }
    }

    /// The raw status this kind's endpoint reports while a payment is not settled.
    pub fn pending_status(self) -> &'static str {
        match self {
            Kind::Paywall => "PENDING",
            Kind::P2p | Kind::Quote | Kind::Btc => "pending",
        }
    }

    /// The final raw statuses of this kind, as the provider spells them.
    pub fn final_statuses(self) -> &'static [&'static str] {
        match self {
            Kind::P2p => &["approved", "declined"],
            Kind::Quote => &["success", "completed", "failed", "expired", "refunded"],
            Kind::Paywall => &["SUCCESS", "FAILED"],
            Kind::Btc => &["paid", "declined"],
        }
    }

    /// The header that carries the API key for this kind.
    pub(crate) fn auth_header(self) -> &'static str {
        match self {
            Kind::Paywall => "x-api-key",
            Kind::P2p | Kind::Quote | Kind::Btc => "authorization",
        }
    }

    pub(crate) fn method(self) -> Method {
        match self {
            Kind::Paywall => Method::POST,
            Kind::P2p | Kind::Quote | Kind::Btc => Method::GET,
        }
    }

    pub(crate) fn method_name(self) -> &'static str {
        match self {
            Kind::Paywall => "POST",
            Kind::P2p | Kind::Quote | Kind::Btc => "GET",
        }
    }

    pub(crate) fn from_path(path: &str) -> Option<Kind> {
        match path {
            P2P_PATH => Some(Kind::P2p),
            QUOTE_PATH => Some(Kind::Quote),
            PAYWALL_PATH => Some(Kind::Paywall),
            BTC_PATH => Some(Kind::Btc),
            _ => None,
        }
    }
}

impl std::fmt::Display for Kind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A transaction id as Ninjapay spells it: a number when it is one, else a string.
fn tid_value(id: &str) -> Value {
    if !id.is_empty() && id.bytes().all(|b| b.is_ascii_digit()) {
        if let Ok(n) = id.parse::<u64>() {
            return Value::from(n);
        }
    }
    Value::from(id)
}

pub(crate) fn unix_now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

/// The 200 body of a single-id kind (seeds 001, 002, 003); `status: None` leaves the
/// status field out.
pub(crate) fn body_for(kind: Kind, id: &str, status: Option<&str>) -> Value {
    let created = unix_now();
    let mut body = match kind {
        Kind::P2p => json!({
            "tid": id,
            "payment_mode": "upi",
            "payment_mode_type": "primary",
            "utr": "278917658915",
            "amount": 120.10,
            "amount_currency": "INR",
            "payer_info": "+917337557707",
            "purpose": "ninjapoll fake payment",
            "created_at": created,
            "callback_url": null,
            "callback_status": null,
            "success_url": null,
            "hosted_checkout_url": null,
            "order_id": "210",
            "extra": {"name": "nakamoto", "email": "sample@sample.com"},
            "upi_info": {"upi_id": "merchantupi@icici"},
            "bank_info": null,
            "other_info": {},
            "total_fee": {"network_fee": null, "service_fee": null, "gst_fee": null},
        }),
        Kind::Quote => json!({
            "tid": tid_value(id),
            "created_at": created,
            "sending_asset": "btc",
            "sending_asset_amount": 19362,
            "fiat_amount": 1500.0,
            "payment_method": "upi",
            "lightning_invoice": "lnbc193620n1fake",
            "onchain_address": "2NAyVsR6N8opLW9na23yBhkWqizEmwDVwvm",
            "onchain_address_network": "BTC",
            "expires_at": created + 600,
            "receiver_upi_id": "merchantupi@icici",
            "receiver_ninjatag": null,
            "refund_wallet": "lbtc",
            "transaction_time": null,
        }),
        Kind::Paywall => {
            let message = match status.map(str::to_ascii_uppercase).as_deref() {
                Some("SUCCESS") => "Received payment",
                Some("FAILED") | Some("FAILURE") => "Payment failed",
                _ => "Payment pending",
            };
            let mut data = json!({
                "payload": {
                    "price": "1",
                    "title": "ninjapoll fake paywall",
                    "content": "",
                    "content_type": "URL",
                    "hide_url": false,
                    "currency": "INR",
                    "extras": {},
                },
            });
            if let (Some(s), Some(obj)) = (status, data.as_object_mut()) {
                obj.insert("trxStatus".to_owned(), Value::from(s));
            }
            return json!({"status": true, "data": data, "message": message});
        }
        Kind::Btc => return btc_entry(id, "btc", status, created),
    };
    if let (Some(s), Some(obj)) = (status, body.as_object_mut()) {
        obj.insert("status".to_owned(), Value::from(s));
    }
    body
}

/// One history entry (seed 004); `created` is when the charge was made (unix seconds).
pub(crate) fn btc_entry(id: &str, wallet: &str, status: Option<&str>, created: i64) -> Value {
    let mut entry = json!({
        "tid": tid_value(id),
        "payment_mode": "lightning",
        "wallet": wallet,
        "amount": 0.00019362,
        "receiver_ninjatag": null,
        "description": "ninjapoll fake charge",
        "created_at": created,
        "status_payee": "undefined",
        "status_payer": "undefined",
        "transaction_hash": null,
        "callback_url": null,
        "callback_status": null,
        "success_url": null,
        "hosted_checkout_url": null,
        "hosted_checkout_expiry": null,
        "customer_name": null,
        "order_id": "21",
        "fiat_currency": "USD",
        "fiat_value": 12.34,
        "extra": {},
        "chain_address": {"asset": "BTC", "chain_network": null, "address": null},
        "uri": null,
        "ttl": 10,
        "lightning_invoice": {
            "lightning_invoice_type": "invoice",
            "expires_at": null,
            "payreq": "lnbc193620n1fake",
        },
        "total_fee": {"network_fee": null, "service_fee": null, "gst_fee": null},
    });
    if let (Some(s), Some(obj)) = (status, entry.as_object_mut()) {
        obj.insert("status".to_owned(), Value::from(s));
    }
    entry
}
