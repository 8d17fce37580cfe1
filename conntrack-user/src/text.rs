//! Strings from outside (file names, namespace and process names, Docker
//! container names, fields of a report) made safe for a terminal and for the
//! comments of a persisted file.
//!
//! A name is whatever its owner chose: `ip netns add` takes any file name,
//! `/proc/PID/comm` is set by the process itself (`prctl(PR_SET_NAME)`), a
//! container name comes from whoever can talk to the Docker daemon. Printed
//! raw, an escape sequence in one rewrites the operator's terminal; written
//! raw into `/etc/sysctl.d` or `/etc/modprobe.d`, a newline adds lines that
//! run at boot (`install` in modprobe.d runs a command as root).

/// Longest name ctscope prints (in characters, before escaping grows it):
/// Docker names and `ip netns` names are far shorter in practice.
pub const MAX_NAME: usize = 128;

/// Characters that are not printed as themselves: controls (C0, DEL, C1),
/// the invisible format characters that reorder or hide text
/// (bidirectional overrides and isolates, the Arabic letter mark,
/// zero-width characters, BOM), and the line and paragraph separators that
/// some terminals and editors break lines at.
fn hidden(c: char) -> bool {
    c.is_control()
        || matches!(c,
            '\u{061C}'
            | '\u{200B}'..='\u{200F}'
            | '\u{2028}'..='\u{2029}'
            | '\u{202A}'..='\u{202E}'
            | '\u{2060}'..='\u{2069}'
            | '\u{FEFF}'
            | '\u{FFF9}'..='\u{FFFB}')
}

/// `s` with every hidden character written as an escape (`\x1b`,
/// `\u{202e}`) and a backslash doubled, so the result is one line of
/// printable text that still tells names apart; at most `max` characters of
/// `s` are kept, a cut marked with `...`.
pub fn escape(s: &str, max: usize) -> String {
    let mut out = String::with_capacity(s.len().min(max));
    for (i, c) in s.chars().enumerate() {
        if i == max {
            out.push_str("...");
            break;
        }
        match c {
            '\\' => out.push_str("\\\\"),
            c if hidden(c) && (c as u32) < 0x100 => out.push_str(&format!("\\x{:02x}", c as u32)),
            c if hidden(c) => out.push_str(&format!("\\u{{{:x}}}", c as u32)),
            c => out.push(c),
        }
    }
    out
}

/// A name read from the system, for printing: [`escape`] at [`MAX_NAME`].
pub fn name(s: &str) -> String {
    escape(s, MAX_NAME)
}

/// Whether `s` is already what [`name`] would make of it.
pub fn is_clean(s: &str) -> bool {
    s.chars().count() <= MAX_NAME && !s.chars().any(|c| c == '\\' || hidden(c))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn controls_and_invisible_characters_are_escaped() {
        assert_eq!(name("web-1"), "web-1");
        assert_eq!(name("a\x1b[2Jb"), "a\\x1b[2Jb");
        assert_eq!(name("x\ninstall y"), "x\\x0ainstall y");
        assert_eq!(name("r\u{202e}txt.exe"), "r\\u{202e}txt.exe");
        assert_eq!(name("\u{9b}31m"), "\\x9b31m");
        assert_eq!(
            name("a\\x0a"),
            "a\\\\x0a",
            "a literal escape stays distinct"
        );
        assert_eq!(name("héllo"), "héllo");
        assert_eq!(name("a\u{2028}b\u{61c}"), "a\\u{2028}b\\u{61c}");
        for s in ["a\x07", "\t", "\u{7f}", "\u{85}"] {
            assert!(!name(s).chars().any(char::is_control), "{s:?}");
        }
    }

    #[test]
    fn names_are_bounded() {
        let long = "n".repeat(10_000);
        assert_eq!(name(&long).chars().count(), MAX_NAME + 3);
        assert!(is_clean(&"n".repeat(MAX_NAME)));
        assert!(!is_clean(&long));
        assert!(!is_clean("a\rb"));
    }
}
