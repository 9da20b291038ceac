//! Human-readable sizes ("64KiB") and durations ("90s") for the config file.

use std::time::Duration;

use serde::{Deserialize, Deserializer};

const SIZE_UNITS: &[(&str, u64)] = &[
    ("GiB", 1 << 30),
    ("MiB", 1 << 20),
    ("KiB", 1 << 10),
    ("GB", 1_000_000_000),
    ("MB", 1_000_000),
    ("KB", 1_000),
    ("B", 1),
];

const UNITS_HINT: &str =
    "use bytes as an integer or <n>B, KB, MB, GB (×1000), KiB, MiB, GiB (×1024), units case-sensitive";

const DURATION_UNITS: &[(&str, u64)] = &[
    ("ms", 1),
    ("min", 60_000),
    ("s", 1_000),
    ("h", 3_600_000),
    ("d", 86_400_000),
];

/// Splits "<digits>[ ]<unit>" into the number and the unit.
fn split(text: &str) -> Option<(u64, &str)> {
    let text = text.trim();
    let digits = text
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(text.len());
    if digits == 0 {
        return None;
    }
    let n = text[..digits].parse().ok()?;
    Some((n, text[digits..].trim_start()))
}

/// Parses "64KiB", "10KB", "512B" or "512" into bytes.
pub fn parse_size(text: &str) -> Result<u64, String> {
    let bad = || format!("`{text}` is not a size; {UNITS_HINT}");
    let Some((n, unit)) = split(text) else {
        let digits = text.trim();
        if !digits.is_empty() && digits.bytes().all(|b| b.is_ascii_digit()) {
            // Only digits, yet `split` refused them: the number does not fit in 64 bits.
            return Err(format!("`{text}` is too large"));
        }
        return Err(bad());
    };
    let mult = if unit.is_empty() {
        1
    } else {
        SIZE_UNITS
            .iter()
            .find(|(u, _)| *u == unit)
            .map(|(_, m)| *m)
            .ok_or_else(bad)?
    };
    n.checked_mul(mult)
        .ok_or_else(|| format!("`{text}` is too large"))
}

/// Parses "500ms", "90s", "10min", "1h" or "7d".
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let bad = || {
        format!("`{text}` is not a duration; use <n>ms, <n>s, <n>min, <n>h or <n>d, e.g. \"90s\"")
    };
    let (n, unit) = split(text).ok_or_else(bad)?;
    let mult = DURATION_UNITS
        .iter()
        .find(|(u, _)| *u == unit)
        .map(|(_, m)| *m)
        .ok_or_else(bad)?;
    n.checked_mul(mult)
        .map(Duration::from_millis)
        .ok_or_else(|| format!("`{text}` is too long"))
}

/// A size in the config: an integer (bytes) or a string with a unit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Size(pub u64);

impl<'de> Deserialize<'de> for Size {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Visitor;
        impl serde::de::Visitor<'_> for Visitor {
            type Value = Size;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a size: bytes as an integer or a string such as \"64KiB\"")
            }
            fn visit_u64<E: serde::de::Error>(self, n: u64) -> Result<Size, E> {
                Ok(Size(n))
            }
            fn visit_i64<E: serde::de::Error>(self, n: i64) -> Result<Size, E> {
                u64::try_from(n)
                    .map(Size)
                    .map_err(|_| E::custom(format!("size {n} is negative")))
            }
            fn visit_f64<E: serde::de::Error>(self, n: f64) -> Result<Size, E> {
                Err(E::custom(format!(
                    "size {n} is not a whole number; {UNITS_HINT}"
                )))
            }
            fn visit_str<E: serde::de::Error>(self, t: &str) -> Result<Size, E> {
                parse_size(t).map(Size).map_err(E::custom)
            }
        }
        d.deserialize_any(Visitor)
    }
}

/// A duration in the config: a string with a unit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Dur(pub Duration);

impl<'de> Deserialize<'de> for Dur {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = String::deserialize(d)?;
        parse_duration(&text)
            .map(Dur)
            .map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes() {
        assert_eq!(parse_size("64KiB"), Ok(65_536));
        assert_eq!(parse_size("1MiB"), Ok(1 << 20));
        assert_eq!(parse_size("10KB"), Ok(10_000));
        assert_eq!(parse_size("2 GiB"), Ok(2 << 30));
        assert_eq!(parse_size("512"), Ok(512));
        assert_eq!(parse_size("512B"), Ok(512));
        for bad in [
            "",
            "KiB",
            "-1",
            "1.5KiB",
            "5 parsecs",
            "99999999999999999999",
            "1kib",
        ] {
            assert!(parse_size(bad).is_err(), "{bad}");
        }
        assert!(parse_size("5 parsecs").unwrap_err().contains("KiB"));
        assert!(parse_size("99999999999999999999")
            .unwrap_err()
            .contains("too large"));
        assert!(parse_size("99999999999GiB")
            .unwrap_err()
            .contains("too large"));
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration("5ms"), Ok(Duration::from_millis(5)));
        assert_eq!(parse_duration("90s"), Ok(Duration::from_secs(90)));
        assert_eq!(parse_duration("10min"), Ok(Duration::from_secs(600)));
        assert_eq!(parse_duration("1h"), Ok(Duration::from_secs(3600)));
        assert_eq!(parse_duration("7d"), Ok(Duration::from_secs(7 * 86_400)));
        for bad in ["", "5", "-1s", "1.5s", "5 parsecs", "s", "10m"] {
            assert!(parse_duration(bad).is_err(), "{bad}");
        }
        assert!(parse_duration("5").unwrap_err().contains("ms"));
    }
}
