//! What running commands through the node's login shell takes: quoting (for the few
//! fixed arguments that go into a command line), and a marker. The shell's rc files
//! may print anything before our command runs (a banner, a `HTTP/1.1 500` even):
//! every exec command first prints a random marker line, and everything up to it is
//! discarded.

/// Most bytes the login shell may print before our marker.
pub(super) const MAX_NOISE: usize = 1 << 20;

/// A fresh marker: unguessable, so no rc file prints it by accident.
pub(super) fn marker() -> String {
    format!("MESHGATE-{:032x}", fastrand::u128(..))
}

/// Where the output after the marker line starts, if the marker line is complete.
pub(super) fn find_marker(buf: &[u8], marker: &[u8]) -> Option<usize> {
    let at = buf.windows(marker.len()).position(|w| w == marker)?;
    let after = at + marker.len();
    match buf.get(after) {
        Some(b'\n') => Some(after + 1),
        Some(b'\r') if buf.get(after + 1) == Some(&b'\n') => Some(after + 2),
        Some(_) => Some(after),
        None => None,
    }
}

/// POSIX shell single-quoting: safe for any bytes but NUL.
pub fn shell_quote(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('\'');
    for c in s.chars() {
        if c == '\'' {
            out.push_str("'\\''");
        } else {
            out.push(c);
        }
    }
    out.push('\'');
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn marker_is_found_after_noise_with_or_without_newline() {
        assert_eq!(find_marker(b"noise\nMK\nHTTP", b"MK"), Some(9));
        assert_eq!(find_marker(b"noiseMK\r\nX", b"MK"), Some(9));
        assert_eq!(find_marker(b"noise\nMK", b"MK"), None);
        assert_eq!(find_marker(b"noise\nM", b"MK"), None);
    }

    #[test]
    fn markers_differ() {
        assert_ne!(marker(), marker());
    }

    #[test]
    fn quoting_survives_a_real_shell() {
        let nasty = "a'b\"c$(touch /tmp/x)`id`;\n\\ \t*?~!{}";
        let out = std::process::Command::new("sh")
            .arg("-c")
            .arg(format!("printf %s {}", shell_quote(nasty)))
            .output()
            .unwrap();
        assert_eq!(String::from_utf8(out.stdout).unwrap(), nasty);
    }
}
