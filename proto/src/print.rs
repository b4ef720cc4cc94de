//! Prototxt output in the layout Caffe's C++ printer uses.
//!
//! prost-reflect's own pretty printer writes repeated fields in list form (`layer: [{ ... }]`,
//! `pad: [1, 2]`). That is valid text format, but it is not what Caffe writes, and older
//! protobuf parsers (which many Caffe builds link) reject lists of messages. So: fields in
//! field-number order, one `name: value` line per element, one `name { ... }` block per message.

use std::fmt::{Display, LowerExp};

use prost_reflect::{DynamicMessage, FieldDescriptor, Kind, Value};

/// The prototxt text of `message`, ending in a newline unless empty.
pub(crate) fn to_prototxt(message: &DynamicMessage) -> String {
    let mut out = String::new();
    fields(message, 0, &mut out);
    out
}

fn fields(message: &DynamicMessage, depth: usize, out: &mut String) {
    let mut set: Vec<(FieldDescriptor, &Value)> = message.fields().collect();
    set.sort_by_key(|(field, _)| field.number());
    for (field, value) in set {
        match value {
            Value::List(items) => items
                .iter()
                .for_each(|item| field_line(&field, item, depth, out)),
            _ => field_line(&field, value, depth, out),
        }
    }
}

fn field_line(field: &FieldDescriptor, value: &Value, depth: usize, out: &mut String) {
    out.push_str(&"  ".repeat(depth));
    out.push_str(field.name());
    match value {
        Value::Message(inner) => {
            out.push_str(" {\n");
            fields(inner, depth + 1, out);
            out.push_str(&"  ".repeat(depth));
            out.push_str("}\n");
        }
        _ => {
            out.push_str(": ");
            scalar(field, value, out);
            out.push('\n');
        }
    }
}

fn scalar(field: &FieldDescriptor, value: &Value, out: &mut String) {
    let text = match value {
        Value::Bool(v) => v.to_string(),
        Value::I32(v) => v.to_string(),
        Value::I64(v) => v.to_string(),
        Value::U32(v) => v.to_string(),
        Value::U64(v) => v.to_string(),
        Value::F32(v) => float(*v, f64::from(*v)),
        Value::F64(v) => float(*v, *v),
        Value::String(s) => quoted(s.as_bytes(), false),
        Value::Bytes(b) => quoted(b, true),
        Value::EnumNumber(n) => match field.kind() {
            Kind::Enum(e) => e
                .get_value(*n)
                .map_or(n.to_string(), |v| v.name().to_owned()),
            _ => n.to_string(),
        },
        // caffe.proto has no maps, and lists and messages are handled by the caller.
        Value::Map(_) | Value::List(_) | Value::Message(_) => String::new(),
    };
    out.push_str(&text);
}

/// Shortest text that reads back to the same value; exponent form for very small or large
/// magnitudes, as C++ `%g` does, instead of a long run of zeros.
fn float<T: Display + LowerExp>(value: T, wide: f64) -> String {
    if wide.is_nan() {
        "nan".to_owned()
    } else if wide.is_infinite() {
        if wide > 0.0 { "inf" } else { "-inf" }.to_owned()
    } else if wide != 0.0 && !(1e-4..1e16).contains(&wide.abs()) {
        format!("{value:e}")
    } else {
        format!("{value}")
    }
}

/// A double-quoted literal. Strings keep their UTF-8 readable; bytes escape all non-ASCII.
fn quoted(bytes: &[u8], escape_non_ascii: bool) -> String {
    let mut out = String::from("\"");
    let mut plain_start = 0;
    let flush = |out: &mut String, from: usize, to: usize| {
        // Runs of unescaped bytes are whole UTF-8 sequences for strings (only ASCII bytes
        // are ever escaped there), so the lossy conversion never replaces anything.
        out.push_str(&String::from_utf8_lossy(&bytes[from..to]));
    };
    for (i, &b) in bytes.iter().enumerate() {
        let escape = match b {
            b'"' => Some("\\\"".to_owned()),
            b'\\' => Some("\\\\".to_owned()),
            b'\n' => Some("\\n".to_owned()),
            b'\r' => Some("\\r".to_owned()),
            b'\t' => Some("\\t".to_owned()),
            0..=0x1f | 0x7f => Some(format!("\\{b:03o}")),
            0x80.. if escape_non_ascii => Some(format!("\\{b:03o}")),
            _ => None,
        };
        if let Some(escape) = escape {
            flush(&mut out, plain_start, i);
            out.push_str(&escape);
            plain_start = i + 1;
        }
    }
    flush(&mut out, plain_start, bytes.len());
    out.push('"');
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn floats_are_short_and_round_trip() {
        assert_eq!(float(0.001f32, 0.001f32 as f64), "0.001");
        assert_eq!(float(1.0f32, 1.0), "1");
        assert_eq!(float(-0.5f32, -0.5), "-0.5");
        assert_eq!(float(1e-8f32, 1e-8f32 as f64), "1e-8");
        assert_eq!(float(0.0f32, 0.0), "0");
        assert_eq!(float(f32::NEG_INFINITY, f64::NEG_INFINITY), "-inf");
        assert_eq!(float(0.1f32, 0.1f32 as f64), "0.1");
    }

    #[test]
    fn strings_escape_only_what_they_must() {
        assert_eq!(quoted(b"plain/path.lmdb", false), "\"plain/path.lmdb\"");
        assert_eq!(
            quoted("a\"b\\c\nd".as_bytes(), false),
            "\"a\\\"b\\\\c\\nd\""
        );
        assert_eq!(quoted("größe".as_bytes(), false), "\"größe\"");
        assert_eq!(quoted(&[0x00, 0xff, b'a'], true), "\"\\000\\377a\"");
    }
}
