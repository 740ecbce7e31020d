//! Address and prefix parsing for validation, sorting and rendering.
//!
//! The model keeps addresses as written; these helpers give them meaning.
//! A bare address is read as a host prefix (/32 or /128), which is how
//! `public_ips` mixes single addresses with ranges.

use std::cmp::Ordering;
use std::fmt;
use std::net::IpAddr;

/// An IP prefix whose host bits are zero.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Prefix {
    addr: IpAddr,
    len: u8,
}

impl Prefix {
    pub fn addr(&self) -> IpAddr {
        self.addr
    }

    pub fn prefix_len(&self) -> u8 {
        self.len
    }

    pub fn is_ipv4(&self) -> bool {
        self.addr.is_ipv4()
    }

    pub fn contains(&self, ip: IpAddr) -> bool {
        match (self.addr, ip) {
            (IpAddr::V4(net), IpAddr::V4(ip)) => mask_v4(u32::from(ip), self.len) == u32::from(net),
            (IpAddr::V6(net), IpAddr::V6(ip)) => {
                mask_v6(u128::from(ip), self.len) == u128::from(net)
            }
            _ => false,
        }
    }

    pub fn overlaps(&self, other: &Prefix) -> bool {
        self.contains(other.addr) || other.contains(self.addr)
    }

    /// The order docs/model.md gives for `public_ips` and `group_members`:
    /// IPv4 before IPv6, then by address, then by prefix length.
    pub fn numeric_cmp(&self, other: &Prefix) -> Ordering {
        numeric_key(self.addr)
            .cmp(&numeric_key(other.addr))
            .then(self.len.cmp(&other.len))
    }
}

impl fmt::Display for Prefix {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.addr, self.len)
    }
}

/// Why a text is not a usable prefix; the message is shown after the field.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PrefixError {
    NotAnAddress,
    BadLength,
    HostBitsSet { network: Prefix },
}

impl fmt::Display for PrefixError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PrefixError::NotAnAddress => f.write_str("not an IP address or CIDR"),
            PrefixError::BadLength => f.write_str("prefix length out of range"),
            PrefixError::HostBitsSet { network } => {
                write!(f, "host bits set (the network is {network})")
            }
        }
    }
}

pub fn parse_ip(text: &str) -> Option<IpAddr> {
    text.parse().ok()
}

/// Parses `addr/len` or a bare address (a host prefix).
pub fn parse_prefix(text: &str) -> Result<Prefix, PrefixError> {
    let (addr_text, len_text) = match text.split_once('/') {
        Some((addr, len)) => (addr, Some(len)),
        None => (text, None),
    };
    let addr = parse_ip(addr_text).ok_or(PrefixError::NotAnAddress)?;
    let max_len = if addr.is_ipv4() { 32 } else { 128 };
    let len = match len_text {
        None => max_len,
        Some(len) => parse_prefix_len(len, max_len)?,
    };
    let network = Prefix {
        addr: network_of(addr, len),
        len,
    };
    if network.addr != addr {
        return Err(PrefixError::HostBitsSet { network });
    }
    Ok(network)
}

fn parse_prefix_len(text: &str, max_len: u8) -> Result<u8, PrefixError> {
    // Rejects "+8", "08" and friends, which `u8::from_str` would accept.
    let digits_only = !text.is_empty() && text.bytes().all(|b| b.is_ascii_digit());
    let canonical = text == "0" || !text.starts_with('0');
    match text.parse::<u8>() {
        Ok(len) if digits_only && canonical && len <= max_len => Ok(len),
        _ => Err(PrefixError::BadLength),
    }
}

fn network_of(addr: IpAddr, len: u8) -> IpAddr {
    match addr {
        IpAddr::V4(v4) => IpAddr::V4(mask_v4(u32::from(v4), len).into()),
        IpAddr::V6(v6) => IpAddr::V6(mask_v6(u128::from(v6), len).into()),
    }
}

fn mask_v4(bits: u32, len: u8) -> u32 {
    match len {
        0 => 0,
        len => bits & (u32::MAX << (32 - u32::from(len))),
    }
}

fn mask_v6(bits: u128, len: u8) -> u128 {
    match len {
        0 => 0,
        len => bits & (u128::MAX << (128 - u32::from(len))),
    }
}

/// IPv4 sorts before IPv6 whatever the address bits.
pub fn numeric_key(ip: IpAddr) -> (u8, u128) {
    match ip {
        IpAddr::V4(v4) => (4, u128::from(u32::from(v4))),
        IpAddr::V6(v6) => (6, u128::from(v6)),
    }
}

/// Sorts address or CIDR texts numerically; texts that do not parse sort last
/// by their bytes, so the order is total even for a view not yet validated.
pub fn sort_numerically(texts: &mut [String]) {
    texts.sort_by_cached_key(|text| match parse_prefix_lenient(text) {
        Some((key, len)) => (0u8, key, len, String::new()),
        None => (1, (0, 0), 0, text.clone()),
    });
}

