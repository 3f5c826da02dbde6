//! Data URLs for file contents, encoded exactly like Butane's `MakeDataURL`
//! (coreos/butane `base/util/url.go`, auto-compression on): the shortest of
//! URL-escaped, base64, and base64 of gzip.

use std::cell::RefCell;

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use flate2::{Compress, Compression, Crc, FlushCompress, Status};

use crate::types::Resource;

/// Below this many bytes the gzip candidate can never be chosen (see
/// [`gzip_can_win`]), so it is not computed.
pub(crate) const GZIP_MIN_LEN: usize = 25;

const HEX: &[u8; 16] = b"0123456789ABCDEF";

/// Whether `c` is kept as is by `dataurl.Escape` (RFC 2396 unreserved).
fn is_unreserved(c: u8) -> bool {
    c.is_ascii_alphanumeric()
        || matches!(
            c,
            b'-' | b'_' | b'.' | b'!' | b'~' | b'*' | b'\'' | b'(' | b')'
        )
}

/// Length of the standard (padded) base64 encoding of `n` bytes.
pub(crate) fn base64_len(n: usize) -> usize {
    n.div_ceil(3) * 4
}

/// Whether gzip could beat the other candidates for a content of `len` bytes: the gzip
/// candidate is at least `";base64,"` + base64 of (18 bytes of header and trailer + 2
/// bytes of the smallest deflate stream) + `"gzip"` = 8 + 28 + 4 = 40 characters, and
/// the base64 candidate of `len` bytes is `8 + base64_len(len)`, at most 40 for
/// `len <= 24`; gzip must be strictly shorter to win.
pub(crate) fn gzip_can_win(len: usize) -> bool {
    len >= GZIP_MIN_LEN
}

/// How many recent (contents, resource) pairs each thread remembers: many machines
/// share file contents (e.g. `/etc/etcd-endpoints.env` of every worker), and a gzip
/// attempt costs a few microseconds.
const CACHE_SIZE: usize = 8;
/// Longer contents are not memoized (bounds the memory the cache holds).
const CACHE_MAX_LEN: usize = 4096;

/// The memo: next slot to replace, and (contents, resource) pairs.
type Cache = (usize, Vec<(Vec<u8>, Resource)>);

thread_local! {
    static DEFLATE: RefCell<Compress> = RefCell::new(Compress::new(Compression::best(), false));
    static CACHE: RefCell<Cache> = const { RefCell::new((0, Vec::new())) };
}

/// gzip `data` at best compression (the layout of flate2's `GzEncoder`: 10-byte
/// header, raw deflate, CRC-32 and size trailer).
pub(crate) fn gzip(data: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(data.len() + data.len() / 8 + 64);
    // ID1 ID2 CM=deflate FLG=0 MTIME=0 XFL=2 (best) OS=255 (unknown)
    out.extend_from_slice(&[0x1f, 0x8b, 8, 0, 0, 0, 0, 0, 2, 255]);
    DEFLATE.with(|cell| {
        let mut c = cell.borrow_mut();
        c.reset();
        let start_in = c.total_in();
        loop {
            let consumed = (c.total_in() - start_in) as usize;
            let status = c.compress_vec(&data[consumed..], &mut out, FlushCompress::Finish);
            match status {
                Ok(Status::StreamEnd) => break,
                Ok(_) => out.reserve(out.capacity().max(64)),
                // Compression of an in-memory buffer does not fail; fall back to an
                // uncompressible marker that can never win.
                Err(_) => {
                    out.clear();
                    out.resize(data.len() * 2 + 64, 0);
                    return;
                }
            }
        }
        let mut crc = Crc::new();
        crc.update(data);
        out.extend_from_slice(&crc.sum().to_le_bytes());
        out.extend_from_slice(&(data.len() as u32).to_le_bytes());
    });
    out
}

/// The encoding a data URL was given.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Encoding {
    /// `data:,<url-escaped>`.
    Escaped,
    /// `data:;base64,<base64>`.
    Base64,
    /// `data:;base64,<base64 of gzip>` with `compression: gzip`.
    Gzip,
}

