//! The result travels on the VM's second serial port between two marker lines, so that xtask
//! can tell a complete result from a truncated one (the VM may be killed at any time).

/// Line before the JSON.
pub const BEGIN: &str = "CTSCOPE-LAB-RESULT-BEGIN";
/// Line after the JSON.
pub const END: &str = "CTSCOPE-LAB-RESULT-END";

/// Frames one line of JSON (which must not contain a newline; `serde_json::to_string` never does).
pub fn frame(json_line: &str) -> String {
    format!("{BEGIN}\n{json_line}\n{END}\n")
}

/// Finds the JSON between the LAST complete pair of markers (a serial device may carry noise;
/// carriage returns from a tty are tolerated). `None` if there is no complete frame.
pub fn extract(text: &str) -> Option<&str> {
    let begin = text.rfind(BEGIN)?;
    let body = &text[begin + BEGIN.len()..];
    let end = body.find(END)?;
    let json = body[..end].trim_matches(|c| c == '\r' || c == '\n' || c == ' ');
    if json.is_empty() { None } else { Some(json) }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_truncation() {
        let framed = frame("{\"a\":1}");
        assert_eq!(extract(&framed), Some("{\"a\":1}"));
        let noisy = format!("boot noise\r\n{}", framed.replace('\n', "\r\n"));
        assert_eq!(extract(&noisy), Some("{\"a\":1}"));
        assert_eq!(extract(&framed[..framed.len() - 5]), None, "no END marker");
        assert_eq!(extract(&format!("{BEGIN}\n{END}\n")), None, "empty body");
    }
}
