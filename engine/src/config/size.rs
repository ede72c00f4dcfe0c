//! Byte sizes as users write them: `17179869184`, `"16gb"`, `"512mb"`,
//! `"1.5GiB"`, `"100 GB"`, `"64k"`.
//!
//! Every unit is binary: `kb`, `k` and `kib` all mean 1024 bytes, so the
//! seed's `"16gb"` pool is 17179869184 bytes.

use super::suggest;

/// One kibibyte (what `kb`, `k` and `kib` mean).
pub const KIB: u64 = 1 << 10;
/// One mebibyte (`mb`, `m`, `mib`).
pub const MIB: u64 = 1 << 20;
/// One gibibyte (`gb`, `g`, `gib`).
pub const GIB: u64 = 1 << 30;
/// One tebibyte (`tb`, `t`, `tib`).
pub const TIB: u64 = 1 << 40;

/// Accepted unit spellings (case-insensitive) and their multipliers.
const UNITS: &[(&str, u64)] = &[
    ("", 1),
    ("b", 1),
    ("k", KIB),
    ("kb", KIB),
    ("kib", KIB),
    ("m", MIB),
    ("mb", MIB),
    ("mib", MIB),
    ("g", GIB),
    ("gb", GIB),
    ("gib", GIB),
    ("t", TIB),
    ("tb", TIB),
    ("tib", TIB),
];

/// Why a size string was rejected; the text says what to write instead.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct SizeError(String);

/// Parses a size string into bytes.
///
/// Syntax: a non-negative decimal number, optional spaces, an optional unit
/// (`b`, `k`/`kb`/`kib`, `m`/`mb`/`mib`, `g`/`gb`/`gib`, `t`/`tb`/`tib`, any
/// case). A fraction is allowed with a unit and rounds down to whole bytes
/// (`"1.5kb"` = 1536); a plain byte count must be whole.
pub fn parse_size(text: &str) -> Result<u64, SizeError> {
    let trimmed = text.trim();
    let split = trimmed
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(trimmed.len());
    let (number, unit) = trimmed.split_at(split);
    let unit = unit.trim().to_ascii_lowercase();
    let Some(&(_, multiplier)) = UNITS.iter().find(|(name, _)| *name == unit) else {
        if number.is_empty() {
            return Err(SizeError(
                "a number of bytes or a number with a unit, e.g. \"8gb\"".to_owned(),
            ));
        }
        let hint = suggest::closest(
            &unit,
            UNITS
                .iter()
                .map(|(name, _)| *name)
                .filter(|n| !n.is_empty()),
        )
        .map(|unit| format!(" (did you mean \"{unit}\"?)"))
        .unwrap_or_default();
        return Err(SizeError(format!(
            "a size with a known unit such as \"8gb\" (units: b, kb, mb, gb, tb; \
             binary, 1kb = 1024 bytes); \"{unit}\" is not one{hint}"
        )));
    };
    let (whole, fraction) = match number.split_once('.') {
        Some((whole, fraction)) => (whole, fraction),
        None => (number, ""),
    };
    let well_formed = !(whole.is_empty() && fraction.is_empty())
        && whole.bytes().all(|b| b.is_ascii_digit())
        && fraction.bytes().all(|b| b.is_ascii_digit());
    if !well_formed {
        return Err(SizeError(
            "a non-negative number with an optional unit, e.g. \"512mb\" or \"1.5gb\"".to_owned(),
        ));
    }
    if multiplier == 1 && fraction.bytes().any(|b| b != b'0') {
        return Err(SizeError(
            "a whole number of bytes (or a fraction with a unit, e.g. \"1.5kb\")".to_owned(),
        ));
    }
    let too_large = || SizeError(format!("a size of at most {} bytes", u64::MAX));
    let whole_value: u128 = if whole.is_empty() {
        0
    } else {
        // More than 39 digits cannot fit u128; anything that large overflows u64 anyway.
        whole.parse::<u128>().map_err(|_| too_large())?
    };
    let mut bytes = whole_value
        .checked_mul(u128::from(multiplier))
        .ok_or_else(too_large)?;
    // Fraction digits beyond 18 cannot change the result by a whole byte for
    // units up to a tebibyte (2^40 < 10^18).
    let fraction = &fraction[..fraction.len().min(18)];
    if !fraction.is_empty() {
        let numerator: u128 = fraction.parse().map_err(|_| too_large())?;
        let denominator = 10u128.pow(fraction.len() as u32);
        bytes += numerator * u128::from(multiplier) / denominator;
    }
    u64::try_from(bytes).map_err(|_| too_large())
}

