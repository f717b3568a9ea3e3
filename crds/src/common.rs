//! Small types shared by ApiGateway and ApiPolicy.

use std::borrow::Cow;
use std::fmt;

use schemars::{json_schema, JsonSchema, Schema, SchemaGenerator};
use serde::{Deserialize, Serialize};

/// A Gateway API duration: one to four `<number><unit>` groups with units
/// `h`, `m`, `s`, `ms` (e.g. `500ms`, `15s`, `1h30m`).
///
/// Kept as the user's string so status and dumps show what was written; parse
/// with [`Duration::to_std`].
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Duration(pub String);

/// The CEL rule the API server runs on every duration; mirrors [`Duration::to_std`].
pub const DURATION_RULE: &str = "self.matches('^([0-9]{1,5}(h|m|s|ms)){1,4}$')";

impl JsonSchema for Duration {
    fn schema_name() -> Cow<'static, str> {
        "Duration".into()
    }

    fn inline_schema() -> bool {
        true
    }

    fn json_schema(_: &mut SchemaGenerator) -> Schema {
        json_schema!({
            "type": "string",
            "maxLength": 32,
            "x-kubernetes-validations": [{
                "rule": DURATION_RULE,
                "message": "must be a duration such as 500ms, 15s, 1m or 1h30m (units h, m, s, ms)"
            }]
        })
    }
}

impl Duration {
    /// Parses the Gateway API duration format.
    pub fn to_std(&self) -> Result<std::time::Duration, crate::Error> {
        parse_duration(&self.0).ok_or_else(|| crate::Error::InvalidDuration(self.0.clone()))
    }
}

impl fmt::Display for Duration {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl From<&str> for Duration {
    fn from(s: &str) -> Self {
        Duration(s.to_string())
    }
}

fn parse_duration(s: &str) -> Option<std::time::Duration> {
    let bytes = s.as_bytes();
    let mut total_ms: u64 = 0;
    let mut groups = 0;
    let mut i = 0;
    while i < bytes.len() {
        let start = i;
        while i < bytes.len() && bytes[i].is_ascii_digit() {
            i += 1;
        }
        let digits = &s[start..i];
        if digits.is_empty() || digits.len() > 5 {
            return None;
        }
        let n: u64 = digits.parse().ok()?;
        let unit_ms = if s[i..].starts_with("ms") {
            i += 2;
            1
        } else {
            let u = match bytes.get(i)? {
                b'h' => 3_600_000,
                b'm' => 60_000,
                b's' => 1_000,
                _ => return None,
            };
            i += 1;
            u
        };
        total_ms += n * unit_ms;
        groups += 1;
    }
    (1..=4)
        .contains(&groups)
        .then(|| std::time::Duration::from_millis(total_ms))
}

/// A reference to a Secret, optionally in another namespace
/// (Gateway API `SecretObjectReference`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct SecretObjectReference {
    /// API group of the referent; only the core group ("") is supported.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 253))]
    pub group: Option<String>,
    /// Kind of the referent; only `Secret` is supported.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 63))]
    pub kind: Option<String>,
    /// Name of the Secret.
    #[schemars(length(min = 1, max = 253))]
    pub name: String,
    /// Namespace of the Secret; defaults to the referrer's namespace. A Secret in
    /// another namespace must be permitted by a ReferenceGrant there.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 63))]
    pub namespace: Option<String>,
}

/// An HTTP header name and value.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
pub struct HttpHeader {
    /// Header name (case-insensitive, RFC 7230 token).
    #[schemars(length(min = 1, max = 256), pattern(r"^[A-Za-z0-9!#$%&'*+\-.^_`|~]+$"))]
    pub name: String,
    /// Header value.
    #[schemars(length(min = 1, max = 4096))]
    pub value: String,
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration as Std;

    #[test]
    fn parses_gateway_api_durations() {
        let ok = [
            ("0s", Std::ZERO),
            ("500ms", Std::from_millis(500)),
            ("15s", Std::from_secs(15)),
            ("1h30m", Std::from_secs(5400)),
            ("1h1m1s1ms", Std::from_millis(3_661_001)),
            ("99999ms", Std::from_millis(99_999)),
        ];
        for (s, want) in ok {
            assert_eq!(Duration::from(s).to_std().unwrap(), want, "{s}");
        }
    }

    #[test]
    fn rejects_what_the_cel_rule_rejects() {
        for s in [
            "",
            "10",
            "10 seconds",
            "1d",
            "1.5s",
            "-1s",
            "123456s",
            "1h1m1s1ms1h",
            "s",
        ] {
            assert!(
                Duration::from(s).to_std().is_err(),
                "{s:?} should be invalid"
            );
        }
    }
}
