//! Human-readable byte sizes.

use crate::SampleError;

/// Parses a size such as `3.1GB`, `200MB`, `512KiB`, `1.5 GiB` or plain bytes (`1048576`).
///
/// Decimal units (`kB`/`KB`, `MB`, `GB`, `TB`, and the single letters `K`, `M`, `G`, `T`) are
/// powers of 1000; binary units (`KiB`, `MiB`, `GiB`, `TiB`) are powers of 1024. Units are
/// case-insensitive, a trailing `B` alone means bytes, and whitespace between the number and
/// the unit is allowed. Fractions are computed exactly and rounded down (`3.1GB` is
/// 3,100,000,000 bytes).
pub fn parse_size(s: &str) -> Result<u64, SampleError> {
    let err = |reason: &str| SampleError::InvalidSize {
        input: s.to_string(),
        reason: reason.to_string(),
    };
    let t = s.trim();
    let split = t
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(t.len());
    let (num, unit) = (&t[..split], t[split..].trim());
    if num.is_empty() {
        return Err(err("expected a number"));
    }
    let (int_part, frac_part) = match num.split_once('.') {
        Some((i, f)) => (i, f),
        None => (num, ""),
    };
    if frac_part.contains('.') || (int_part.is_empty() && frac_part.is_empty()) {
        return Err(err("malformed number"));
    }
    let mult: u64 = match unit.to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "k" | "kb" => 1_000,
        "m" | "mb" => 1_000_000,
        "g" | "gb" => 1_000_000_000,
        "t" | "tb" => 1_000_000_000_000,
        "kib" => 1 << 10,
        "mib" => 1 << 20,
        "gib" => 1 << 30,
        "tib" => 1 << 40,
        _ => {
            return Err(err(
                "unknown unit (use B, KB, MB, GB, TB, KiB, MiB, GiB or TiB)",
            ))
        }
    };
    let overflow = || err("too large");
    let int: u128 = if int_part.is_empty() {
        0
    } else {
        int_part.parse().map_err(|_| overflow())?
    };
    let mut total = int.checked_mul(u128::from(mult)).ok_or_else(overflow)?;
    if !frac_part.is_empty() {
        if frac_part.len() > 18 {
            return Err(err("too many decimal places"));
        }
        let frac: u128 = frac_part.parse().map_err(|_| err("malformed number"))?;
        let denom = 10u128.pow(frac_part.len() as u32);
        total += frac * u128::from(mult) / denom;
    }
    u64::try_from(total).map_err(|_| overflow())
}

/// Formats a byte count for humans with decimal units (`3.10 GB`).
pub(crate) fn human(bytes: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KB", "MB", "GB", "TB"];
    let mut v = bytes as f64;
    let mut u = 0;
    while v >= 1000.0 && u + 1 < UNITS.len() {
        v /= 1000.0;
        u += 1;
    }
    if u == 0 {
        format!("{bytes} B")
    } else {
        format!("{v:.2} {}", UNITS[u])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decimal_and_binary_units() {
        assert_eq!(parse_size("3.1GB").unwrap(), 3_100_000_000);
        assert_eq!(parse_size("200MB").unwrap(), 200_000_000);
        assert_eq!(parse_size("20MB").unwrap(), 20_000_000);
        assert_eq!(parse_size("512KiB").unwrap(), 512 * 1024);
        assert_eq!(parse_size("1.5GiB").unwrap(), 1_610_612_736);
        assert_eq!(parse_size("1048576").unwrap(), 1_048_576);
        assert_eq!(parse_size("17B").unwrap(), 17);
        assert_eq!(parse_size(" 50 mb ").unwrap(), 50_000_000);
        assert_eq!(parse_size("2G").unwrap(), 2_000_000_000);
        assert_eq!(parse_size(".5KB").unwrap(), 500);
        assert_eq!(parse_size("1TiB").unwrap(), 1 << 40);
        assert_eq!(parse_size("0").unwrap(), 0);
    }

    #[test]
    fn rejects_nonsense() {
        for bad in [
            "",
            "GB",
            "1.2.3MB",
            "12XB",
            "-5MB",
            "1e9",
            ".",
            "99999999999999999999TB",
        ] {
            let e = parse_size(bad).unwrap_err();
            assert!(e.to_string().contains("invalid size"), "{bad}: {e}");
        }
    }

    #[test]
    fn human_sizes() {
        assert_eq!(human(12), "12 B");
        assert_eq!(human(3_100_000_000), "3.10 GB");
        assert_eq!(human(50_000_000), "50.00 MB");
    }
}
