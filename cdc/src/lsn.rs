//! Log sequence numbers and positions in the change stream.

use std::fmt;
use std::str::FromStr;

/// A PostgreSQL write-ahead log position (`pg_lsn`), printed as `X/X`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Lsn(pub u64);

impl Lsn {
    /// The invalid position `0/0`; START_REPLICATION at it resumes from the slot.
    pub const ZERO: Lsn = Lsn(0);

    /// Bytes between `self` and an earlier position (0 if it is not earlier).
    pub fn bytes_after(self, earlier: Lsn) -> u64 {
        self.0.saturating_sub(earlier.0)
    }
}

impl fmt::Display for Lsn {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:X}/{:X}", self.0 >> 32, self.0 & 0xFFFF_FFFF)
    }
}

/// An `X/X` text that is not a valid LSN.
#[derive(Debug, thiserror::Error)]
#[error("{0:?} is not a PostgreSQL LSN (expected two hexadecimal numbers as X/X)")]
pub struct ParseLsnError(String);

impl FromStr for Lsn {
    type Err = ParseLsnError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let err = || ParseLsnError(s.to_string());
        let (hi, lo) = s.split_once('/').ok_or_else(err)?;
        let hi = u64::from_str_radix(hi, 16).map_err(|_| err())?;
        let lo = u64::from_str_radix(lo, 16).map_err(|_| err())?;
        if hi > u32::MAX as u64 || lo > u32::MAX as u64 {
            return Err(err());
        }
        Ok(Lsn((hi << 32) | lo))
    }
}

/// Where a row change sits in the totally ordered change stream: the commit
/// LSN of its transaction, then its position inside the transaction.
///
/// Transactions are decoded in commit order, so positions only grow; a sink
/// that remembers the last position it stored can drop anything redelivered.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Position {
    /// Commit LSN of the transaction (the snapshot's consistent point for snapshot rows).
    pub commit_lsn: Lsn,
    /// Zero-based index of the change inside its transaction.
    pub seq: u64,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lsn_round_trips_through_text() {
        let lsn: Lsn = "16/B374D848".parse().unwrap();
        assert_eq!(lsn.0, 0x16_B374_D848);
        assert_eq!(lsn.to_string(), "16/B374D848");
        assert!("nonsense".parse::<Lsn>().is_err());
        assert!("1/100000000".parse::<Lsn>().is_err());
    }

    #[test]
    fn positions_order_by_commit_then_seq() {
        let a = Position {
            commit_lsn: Lsn(10),
            seq: 5,
        };
        let b = Position {
            commit_lsn: Lsn(11),
            seq: 0,
        };
        assert!(a < b);
    }
}
