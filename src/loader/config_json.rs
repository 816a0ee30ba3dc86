//! Reading `config.json` as transformers writes it: bare `Infinity`/`NaN` literals, floats
//! wrapped as `{"__float__": "Infinity"}`, and typed deserialization whose errors name the field.

use std::path::Path;

use serde::de::DeserializeOwned;
use serde::{Deserialize, Deserializer};

use crate::error::{Error, Result};

/// Reads and parses a `config.json`, accepting the non-standard float literals Python emits.
pub fn read(path: &Path) -> Result<serde_json::Value> {
    let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
    parse(&text).map_err(|reason| Error::config("config.json", reason))
}

/// Parses config JSON text, quoting bare `Infinity`, `-Infinity` and `NaN` so serde can read them.
pub fn parse(text: &str) -> std::result::Result<serde_json::Value, String> {
    serde_json::from_str(&quote_non_finite(text)).map_err(|e| e.to_string())
}

/// Deserializes a parsed config into a typed struct; errors name the offending field.
pub fn typed<T: DeserializeOwned>(value: &serde_json::Value) -> Result<T> {
    serde_path_error(value)
}

fn serde_path_error<T: DeserializeOwned>(value: &serde_json::Value) -> Result<T> {
    T::deserialize(value).map_err(|e| {
        let msg = e.to_string();
        // serde's messages name the field for missing/unknown keys; for type errors find it.
        let field = find_bad_field::<T>(value).unwrap_or_else(|| "config.json".into());
        Error::config(field, msg)
    })
}

/// Finds the top-level key whose removal makes deserialization succeed (the bad field).
fn find_bad_field<T: DeserializeOwned>(value: &serde_json::Value) -> Option<String> {
    let obj = value.as_object()?;
    obj.keys().find_map(|key| {
        let mut trimmed = obj.clone();
        trimmed.remove(key);
        T::deserialize(&serde_json::Value::Object(trimmed))
            .is_ok()
            .then(|| key.clone())
    })
}

fn quote_non_finite(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut in_string = false;
    let mut escaped = false;
    let mut rest = text;
    while let Some(c) = rest.chars().next() {
        if in_string {
            out.push(c);
            if escaped {
                escaped = false;
            } else if c == '\\' {
                escaped = true;
            } else if c == '"' {
                in_string = false;
            }
            rest = &rest[c.len_utf8()..];
            continue;
        }
        if c == '"' {
            in_string = true;
            out.push(c);
            rest = &rest[1..];
            continue;
        }
        let literal = ["-Infinity", "Infinity", "NaN"]
            .into_iter()
            .find(|lit| rest.starts_with(lit));
        if let Some(lit) = literal {
            out.push('"');
            out.push_str(lit);
            out.push('"');
            rest = &rest[lit.len()..];
        } else {
            out.push(c);
            rest = &rest[c.len_utf8()..];
        }
    }
    out
}

/// Deserializes a float written as a number, `"Infinity"`, or `{"__float__": "Infinity"}`.
pub fn flexible_f64<'de, D: Deserializer<'de>>(d: D) -> std::result::Result<f64, D::Error> {
    let value = serde_json::Value::deserialize(d)?;
    float_from_value(&value)
        .ok_or_else(|| serde::de::Error::custom(format!("not a number: {value}")))
}

/// Interprets one JSON value as a float in any of the spellings transformers writes.
pub fn float_from_value(value: &serde_json::Value) -> Option<f64> {
    match value {
        serde_json::Value::Number(n) => n.as_f64(),
        serde_json::Value::String(s) => match s.as_str() {
            "Infinity" | "inf" => Some(f64::INFINITY),
            "-Infinity" | "-inf" => Some(f64::NEG_INFINITY),
            "NaN" | "nan" => Some(f64::NAN),
            other => other.parse().ok(),
        },
        serde_json::Value::Object(map) => map.get("__float__").and_then(float_from_value),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bare_infinity_is_accepted() {
        let v =
            parse(r#"{"a": [0.0, Infinity], "b": "Infinity in text", "c": -Infinity}"#).unwrap();
        assert_eq!(float_from_value(&v["a"][1]), Some(f64::INFINITY));
        assert_eq!(v["b"], "Infinity in text");
        assert_eq!(float_from_value(&v["c"]), Some(f64::NEG_INFINITY));
    }

    #[test]
    fn wrapped_float_is_accepted() {
        let v = parse(r#"{"a": {"__float__": "Infinity"}}"#).unwrap();
        assert_eq!(float_from_value(&v["a"]), Some(f64::INFINITY));
    }

    #[test]
    fn escaped_quotes_do_not_confuse_the_scanner() {
        let v = parse(r#"{"a": "x\"NaN", "b": NaN}"#).unwrap();
        assert_eq!(v["a"], "x\"NaN");
        assert!(float_from_value(&v["b"]).unwrap().is_nan());
    }
}
