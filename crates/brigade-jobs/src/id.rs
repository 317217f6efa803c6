//! Job ids: 128 bits from the operating system's random generator.

use std::fmt;
use std::str::FromStr;

/// A job's id: 128 random bits, written as 32 lowercase hex digits.
///
/// Drawn from the operating system's random generator, so no id is found by counting: knowing
/// one's own job says nothing about the next one. An id is what a caller needs to read,
/// follow or cancel its job.
///
/// # Examples
///
/// ```
/// use brigade_jobs::JobId;
///
/// let id: JobId = "0123456789abcdef0123456789abcdef".parse().unwrap();
/// assert_eq!(id.to_string(), "0123456789abcdef0123456789abcdef");
/// assert!("not-an-id".parse::<JobId>().is_err());
/// ```
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct JobId(u128);

impl JobId {
    /// A new random id.
    ///
    /// # Errors
    ///
    /// The operating system's random generator failed.
    pub(crate) fn random() -> Result<Self, getrandom::Error> {
        let mut bits = [0_u8; 16];
        getrandom::fill(&mut bits)?;
        Ok(Self(u128::from_be_bytes(bits)))
    }

    /// The id as a number.
    pub const fn as_u128(self) -> u128 {
        self.0
    }

    /// The id of this number.
    pub const fn from_u128(bits: u128) -> Self {
        Self(bits)
    }

    /// The 32-digit form the stores keep.
    pub(crate) fn hex(self) -> String {
        format!("{:032x}", self.0)
    }
}

impl fmt::Display for JobId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:032x}", self.0)
    }
}

impl fmt::Debug for JobId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "JobId({:032x})", self.0)
    }
}

/// A string that is not 32 hex digits, given as a [`JobId`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct InvalidJobId(());

impl fmt::Display for InvalidJobId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a job id is 32 hex digits")
    }
}

impl std::error::Error for InvalidJobId {}

impl FromStr for JobId {
    type Err = InvalidJobId;

    /// Reads 32 hex digits (either case).
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if s.len() != 32 || !s.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(InvalidJobId(()));
        }
        u128::from_str_radix(s, 16)
            .map(Self)
            .map_err(|_| InvalidJobId(()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_round_trip_through_their_text() {
        let id = JobId::random().unwrap();
        assert_eq!(id.hex().parse::<JobId>().unwrap(), id);
        assert_eq!(id.hex().len(), 32);
        assert_ne!(JobId::random().unwrap(), id);
        assert!("+123456789abcdef0123456789abcdef".parse::<JobId>().is_err());
        assert!("0123456789ABCDEF0123456789ABCDEF".parse::<JobId>().is_ok());
    }
}
