//! The subset of JSON Schema Placement's request schemas use, with Python `jsonschema`'s
//! messages, so that a client sees the same `JSON does not validate: ...` text as from
//! Placement (its functional tests match on those texts).
//!
//! Supported keywords: `type` (one or a list), `properties`, `patternProperties`,
//! `additionalProperties` (bool or schema), `required`, `minProperties`, `items`,
//! `minItems`, `uniqueItems`, `minimum`, `maximum`, `minLength`, `maxLength`, `pattern`,
//! `format: uuid`, `enum`, `anyOf`. Schemas are `serde_json::Value` literals written like
//! Placement's Python dictionaries.

use regex::Regex;
use serde_json::Value;

/// A validation failure: Python's `str(ValidationError)` first two paragraphs.
#[derive(Debug, Clone, PartialEq)]
pub struct SchemaError {
    /// `'name' is a required property` and the like.
    pub message: String,
    /// The failing keyword (`required`, `minimum`, ...).
    pub keyword: String,
    /// Python's rendering of the schema path (`['properties']['total']`).
    pub schema_path: String,
}

impl std::fmt::Display for SchemaError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}\n\nFailed validating '{}' in schema{}", self.message, self.keyword, self.schema_path)
    }
}

/// Python's `repr` of a JSON value (`'text'`, `None`, `True`, `{'a': 1}`).
pub fn py_repr(v: &Value) -> String {
    match v {
        Value::Null => "None".into(),
        Value::Bool(true) => "True".into(),
        Value::Bool(false) => "False".into(),
        Value::Number(n) => {
            if let Some(f) = n.as_f64().filter(|_| n.is_f64()) {
                if f.fract() == 0.0 && f.abs() < 1e16 { format!("{f:.1}") } else { f.to_string() }
            } else {
                n.to_string()
            }
        }
        Value::String(s) => py_str_repr(s),
        Value::Array(a) => format!("[{}]", a.iter().map(py_repr).collect::<Vec<_>>().join(", ")),
        Value::Object(o) => format!(
            "{{{}}}",
            o.iter().map(|(k, v)| format!("{}: {}", py_str_repr(k), py_repr(v))).collect::<Vec<_>>().join(", ")
        ),
    }
}

/// Python's `repr` of a string: single quotes unless the text has one and no double quote.
pub fn py_str_repr(s: &str) -> String {
    let quote = if s.contains('\'') && !s.contains('"') { '"' } else { '\'' };
    let mut out = String::with_capacity(s.len() + 2);
    out.push(quote);
    for c in s.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if c == quote => {
                out.push('\\');
                out.push(c);
            }
            c => out.push(c),
        }
    }
    out.push(quote);
    out
}

fn type_ok(v: &Value, t: &str) -> bool {
    match t {
        "object" => v.is_object(),
        "array" => v.is_array(),
        "string" => v.is_string(),
        "integer" => v.as_i64().is_some() || v.as_u64().is_some() || v.as_f64().is_some_and(|f| f.fract() == 0.0),
        "number" => v.is_number(),
        "boolean" => v.is_boolean(),
        "null" => v.is_null(),
        _ => false,
    }
}

/// Whether `s` is what `oslo_utils.uuidutils.is_uuid_like` accepts (with or without dashes).
pub fn is_uuid_like(s: &str) -> bool {
    uuid::Uuid::parse_str(s).is_ok_and(|u| {
        let hyphenated = u.hyphenated().to_string();
        let simple = u.simple().to_string();
        let lower = s.to_ascii_lowercase().replace(['{', '}'], "");
        lower == hyphenated || lower == simple || lower.strip_prefix("urn:uuid:") == Some(&hyphenated)
    })
}

fn path_str(path: &[String]) -> String {
    path.iter().map(|p| format!("[{}]", py_str_repr(p))).collect()
}

fn err(message: String, keyword: &str, path: &[String]) -> SchemaError {
    SchemaError { message, keyword: keyword.into(), schema_path: path_str(path) }
}

fn num(v: &Value) -> Option<f64> {
    v.as_f64()
}

