//! AIM symbology identifiers (ISO/IEC 15424): `]`, a code letter, a modifier character.
//!
//! Scanners prepend one when "AIM ID" transmission is on; it tells which symbology was read and, for
//! GS1 codes, stands in for the leading FNC1 that is never transmitted.

/// A recognised symbology identifier, borrowed from the frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct AimId {
    /// The code letter (`E` EAN/UPC, `C` Code 128, `d` Data Matrix, `Q` QR, `I` ITF, `e` DataBar…).
    pub letter: u8,
    /// The modifier character (`0`-`9`, `A`-`Z`, `a`-`z`).
    pub modifier: u8,
}

impl AimId {
    /// Whether this identifier says the data is a GS1 element string (FNC1 in first position).
    pub fn is_gs1(self) -> bool {
        // ]d5 / ]Q4 are the ECI variants of ]d2 / ]Q3; ]e0 is every GS1 DataBar.
        matches!(
            (self.letter, self.modifier),
            (b'C', b'1') | (b'd', b'2') | (b'd', b'5') | (b'Q', b'3') | (b'Q', b'4') | (b'e', b'0')
        )
    }
}

/// Splits a leading AIM identifier off `frame`: `(Some(id), data)` when the frame starts with one,
/// else `(None, frame)`.
pub(crate) fn split_aim(frame: &[u8]) -> (Option<AimId>, &[u8]) {
    match frame {
        [b']', letter, modifier, data @ ..]
            if letter.is_ascii_alphabetic() && modifier.is_ascii_alphanumeric() =>
        {
            let id = AimId {
                letter: *letter,
                modifier: *modifier,
            };
            (Some(id), data)
        }
        _ => (None, frame),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn splits_identifier_when_present() {
        let (id, data) = split_aim(b"]E06901234567892");
        assert_eq!(
            id,
            Some(AimId {
                letter: b'E',
                modifier: b'0'
            })
        );
        assert_eq!(data, b"6901234567892");
    }

    #[test]
    fn leaves_data_without_identifier_alone() {
        assert_eq!(split_aim(b"6901234567892"), (None, &b"6901234567892"[..]));
        // Too short, or not letter + alphanumeric after the bracket: not an identifier.
        assert_eq!(split_aim(b"]E"), (None, &b"]E"[..]));
        assert_eq!(split_aim(b"]0E1"), (None, &b"]0E1"[..]));
        assert_eq!(split_aim(b"]E-1"), (None, &b"]E-1"[..]));
    }

    #[test]
    fn identifier_alone_leaves_empty_data() {
        let (id, data) = split_aim(b"]Q1");
        assert!(id.is_some());
        assert!(data.is_empty());
    }

    #[test]
    fn gs1_identifiers() {
        for gs1 in [b"]C1", b"]d2", b"]d5", b"]Q3", b"]Q4", b"]e0"] {
            let (id, _) = split_aim(gs1);
            assert!(id.is_some_and(AimId::is_gs1), "{gs1:?}");
        }
        for not_gs1 in [b"]C0", b"]C2", b"]d1", b"]d3", b"]Q1", b"]E0", b"]I1"] {
            let (id, _) = split_aim(not_gs1);
            assert!(id.is_some_and(|id| !id.is_gs1()), "{not_gs1:?}");
        }
    }
}
