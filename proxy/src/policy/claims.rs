//! Verified JWT claims, shared by authentication, authorization and rate limits.

use std::sync::Arc;

use serde_json::{Map, Value};

/// The claims of a verified token (the JSON payload), cheap to clone.
#[derive(Clone, Debug, Default)]
pub struct Claims(pub Arc<Map<String, Value>>);

impl Claims {
    /// A claim by name; dots reach into nested objects (`realm.role`). A claim
    /// whose own name contains a dot is found first.
    pub fn get(&self, name: &str) -> Option<&Value> {
        if let Some(v) = self.0.get(name) {
            return Some(v);
        }
        let mut parts = name.split('.');
        let mut current = self.0.get(parts.next()?)?;
        for part in parts {
            current = current.as_object()?.get(part)?;
        }
        Some(current)
    }

    /// Whether claim `name` is present and, when `accepted` is non-empty, equal to
    /// one of its values (a list claim matches when any element does; a string
    /// claim holding space-separated scopes matches any of them only for `scope`).
    pub fn matches(&self, name: &str, accepted: &[String]) -> bool {
        let Some(value) = self.get(name) else {
            return false;
        };
        if accepted.is_empty() {
            return true;
        }
        let hit = |v: &Value| match v {
            Value::String(s) => accepted.iter().any(|a| a == s),
            Value::Bool(b) => accepted
                .iter()
                .any(|a| a == if *b { "true" } else { "false" }),
            Value::Number(n) => accepted.iter().any(|a| *a == n.to_string()),
            _ => false,
        };
        match value {
            Value::Array(items) => items.iter().any(hit),
            Value::String(s) if name == "scope" || name == "scp" => s
                .split(' ')
                .any(|scope| accepted.iter().any(|a| a == scope)),
            other => hit(other),
        }
    }

    /// A claim as a header or bucket-key value: strings as they are, other
    /// scalars in JSON form; objects and lists are not usable.
    pub fn text(&self, name: &str) -> Option<String> {
        match self.get(name)? {
            Value::String(s) => Some(s.clone()),
            Value::Number(n) => Some(n.to_string()),
            Value::Bool(b) => Some(b.to_string()),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn claims(v: Value) -> Claims {
        Claims(Arc::new(v.as_object().cloned().unwrap()))
    }

    #[test]
    fn nested_and_list_claims() {
        let c = claims(json!({
            "sub": "alice", "realm": {"role": "admin"}, "groups": ["a", "b"],
            "scope": "read write", "n": 3, "a.b": "dotted"
        }));
        assert_eq!(c.text("realm.role").as_deref(), Some("admin"));
        assert_eq!(c.text("a.b").as_deref(), Some("dotted"));
        assert!(c.matches("groups", &["b".into()]));
        assert!(!c.matches("groups", &["c".into()]));
        assert!(c.matches("scope", &["write".into()]));
        assert!(c.matches("n", &["3".into()]));
        assert!(c.matches("sub", &[]));
        assert!(!c.matches("missing", &[]));
        assert_eq!(c.text("groups"), None);
    }
}
