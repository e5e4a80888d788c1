//! Log sequence numbers.
//!
//! An LSN is a 64-bit byte position in the WAL stream, written `X/Y` with the
//! high and low 32 bits in upper-case hex (`0/1A3B4C5D`), as PostgreSQL writes
//! them. Parsing ignores case.

use std::fmt;
use std::str::FromStr;

/// A byte position in the WAL.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Lsn(pub u64);

impl Lsn {
    /// The invalid LSN: "no record" (e.g. the previous LSN of a transaction's
    /// first record). No record is ever written there.
    pub const ZERO: Lsn = Lsn(0);

    /// This LSN plus `bytes`.
    pub fn plus(self, bytes: u64) -> Lsn {
        Lsn(self.0.checked_add(bytes).expect("LSN overflow"))
    }
}

impl fmt::Display for Lsn {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:X}/{:X}", self.0 >> 32, self.0 & 0xFFFF_FFFF)
    }
}

/// Why a string is not an LSN.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid LSN {input:?}: expected X/Y with 1 to 8 hex digits on each side, e.g. 0/1A3B4C5D")]
pub struct ParseLsnError {
    input: String,
}

impl FromStr for Lsn {
    type Err = ParseLsnError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let error = || ParseLsnError { input: s.to_string() };
        let (high, low) = s.split_once('/').ok_or_else(error)?;
        let half = |part: &str| {
            let valid = (1..=8).contains(&part.len()) && part.bytes().all(|b| b.is_ascii_hexdigit());
            if valid {
                u32::from_str_radix(part, 16).ok()
            } else {
                None
            }
        };
        let (high, low) = (half(high).ok_or_else(error)?, half(low).ok_or_else(error)?);
        Ok(Lsn((u64::from(high) << 32) | u64::from(low)))
    }
}

/// LSNs serialize as their `X/Y` text, in JSON as in logs.
impl serde::Serialize for Lsn {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl<'de> serde::Deserialize<'de> for Lsn {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        text.parse().map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn displays_like_postgres() {
        assert_eq!(Lsn(0x1A3B_4C5D).to_string(), "0/1A3B4C5D");
        assert_eq!(Lsn(0x2_0000_0010).to_string(), "2/10");
        assert_eq!(Lsn::ZERO.to_string(), "0/0");
    }

    #[test]
    fn parses_either_case_and_refuses_garbage() {
        assert_eq!("0/1a3b4c5d".parse::<Lsn>().unwrap(), Lsn(0x1A3B_4C5D));
        assert_eq!("FFFFFFFF/FFFFFFFF".parse::<Lsn>().unwrap(), Lsn(u64::MAX));
        for bad in ["", "0", "/1", "1/", "0/123456789", "g/1", "0/1/2", " 0/1", "+1/1", "0x1/1"] {
            let err = bad.parse::<Lsn>().unwrap_err();
            assert!(err.to_string().contains("invalid LSN"), "{bad}: {err}");
        }
    }

    proptest! {
        #[test]
        fn display_then_parse_round_trips(raw: u64) {
            prop_assert_eq!(Lsn(raw).to_string().parse::<Lsn>().unwrap(), Lsn(raw));
        }
    }
}
