//! Redis commands as RESP bytes, built in the core so that Python sends a whole
//! batch's plan without touching its arguments, and the replies it hands back.
//! Pure: no I/O. Also the hash slot of a key (Redis Cluster's CRC16), for tests and
//! for routing.

/// A reply as the client parsed it (hiredis).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reply {
    Nil,
    Int(i64),
    Bulk(Vec<u8>),
    Array(Vec<Reply>),
    Error(String),
}

impl Reply {
    pub fn as_bytes(&self) -> Option<&[u8]> {
        match self {
            Reply::Bulk(b) => Some(b),
            _ => None,
        }
    }

    pub fn as_str(&self) -> Option<&str> {
        self.as_bytes().and_then(|b| std::str::from_utf8(b).ok())
    }

    pub fn as_int(&self) -> Option<i64> {
        match self {
            Reply::Int(i) => Some(*i),
            Reply::Bulk(b) => std::str::from_utf8(b).ok()?.parse().ok(),
            _ => None,
        }
    }

    pub fn as_array(&self) -> Option<&[Reply]> {
        match self {
            Reply::Array(a) => Some(a),
            _ => None,
        }
    }

    /// A short description, for error messages.
    pub fn describe(&self) -> String {
        match self {
            Reply::Nil => "nil".into(),
            Reply::Int(i) => format!("integer {i}"),
            Reply::Bulk(b) => format!("{:?}", String::from_utf8_lossy(&b[..b.len().min(60)])),
            Reply::Array(a) => format!("array of {}", a.len()),
            Reply::Error(e) => format!("error {e:?}"),
        }
    }
}

/// One command under construction: arguments are appended, the header is written
/// when it is finished (the count is known only then).
pub struct Command {
    args: Vec<u8>,
    n: usize,
    /// The keys it names (for the slot check).
    pub keys: Vec<Vec<u8>>,
}

impl Command {
    pub fn new(name: &str) -> Command {
        let mut c = Command { args: Vec::with_capacity(256), n: 0, keys: Vec::new() };
        c.arg(name.as_bytes());
        c
    }

    pub fn arg(&mut self, a: &[u8]) -> &mut Self {
        self.args.push(b'$');
        self.args.extend_from_slice(itoa(a.len() as i64).as_bytes());
        self.args.extend_from_slice(b"\r\n");
        self.args.extend_from_slice(a);
        self.args.extend_from_slice(b"\r\n");
        self.n += 1;
        self
    }

    pub fn str(&mut self, s: &str) -> &mut Self {
        self.arg(s.as_bytes())
    }

    pub fn int(&mut self, i: i64) -> &mut Self {
        self.arg(itoa(i).as_bytes())
    }

    pub fn key(&mut self, k: &str) -> &mut Self {
        self.keys.push(k.as_bytes().to_vec());
        self.arg(k.as_bytes())
    }

    /// Appends the finished command to `out`.
    pub fn write_to(&self, out: &mut Vec<u8>) {
        out.push(b'*');
        out.extend_from_slice(itoa(self.n as i64).as_bytes());
        out.extend_from_slice(b"\r\n");
        out.extend_from_slice(&self.args);
    }

    pub fn bytes(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(self.args.len() + 16);
        self.write_to(&mut out);
        out
    }
}

fn itoa(i: i64) -> String {
    let mut s = String::with_capacity(20);
    crate::record::push_int(&mut s, i);
    s
}

/// CRC16/XMODEM, as Redis Cluster computes it.
fn crc16(bytes: &[u8]) -> u16 {
    let mut crc: u16 = 0;
    for &b in bytes {
        crc ^= (b as u16) << 8;
        for _ in 0..8 {
            crc = if crc & 0x8000 != 0 { (crc << 1) ^ 0x1021 } else { crc << 1 };
        }
    }
    crc
}

/// The cluster hash slot of a key: of its hash tag (the text between the first `{` and
/// the next `}`, if not empty), else of the whole key.
pub fn slot(key: &[u8]) -> u16 {
    let tagged = key.iter().position(|&c| c == b'{').and_then(|open| {
        let close = key[open + 1..].iter().position(|&c| c == b'}')?;
        (close > 0).then(|| &key[open + 1..open + 1 + close])
    });
    crc16(tagged.unwrap_or(key)) % 16384
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn commands_are_resp_arrays_of_bulk_strings() {
        let mut c = Command::new("FCALL");
        c.str("ly_read").int(1).key("ly:m:{m-1}").arg(b"");
        assert_eq!(c.bytes(), b"*5\r\n$5\r\nFCALL\r\n$7\r\nly_read\r\n$1\r\n1\r\n$10\r\nly:m:{m-1}\r\n$0\r\n\r\n");
        assert_eq!(c.keys, vec![b"ly:m:{m-1}".to_vec()]);
    }

    #[test]
    fn slots_match_redis_cluster() {
        // Values from the Redis Cluster specification and `CLUSTER KEYSLOT`.
        assert_eq!(crc16(b"123456789"), 0x31c3);
        assert_eq!(slot(b"foo"), 12182);
        assert_eq!(slot(b"{user1000}.following"), slot(b"{user1000}.followers"));
        assert_eq!(slot(b"foo{}{bar}"), slot(b"foo{}{bar}")); // empty tag: the whole key
        assert_ne!(slot(b"foo{}{bar}"), slot(b"bar"));
        assert_eq!(slot(b"foo{{bar}}zap"), slot(b"{bar"));
        assert_eq!(slot(b"foo{bar}{zap}"), slot(b"bar"));
    }
}
