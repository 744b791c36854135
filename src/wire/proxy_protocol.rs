//! PROXY protocol v1 (text) and v2 (binary) header codec.
//!
//! Role: a load balancer in front of the proxy prepends one header that says
//! who the real client is. `decode` reads it from the first bytes of a
//! connection; `encode_v1` / `encode_v2` write one towards a backend.
//!
//! Pure: never does IO. Trust is not decided here: the caller must decode a
//! header only on connections from configured trusted sources, never guess
//! from the bytes (anyone can send a header). Validation is strict, following
//! haproxy's `proxy-protocol.txt`: a header that is almost right is rejected,
//! because a lenient parser is where spoofed addresses slip through.
//!
//! Decoded addresses are canonical (`IpAddr::to_canonical`): an IPv4-mapped
//! IPv6 source is returned as IPv4, so allow lists see one form.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

/// v1: "the maximum line length is 107 bytes including the CRLF" (spec §2.1).
pub const V1_MAX_LEN: usize = 107;

/// v2 header signature (spec §2.2); a v1 line can never start with it.
pub const V2_SIGNATURE: [u8; 12] = *b"\r\n\r\n\0\r\nQUIT\n";

/// Largest v2 header accepted, fixed part included. Addresses need at most
/// 232 bytes (AF_UNIX) and the spec suggests receivers read 536; TLVs added
/// by load balancers (cloud endpoint ids, TLS details with a client
/// certificate name) need more. 4 KiB bounds what even a trusted peer can
/// make us buffer, and fits one read buffer.
pub const V2_MAX_LEN: usize = 4096;

/// v1 line prefix.
const V1_PREFIX: &[u8] = b"PROXY ";
/// v2 fixed part: signature (12), version/command (1), family (1), length (2).
const V2_FIXED_LEN: usize = 16;
/// Version 2 in the high nibble of byte 13.
const V2_VERSION: u8 = 0x2;
/// Command LOCAL: connection made by the proxy itself (health check).
const V2_CMD_LOCAL: u8 = 0x0;
/// Command PROXY: relayed on behalf of another node.
const V2_CMD_PROXY: u8 = 0x1;
/// Address families (high nibble of byte 14).
const V2_AF_UNSPEC: u8 = 0x0;
const V2_AF_INET: u8 = 0x1;
const V2_AF_INET6: u8 = 0x2;
const V2_AF_UNIX: u8 = 0x3;
/// Transport protocols (low nibble of byte 14).
const V2_TRANSPORT_UNSPEC: u8 = 0x0;
const V2_TRANSPORT_STREAM: u8 = 0x1;
const V2_TRANSPORT_DGRAM: u8 = 0x2;
/// Address block sizes: two addresses and two ports.
const V2_INET_LEN: usize = 4 + 4 + 2 + 2;
const V2_INET6_LEN: usize = 16 + 16 + 2 + 2;
/// TLV header: type (1), length (2).
const TLV_HEADER_LEN: usize = 3;

/// Result of decoding the bytes buffered so far.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decoded {
    /// Undecided: read more. Every extension of this buffer shorter than
    /// `min_len` gets this same answer; `min_len` ≤ the version's size cap.
    NeedMore { min_len: usize },
    /// A complete, valid header.
    Header(Header),
    /// Not a valid PROXY header: close the connection.
    Invalid(Invalid),
}

/// A decoded header.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Header {
    pub version: Version,
    pub addresses: Addresses,
    /// Bytes the header occupies; the client's own bytes start here.
    pub consumed_len: usize,
}

/// Which PROXY protocol version a header used.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Version {
    V1,
    V2,
}

/// What the header says about the connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Addresses {
    /// TCP relayed for a client: its address and the address it connected to.
    Proxied { src: SocketAddr, dst: SocketAddr },
    /// v2 LOCAL: the load balancer's own connection; use the socket's peer address.
    Local,
    /// v1 UNKNOWN: the sender does not know; use the socket's peer address.
    Unknown,
}

