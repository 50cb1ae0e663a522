//! Short descriptions of values from outside, for messages an operator reads.

use serde_json::Value;

/// What a JSON value is: "null", "a list", "the number 3", "the string \"x\"".
pub fn json_value(value: &Value) -> String {
    match value {
        Value::Null => "null".to_string(),
        Value::Bool(b) => format!("the boolean {b}"),
        Value::Number(n) => format!("the number {n}"),
        Value::String(s) => format!("the string {s:?}"),
        Value::Array(_) => "a list".to_string(),
        Value::Object(_) => "an object".to_string(),
    }
}
