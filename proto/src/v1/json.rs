//! `google.protobuf.Struct` <-> `serde_json`, and taking typed fields out of a JSON
//! object so that what is left over can travel in an `extra` Struct.

use prost_types::value::Kind;
use prost_types::{ListValue, Struct, Value as PValue};
use serde_json::{Map, Number, Value};

/// Largest integer a double holds exactly (2^53).
const EXACT_INT: f64 = 9_007_199_254_740_992.0;

pub fn to_json(value: PValue) -> Value {
    match value.kind {
        None | Some(Kind::NullValue(_)) => Value::Null,
        Some(Kind::BoolValue(b)) => Value::Bool(b),
        Some(Kind::StringValue(s)) => Value::String(s),
        Some(Kind::NumberValue(n)) => number(n),
        Some(Kind::StructValue(s)) => Value::Object(struct_to_map(s)),
        Some(Kind::ListValue(l)) => Value::Array(l.values.into_iter().map(to_json).collect()),
    }
}

/// A whole double becomes a JSON integer: a node that reads `seed` or `max_tokens`
/// as an integer rejects `42.0`.
fn number(n: f64) -> Value {
    if n.is_finite() && n.fract() == 0.0 && n.abs() <= EXACT_INT {
        // In range and whole, so the cast is exact.
        #[allow(clippy::cast_possible_truncation)]
        return Value::Number(Number::from(n as i64));
    }
    Number::from_f64(n).map_or(Value::Null, Value::Number)
}

pub fn from_json(value: Value) -> PValue {
    let kind = match value {
        Value::Null => Kind::NullValue(0),
        Value::Bool(b) => Kind::BoolValue(b),
        Value::Number(n) => Kind::NumberValue(n.as_f64().unwrap_or_default()),
        Value::String(s) => Kind::StringValue(s),
        Value::Array(a) => Kind::ListValue(ListValue {
            values: a.into_iter().map(from_json).collect(),
        }),
        Value::Object(o) => Kind::StructValue(map_to_struct(o)),
    };
    PValue { kind: Some(kind) }
}

pub fn struct_to_map(s: Struct) -> Map<String, Value> {
    s.fields.into_iter().map(|(k, v)| (k, to_json(v))).collect()
}

pub fn map_to_struct(m: Map<String, Value>) -> Struct {
    Struct {
        fields: m.into_iter().map(|(k, v)| (k, from_json(v))).collect(),
    }
}

/// What is left of a JSON object after its typed fields were taken: `None` when empty,
/// so a message without extras stays small on the wire.
pub fn rest(m: Map<String, Value>) -> Option<Struct> {
    (!m.is_empty()).then(|| map_to_struct(m))
}

/// The object an `extra` Struct holds, to start a request's JSON from (typed fields
/// are inserted after, so they win on a clash).
pub fn base(extra: Option<Struct>) -> Map<String, Value> {
    extra.map(struct_to_map).unwrap_or_default()
}

/// Takes `key` out of `m` only if it has the expected type; otherwise it stays (and so
/// ends up in `extra`), so an unexpected shape is carried, never dropped or fatal.
pub fn take<T>(
    m: &mut Map<String, Value>,
    key: &str,
    f: impl FnOnce(&Value) -> Option<T>,
) -> Option<T> {
    let value = f(m.get(key)?)?;
    m.remove(key);
    Some(value)
}

pub fn take_string(m: &mut Map<String, Value>, key: &str) -> Option<String> {
    match m.get(key) {
        Some(Value::String(_)) => match m.remove(key) {
            Some(Value::String(s)) => Some(s),
            _ => None,
        },
        _ => None,
    }
}

/// A string, or `null` (taken as absent, e.g. `finish_reason: null`).
pub fn take_opt_string(m: &mut Map<String, Value>, key: &str) -> Option<String> {
    if m.get(key).is_some_and(Value::is_null) {
        m.remove(key);
        return None;
    }
    take_string(m, key)
}

pub fn take_i64(m: &mut Map<String, Value>, key: &str) -> i64 {
    take(m, key, Value::as_i64).unwrap_or_default()
}

pub fn take_u32(m: &mut Map<String, Value>, key: &str) -> u32 {
    take(m, key, |v| {
        v.as_u64().map(|n| u32::try_from(n).unwrap_or(u32::MAX))
    })
    .unwrap_or_default()
}

pub fn take_object(m: &mut Map<String, Value>, key: &str) -> Option<Map<String, Value>> {
    match m.get(key) {
        Some(Value::Object(_)) => match m.remove(key) {
            Some(Value::Object(o)) => Some(o),
            _ => None,
        },
        _ => None,
    }
}

pub fn take_array(m: &mut Map<String, Value>, key: &str) -> Option<Vec<Value>> {
    match m.get(key) {
        Some(Value::Array(_)) => match m.remove(key) {
            Some(Value::Array(a)) => Some(a),
            _ => None,
        },
        _ => None,
    }
}

pub fn put<T: Into<Value>>(m: &mut Map<String, Value>, key: &str, value: Option<T>) {
    if let Some(value) = value {
        m.insert(key.to_owned(), value.into());
    }
}

/// A repeated string field as OpenAI takes it: one is a string, several an array,
/// none leaves whatever `extra` put there.
pub fn put_one_or_many(m: &mut Map<String, Value>, key: &str, mut values: Vec<String>) {
    match values.len() {
        0 => {}
        1 => {
            m.insert(key.to_owned(), Value::String(values.remove(0)));
        }
        _ => {
            m.insert(key.to_owned(), Value::from(values));
        }
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn json_round_trips_through_struct() {
        let v = json!({"a": [1, 2.5, "x", null, true], "b": {"c": {}}, "big": 1e300});
        let Value::Object(m) = v.clone() else {
            unreachable!()
        };
        assert_eq!(Value::Object(struct_to_map(map_to_struct(m))), v);
    }

    #[test]
    fn whole_doubles_become_integers() {
        assert_eq!(number(42.0).to_string(), "42");
        assert_eq!(number(-3.0).to_string(), "-3");
        assert_eq!(number(0.5).to_string(), "0.5");
        assert_eq!(number(f64::NAN), Value::Null);
    }

    #[test]
    fn take_leaves_unexpected_types_in_place() {
        let Value::Object(mut m) = json!({"id": 7, "created": "soon", "model": "m"}) else {
            unreachable!()
        };
        assert_eq!(take_string(&mut m, "id"), None);
        assert_eq!(take_i64(&mut m, "created"), 0);
        assert_eq!(take_string(&mut m, "model").as_deref(), Some("m"));
        assert_eq!(Value::Object(m), json!({"id": 7, "created": "soon"}));
    }
}
