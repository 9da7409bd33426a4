//! A check's request parts: its query parameters and JSON body.

use super::kind::{IdIn, Kind};
use crate::payment::PaymentId;
use serde_json::Value;

impl Kind {
    /// Query parameters of the request checking `ids` (one id, or the listed ones); a list
    /// kind asks for `list_limit` entries (else [`Kind::list_limit`] of `ids`).
    pub fn query_params(
        &self,
        ids: &[&PaymentId],
        list_limit: Option<u32>,
    ) -> Vec<(String, String)> {
        let mut q = self.query.clone();
        match &self.list {
            Some(list) => {
                let limit = list_limit
                    .unwrap_or_else(|| self.list_limit(ids.len()))
                    .clamp(1, list.max_limit);
                q.push((list.limit_param.clone(), limit.to_string()));
            }
            None => {
                if let (IdIn::Query, Some(id)) = (self.id_in, ids.first()) {
                    q.push((self.id_field.clone(), id.as_str().to_string()));
                }
            }
        }
        q
    }

    /// JSON body of the request checking `id`, for kinds that send one.
    pub fn json_body(&self, id: &PaymentId) -> Option<Value> {
        (self.id_in == IdIn::Json && self.list.is_none()).then(|| {
            let mut m = serde_json::Map::new();
            m.insert(self.id_field.clone(), Value::String(id.as_str().into()));
            Value::Object(m)
        })
    }
}
