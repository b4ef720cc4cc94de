//! Turns prost-reflect's text-format errors into one-line messages that say where (line and
//! column), in which message and field, and what the closest valid name is.

use miette::Diagnostic;
use prost_reflect::text_format::ParseError;
use prost_reflect::{EnumDescriptor, FieldDescriptor, Kind, MessageDescriptor};

use crate::text::descriptor_pool;

/// A parse error located in the text: 1-based line and column, and the message.
pub(crate) struct Located {
    pub line: usize,
    pub column: usize,
    pub message: String,
}

/// Locates and explains `err`, raised while parsing `text` as `root`.
pub(crate) fn locate(err: &ParseError, text: &str, root: &MessageDescriptor) -> Located {
    // ParseError exposes its byte span only through miette's Diagnostic labels.
    let span = err
        .labels()
        .and_then(|mut labels| labels.next())
        .map(|label| (label.offset(), label.len()));
    // No span: the input ended early, so point at its end.
    let offset = span.map_or(text.len(), |(start, _)| start.min(text.len()));
    let found = span
        .and_then(|(start, len)| text.get(start..start + len))
        .map(one_line);
    let context = Context::scan(text, offset, root);
    let message = describe(err, &err.to_string(), found.as_deref(), &context);
    let (line, column) = line_col(text, offset);
    Located {
        line,
        column,
        message,
    }
}

/// Rewrites the parser's message with the field and message it concerns, and a suggestion.
/// The parser's error kinds are private, so they are told apart by their (pinned) wording.
fn describe(err: &ParseError, raw: &str, found: Option<&str>, ctx: &Context) -> String {
    let message = ctx.message();
    let message_name = message.map_or("the message", |m| m.full_name());

    if let Some((_, named)) = raw.split_once("' not found for message '") {
        let name = found.unwrap_or("?");
        let named = named.trim_end_matches('\'');
        let message = message
            .cloned()
            .or_else(|| descriptor_pool().get_message_by_name(named));
        let hint = message
            .as_ref()
            .map(|m| unknown_field_hint(name, m))
            .unwrap_or_default();
        return format!("no field `{name}` in {named}{hint}");
    }

    if raw.starts_with("value '") && raw.contains("' was not found for enum '") {
        let value = found.unwrap_or("?");
        let field = ctx.pending.as_ref();
        if let Some(Kind::Enum(enumeration)) = field.map(|f| f.kind()) {
            let target = field_label(field, message_name);
            return format!(
                "no value `{value}` in enum {} (for {target}){}",
                enumeration.full_name(),
                enum_hint(value, &enumeration)
            );
        }
        return raw.to_owned();
    }

    if raw.ends_with("is already set") {
        if let Some(field) = &ctx.pending {
            return format!(
                "`{}` is set twice in {message_name}; it is not a repeated field",
                field.name()
            );
        }
        return raw.to_owned();
    }

    if raw.contains("reached end of input") {
        if let Some((field, at)) = ctx.innermost_open() {
            return format!("{raw}: the `{{` of `{field}` at {at} is never closed");
        }
        return raw.to_owned();
    }

    // A bad value: say which field wanted what.
    if let (Some(field), true) = (&ctx.pending, ctx.after_colon) {
        let target = field_label(Some(field), message_name);
        let expects = expected_value(field);
        let found = found.unwrap_or("nothing");
        let mut text = format!("{target} expects {expects}, but found `{found}`");
        if raw.contains("out of range") {
            text = format!("{target}: {raw}");
            if let Some(help) = err.help() {
                text.push_str(&format!(" ({help})"));
            }
        } else if field.kind() == Kind::String && found.starts_with(char::is_alphabetic) {
            text.push_str(&format!(" (strings need quotes: \"{found}\")"));
        }
        return text;
    }

    raw.to_owned()
}

/// "`num_output` in caffe.ConvolutionParameter".
fn field_label(field: Option<&FieldDescriptor>, message_name: &str) -> String {
    match field {
        Some(field) => format!("`{}` in {message_name}", field.name()),
        None => format!("a field of {message_name}"),
    }
}

/// What a field's value should look like, in words.
fn expected_value(field: &FieldDescriptor) -> String {
    match field.kind() {
        Kind::Float | Kind::Double => "a number".to_owned(),
        Kind::Int32 | Kind::Sint32 | Kind::Sfixed32 => "an integer (int32)".to_owned(),
        Kind::Int64 | Kind::Sint64 | Kind::Sfixed64 => "an integer (int64)".to_owned(),
        Kind::Uint32 | Kind::Fixed32 => "a non-negative integer (uint32)".to_owned(),
        Kind::Uint64 | Kind::Fixed64 => "a non-negative integer (uint64)".to_owned(),
        Kind::Bool => "true or false".to_owned(),
        Kind::String | Kind::Bytes => "a quoted string".to_owned(),
        Kind::Message(m) => format!("a {{ ... }} block ({})", m.full_name()),
        Kind::Enum(e) => format!("one of {}", value_list(&e)),
    }
}

