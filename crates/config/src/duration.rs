//! Go's duration text (`"100ms"`, `"1h30m"`, `"1.5s"`), as containerd's config writes it.

use std::time::Duration;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct GoDuration(pub Duration);

const UNITS: &[(&str, f64)] = &[
    ("ns", 1.0),
    ("us", 1e3),
    ("µs", 1e3),
    ("ms", 1e6),
    ("s", 1e9),
    ("m", 60e9),
    ("h", 3600e9),
];

/// Parses Go's format: an optional sign, then number-unit pairs; a bare `0` is zero.
pub fn parse(text: &str) -> Result<Duration, String> {
    let bad =
        || format!("invalid duration {text:?} (want Go's form, such as \"100ms\" or \"1h30m\")");
    let rest = text.strip_prefix('+').unwrap_or(text);
    if rest.starts_with('-') {
        return Err(format!("negative duration {text:?}"));
    }
    if rest == "0" {
        return Ok(Duration::ZERO);
    }
    if rest.is_empty() {
        return Err(bad());
    }
    let mut nanos = 0f64;
    let mut s = rest;
    while !s.is_empty() {
        let num_len = s
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .ok_or_else(bad)?;
        let value: f64 = s[..num_len].parse().map_err(|_| bad())?;
        s = &s[num_len..];
        let unit_len = s
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(s.len());
        let scale = UNITS
            .iter()
            .find(|(u, _)| *u == &s[..unit_len])
            .map(|(_, scale)| *scale)
            .ok_or_else(bad)?;
        nanos += value * scale;
        s = &s[unit_len..];
    }
    Ok(Duration::from_nanos(nanos.round() as u64))
}

/// Go's way of printing a duration: `0s`, `100ms`, `1.5s`, `1h30m0s`.
pub fn format(d: Duration) -> String {
    let nanos = d.as_nanos();
    if nanos == 0 {
        return "0s".into();
    }
    if nanos < 1_000 {
        return format!("{nanos}ns");
    }
    if nanos < 1_000_000 {
        return format!("{}µs", trim(nanos as f64 / 1e3));
    }
    if nanos < 1_000_000_000 {
        return format!("{}ms", trim(nanos as f64 / 1e6));
    }
    let total_secs = nanos as f64 / 1e9;
    let hours = (total_secs / 3600.0).floor();
    let minutes = ((total_secs - hours * 3600.0) / 60.0).floor();
    let secs = total_secs - hours * 3600.0 - minutes * 60.0;
    match (hours > 0.0, minutes > 0.0 || hours > 0.0) {
        (true, _) => format!("{hours}h{minutes}m{}s", trim(secs)),
        (false, true) => format!("{minutes}m{}s", trim(secs)),
        _ => format!("{}s", trim(secs)),
    }
}

fn trim(v: f64) -> String {
    let s = format!("{v:.9}");
    let s = s.trim_end_matches('0').trim_end_matches('.');
    s.to_owned()
}

impl<'de> Deserialize<'de> for GoDuration {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = String::deserialize(d)?;
        parse(&text)
            .map(GoDuration)
            .map_err(serde::de::Error::custom)
    }
}

impl Serialize for GoDuration {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&format(self.0))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_prints_go_durations() {
        assert_eq!(parse("0").unwrap(), Duration::ZERO);
        assert_eq!(parse("0ms").unwrap(), Duration::ZERO);
        assert_eq!(parse("100ms").unwrap(), Duration::from_millis(100));
        assert_eq!(parse("1h30m").unwrap(), Duration::from_secs(5400));
        assert_eq!(parse("1.5s").unwrap(), Duration::from_millis(1500));
        assert_eq!(parse("2us").unwrap(), Duration::from_micros(2));
        for bad in ["", "10", "5 s", "1x", "-1s", "ms"] {
            assert!(parse(bad).is_err(), "{bad:?} parsed");
        }
        assert_eq!(format(Duration::ZERO), "0s");
        assert_eq!(format(Duration::from_millis(100)), "100ms");
        assert_eq!(format(Duration::from_millis(1500)), "1.5s");
        assert_eq!(format(Duration::from_secs(5400)), "1h30m0s");
        for d in ["100ms", "1.5s", "1h30m0s", "2µs", "0s"] {
            assert_eq!(format(parse(d).unwrap()), d);
        }
    }
}
