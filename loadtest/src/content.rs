//! Deterministic text and embeddings: the same prompt always gets the same reply,
//! on every node and every run, so tests can compare answers across nodes and APIs.

use base64::Engine as _;

/// Reply vocabulary, each word with the leading space it has mid-sentence; the first
/// token of a reply drops it. 64 entries so a word index is the hash's low 6 bits.
const WORDS: [&str; 64] = [
    " the",
    " mesh",
    " gateway",
    " routes",
    " every",
    " request",
    " to",
    " a",
    " healthy",
    " node",
    " while",
    " tokens",
    " stream",
    " back",
    " quickly",
    " and",
    " models",
    " answer",
    " with",
    " simulated",
    " words",
    " that",
    " look",
    " like",
    " text",
    " from",
    " llama",
    " over",
    " quiet",
    " links",
    " under",
    " load",
    " latency",
    " stays",
    " low",
    " when",
    " peers",
    " fail",
    " retries",
    " find",
    " another",
    " path",
    " through",
    " cluster",
    " of",
    " small",
    " machines",
    " serving",
    " prompts",
    " in",
    " order",
    " each",
    " reply",
    " is",
    " stable",
    " so",
    " tests",
    " can",
    " compare",
    " outputs",
    " across",
    " runs",
    " without",
    " noise",
];

/// splitmix64's output function: a cheap, well-mixed 64-bit hash step.
pub(crate) fn mix64(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// Hashes the prompt (FNV-1a, piece by piece so callers need not join strings) and
/// counts its whitespace-separated words for `prompt_tokens`.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Prompt {
    hash: u64,
    words: u32,
}

impl Default for Prompt {
    fn default() -> Self {
        Self {
            hash: 0xcbf2_9ce4_8422_2325,
            words: 0,
        }
    }
}

impl Prompt {
    /// Adds one piece of prompt text (a message, a system prompt, a batch item).
    pub(crate) fn push(&mut self, text: &str) {
        for &b in text.as_bytes() {
            self.hash = (self.hash ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3);
        }
        // A separator, so ["ab", "c"] and ["a", "bc"] hash differently.
        self.hash = (self.hash ^ 0xff).wrapping_mul(0x0100_0000_01b3);
        self.words += count_words(text);
    }

    pub(crate) fn of(text: &str) -> Self {
        let mut p = Self::default();
        p.push(text);
        p
    }

    pub(crate) fn hash(&self) -> u64 {
        self.hash
    }

    /// `prompt_tokens`: whitespace-separated words, at least 1 (a real tokenizer never
    /// reports an empty prompt as zero tokens once a template is applied).
    pub(crate) fn tokens(&self) -> u32 {
        self.words.max(1)
    }

    /// The `i`th reply token: the first is a bare word, later ones carry a leading
    /// space, so concatenated chunks read as a sentence, like real BPE output.
    pub(crate) fn token(&self, i: u32) -> &'static str {
        let h = mix64(self.hash ^ u64::from(i).wrapping_mul(0x2545_f491_4f6c_dd1d));
        let word = WORDS[(h & 63) as usize];
        if i == 0 { &word[1..] } else { word }
    }

    /// The reply of `n` tokens after its first `skip` bytes, token by token: what a
    /// server that continues a prefilled assistant message sends when the prefill is
    /// the reply's first `skip` bytes (the rest of the token `skip` falls in, then the
    /// whole tokens after it). With `skip` 0, every token.
    pub(crate) fn reply_after(&self, n: u32, skip: usize) -> Vec<&'static str> {
        let mut at = 0;
        let mut out = Vec::with_capacity(n as usize);
        for i in 0..n {
            let token = self.token(i);
            let end = at + token.len();
            if end > skip {
                out.push(&token[skip.saturating_sub(at)..]);
            }
            at = end;
        }
        out
    }

    /// The whole reply of `n` tokens, as one string.
    pub(crate) fn reply(&self, n: u32) -> String {
        let mut s = String::with_capacity(n as usize * 8);
        for i in 0..n {
            s.push_str(self.token(i));
        }
        s
    }
}

/// The scripted call of a tool: its name and deterministic JSON arguments made from its
/// JSON schema (`parameters` or `input_schema`): strings "sim", numbers 1, booleans
/// true, anything else null.
pub(crate) fn tool_call(name: &str, schema: Option<&serde_json::Value>) -> (String, String) {
    let mut args = serde_json::Map::new();
    if let Some(props) = schema
        .and_then(|s| s.get("properties"))
        .and_then(serde_json::Value::as_object)
    {
        for (key, prop) in props {
            let value = match prop.get("type").and_then(serde_json::Value::as_str) {
                Some("string") => serde_json::json!("sim"),
                Some("number" | "integer") => serde_json::json!(1),
                Some("boolean") => serde_json::json!(true),
                _ => serde_json::Value::Null,
            };
            args.insert(key.clone(), value);
        }
    }
    (name.to_owned(), serde_json::Value::Object(args).to_string())
}