fn value_list(enumeration: &EnumDescriptor) -> String {
    let names: Vec<String> = enumeration.values().map(|v| v.name().to_owned()).collect();
    names.join(", ")
}

fn unknown_field_hint(name: &str, message: &MessageDescriptor) -> String {
    // Layer settings that moved from V1 `layers` into `param { ... }`.
    if message.full_name() == "caffe.LayerParameter" {
        match name {
            "blobs_lr" => return "; V1's `blobs_lr` is `param { lr_mult: ... }` here".to_owned(),
            "weight_decay" => {
                return "; V1's `weight_decay` is `param { decay_mult: ... }` here".to_owned()
            }
            _ => {}
        }
    }
    let names: Vec<String> = message.fields().map(|f| f.name().to_owned()).collect();
    if let Some(best) = closest(name, names.iter().map(String::as_str)) {
        return format!("; did you mean `{best}`?");
    }
    // A setting written one level too high, e.g. `num_output` directly inside `layer { }`.
    let homes: Vec<String> = message
        .fields()
        .filter(|f| match f.kind() {
            Kind::Message(inner) => inner.get_field_by_name(name).is_some(),
            _ => false,
        })
        .map(|f| format!("`{}`", f.name()))
        .collect();
    if !homes.is_empty() {
        let shown = homes.iter().take(4).cloned().collect::<Vec<_>>().join(", ");
        let more = if homes.len() > 4 { ", ..." } else { "" };
        return format!("; `{name}` belongs inside a block such as {shown}{more}");
    }
    String::new()
}

fn enum_hint(value: &str, enumeration: &EnumDescriptor) -> String {
    let names: Vec<String> = enumeration.values().map(|v| v.name().to_owned()).collect();
    match closest(value, names.iter().map(String::as_str)) {
        Some(best) => format!("; did you mean `{best}`?"),
        None => format!("; expected one of {}", names.join(", ")),
    }
}

/// The candidate closest to `wrong` (ignoring case), if it is close enough to be a typo.
fn closest<'a>(wrong: &str, candidates: impl IntoIterator<Item = &'a str>) -> Option<&'a str> {
    let wrong = wrong.to_ascii_lowercase();
    candidates
        .into_iter()
        .map(|candidate| {
            let distance = strsim::damerau_levenshtein(&wrong, &candidate.to_ascii_lowercase());
            (distance, candidate)
        })
        .filter(|&(distance, candidate)| {
            let longest = wrong.chars().count().max(candidate.chars().count());
            distance
                <= match longest {
                    0..=4 => 1,
                    5..=8 => 2,
                    _ => 3,
                }
        })
        .min_by_key(|&(distance, _)| distance)
        .map(|(_, candidate)| candidate)
}

/// 1-based line and column (in characters) of a byte offset.
fn line_col(text: &str, offset: usize) -> (usize, usize) {
    let mut offset = offset.min(text.len());
    while !text.is_char_boundary(offset) {
        offset -= 1;
    }
    let before = &text[..offset];
    let line = before.matches('\n').count() + 1;
    let line_start = before.rfind('\n').map_or(0, |i| i + 1);
    (line, before[line_start..].chars().count() + 1)
}

/// The first line of a token, shortened, for quoting inside a one-line message.
fn one_line(token: &str) -> String {
    let first = token.lines().next().unwrap_or("");
    let mut short: String = first.chars().take(40).collect();
    if short.len() < token.len() {
        short.push_str("...");
    }
    short
}

/// Where in the message tree a byte offset lies, recovered by a light scan of the text that
/// parsed successfully before the error.
struct Context {
    /// Open messages, outermost first.
    frames: Vec<Frame>,
    /// The field whose value comes next (or is being listed).
    pending: Option<FieldDescriptor>,
    /// A `:` followed the pending field's name.
    after_colon: bool,
    /// A name did not resolve, so the scan stopped knowing where it is.
    lost: bool,
}

struct Frame {
    message: MessageDescriptor,
    /// The field and line:col of the `{` that opened this message (none for the root).
    opened_by: Option<(String, String)>,
    /// The repeated field whose `[ ... ]` list is open in this message.
    list: Option<FieldDescriptor>,
}

