//! Peer-chosen text made safe to show: quoted, control, bidirectional and invisible characters
//! escaped, cut to a length.

/// Peer-supplied text made safe for a one-line message or a terminal: quoted, every control
/// character (escape sequences included), bidirectional control (U+202E...), invisible
/// character and space other than U+0020 escaped as `\u{..}`, cut at `max_chars` characters
/// (then `…`). A `'` stays as it is; a `"` and a `\` are escaped.
pub fn escape_text(text: &str, max_chars: usize) -> String {
    let mut shown = String::new();
    for c in text.chars().take(max_chars) {
        push_escaped(&mut shown, c);
    }
    if text.chars().nth(max_chars).is_some() {
        shown.push('…');
    }
    format!("\"{shown}\"")
}

/// `text` as it is when no character of it needs escaping; else [`escape_text`] of all of it
/// (quoted): for a name shown where it would otherwise appear bare (`stored NAME`).
pub fn escape_if_needed(text: &str) -> std::borrow::Cow<'_, str> {
    if text
        .chars()
        .all(|c| !needs_escape(c) && c != '"' && c != '\\')
    {
        std::borrow::Cow::Borrowed(text)
    } else {
        std::borrow::Cow::Owned(escape_text(text, usize::MAX))
    }
}

/// Characters that show as nothing (or as something else) without being control characters:
/// the Hangul fillers and the Braille blank.
const INVISIBLE: [char; 5] = ['\u{115F}', '\u{1160}', '\u{3164}', '\u{FFA0}', '\u{2800}'];

/// Whether `c` cannot be shown as itself: a control or format character (bidirectional ones
/// included, as `char::escape_debug` finds them), an invisible one, or a space other than U+0020.
fn needs_escape(c: char) -> bool {
    c != ' '
        && c != '\''
        && c != '"'
        && c != '\\'
        && (c.is_whitespace() || INVISIBLE.contains(&c) || c.escape_debug().nth(1).is_some())
}

fn push_escaped(out: &mut String, c: char) {
    match c {
        '\'' => out.push(c),
        c if c.escape_debug().nth(1).is_some() => out.extend(c.escape_debug()),
        c if needs_escape(c) => out.push_str(&format!("\\u{{{:x}}}", u32::from(c))),
        c => out.push(c),
    }
}
