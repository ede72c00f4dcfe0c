//! Lenient readings of JSON values: SGLang users write `"true"`, `1`, `"2.0"`
//! and `"16"` as often as the JSON-typed forms.

use serde_json::Value;

/// The longest rendering of a bad value kept in an error message.
const DESCRIBE_LIMIT: usize = 96;

/// Renders a value for an error message: JSON syntax (strings keep their
/// quotes), prefixed with its kind for lists and objects, shortened when long.
pub(crate) fn describe(value: &Value) -> String {
    let json = value.to_string();
    let json = if json.chars().count() > DESCRIBE_LIMIT {
        let cut: String = json.chars().take(DESCRIBE_LIMIT).collect();
        format!("{cut}...")
    } else {
        json
    };
    match value {
        Value::Array(_) => format!("a list {json}"),
        Value::Object(_) => format!("an object {json}"),
        _ => json,
    }
}

/// Reads a boolean written as text: `true`/`1`/`yes`/`on` and
/// `false`/`0`/`no`/`off`, any case, surrounding spaces ignored.
pub fn parse_bool_str(text: &str) -> Option<bool> {
    match text.trim().to_ascii_lowercase().as_str() {
        "true" | "1" | "yes" | "on" => Some(true),
        "false" | "0" | "no" | "off" => Some(false),
        _ => None,
    }
}

/// A boolean from a JSON bool, a string accepted by [`parse_bool_str`], or the
/// integers 0 and 1.
pub(crate) fn as_bool(value: &Value) -> Option<bool> {
    match value {
        Value::Bool(b) => Some(*b),
        Value::Number(n) => match n.as_u64() {
            Some(0) => Some(false),
            Some(1) => Some(true),
            _ => None,
        },
        Value::String(s) => parse_bool_str(s),
        _ => None,
    }
}

/// An integer from a JSON integer, a whole JSON float (`16.0`) or a string
/// holding either (`"16"`, `" 16 "`). Range checks are the caller's.
pub(crate) fn as_int(value: &Value) -> Option<i128> {
    match value {
        Value::Number(n) => {
            if let Some(i) = n.as_i64() {
                Some(i128::from(i))
            } else if let Some(u) = n.as_u64() {
                Some(i128::from(u))
            } else {
                n.as_f64().and_then(whole_float)
            }
        }
        Value::String(s) => {
            let s = s.trim();
            s.parse::<i128>()
                .ok()
                .or_else(|| s.parse::<f64>().ok().and_then(whole_float))
        }
        _ => None,
    }
}

/// `x` as an integer when it is finite, whole and within ±2^63.
fn whole_float(x: f64) -> Option<i128> {
    const LIMIT: f64 = 9_223_372_036_854_775_808.0; // 2^63
    (x.is_finite() && x.fract() == 0.0 && x.abs() < LIMIT).then_some(x as i128)
}

/// Seconds from a JSON number or a numeric string; a string may end in `s`
/// or `ms` (`"2.5"`, `"2.5s"`, `"500ms"`). Non-finite values are rejected;
/// range checks are the caller's.
pub(crate) fn as_seconds(value: &Value) -> Option<f64> {
    let seconds = match value {
        Value::Number(n) => n.as_f64()?,
        Value::String(s) => {
            let s = s.trim();
            if let Some(ms) = s.strip_suffix("ms") {
                ms.trim().parse::<f64>().ok()? / 1000.0
            } else {
                s.strip_suffix('s')
                    .unwrap_or(s)
                    .trim()
                    .parse::<f64>()
                    .ok()?
            }
        }
        _ => return None,
    };
    seconds.is_finite().then_some(seconds)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn bool_table() {
        let table = [
            (json!(true), Some(true)),
            (json!(false), Some(false)),
            (json!("true"), Some(true)),
            (json!("TRUE"), Some(true)),
            (json!("True"), Some(true)),
            (json!("1"), Some(true)),
            (json!("yes"), Some(true)),
            (json!("Yes"), Some(true)),
            (json!("on"), Some(true)),
            (json!(" ON "), Some(true)),
            (json!("false"), Some(false)),
            (json!("False"), Some(false)),
            (json!("0"), Some(false)),
            (json!("no"), Some(false)),
            (json!("NO"), Some(false)),
            (json!("off"), Some(false)),
            (json!(1), Some(true)),
            (json!(0), Some(false)),
            (json!(2), None),
            (json!(-1), None),
            (json!(1.0), None),
            (json!("maybe"), None),
            (json!("t"), None),
            (json!(""), None),
            (json!([true]), None),
            (json!({}), None),
        ];
        for (value, expected) in table {
            assert_eq!(as_bool(&value), expected, "as_bool({value})");
        }
    }

    #[test]
    fn int_table() {
        let table = [
            (json!(16), Some(16)),
            (json!(-3), Some(-3)),
            (json!(u64::MAX), Some(i128::from(u64::MAX))),
            (json!(16.0), Some(16)),
            (json!("16"), Some(16)),
            (json!(" 16 "), Some(16)),
            (json!("-1"), Some(-1)),
            (json!("2.0"), Some(2)),
            (json!(1.5), None),
            (json!("1.5"), None),
            (json!("sixteen"), None),
            (json!(""), None),
            (json!(true), None),
            (json!([1]), None),
            (json!(1e300), None),
        ];
        for (value, expected) in table {
            assert_eq!(as_int(&value), expected, "as_int({value})");
        }
    }

    #[test]
    fn seconds_table() {
        let table = [
            (json!(2), Some(2.0)),
            (json!(2.5), Some(2.5)),
            (json!(0), Some(0.0)),
            (json!("6"), Some(6.0)),
            (json!("6.0"), Some(6.0)),
            (json!("2.5s"), Some(2.5)),
            (json!("500ms"), Some(0.5)),
            (json!(" 500 ms "), Some(0.5)),
            (json!("-1"), Some(-1.0)),
            (json!("inf"), None),
            (json!("NaN"), None),
            (json!("2 minutes"), None),
            (json!(""), None),
            (json!(true), None),
            (json!([2]), None),
        ];
        for (value, expected) in table {
            assert_eq!(as_seconds(&value), expected, "as_seconds({value})");
        }
    }

    #[test]
    fn describe_quotes_strings_and_shortens() {
        assert_eq!(describe(&json!("rdmaa")), "\"rdmaa\"");
        assert_eq!(describe(&json!(5)), "5");
        assert_eq!(describe(&json!(["a"])), "a list [\"a\"]");
        assert_eq!(describe(&json!({"a": 1})), "an object {\"a\":1}");
        let long = describe(&json!("x".repeat(500)));
        assert!(long.len() < 120 && long.ends_with("..."), "{long}");
    }
}