/// Why a header is invalid.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Invalid {
    /// Neither the v1 `PROXY ` prefix nor the v2 signature.
    NoSignature,
    /// v1: no CRLF within the first 107 bytes.
    V1TooLong,
    /// v1: LF without CR, CR without LF, or a field structure other than single-space separated.
    V1Syntax,
    /// v1: protocol other than `TCP4`, `TCP6` or `UNKNOWN`.
    V1Protocol,
    /// v1: an address that is not a valid address of the announced family.
    V1Address,
    /// v1: a port that is not decimal 0..=65535 without sign or leading zeros.
    V1Port,
    /// v2: version nibble other than 2.
    V2Version,
    /// v2: command other than LOCAL or PROXY.
    V2Command,
    /// v2: PROXY with a family other than INET/INET6, or an undefined family byte.
    V2Family,
    /// v2: PROXY over a transport other than STREAM.
    V2Transport,
    /// v2: the length announces a header above `V2_MAX_LEN`.
    V2TooLong,
    /// v2: the length is shorter than the family's address block.
    V2Truncated,
    /// v2: a TLV runs past the end of the header.
    V2Tlv,
}

impl Invalid {
    /// Short stable name, for metric labels and the access log.
    pub fn as_str(&self) -> &'static str {
        match self {
            Invalid::NoSignature => "no_signature",
            Invalid::V1TooLong => "v1_too_long",
            Invalid::V1Syntax => "v1_syntax",
            Invalid::V1Protocol => "v1_protocol",
            Invalid::V1Address => "v1_address",
            Invalid::V1Port => "v1_port",
            Invalid::V2Version => "v2_version",
            Invalid::V2Command => "v2_command",
            Invalid::V2Family => "v2_family",
            Invalid::V2Transport => "v2_transport",
            Invalid::V2TooLong => "v2_too_long",
            Invalid::V2Truncated => "v2_truncated",
            Invalid::V2Tlv => "v2_tlv",
        }
    }
}

impl fmt::Display for Invalid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "invalid PROXY protocol header: {}", self.as_str())
    }
}

impl std::error::Error for Invalid {}

/// Decodes a PROXY header (v1 or v2) at the start of `buf`. Decisions
/// depend only on bytes already in `buf` and are final: garbage is rejected
/// at the first byte that cannot belong to a header.
pub fn decode(buf: &[u8]) -> Decoded {
    let result = match buf.first() {
        None => return Decoded::NeedMore { min_len: 1 },
        Some(b'P') => decode_v1(buf),
        Some(b'\r') => decode_v2(buf),
        Some(_) => Err(Invalid::NoSignature),
    };
    result.unwrap_or_else(Decoded::Invalid)
}

fn decode_v1(buf: &[u8]) -> Result<Decoded, Invalid> {
    let window = buf.get(..V1_MAX_LEN).unwrap_or(buf);
    let head = window.get(..V1_PREFIX.len()).unwrap_or(window);
    if !V1_PREFIX.starts_with(head) {
        return Err(Invalid::NoSignature);
    }
    let Some(cr) = window.iter().position(|&b| b == b'\r' || b == b'\n') else {
        if window.len() == V1_MAX_LEN {
            return Err(Invalid::V1TooLong);
        }
        return Ok(Decoded::NeedMore {
            min_len: buf.len() + 1,
        });
    };
    let (line, end) = window.split_at(cr);
    match end {
        [b'\r', b'\n', ..] => {}
        [b'\r'] if cr + 1 < V1_MAX_LEN => return Ok(Decoded::NeedMore { min_len: cr + 2 }),
        [b'\r'] => return Err(Invalid::V1TooLong),
        _ => return Err(Invalid::V1Syntax),
    }
    let addresses = parse_v1_line(line)?;
    Ok(Decoded::Header(Header {
        version: Version::V1,
        addresses,
        consumed_len: cr + 2,
    }))
}

/// Parses the v1 line without its CRLF.
fn parse_v1_line(line: &[u8]) -> Result<Addresses, Invalid> {
    let rest = line.strip_prefix(V1_PREFIX).ok_or(Invalid::NoSignature)?;
    // "the receiver must ignore anything presented before the CRLF is found".
    if rest == b"UNKNOWN" || rest.starts_with(b"UNKNOWN ") {
        return Ok(Addresses::Unknown);
    }
    let text = std::str::from_utf8(rest).map_err(|_| Invalid::V1Syntax)?;
    let fields: Vec<&str> = text.split(' ').collect();
    let &[protocol, src_ip, dst_ip, src_port, dst_port] = fields.as_slice() else {
        return Err(match fields.first() {
            Some(&"TCP4" | &"TCP6") => Invalid::V1Syntax,
            _ => Invalid::V1Protocol,
        });
    };
    let parse_ip = |text: &str| -> Result<IpAddr, Invalid> {
        let ip = match protocol {
            "TCP4" => text.parse::<Ipv4Addr>().map(IpAddr::V4),
            "TCP6" => text.parse::<Ipv6Addr>().map(IpAddr::V6),
            _ => return Err(Invalid::V1Protocol),
        };
        ip.map_err(|_| Invalid::V1Address)
    };
    let src = SocketAddr::new(parse_ip(src_ip)?.to_canonical(), parse_port(src_port)?);
    let dst = SocketAddr::new(parse_ip(dst_ip)?.to_canonical(), parse_port(dst_port)?);
    Ok(Addresses::Proxied { src, dst })
}

