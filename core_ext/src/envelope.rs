//! Envelopes: several event bodies in one Kafka record (group commit at the ingress).
//!
//! Format, version 1 (docs/envelopes.md):
//!
//! ```text
//! 0..4   magic   0x00 'L' 'Y' 'E'
//! 4      version 0x01
//! 5..9   count   u32, big-endian: number of bodies
//! then count times:
//!        length  u32, big-endian
//!        body    `length` bytes: one event's JSON, exactly as a single record holds it
//! ```
//!
//! A JSON body never starts with a 0x00 byte, so a consumer tells an envelope from a
//! single-event record by its first byte, and keeps accepting both.
//!
//! Version 2 is a version-1 envelope compressed (the round outboxes the accrual keeps in
//! Redis: their bytes are written to Redis's AOF and rewritten with it):
//!
//! ```text
//! 0..4   magic   0x00 'L' 'Y' 'E'
//! 4      version 0x02
//! 5..9   length  u32, big-endian: the version-1 envelope's length
//! then   LZ4 block of the version-1 envelope
//! ```
//!
//! `inflate` turns either version into version 1; `unpack` reads version 1.

use crate::errors::{CoreError, CoreResult};

pub const MAGIC: [u8; 4] = [0x00, b'L', b'Y', b'E'];
pub const VERSION: u8 = 1;
pub const COMPRESSED: u8 = 2;
const HEADER: usize = 9;
/// The largest envelope a compressed one may announce (a corrupt length must not allocate).
pub const MAX_INFLATED: usize = 256 << 20;

/// True if the record is an envelope (of any version).
pub fn is_envelope(record: &[u8]) -> bool {
    record.len() >= 4 && record[..4] == MAGIC
}

/// The envelope holding these bodies, in order.
pub fn pack<B: AsRef<[u8]>>(bodies: &[B]) -> Vec<u8> {
    let size = HEADER + bodies.iter().map(|b| 4 + b.as_ref().len()).sum::<usize>();
    let mut out = Vec::with_capacity(size);
    out.extend_from_slice(&MAGIC);
    out.push(VERSION);
    out.extend_from_slice(&(bodies.len() as u32).to_be_bytes());
    for b in bodies {
        let b = b.as_ref();
        out.extend_from_slice(&(b.len() as u32).to_be_bytes());
        out.extend_from_slice(b);
    }
    out
}

/// The envelope holding these bodies, compressed (version 2).
pub fn pack_compressed<B: AsRef<[u8]>>(bodies: &[B]) -> Vec<u8> {
    let plain = pack(bodies);
    let block = lz4_flex::block::compress(&plain);
    let mut out = Vec::with_capacity(HEADER + block.len());
    out.extend_from_slice(&MAGIC);
    out.push(COMPRESSED);
    out.extend_from_slice(&(plain.len() as u32).to_be_bytes());
    out.extend_from_slice(&block);
    out
}

/// A version-1 envelope (or a single record) from any record: a compressed envelope is
/// decompressed, anything else is returned as it is.
pub fn inflate(record: &[u8]) -> CoreResult<std::borrow::Cow<'_, [u8]>> {
    if !is_envelope(record) || record.get(4) != Some(&COMPRESSED) {
        return Ok(std::borrow::Cow::Borrowed(record));
    }
    let len = read_u32(record, 5).ok_or_else(|| bad("truncated header"))?;
    if len > MAX_INFLATED {
        return Err(bad(format!("a compressed envelope of {len} bytes is over the limit of {MAX_INFLATED}")));
    }
    let plain = lz4_flex::block::decompress(&record[HEADER..], len)
        .map_err(|e| bad(format!("compressed envelope: {e}")))?;
    if plain.len() != len {
        return Err(bad(format!("compressed envelope: {} bytes announced, {} inflated", len, plain.len())));
    }
    Ok(std::borrow::Cow::Owned(plain))
}

fn bad(reason: impl Into<String>) -> CoreError {
    CoreError::invalid_event("envelope", reason)
}

fn read_u32(record: &[u8], at: usize) -> Option<usize> {
    let b = record.get(at..at + 4)?;
    Some(u32::from_be_bytes([b[0], b[1], b[2], b[3]]) as usize)
}