/// Like [`parse_prefix`] but ignores host bits: only for ordering.
fn parse_prefix_lenient(text: &str) -> Option<((u8, u128), u8)> {
    let (addr_text, len) = match text.split_once('/') {
        Some((addr, len)) => (addr, len.parse::<u8>().ok()?),
        None => (text, 255),
    };
    let addr = parse_ip(addr_text)?;
    let len = if len == 255 {
        if addr.is_ipv4() {
            32
        } else {
            128
        }
    } else {
        len
    };
    Some((numeric_key(addr), len))
}

/// A unicast Ethernet address, `xx:xx:xx:xx:xx:xx`, either case: the MAC
/// rule of the model (docs/model.md), for the checker and the agent alike.
pub fn parse_mac(text: &str) -> Result<[u8; 6], &'static str> {
    let mut octets = [0u8; 6];
    let mut parts = text.split(':');
    for octet in &mut octets {
        let part = parts.next().ok_or("not a MAC address")?;
        // Two hex digits exactly: `from_str_radix` alone would take "+f".
        if part.len() != 2 || !part.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err("not a MAC address");
        }
        *octet = u8::from_str_radix(part, 16).map_err(|_| "not a MAC address")?;
    }
    if parts.next().is_some() {
        return Err("not a MAC address");
    }
    if octets[0] & 1 == 1 {
        return Err("not a unicast MAC address (multicast bit set)");
    }
    if octets == [0; 6] {
        return Err("the all-zero MAC address is not usable");
    }
    Ok(octets)
}

/// The lower-case colon form of a MAC, as the kernel prints it back.
pub fn format_mac(octets: &[u8; 6]) -> String {
    let [a, b, c, d, e, f] = octets;
    format!("{a:02x}:{b:02x}:{c:02x}:{d:02x}:{e:02x}:{f:02x}")
}

/// A MAC as a 48-bit number, for sets of MACs that need no text.
pub fn mac_bits(octets: &[u8; 6]) -> u64 {
    octets
        .iter()
        .fold(0, |bits, &octet| bits << 8 | u64::from(octet))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bare_address_is_a_host_prefix() {
        assert_eq!(parse_prefix("198.51.100.7").unwrap().prefix_len(), 32);
        assert_eq!(parse_prefix("2001:db8::1").unwrap().prefix_len(), 128);
    }

    #[test]
    fn host_bits_are_refused_with_the_network_named() {
        let err = parse_prefix("10.1.0.5/16").unwrap_err();
        assert_eq!(
            err.to_string(),
            "host bits set (the network is 10.1.0.0/16)"
        );
    }

    #[test]
    fn odd_lengths_are_refused() {
        for bad in [
            "10.0.0.0/33",
            "10.0.0.0/",
            "10.0.0.0/+8",
            "10.0.0.0/08",
            "::/129",
        ] {
            assert_eq!(parse_prefix(bad), Err(PrefixError::BadLength), "{bad}");
        }
        assert!(parse_prefix("0.0.0.0/0").is_ok());
    }

    #[test]
    fn numeric_sort_puts_ipv4_first_then_prefix_length() {
        let mut texts: Vec<String> = ["::1", "10.0.0.2", "10.0.0.0/24", "9.0.0.0", "10.0.0.0/8"]
            .map(String::from)
            .to_vec();
        sort_numerically(&mut texts);
        assert_eq!(
            texts,
            ["9.0.0.0", "10.0.0.0/8", "10.0.0.0/24", "10.0.0.2", "::1"]
        );
    }

    #[test]
    fn macs_must_be_unicast() {
        assert!(parse_mac("d0:0d:0a:1b:2c:3d").is_ok());
        assert!(parse_mac("D0:0D:0A:1B:2C:3D").is_ok());
        assert!(parse_mac("01:00:5e:00:00:01").is_err());
        assert!(parse_mac("d0:0d:0a:1b:2c").is_err());
        assert!(parse_mac("d0-0d-0a-1b-2c-3d").is_err());
        assert!(parse_mac("00:00:00:00:00:00").is_err());
        assert!(parse_mac("d0:0d:0a:1b:2c:3d:4e").is_err());
    }

    #[test]
    fn mac_octets_are_two_hex_digits() {
        for bad in [
            "d0:+d:0a:1b:2c:3d",
            "d0:0d:0a:1b:2c:+3",
            "d0:0d:0a:1b:2c:3",
            "d0:0d:0a:1b:2c:3g",
        ] {
            assert_eq!(parse_mac(bad), Err("not a MAC address"), "{bad}");
        }
    }

    #[test]
    fn macs_print_in_the_kernels_form_and_as_numbers() {
        let mac = parse_mac("D0:0D:0A:1B:2C:3D").unwrap();
        assert_eq!(format_mac(&mac), "d0:0d:0a:1b:2c:3d");
        assert_eq!(mac_bits(&mac), 0xd00d_0a1b_2c3d);
    }
}