/// Build the Ignition resource for `contents`, choosing the encoding as Butane does.
/// Contents long enough for a gzip attempt are memoized per thread (the result is a
/// pure function of the bytes).
pub(crate) fn make_resource(contents: &[u8]) -> Resource {
    if !gzip_can_win(contents.len()) || contents.len() > CACHE_MAX_LEN {
        return encode(contents);
    }
    if let Some(hit) = CACHE.with(|c| {
        c.borrow()
            .1
            .iter()
            .find(|(k, _)| k.as_slice() == contents)
            .map(|(_, r)| r.clone())
    }) {
        return hit;
    }
    let r = encode(contents);
    CACHE.with(|c| {
        let mut c = c.borrow_mut();
        let (next, entries) = &mut *c;
        let entry = (contents.to_vec(), r.clone());
        if entries.len() < CACHE_SIZE {
            entries.push(entry);
        } else {
            entries[*next] = entry;
        }
        *next = (*next + 1) % CACHE_SIZE;
    });
    r
}

fn encode(contents: &[u8]) -> Resource {
    // Length of the escaped candidate without building it.
    let escaped_len: usize = contents
        .iter()
        .map(|&c| if is_unreserved(c) { 1 } else { 3 })
        .sum();
    let opaque_escaped = 1 + escaped_len;
    let opaque_b64 = 8 + base64_len(contents.len());
    let mut best_len = opaque_escaped.min(opaque_b64);
    let mut choice = if opaque_b64 < opaque_escaped {
        Encoding::Base64
    } else {
        Encoding::Escaped
    };
    let mut gz = Vec::new();
    if gzip_can_win(contents.len()) {
        gz = gzip(contents);
        let gz_len = 8 + base64_len(gz.len());
        if gz_len + 4 < best_len {
            best_len = gz_len;
            choice = Encoding::Gzip;
        }
    }
    let mut source = String::with_capacity(5 + best_len);
    source.push_str("data:");
    match choice {
        Encoding::Escaped => {
            source.push(',');
            for &c in contents {
                if is_unreserved(c) {
                    source.push(c as char);
                } else {
                    source.push('%');
                    source.push(HEX[(c >> 4) as usize] as char);
                    source.push(HEX[(c & 15) as usize] as char);
                }
            }
        }
        Encoding::Base64 => {
            source.push_str(";base64,");
            STANDARD.encode_string(contents, &mut source);
        }
        Encoding::Gzip => {
            source.push_str(";base64,");
            STANDARD.encode_string(&gz, &mut source);
        }
    }
    Resource {
        compression: Some(if choice == Encoding::Gzip {
            String::from("gzip")
        } else {
            String::new()
        }),
        source: Some(source),
    }
}

/// Decode a data URL (`data:[<mediatype>][;base64],<data>`) and, when `compression` is
/// `gzip`, gunzip it. Returns the bytes and how they were encoded, or None when the URL
/// is not a data URL this module understands.
pub fn decode(source: &str, compression: Option<&str>) -> Option<(Vec<u8>, Encoding)> {
    let rest = source.strip_prefix("data:")?;
    let (meta, data) = rest.split_once(',')?;
    let (bytes, mut enc) = if meta.ends_with(";base64") {
        (STANDARD.decode(data).ok()?, Encoding::Base64)
    } else {
        (unescape(data.as_bytes())?, Encoding::Escaped)
    };
    if compression == Some("gzip") {
        use std::io::Read;
        let mut out = Vec::new();
        flate2::read::GzDecoder::new(&bytes[..])
            .read_to_end(&mut out)
            .ok()?;
        enc = Encoding::Gzip;
        return Some((out, enc));
    }
    Some((bytes, enc))
}