/// The bodies of a record: an envelope's bodies in order, or the record itself when it
/// is a single event. A malformed envelope is refused whole, with the reason.
pub fn unpack(record: &[u8]) -> CoreResult<Vec<&[u8]>> {
    if !is_envelope(record) {
        return Ok(vec![record]);
    }
    match record.get(4) {
        Some(&VERSION) => {}
        Some(v) => return Err(bad(format!("version {v} is not supported (this core reads version {VERSION})"))),
        None => return Err(bad("truncated header")),
    }
    let count = read_u32(record, 5).ok_or_else(|| bad("truncated header"))?;
    // Each body takes at least its 4-byte length: a count beyond that is corrupt.
    if count > (record.len() - HEADER) / 4 {
        return Err(bad(format!("count {count} does not fit in {} bytes", record.len())));
    }
    let mut out = Vec::with_capacity(count);
    let mut at = HEADER;
    for i in 0..count {
        let len = read_u32(record, at).ok_or_else(|| bad(format!("body {i} of {count}: truncated length")))?;
        let body = record
            .get(at + 4..at + 4 + len)
            .ok_or_else(|| bad(format!("body {i} of {count}: {len} bytes announced, fewer present")))?;
        out.push(body);
        at += 4 + len;
    }
    if at != record.len() {
        return Err(bad(format!("{} bytes after the last of {count} bodies", record.len() - at)));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_single_records() {
        let bodies: Vec<&[u8]> = vec![br#"{"event_id":"a"}"#, b"", br#"{"event_id":"b"}"#];
        let env = pack(&bodies);
        assert!(is_envelope(&env));
        assert_eq!(unpack(&env).unwrap(), bodies);
        let single = br#"{"event_id":"a","type":"payment"}"#;
        assert_eq!(unpack(single).unwrap(), vec![&single[..]]);
        assert_eq!(unpack(&pack::<&[u8]>(&[])).unwrap(), Vec::<&[u8]>::new());
    }

    #[test]
    fn corrupt_envelopes_are_refused_with_a_reason() {
        let env = pack(&[b"abc".as_slice(), b"defg".as_slice()]);
        for cut in 1..env.len() {
            let e = unpack(&env[..cut]);
            if cut < 4 {
                continue; // not even the magic: read as a single (invalid) body
            }
            let err = e.expect_err("a truncated envelope is refused");
            assert_eq!(err.field(), "envelope");
        }
        let mut longer = env.clone();
        longer.push(b'x');
        assert!(unpack(&longer).unwrap_err().reason().contains("after the last"));
        let mut v2 = env.clone();
        v2[4] = 2;
        assert!(unpack(&v2).unwrap_err().reason().contains("version 2"));
        let mut huge = env;
        huge[5..9].copy_from_slice(&u32::MAX.to_be_bytes());
        assert!(unpack(&huge).unwrap_err().reason().contains("does not fit"));
    }

    #[test]
    fn compressed_envelopes_inflate_to_the_same_bodies() {
        let rows = br#"[{"event_id":"e-1","member_id":"m-1","kind":"earn","points":12}]"#.repeat(20);
        let bodies: Vec<&[u8]> = vec![b"e-1", &rows, b"e-2", b"[]"];
        let packed = pack_compressed(&bodies);
        assert!(is_envelope(&packed));
        assert!(packed.len() < pack(&bodies).len() / 3, "{} bytes", packed.len());
        let plain = inflate(&packed).unwrap();
        assert_eq!(unpack(&plain).unwrap(), bodies);
        // Version 1 and single records pass through untouched.
        let v1 = pack(&bodies);
        assert!(matches!(inflate(&v1).unwrap(), std::borrow::Cow::Borrowed(_)));
        assert_eq!(&*inflate(b"{}").unwrap(), b"{}");
        // Corrupt: truncated, a lying length, a length over the limit.
        for cut in 9..packed.len() {
            assert!(inflate(&packed[..cut]).is_err(), "cut at {cut}");
        }
        let mut lying = packed.clone();
        lying[5..9].copy_from_slice(&((v1.len() + 7) as u32).to_be_bytes());
        assert!(inflate(&lying).is_err());
        let mut over = packed;
        over[5..9].copy_from_slice(&u32::MAX.to_be_bytes());
        assert!(inflate(&over).unwrap_err().reason().contains("over the limit"));
    }
}