/// A v1 port: 1 to 5 decimal digits, no sign, no leading zero (except "0").
fn parse_port(text: &str) -> Result<u16, Invalid> {
    let digits_only =
        !text.is_empty() && text.len() <= 5 && text.bytes().all(|b| b.is_ascii_digit());
    if !digits_only || (text.len() > 1 && text.starts_with('0')) {
        return Err(Invalid::V1Port);
    }
    text.parse().map_err(|_| Invalid::V1Port)
}

fn decode_v2(buf: &[u8]) -> Result<Decoded, Invalid> {
    let head = buf.get(..V2_SIGNATURE.len()).unwrap_or(buf);
    if !V2_SIGNATURE.starts_with(head) {
        return Err(Invalid::NoSignature);
    }
    let need_more = Ok(Decoded::NeedMore {
        min_len: buf.len() + 1,
    });
    let Some(&version_command) = buf.get(12) else {
        return need_more;
    };
    if version_command >> 4 != V2_VERSION {
        return Err(Invalid::V2Version);
    }
    let command = version_command & 0x0f;
    if command != V2_CMD_LOCAL && command != V2_CMD_PROXY {
        return Err(Invalid::V2Command);
    }
    let Some(&family_transport) = buf.get(13) else {
        return need_more;
    };
    let (family, transport) = (family_transport >> 4, family_transport & 0x0f);
    let known_family = matches!(family, V2_AF_UNSPEC | V2_AF_INET | V2_AF_INET6 | V2_AF_UNIX);
    let known_transport = matches!(
        transport,
        V2_TRANSPORT_UNSPEC | V2_TRANSPORT_STREAM | V2_TRANSPORT_DGRAM
    );
    // For LOCAL "the family is ignored", but undefined values are invalid in any header.
    if !known_family || (command == V2_CMD_PROXY && !matches!(family, V2_AF_INET | V2_AF_INET6)) {
        return Err(Invalid::V2Family);
    }
    if !known_transport || (command == V2_CMD_PROXY && transport != V2_TRANSPORT_STREAM) {
        return Err(Invalid::V2Transport);
    }
    let Some(&[len_hi, len_lo]) = buf.get(14..V2_FIXED_LEN) else {
        return need_more;
    };
    let len = usize::from(u16::from_be_bytes([len_hi, len_lo]));
    let total = V2_FIXED_LEN + len;
    if total > V2_MAX_LEN {
        return Err(Invalid::V2TooLong);
    }
    let address_len = match (command, family) {
        (V2_CMD_PROXY, V2_AF_INET) => V2_INET_LEN,
        (V2_CMD_PROXY, _) => V2_INET6_LEN,
        _ => 0,
    };
    if len < address_len {
        return Err(Invalid::V2Truncated);
    }
    let Some(block) = buf.get(V2_FIXED_LEN..total) else {
        return Ok(Decoded::NeedMore { min_len: total });
    };
    let header = |addresses| {
        Ok(Decoded::Header(Header {
            version: Version::V2,
            addresses,
            consumed_len: total,
        }))
    };
    if command == V2_CMD_LOCAL {
        // The receiver must "discard the protocol block including the family".
        return header(Addresses::Local);
    }
    let (addrs, tlvs) = block
        .split_at_checked(address_len)
        .ok_or(Invalid::V2Truncated)?;
    check_tlvs(tlvs)?;
    let pair = if family == V2_AF_INET {
        socket_pair::<4>(addrs)
    } else {
        socket_pair::<16>(addrs)
    };
    let (src, dst) = pair.ok_or(Invalid::V2Truncated)?;
    header(Addresses::Proxied { src, dst })
}

