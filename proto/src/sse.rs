//! An incremental Server-Sent Events decoder: feed it bytes as they arrive (an event
//! may be split across frames, or several may share one) and take whole events out.
//! Only `data:` lines matter to OpenAI streams; comments and other fields are skipped.

/// Reads SSE events out of a byte stream, keeping only the unfinished tail.
#[derive(Debug, Default)]
pub struct SseDecoder {
    buf: Vec<u8>,
    /// How much of `buf` has been read (whole lines); dropped on the next `push`, so a
    /// frame of many lines is not moved once per line.
    read: usize,
    /// How far `buf` has been scanned for line ends.
    scanned: usize,
    /// `data:` lines of the event being read, joined with `\n`.
    data: Option<String>,
}

impl SseDecoder {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn push(&mut self, bytes: &[u8]) {
        self.buf.drain(..self.read);
        self.scanned -= self.read;
        self.read = 0;
        self.buf.extend_from_slice(bytes);
    }

    /// The next complete event's data, if one has fully arrived.
    pub fn next_event(&mut self) -> Option<String> {
        loop {
            let Some(newline) = self.buf[self.scanned..].iter().position(|&b| b == b'\n') else {
                // Do not rescan these bytes when more arrive.
                self.scanned = self.buf.len();
                return None;
            };
            let end = self.scanned + newline;
            let mut line = &self.buf[self.read..end];
            if let Some(stripped) = line.strip_suffix(b"\r") {
                line = stripped;
            }
            let event = if line.is_empty() {
                // A blank line ends the event (one without data is no event).
                self.data.take()
            } else {
                if let Some(value) = line.strip_prefix(b"data:") {
                    let value = value.strip_prefix(b" ").unwrap_or(value);
                    let value = String::from_utf8_lossy(value);
                    match &mut self.data {
                        Some(data) => {
                            data.push('\n');
                            data.push_str(&value);
                        }
                        None => self.data = Some(value.into_owned()),
                    }
                }
                None
            };
            self.read = end + 1;
            self.scanned = self.read;
            if event.is_some() {
                return event;
            }
        }
    }

    /// Whether bytes of an unfinished event are buffered (a stream that ends here was
    /// cut inside an event).
    pub fn has_partial(&self) -> bool {
        self.read < self.buf.len() || self.data.is_some()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn events(chunks: &[&str]) -> Vec<String> {
        let mut d = SseDecoder::new();
        let mut out = Vec::new();
        for c in chunks {
            d.push(c.as_bytes());
            while let Some(e) = d.next_event() {
                out.push(e);
            }
        }
        assert!(!d.has_partial());
        out
    }

    #[test]
    fn whole_split_and_shared_frames() {
        assert_eq!(events(&["data: 1\n\n", "data: 2\n\n"]), ["1", "2"]);
        assert_eq!(
            events(&["da", "ta: {\"a\"", ":1}\n", "\ndata: [DONE]\n\n"]),
            ["{\"a\":1}", "[DONE]"]
        );
        assert_eq!(events(&["data: x\r\n\r\ndata:y\n\n"]), ["x", "y"]);
    }

    #[test]
    fn multi_line_data_comments_and_other_fields() {
        assert_eq!(
            events(&[": keep-alive\n\nevent: message\nid: 3\ndata: a\ndata: b\n\n"]),
            ["a\nb"]
        );
    }

    #[test]
    fn a_push_between_events_keeps_the_unread_ones() {
        let mut d = SseDecoder::new();
        d.push(b"data: 1\n\ndata: 2\n\nda");
        assert_eq!(d.next_event().as_deref(), Some("1"));
        d.push(b"ta: 3\n\n");
        assert_eq!(d.next_event().as_deref(), Some("2"));
        assert_eq!(d.next_event().as_deref(), Some("3"));
        assert_eq!(d.next_event(), None);
        assert!(!d.has_partial());
    }

    #[test]
    fn an_unfinished_event_is_partial() {
        let mut d = SseDecoder::new();
        d.push(b"data: 1\n\ndata: {\"half");
        assert_eq!(d.next_event().as_deref(), Some("1"));
        assert_eq!(d.next_event(), None);
        assert!(d.has_partial());
    }
}
