//! Outside text made fit for an error message or a log line.
//!
//! A cloud's error message and a user's input both end up in errors that
//! reach logs, API answers and terminals. Both are bounded and stripped of
//! control characters (a newline or an escape sequence in a role name must
//! not forge a log line or repaint a terminal) the same way in every
//! provider, so this lives here once.

/// The most characters of a cloud's error message kept ([`message`]).
pub const MESSAGE_CHARS: usize = 512;

/// The most characters of user input echoed back ([`input`]): enough for an
/// ARN, an Azure scope's tail or a GCP member, short enough for one line.
pub const INPUT_CHARS: usize = 96;

/// `s` without control characters, at most `max` characters of it, with
/// `...` appended when something was cut.
///
/// ```
/// use jit_core::provider::text::shorten;
/// assert_eq!(shorten("a\nb\u{1b}[2Jc", 10), "ab[2Jc");
/// assert_eq!(shorten("abcdef", 3), "abc...");
/// ```
pub fn shorten(s: &str, max: usize) -> String {
    let mut kept = s.chars().filter(|c| !c.is_control());
    let t: String = kept.by_ref().take(max).collect();
    if kept.next().is_some() {
        format!("{t}...")
    } else {
        t
    }
}

/// A cloud's error message, short and printable ([`MESSAGE_CHARS`]).
pub fn message(s: &str) -> String {
    shorten(s, MESSAGE_CHARS)
}

/// User input quoted in an error, short and printable ([`INPUT_CHARS`]).
pub fn input(s: &str) -> String {
    shorten(s, INPUT_CHARS)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn control_characters_go_and_length_is_bounded() {
        assert_eq!(message("a\r\nb"), "ab");
        let long = "x".repeat(MESSAGE_CHARS + 1);
        assert_eq!(message(&long).chars().count(), MESSAGE_CHARS + 3);
        assert!(message(&long).ends_with("..."));
        assert_eq!(
            message(&"x".repeat(MESSAGE_CHARS)),
            "x".repeat(MESSAGE_CHARS)
        );
        assert_eq!(input(&"é".repeat(200)).chars().count(), INPUT_CHARS + 3);
        // Control characters do not count towards the bound, nor trigger `...`.
        assert_eq!(shorten("ab\n", 2), "ab");
    }
}