/// Source and destination from a v2 address block: both addresses of `N`
/// bytes, then both ports, canonicalised.
fn socket_pair<const N: usize>(block: &[u8]) -> Option<(SocketAddr, SocketAddr)>
where
    IpAddr: From<[u8; N]>,
{
    let (src_ip, rest) = block.split_first_chunk::<N>()?;
    let (dst_ip, rest) = rest.split_first_chunk::<N>()?;
    let (src_port, rest) = rest.split_first_chunk::<2>()?;
    let (dst_port, _) = rest.split_first_chunk::<2>()?;
    let sock = |ip: &[u8; N], port: &[u8; 2]| {
        SocketAddr::new(IpAddr::from(*ip).to_canonical(), u16::from_be_bytes(*port))
    };
    Some((sock(src_ip, src_port), sock(dst_ip, dst_port)))
}

/// TLVs are not interpreted, but each must fit: a header whose TLVs overrun
/// is corrupt or crafted, and its addresses are not to be trusted either.
fn check_tlvs(mut tlvs: &[u8]) -> Result<(), Invalid> {
    while !tlvs.is_empty() {
        let Some(&[_, len_hi, len_lo]) = tlvs.get(..TLV_HEADER_LEN) else {
            return Err(Invalid::V2Tlv);
        };
        let end = TLV_HEADER_LEN + usize::from(u16::from_be_bytes([len_hi, len_lo]));
        tlvs = tlvs.get(end..).ok_or(Invalid::V2Tlv)?;
    }
    Ok(())
}

/// Canonicalises both addresses; if their families still differ, maps the
/// IPv4 one into IPv6 (`::ffff:a.b.c.d`) since a header carries one family.
fn one_family(src: SocketAddr, dst: SocketAddr) -> (SocketAddr, SocketAddr) {
    let canonical = |a: SocketAddr| SocketAddr::new(a.ip().to_canonical(), a.port());
    let mapped = |a: SocketAddr| match a.ip() {
        IpAddr::V4(v4) => SocketAddr::new(IpAddr::V6(v4.to_ipv6_mapped()), a.port()),
        IpAddr::V6(_) => a,
    };
    let (src, dst) = (canonical(src), canonical(dst));
    if src.is_ipv4() == dst.is_ipv4() {
        (src, dst)
    } else {
        (mapped(src), mapped(dst))
    }
}

/// A v1 header line (`PROXY TCP4|TCP6 src dst sport dport\r\n`).
pub fn encode_v1(src: SocketAddr, dst: SocketAddr) -> Vec<u8> {
    let (src, dst) = one_family(src, dst);
    let protocol = if src.is_ipv4() { "TCP4" } else { "TCP6" };
    let (sip, dip, sport, dport) = (src.ip(), dst.ip(), src.port(), dst.port());
    format!("PROXY {protocol} {sip} {dip} {sport} {dport}\r\n").into_bytes()
}

/// A v2 PROXY header over STREAM, without TLVs.
pub fn encode_v2(src: SocketAddr, dst: SocketAddr) -> Vec<u8> {
    let (src, dst) = one_family(src, dst);
    let (family, block_len) = match src.ip() {
        IpAddr::V4(_) => (V2_AF_INET, V2_INET_LEN),
        IpAddr::V6(_) => (V2_AF_INET6, V2_INET6_LEN),
    };
    let mut out = Vec::with_capacity(V2_FIXED_LEN + block_len);
    out.extend(V2_SIGNATURE);
    out.push(V2_VERSION << 4 | V2_CMD_PROXY);
    out.push(family << 4 | V2_TRANSPORT_STREAM);
    out.extend((block_len as u16).to_be_bytes());
    for addr in [src, dst] {
        match addr.ip() {
            IpAddr::V4(ip) => out.extend(ip.octets()),
            IpAddr::V6(ip) => out.extend(ip.octets()),
        }
    }
    out.extend(src.port().to_be_bytes());
    out.extend(dst.port().to_be_bytes());
    out
}

/// A v2 LOCAL header: for the proxy's own connections, such as health checks
/// to a backend that requires a PROXY header.
pub fn encode_v2_local() -> Vec<u8> {
    let mut out = V2_SIGNATURE.to_vec();
    out.extend([
        V2_VERSION << 4 | V2_CMD_LOCAL,
        V2_AF_UNSPEC << 4 | V2_TRANSPORT_UNSPEC,
        0,
        0,
    ]);
    out
}

#[cfg(test)]
mod tests;
