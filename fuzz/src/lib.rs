//! What the fuzz targets share: cutting one fuzz input into a stream of chunks, so a
//! parser fed incrementally is checked against the same bytes fed at once.

/// Splits `data` into a chunking plan and a payload. The first byte says how many cut
/// points follow (0..=15), each one byte: the length of the next chunk (0 is a valid,
/// empty chunk). The rest of the payload is the last chunk.
pub fn chunked(data: &[u8]) -> (Vec<usize>, &[u8]) {
    let Some((&n, rest)) = data.split_first() else {
        return (Vec::new(), data);
    };
    let n = usize::from(n % 16).min(rest.len());
    let (cuts, payload) = rest.split_at(n);
    (cuts.iter().map(|&c| usize::from(c)).collect(), payload)
}

/// `payload` cut at the lengths in `cuts` (clamped to what is left), then the rest.
pub fn chunks<'a>(cuts: &[usize], mut payload: &'a [u8]) -> Vec<&'a [u8]> {
    let mut out = Vec::with_capacity(cuts.len() + 1);
    for &len in cuts {
        let (head, tail) = payload.split_at(len.min(payload.len()));
        out.push(head);
        payload = tail;
    }
    out.push(payload);
    out
}