pub(crate) fn count_words(text: &str) -> u32 {
    text.split_whitespace().count() as u32
}

/// How many tokens to produce and why the reply ends: the node's reply length, cut by
/// the client's limit (`max_tokens`, `num_predict`), in which case the reason is `length`.
pub(crate) fn reply_len(node_tokens: u32, limit: Option<u32>) -> (u32, &'static str) {
    match limit {
        Some(max) if max < node_tokens => (max, "length"),
        _ => (node_tokens, "stop"),
    }
}

/// A unit-length vector derived only from the input text (not the node), so every node
/// "running the same model" returns the same embedding.
pub(crate) fn embedding(text: &str, dim: usize) -> Vec<f32> {
    let seed = Prompt::of(text).hash;
    let mut v: Vec<f32> = (0..dim as u64)
        .map(|i| {
            // Top 24 bits -> [0, 1) exactly representable in f32, then to [-1, 1).
            let unit = (mix64(seed ^ i.wrapping_mul(0x9e37_79b9_7f4a_7c15)) >> 40) as f32
                / (1u32 << 24) as f32;
            unit * 2.0 - 1.0
        })
        .collect();
    let norm = v.iter().map(|x| x * x).sum::<f32>().sqrt();
    if norm > 0.0 {
        v.iter_mut().for_each(|x| *x /= norm);
    }
    v
}

/// OpenAI's `encoding_format: "base64"`: the little-endian f32 bytes, base64-encoded.
pub(crate) fn embedding_base64(v: &[f32]) -> String {
    let bytes: Vec<u8> = v.iter().flat_map(|x| x.to_le_bytes()).collect();
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_word_has_exactly_one_leading_space() {
        for w in WORDS {
            assert!(
                w.starts_with(' ') && !w[1..].contains(' ') && w.len() > 1,
                "{w:?}"
            );
        }
    }

    #[test]
    fn reply_is_deterministic_and_prompt_dependent() {
        let a = Prompt::of("hello there");
        assert_eq!(a.reply(16), Prompt::of("hello there").reply(16));
        assert_ne!(a.reply(16), Prompt::of("hello their").reply(16));
        assert_eq!(a.reply(16).split(' ').count(), 16);
        assert!(!a.reply(16).starts_with(' '));
    }

    #[test]
    fn a_reply_after_any_prefix_completes_the_reply() {
        let p = Prompt::of("hello there");
        let whole = p.reply(8);
        assert_eq!(p.reply_after(8, 0).concat(), whole);
        for skip in 0..=whole.len() + 2 {
            let rest = p.reply_after(8, skip).concat();
            assert_eq!(format!("{}{rest}", &whole[..skip.min(whole.len())]), whole);
        }
    }

    #[test]
    fn pieces_hash_differently_from_joined_text() {
        let mut split = Prompt::default();
        split.push("ab");
        split.push("c");
        let mut other = Prompt::default();
        other.push("a");
        other.push("bc");
        assert_ne!(split.reply(8), other.reply(8));
    }

    #[test]
    fn prompt_tokens_count_words_with_floor_of_one() {
        assert_eq!(Prompt::of("").tokens(), 1);
        assert_eq!(Prompt::of("  one two\nthree ").tokens(), 3);
        let mut p = Prompt::default();
        p.push("a b");
        p.push("c");
        assert_eq!(p.tokens(), 3);
    }

    #[test]
    fn reply_len_reports_length_only_when_cut() {
        assert_eq!(reply_len(16, None), (16, "stop"));
        assert_eq!(reply_len(16, Some(16)), (16, "stop"));
        assert_eq!(reply_len(16, Some(40)), (16, "stop"));
        assert_eq!(reply_len(16, Some(3)), (3, "length"));
    }

    #[test]
    fn embeddings_are_unit_length_and_stable() {
        let v = embedding("some text", 8);
        assert_eq!(v.len(), 8);
        let norm: f32 = v.iter().map(|x| x * x).sum::<f32>().sqrt();
        assert!((norm - 1.0).abs() < 1e-5, "{norm}");
        assert_eq!(v, embedding("some text", 8));
        assert_ne!(v, embedding("other text", 8));
    }

    #[test]
    fn base64_is_little_endian_f32() {
        let v = [1.0f32, -0.5];
        let raw = base64::engine::general_purpose::STANDARD
            .decode(embedding_base64(&v))
            .unwrap();
        assert_eq!(raw, [0, 0, 0x80, 0x3f, 0, 0, 0, 0xbf]);
    }
}
