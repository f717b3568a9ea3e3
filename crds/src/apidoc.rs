//! Generates `docs/api.md`, the field reference, from the CRD schemas so the
//! documentation cannot drift from the types.

use std::fmt::Write;

use serde_json::Value;

/// One row of the reference: a field path and what the schema says about it.
#[derive(Debug, Clone, PartialEq)]
pub struct FieldDoc {
    /// Dotted path, `[]` marking list items (`spec.listeners[].port`).
    pub path: String,
    pub type_name: String,
    pub required: bool,
    pub description: String,
    pub rules: Vec<String>,
}

/// Every field of a CRD's `spec` and `status`, depth first in schema order.
pub fn fields(crd_schema: &Value) -> Vec<FieldDoc> {
    let mut out = Vec::new();
    for top in ["spec", "status"] {
        if let Some(schema) = crd_schema.pointer(&format!("/properties/{top}")) {
            walk(top, schema, true, &mut out);
        }
    }
    out
}

fn walk(path: &str, schema: &Value, required: bool, out: &mut Vec<FieldDoc>) {
    out.push(FieldDoc {
        path: path.to_string(),
        type_name: type_name(schema),
        required,
        description: schema
            .get("description")
            .and_then(Value::as_str)
            .unwrap_or_default()
            .replace('\n', " "),
        rules: rules(schema),
    });
    let object = if schema.get("type").and_then(Value::as_str) == Some("array") {
        schema.get("items")
    } else {
        Some(schema)
    };
    let Some(object) = object else { return };
    let suffix = if std::ptr::eq(object, schema) {
        ""
    } else {
        "[]"
    };
    let required_names: Vec<&str> = object
        .get("required")
        .and_then(Value::as_array)
        .map(|r| r.iter().filter_map(Value::as_str).collect())
        .unwrap_or_default();
    if let Some(props) = object.get("properties").and_then(Value::as_object) {
        let mut names: Vec<&String> = props.keys().collect();
        names.sort();
        for name in names {
            walk(
                &format!("{path}{suffix}.{name}"),
                &props[name],
                required_names.contains(&name.as_str()),
                out,
            );
        }
    }
}

fn type_name(schema: &Value) -> String {
    let base = schema
        .get("type")
        .and_then(Value::as_str)
        .unwrap_or("object");
    match base {
        "array" => format!(
            "[]{}",
            schema
                .get("items")
                .map(type_name)
                .unwrap_or_else(|| "any".into())
        ),
        "object" if schema.get("additionalProperties").is_some() => "map[string]string".into(),
        "integer" if schema.get("x-kubernetes-int-or-string").is_some() => "int-or-string".into(),
        _ if schema.get("x-kubernetes-int-or-string").is_some() => "int-or-string".into(),
        other => other.to_string(),
    }
}

fn rules(schema: &Value) -> Vec<String> {
    let mut rules = Vec::new();
    if let Some(values) = schema.get("enum").and_then(Value::as_array) {
        let values: Vec<String> = values.iter().map(|v| format!("`{}`", plain(v))).collect();
        rules.push(format!("one of {}", values.join(", ")));
    }
    for (key, label) in [
        ("minimum", "≥"),
        ("maximum", "≤"),
        ("minLength", "length ≥"),
        ("maxLength", "length ≤"),
        ("minItems", "items ≥"),
        ("maxItems", "items ≤"),
    ] {
        if let Some(v) = schema.get(key) {
            rules.push(format!("{label} {}", plain(v)));
        }
    }
    if let Some(p) = schema.get("pattern").and_then(Value::as_str) {
        rules.push(format!("pattern `{}`", p.replace('|', "\\|")));
    }
    if let Some(keys) = schema
        .get("x-kubernetes-list-map-keys")
        .and_then(Value::as_array)
    {
        let keys: Vec<String> = keys.iter().map(|k| format!("`{}`", plain(k))).collect();
        rules.push(format!("unique by {}", keys.join(", ")));
    }
    if let Some(d) = schema.get("default") {
        rules.push(format!("default `{}`", plain(d)));
    }
    if let Some(v) = schema
        .get("x-kubernetes-validations")
        .and_then(Value::as_array)
    {
        for rule in v {
            if let Some(m) = rule.get("message").and_then(Value::as_str) {
                rules.push(format!("rule: {m}"));
            }
        }
    }
    rules
}

/// Numbers print without a trailing `.0`, strings without quotes.
fn plain(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        Value::Number(n) => match n.as_f64() {
            Some(f) if f.fract() == 0.0 => format!("{}", f as i64),
            _ => n.to_string(),
        },
        other => other.to_string(),
    }
}

/// The whole `docs/api.md`: an introduction, a field table per resource, and
/// the examples (`(file name, YAML)`) appended verbatim.
pub fn markdown(examples: &[(String, String)]) -> Result<String, crate::Error> {
    let mut out = String::new();
    let w = |out: &mut String, s: &str| out.push_str(s);
    w(
        &mut out,
        "# meshgate API reference (`meshgate.io/v1alpha1`)\n\n",
    );
    w(
        &mut out,
        "<!-- Generated by `meshgate-operator api-docs`; do not edit. -->\n\n",
    );
    w(&mut out, "Two namespaced resources: **ApiGateway** (an edge gateway: listeners, routes, mesh identity, infrastructure) and **ApiPolicy** (policy attached to a gateway, a listener or a route). Field names follow the Kubernetes Gateway API (Gateway, HTTPRoute) and Envoy Gateway's policy CRDs wherever the concept is the same. Rules marked *rule* are CEL validations the API server enforces on create and update; the operator reports what CEL cannot check (regular expressions compile, references resolve, policy conflicts) in status conditions. Precedence and merge semantics of policies are described in [policies.md](policies.md).\n\n");
    for crd in crate::crds() {
        let kind = crd.spec.names.kind.clone();
        let schema = crd
            .spec
            .versions
            .first()
            .and_then(|v| v.schema.as_ref())
            .and_then(|s| s.open_api_v3_schema.as_ref())
            .map(serde_json::to_value)
            .transpose()
            .map_err(|e| crate::Error::Serialize(e.to_string()))?
            .unwrap_or(Value::Null);
        let _ = write!(out, "## {kind}\n\n");
        if let Some(d) = schema.get("description").and_then(Value::as_str) {
            let _ = write!(out, "{d}\n\n");
        }
        w(
            &mut out,
            "| Field | Type | Required | Description | Validation |\n|---|---|---|---|---|\n",
        );
        for f in fields(&schema) {
            let _ = writeln!(
                out,
                "| `{}` | {} | {} | {} | {} |",
                f.path,
                f.type_name,
                if f.required { "yes" } else { "" },
                f.description.replace('|', "\\|"),
                f.rules.join("; ").replace('\n', " ")
            );
        }
        out.push('\n');
    }
    w(&mut out, "## Examples\n\nEvery file below lives in `docs/examples/` and is checked by the test suite: valid examples load into the types and are accepted by a real API server; the files in `docs/examples/invalid/` are rejected with the message on their first line.\n\n");
    for (name, yaml) in examples {
        let _ = write!(out, "### `{name}`\n\n```yaml\n{}\n```\n\n", yaml.trim_end());
    }
    Ok(out)
}
