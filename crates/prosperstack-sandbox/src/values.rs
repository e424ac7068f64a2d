//! Property values: the type check an update applies to each value, and the `formatted_value` the
//! API shows beside it. In: a property's type (and format) and a JSON value; out: what to store (or
//! that the value is deleted), or what was expected. No coercion: `"5800"` is not a number, `"true"`
//! is not a boolean and a date-time is not a date, because the real API is at least this strict and
//! a relay must convert values before sending them.

use chrono::NaiveDate;
use serde_json::Value;

use super::property::{Format, Kind};

/// What an update does to one property of a subscriber.
#[derive(Clone, Debug, PartialEq)]
pub(crate) enum Change {
    Set(Value),
    Delete,
}

/// Checks `value` against a property of type `kind`. `null` and `""` delete, for every type (the
/// reference: "You can use an empty string or null value to delete a property").
/// The error is the expectation, to be put after `Invalid value for property "key": `.
pub(crate) fn check_value(kind: Kind, value: &Value) -> Result<Change, &'static str> {
    match value {
        Value::Null => return Ok(Change::Delete),
        Value::String(s) if s.is_empty() => return Ok(Change::Delete),
        _ => {}
    }
    let ok = match kind {
        Kind::Text => value.is_string(),
        Kind::Number => value.is_number(),
        Kind::Boolean => value.is_boolean(),
        Kind::Date => value.as_str().is_some_and(is_calendar_date),
    };
    if ok {
        Ok(Change::Set(value.clone()))
    } else {
        Err(expectation(kind))
    }
}

fn expectation(kind: Kind) -> &'static str {
    match kind {
        Kind::Text => "expected a string",
        Kind::Number => "expected a number",
        Kind::Boolean => "expected true or false",
        Kind::Date => "expected a date as YYYY-MM-DD",
    }
}

/// True for exactly `YYYY-MM-DD` naming a real day. Checked by shape first because chrono's parser
/// also accepts one-digit months and days, and signed or longer years.
fn is_calendar_date(s: &str) -> bool {
    let bytes = s.as_bytes();
    let shape_ok = bytes.len() == 10
        && bytes.iter().enumerate().all(|(i, b)| match i {
            4 | 7 => *b == b'-',
            _ => b.is_ascii_digit(),
        });
    shape_ok && NaiveDate::parse_from_str(s, "%Y-%m-%d").is_ok()
}

/// The display form of a stored value: grouped digits for number format ("5,800"), dollars for
/// currency ("$1,234.50"), "True"/"False" for booleans, the text itself otherwise.
pub(crate) fn formatted_value(kind: Kind, format: Option<Format>, value: &Value) -> String {
    match (kind, value) {
        (Kind::Boolean, Value::Bool(true)) => "True".to_string(),
        (Kind::Boolean, Value::Bool(false)) => "False".to_string(),
        (Kind::Number, Value::Number(n)) => match format {
            Some(Format::Number) => group_thousands(&n.to_string()),
            Some(Format::Currency) => currency(n.as_f64().unwrap_or_default()),
            None => n.to_string(),
        },
        (_, Value::String(s)) => s.clone(),
        (_, other) => other.to_string(),
    }
}

fn currency(amount: f64) -> String {
    let sign = if amount < 0.0 { "-" } else { "" };
    format!(
        "{sign}${}",
        group_thousands(&format!("{:.2}", amount.abs()))
    )
}

/// Puts commas between groups of three digits in the integer part of a plain decimal number.
/// Anything else (exponent notation) is returned as it is rather than mangled.
fn group_thousands(number: &str) -> String {
    let (sign, unsigned) = match number.strip_prefix('-') {
        Some(rest) => ("-", rest),
        None => ("", number),
    };
    let (integer, fraction) = match unsigned.split_once('.') {
        Some((i, f)) => (i, Some(f)),
        None => (unsigned, None),
    };
    if integer.is_empty() || !integer.bytes().all(|b| b.is_ascii_digit()) {
        return number.to_string();
    }
    let mut grouped = String::with_capacity(number.len() + integer.len() / 3);
    for (i, digit) in integer.chars().enumerate() {
        if i > 0 && (integer.len() - i) % 3 == 0 {
            grouped.push(',');
        }
        grouped.push(digit);
    }
    match fraction {
        Some(f) => format!("{sign}{grouped}.{f}"),
        None => format!("{sign}{grouped}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    /// Dates must be real calendar days in exactly YYYY-MM-DD.
    #[test]
    fn calendar_dates() {
        for good in ["2021-05-04", "2024-02-29", "1999-12-31"] {
            assert!(is_calendar_date(good), "{good}");
        }
        for bad in [
            "2021-02-30",
            "2023-02-29",
            "2021-5-4",
            "2021-05-04T10:00:00Z",
            "+2021-05-04",
            "20210504",
            "2021/05/04",
            "",
        ] {
            assert!(!is_calendar_date(bad), "{bad}");
        }
    }

    /// Each type accepts only its own JSON type; null and "" delete whatever the type.
    #[test]
    fn type_checks() {
        assert_eq!(
            check_value(Kind::Number, &json!(5800)),
            Ok(Change::Set(json!(5800)))
        );
        assert!(check_value(Kind::Number, &json!("5800")).is_err());
        assert!(check_value(Kind::Boolean, &json!("true")).is_err());
        assert!(check_value(Kind::Boolean, &json!(1)).is_err());
        assert!(check_value(Kind::Text, &json!(5)).is_err());
        assert!(check_value(Kind::Text, &json!(["a"])).is_err());
        assert!(check_value(Kind::Date, &json!("2021-05-04T00:00:00Z")).is_err());
        for kind in [Kind::Text, Kind::Number, Kind::Boolean, Kind::Date] {
            assert_eq!(check_value(kind, &json!(null)), Ok(Change::Delete));
            assert_eq!(check_value(kind, &json!("")), Ok(Change::Delete));
        }
    }

    /// Display forms match the reference's sample ("5,800") and group long and negative numbers.
    #[test]
    fn formatting() {
        let number = Some(Format::Number);
        assert_eq!(formatted_value(Kind::Number, number, &json!(5800)), "5,800");
        assert_eq!(formatted_value(Kind::Number, number, &json!(999)), "999");
        assert_eq!(
            formatted_value(Kind::Number, number, &json!(-1234567.25)),
            "-1,234,567.25"
        );
        assert_eq!(formatted_value(Kind::Number, None, &json!(5800)), "5800");
        assert_eq!(
            formatted_value(Kind::Number, Some(Format::Currency), &json!(1234.5)),
            "$1,234.50"
        );
        assert_eq!(formatted_value(Kind::Boolean, None, &json!(true)), "True");
        assert_eq!(formatted_value(Kind::Boolean, None, &json!(false)), "False");
        assert_eq!(
            formatted_value(Kind::Date, None, &json!("2021-05-04")),
            "2021-05-04"
        );
    }
}