impl Context {
    fn scan(text: &str, end: usize, root: &MessageDescriptor) -> Context {
        let mut ctx = Context {
            frames: vec![Frame {
                message: root.clone(),
                opened_by: None,
                list: None,
            }],
            pending: None,
            after_colon: false,
            lost: false,
        };
        let bytes = text.as_bytes();
        let end = end.min(bytes.len());
        let mut i = 0;
        while i < end && !ctx.lost {
            let c = bytes[i];
            match c {
                b'#' => {
                    while i < end && bytes[i] != b'\n' {
                        i += 1;
                    }
                }
                b'"' | b'\'' => {
                    i += 1;
                    while i < end && bytes[i] != c && bytes[i] != b'\n' {
                        i += if bytes[i] == b'\\' { 2 } else { 1 };
                    }
                    i += 1;
                    ctx.value_done();
                }
                b'{' | b'<' => {
                    // Inside `field: [ {...}, {...} ]` each block belongs to the listed field.
                    let field = ctx.pending.take().or_else(|| ctx.top().list.clone());
                    match field.map(|f| (f.kind(), f)) {
                        Some((Kind::Message(message), field)) => {
                            let (line, column) = line_col(text, i);
                            ctx.frames.push(Frame {
                                message,
                                opened_by: Some((
                                    field.name().to_owned(),
                                    format!("{line}:{column}"),
                                )),
                                list: None,
                            });
                        }
                        _ => ctx.lost = true,
                    }
                    ctx.after_colon = false;
                    i += 1;
                }
                b'}' | b'>' => {
                    if ctx.frames.len() > 1 {
                        ctx.frames.pop();
                    }
                    ctx.pending = None;
                    ctx.after_colon = false;
                    i += 1;
                }
                b'[' => {
                    let listed = ctx.pending.clone();
                    ctx.top_mut().list = listed;
                    i += 1;
                }
                b']' => {
                    ctx.top_mut().list = None;
                    ctx.pending = None;
                    ctx.after_colon = false;
                    i += 1;
                }
                b':' => {
                    ctx.after_colon = ctx.pending.is_some();
                    i += 1;
                }
                c if c.is_ascii_alphabetic() || c == b'_' => {
                    let start = i;
                    while i < end && (bytes[i].is_ascii_alphanumeric() || bytes[i] == b'_') {
                        i += 1;
                    }
                    if ctx.pending.is_some() && ctx.after_colon {
                        ctx.value_done();
                    } else {
                        ctx.pending = ctx.top().message.get_field_by_name(&text[start..i]);
                        ctx.after_colon = false;
                        ctx.lost = ctx.pending.is_none();
                    }
                }
                c if c.is_ascii_digit() || c == b'.' => {
                    while i < end
                        && (bytes[i].is_ascii_alphanumeric()
                            || bytes[i] == b'.'
                            || (matches!(bytes[i], b'+' | b'-')
                                && matches!(bytes[i - 1], b'e' | b'E')))
                    {
                        i += 1;
                    }
                    ctx.value_done();
                }
                _ => i += 1,
            }
        }
        ctx
    }

    fn top(&self) -> &Frame {
        &self.frames[self.frames.len() - 1]
    }

    fn top_mut(&mut self) -> &mut Frame {
        let last = self.frames.len() - 1;
        &mut self.frames[last]
    }

    /// A scalar value was read; inside a list the field stays pending for the next one.
    fn value_done(&mut self) {
        if self.top().list.is_none() {
            self.pending = None;
            self.after_colon = false;
        }
    }

    /// The message the offset lies in, if the scan could follow the text.
    fn message(&self) -> Option<&MessageDescriptor> {
        (!self.lost).then(|| &self.top().message)
    }

    /// The field name and position of the innermost `{` still open.
    fn innermost_open(&self) -> Option<(&str, &str)> {
        if self.lost {
            return None;
        }
        self.top()
            .opened_by
            .as_ref()
            .map(|(field, at)| (field.as_str(), at.as_str()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn line_col_counts_characters_from_one() {
        let text = "ab\ncdé f\n";
        assert_eq!(line_col(text, 0), (1, 1));
        assert_eq!(line_col(text, 3), (2, 1));
        assert_eq!(line_col(text, "ab\ncdé ".len()), (2, 5));
        assert_eq!(line_col(text, text.len()), (3, 1));
    }

    #[test]
    fn closest_accepts_typos_and_rejects_strangers() {
        let names = ["num_output", "bias_term", "pad", "kernel_size", "stride"];
        assert_eq!(closest("num_ouput", names), Some("num_output"));
        assert_eq!(closest("Kernel_Size", names), Some("kernel_size"));
        assert_eq!(closest("strde", names), Some("stride"));
        assert_eq!(closest("weight_filler", names), None);
        assert_eq!(closest("xyz", names), None);
    }
}