/// Formats `bytes` in the largest binary unit that divides it exactly
/// (`17179869184` -> `"16gb"`, `1536` -> `"1536"`), so the result parses back
/// to the same value with [`parse_size`].
pub fn format_size(bytes: u64) -> String {
    for (unit, multiplier) in [("tb", TIB), ("gb", GIB), ("mb", MIB), ("kb", KIB)] {
        // Every multiplier is a power of two.
        if bytes != 0 && bytes & (multiplier - 1) == 0 {
            return format!("{}{unit}", bytes / multiplier);
        }
    }
    bytes.to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn size_table() {
        let table: &[(&str, u64)] = &[
            ("0", 0),
            ("4096", 4096),
            (" 4096 ", 4096),
            ("4096b", 4096),
            ("64k", 64 * 1024),
            ("64K", 64 * 1024),
            ("64kb", 64 * 1024),
            ("64KiB", 64 * 1024),
            ("512mb", 512 * 1024 * 1024),
            ("512M", 512 * 1024 * 1024),
            ("1mb", 1 << 20),
            ("4gb", 4 << 30),
            ("8gb", 8 << 30),
            ("8GB", 8 << 30),
            ("16gb", 17_179_869_184),
            ("100 GB", 100 << 30),
            ("100gb", 107_374_182_400),
            ("1.5GiB", 1_610_612_736),
            ("1.5gb", 1_610_612_736),
            ("0.5g", 512 << 20),
            (".5kb", 512),
            ("1.kb", 1024),
            ("1tb", 1 << 40),
            ("2TiB", 2 << 40),
            ("0.1kb", 102),
            ("1.0", 1),
            ("16777215tb", 16_777_215 << 40),
        ];
        for &(text, bytes) in table {
            assert_eq!(parse_size(text), Ok(bytes), "parse_size({text:?})");
        }
    }

    #[test]
    fn rejects_malformed_sizes() {
        for text in [
            "",
            " ",
            "gb",
            "-1gb",
            "-5",
            "8 gigs",
            "8gbb",
            "1.5",
            "1..5gb",
            "1.2.3kb",
            "8 g b",
            "0x10",
            "1e9",
            "nan",
            "inf",
            "16777216tb",
            "99999999999999999999999",
            "1000000000000000000000000000000000000000000gb",
        ] {
            assert!(parse_size(text).is_err(), "{text:?} should be rejected");
        }
    }

    #[test]
    fn unknown_unit_suggests_the_closest() {
        let message = parse_size("8gbb").unwrap_err().to_string();
        assert!(message.contains("did you mean \"gb\""), "{message}");
    }

    #[test]
    fn format_round_trips() {
        for bytes in [
            0,
            1,
            1536,
            4096,
            64 << 10,
            512 << 20,
            17_179_869_184,
            3 << 40,
            u64::MAX,
        ] {
            assert_eq!(parse_size(&format_size(bytes)), Ok(bytes), "{bytes}");
        }
        assert_eq!(format_size(17_179_869_184), "16gb");
        assert_eq!(format_size(1 << 20), "1mb");
        assert_eq!(format_size(1536), "1536");
        assert_eq!(format_size(0), "0");
    }
}
