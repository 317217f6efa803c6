//! Keys for client addresses.
//!
//! An IPv6 client usually holds a whole /64 (SLAAC, privacy addresses), so keying by the full
//! address lets one client rotate through 2^64 keys and never be limited. [`IpKeyer`] masks
//! IPv6 addresses to their /64 by default, and IPv4 addresses to themselves (/32); both
//! prefixes are configurable. IPv4-mapped IPv6 addresses (`::ffff:a.b.c.d`) count as IPv4.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use crate::InvalidConfig;

/// A client address masked to its network prefix: the key of a per-client limit.
///
/// # Examples
///
/// ```
/// use brigade_limit::IpKey;
///
/// let a = IpKey::from("2001:db8:1:2:aaaa::1".parse::<std::net::IpAddr>().unwrap());
/// let b = IpKey::from("2001:db8:1:2:bbbb::9".parse::<std::net::IpAddr>().unwrap());
/// assert_eq!(a, b); // the same /64
/// assert_eq!(a.to_string(), "2001:db8:1:2::/64");
/// ```
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct IpKey {
    network: IpAddr,
    prefix: u8,
}

impl IpKey {
    /// The masked network address.
    pub const fn network(&self) -> IpAddr {
        self.network
    }

    /// The prefix length in bits.
    pub const fn prefix(&self) -> u8 {
        self.prefix
    }
}

impl From<IpAddr> for IpKey {
    /// Keys by the default prefixes: /32 for IPv4, /64 for IPv6.
    fn from(addr: IpAddr) -> Self {
        IpKeyer::DEFAULT.key(addr)
    }
}

impl fmt::Debug for IpKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

impl fmt::Display for IpKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.network, self.prefix)
    }
}

/// Maps client addresses to [`IpKey`]s with configurable prefixes.
///
/// # Examples
///
/// ```
/// use std::net::IpAddr;
/// use brigade_limit::IpKeyer;
///
/// let keyer = IpKeyer::new().with_ipv6_prefix(48)?.with_ipv4_prefix(24)?;
/// let key = keyer.key("192.0.2.77".parse::<IpAddr>().unwrap());
/// assert_eq!(key.to_string(), "192.0.2.0/24");
/// # Ok::<(), brigade_limit::InvalidConfig>(())
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct IpKeyer {
    v4: u8,
    v6: u8,
}

impl Default for IpKeyer {
    fn default() -> Self {
        Self::DEFAULT
    }
}

impl IpKeyer {
    const DEFAULT: Self = Self { v4: 32, v6: 64 };

    /// IPv4 by /32, IPv6 by /64.
    pub const fn new() -> Self {
        Self::DEFAULT
    }

    /// Keys IPv6 addresses by their first `prefix` bits.
    ///
    /// # Errors
    ///
    /// [`InvalidConfig::PrefixTooLong`] above 128.
    pub const fn with_ipv6_prefix(self, prefix: u8) -> Result<Self, InvalidConfig> {
        if prefix > 128 {
            return Err(InvalidConfig::PrefixTooLong { prefix, max: 128 });
        }
        Ok(Self { v6: prefix, ..self })
    }

    /// Keys IPv4 addresses by their first `prefix` bits.
    ///
    /// # Errors
    ///
    /// [`InvalidConfig::PrefixTooLong`] above 32.
    pub const fn with_ipv4_prefix(self, prefix: u8) -> Result<Self, InvalidConfig> {
        if prefix > 32 {
            return Err(InvalidConfig::PrefixTooLong { prefix, max: 32 });
        }
        Ok(Self { v4: prefix, ..self })
    }

    /// The key of `addr`.
    pub fn key(&self, addr: IpAddr) -> IpKey {
        match addr.to_canonical() {
            IpAddr::V4(v4) => {
                let mask = u32::MAX.checked_shl(32 - u32::from(self.v4)).unwrap_or(0);
                IpKey {
                    network: IpAddr::V4(Ipv4Addr::from(u32::from(v4) & mask)),
                    prefix: self.v4,
                }
            }
            IpAddr::V6(v6) => {
                let mask = u128::MAX.checked_shl(128 - u32::from(self.v6)).unwrap_or(0);
                IpKey {
                    network: IpAddr::V6(Ipv6Addr::from(u128::from(v6) & mask)),
                    prefix: self.v6,
                }
            }
        }
    }
}