/// Validates `v` against `schema`, reporting the first failure in keyword order.
pub fn validate(v: &Value, schema: &Value) -> Result<(), SchemaError> {
    check(v, schema, &mut Vec::new())
}

fn check(v: &Value, schema: &Value, path: &mut Vec<String>) -> Result<(), SchemaError> {
    let Some(s) = schema.as_object() else {
        return Ok(());
    };
    if let Some(any) = s.get("anyOf").and_then(Value::as_array)
        && !any.iter().any(|sub| validate(v, sub).is_ok())
    {
        return Err(err(format!("{} is not valid under any of the given schemas", py_repr(v)), "anyOf", path));
    }
    if let Some(t) = s.get("type") {
        let types: Vec<&str> = match t {
            Value::String(t) => vec![t.as_str()],
            Value::Array(a) => a.iter().filter_map(Value::as_str).collect(),
            _ => vec![],
        };
        if !types.is_empty() && !types.iter().any(|t| type_ok(v, t)) {
            let names = types.iter().map(|t| format!("'{t}'")).collect::<Vec<_>>().join(", ");
            return Err(err(format!("{} is not of type {names}", py_repr(v)), "type", path));
        }
    }
    if let Some(e) = s.get("enum").and_then(Value::as_array)
        && !e.contains(v)
    {
        return Err(err(format!("{} is not one of {}", py_repr(v), py_repr(&Value::Array(e.clone()))), "enum", path));
    }
    match v {
        Value::Object(o) => {
            if let Some(req) = s.get("required").and_then(Value::as_array) {
                for r in req.iter().filter_map(Value::as_str) {
                    if !o.contains_key(r) {
                        return Err(err(format!("{} is a required property", py_str_repr(r)), "required", path));
                    }
                }
            }
            if let Some(min) = s.get("minProperties").and_then(Value::as_u64)
                && (o.len() as u64) < min
            {
                let msg = if min == 1 {
                    format!("{} should be non-empty", py_repr(v))
                } else {
                    format!("{} does not have enough properties", py_repr(v))
                };
                return Err(err(msg, "minProperties", path));
            }
            let props = s.get("properties").and_then(Value::as_object);
            let patterns: Vec<(String, Regex, &Value)> = s
                .get("patternProperties")
                .and_then(Value::as_object)
                .map(|pp| pp.iter().filter_map(|(p, sub)| Regex::new(p).ok().map(|r| (p.clone(), r, sub))).collect())
                .unwrap_or_default();
            let mut extras = Vec::new();
            for (k, val) in o {
                let mut matched = false;
                if let Some(sub) = props.and_then(|p| p.get(k)) {
                    matched = true;
                    path.extend(["properties".to_string(), k.clone()]);
                    check(val, sub, path)?;
                    path.truncate(path.len() - 2);
                }
                for (p, r, sub) in &patterns {
                    if r.is_match(k) {
                        matched = true;
                        path.extend(["patternProperties".to_string(), p.clone()]);
                        check(val, sub, path)?;
                        path.truncate(path.len() - 2);
                    }
                }
                if !matched {
                    extras.push(k.clone());
                }
            }
            match s.get("additionalProperties") {
                Some(Value::Bool(false)) if !extras.is_empty() => {
                    if !patterns.is_empty() {
                        let regexes = patterns.iter().map(|(p, _, _)| py_str_repr(p)).collect::<Vec<_>>().join(", ");
                        let verb = if extras.len() == 1 { "does" } else { "do" };
                        let names = extras.iter().map(|e| py_str_repr(e)).collect::<Vec<_>>().join(", ");
                        return Err(err(
                            format!("{names} {verb} not match any of the regexes: {regexes}"),
                            "additionalProperties",
                            path,
                        ));
                    }
                    let verb = if extras.len() == 1 { "was" } else { "were" };
                    let names = extras.iter().map(|e| py_str_repr(e)).collect::<Vec<_>>().join(", ");
                    return Err(err(
                        format!("Additional properties are not allowed ({names} {verb} unexpected)"),
                        "additionalProperties",
                        path,
                    ));
                }
                Some(sub @ Value::Object(_)) => {
                    for k in &extras {
                        path.push("additionalProperties".to_string());
                        check(&o[k], sub, path)?;
                        path.pop();
                    }
                }
                _ => {}
            }
        }
        Value::Array(a) => {
            if let Some(min) = s.get("minItems").and_then(Value::as_u64)
                && (a.len() as u64) < min
            {
                let msg = if min == 1 {
                    format!("{} should be non-empty", py_repr(v))
                } else {
                    format!("{} is too short", py_repr(v))
                };
                return Err(err(msg, "minItems", path));
            }
            if s.get("uniqueItems").and_then(Value::as_bool) == Some(true) {
                for (i, x) in a.iter().enumerate() {
                    if a[..i].contains(x) {
                        return Err(err(format!("{} has non-unique elements", py_repr(v)), "uniqueItems", path));
                    }
                }
            }
            if let Some(items) = s.get("items") {
                for x in a {
                    path.push("items".to_string());
                    check(x, items, path)?;
                    path.pop();
                }
            }
        }
        Value::String(st) => {
            let len = st.chars().count() as u64;
            if let Some(min) = s.get("minLength").and_then(Value::as_u64)
                && len < min
            {
                let msg = if min == 1 {
                    format!("{} should be non-empty", py_repr(v))
                } else {
                    format!("{} is too short", py_repr(v))
                };
                return Err(err(msg, "minLength", path));
            }
            if let Some(max) = s.get("maxLength").and_then(Value::as_u64)
                && len > max
            {
                return Err(err(format!("{} is too long", py_repr(v)), "maxLength", path));
            }
            if let Some(p) = s.get("pattern").and_then(Value::as_str)
                && Regex::new(p).is_ok_and(|r| !r.is_match(st))
            {
                return Err(err(format!("{} does not match {}", py_repr(v), py_str_repr(p)), "pattern", path));
            }
            if s.get("format").and_then(Value::as_str) == Some("uuid") && !is_uuid_like(st) {
                return Err(err(format!("{} is not a 'uuid'", py_repr(v)), "format", path));
            }
        }
        Value::Number(_) => {
            if let (Some(min), Some(x)) = (s.get("minimum").and_then(num), num(v))
                && x < min
            {
                return Err(err(
                    format!("{} is less than the minimum of {}", py_repr(v), py_repr(&s["minimum"])),
                    "minimum",
                    path,
                ));
            }
            if let (Some(max), Some(x)) = (s.get("maximum").and_then(num), num(v))
                && x > max
            {
                return Err(err(
                    format!("{} is greater than the maximum of {}", py_repr(v), py_repr(&s["maximum"])),
                    "maximum",
                    path,
                ));
            }
        }
        _ => {}
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn messages_match_python() {
        let schema = json!({"type": "object", "properties": {"total": {"type": "integer", "minimum": 1}},
            "required": ["total"], "additionalProperties": false});
        let e = validate(&json!({}), &schema).unwrap_err();
        assert_eq!(e.to_string(), "'total' is a required property\n\nFailed validating 'required' in schema");
        let e = validate(&json!({"total": 0}), &schema).unwrap_err();
        assert_eq!(
            e.to_string(),
            "0 is less than the minimum of 1\n\nFailed validating 'minimum' in schema['properties']['total']"
        );
        let e = validate(&json!({"total": 1, "x": 1}), &schema).unwrap_err();
        assert!(e.message.starts_with("Additional properties are not allowed ('x' was unexpected)"));
        assert_eq!(py_repr(&json!({"a": [1, null, "b"]})), "{'a': [1, None, 'b']}");
        assert!(is_uuid_like("8f1fb4e5-7bda-4d0c-8f4f-2f6e3b2e6a63"));
        assert!(is_uuid_like("8f1fb4e57bda4d0c8f4f2f6e3b2e6a63"));
        assert!(!is_uuid_like("foo"));
    }
}