fn unescape(s: &[u8]) -> Option<Vec<u8>> {
    let mut out = Vec::with_capacity(s.len());
    let mut i = 0;
    while i < s.len() {
        if s[i] == b'%' {
            let hex = std::str::from_utf8(s.get(i + 1..i + 3)?).ok()?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(s[i]);
            i += 1;
        }
    }
    Some(out)
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    #[test]
    fn escape_matches_dataurl_escape() {
        let r = make_resource(b"a b\n");
        assert_eq!(r.source.as_deref(), Some("data:,a%20b%0A"));
        assert_eq!(r.compression.as_deref(), Some(""));
        let r = make_resource(b"-_.!~*'()azAZ09/");
        assert_eq!(r.source.as_deref(), Some("data:,-_.!~*'()azAZ09%2F"));
    }

    #[test]
    fn base64_when_strictly_shorter() {
        // 3 bytes that each need escaping: escaped ",%FF%FE%FD" (10) vs ";base64,//79" (12).
        let r = make_resource(&[0xff, 0xfe, 0xfd]);
        assert_eq!(r.source.as_deref(), Some("data:,%FF%FE%FD"));
        // 6 such bytes: 19 vs 16 -> base64.
        let r = make_resource(&[0xff; 6]);
        assert_eq!(r.source.as_deref(), Some("data:;base64,////////"));
    }

    #[test]
    fn gzip_for_long_repetitive_contents() {
        let text = "x\n".repeat(200);
        let r = make_resource(text.as_bytes());
        assert_eq!(r.compression.as_deref(), Some("gzip"));
        let (bytes, enc) = decode(r.source.as_deref().unwrap_or(""), Some("gzip")).unwrap();
        assert_eq!(enc, Encoding::Gzip);
        assert_eq!(bytes, text.as_bytes());
    }

    /// The proof behind skipping gzip below [`GZIP_MIN_LEN`] bytes: the gzip candidate
    /// has at least 40 characters (with the "gzip" allowance), the base64 candidate of
    /// 24 bytes has exactly 40, so gzip can not be strictly shorter; the smallest real
    /// gzip output is indeed 20 bytes (empty input), and at 25+ bytes gzip can win.
    #[test]
    fn gzip_never_wins_below_threshold() {
        let empty = gzip(b"");
        assert_eq!(empty.len(), 20);
        let min_gz_candidate = 8 + base64_len(18 + 2) + 4;
        assert_eq!(min_gz_candidate, 40);
        for n in 0..GZIP_MIN_LEN {
            assert!(8 + base64_len(n) <= min_gz_candidate, "n = {n}");
        }
        // Check against real gzip output for the most compressible and some mixed inputs.
        for n in 0..GZIP_MIN_LEN {
            for fill in [b'a', 0u8, 0xff] {
                let data = vec![fill; n];
                let gz = gzip(&data);
                assert!(gz.len() >= 20);
                let esc = 1 + data
                    .iter()
                    .map(|&c| if is_unreserved(c) { 1 } else { 3 })
                    .sum::<usize>();
                let best = esc.min(8 + base64_len(n));
                assert!(8 + base64_len(gz.len()) + 4 >= best, "n = {n}");
            }
        }
        // And the rule matters well below 64 bytes: a run of zero bytes under 64 long
        // is already shorter gzipped, so a 64-byte threshold would change results.
        let first_win = (GZIP_MIN_LEN..64)
            .find(|&n| make_resource(&vec![0u8; n]).compression.as_deref() == Some("gzip"));
        assert!(
            first_win.is_some(),
            "gzip wins for some run shorter than 64"
        );
    }

    #[test]
    fn memoized_equals_fresh() {
        for i in 0..(CACHE_SIZE * 2) {
            let text = format!("ETCDCTL_ENDPOINTS=http://10.0.0.{i}:2379,http://10.0.0.2:2379\n");
            let first = make_resource(text.as_bytes());
            assert_eq!(first, encode(text.as_bytes()));
            assert_eq!(make_resource(text.as_bytes()), first);
        }
    }

    #[test]
    fn gzip_roundtrip_flate2() {
        use std::io::Read;
        let data = b"hello hello hello hello hello hello";
        let gz = gzip(data);
        let mut out = Vec::new();
        flate2::read::GzDecoder::new(&gz[..])
            .read_to_end(&mut out)
            .unwrap();
        assert_eq!(out, data);
        // Stable across calls (the compressor is reused).
        assert_eq!(gz, gzip(data));
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod bench {
    #[test]
    #[ignore]
    fn time_gzip_small() {
        let data = b"[Match]\nName=eth0\n\n[Network]\nDNS=1.2.3.4\nAddress=10.0.0.101/24\nGateway=10.0.0.1\n";
        let t = std::time::Instant::now();
        let mut n = 0;
        for _ in 0..10_000 {
            n += super::gzip(data).len();
        }
        println!(
            "gzip: {:.2} µs ({n})",
            t.elapsed().as_secs_f64() * 1e6 / 10_000.0
        );
        let t = std::time::Instant::now();
        for _ in 0..10_000 {
            n += super::make_resource(data).source.unwrap().len();
        }
        println!(
            "make_resource: {:.2} µs ({n})",
            t.elapsed().as_secs_f64() * 1e6 / 10_000.0
        );
    }
}
