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

use crate::errors::{CoreError, CoreResult};

pub const MAGIC: [u8; 4] = [0x00, b'L', b'Y', b'E'];
pub const VERSION: u8 = 1;
const HEADER: usize = 9;

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
}
