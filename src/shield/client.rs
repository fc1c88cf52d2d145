//! Which client an address belongs to, for the shield.

use std::net::IpAddr;

/// The shield's key for a client address: an IPv4 address as it is, an
/// IPv6 address by its /64 prefix (one host usually holds a whole /64, so
/// keying by full address would let it rotate past the shield). IPv4-mapped
/// IPv6 addresses count as their IPv4 address.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ClientKey {
    V4(u32),
    V6Prefix(u64),
}

impl From<IpAddr> for ClientKey {
    fn from(ip: IpAddr) -> Self {
        match ip.to_canonical() {
            IpAddr::V4(v4) => ClientKey::V4(u32::from(v4)),
            IpAddr::V6(v6) => ClientKey::V6Prefix((u128::from(v6) >> 64) as u64),
        }
    }
}
