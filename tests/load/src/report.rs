//! Results: one JSON line per step on stdout, a table on stderr.

use serde::Serialize;

/// Percentiles of latencies in microseconds (sorted in place).
pub fn percentiles(lat: &mut [u64]) -> (f64, f64, f64) {
    if lat.is_empty() {
        return (f64::NAN, f64::NAN, f64::NAN);
    }
    lat.sort_unstable();
    let at = |q: f64| lat[((lat.len() - 1) as f64 * q).round() as usize] as f64 / 1000.0;
    (at(0.5), at(0.99), lat[lat.len() - 1] as f64 / 1000.0)
}

/// Prints `row` as a JSON line and a human line.
pub fn emit<T: Serialize>(row: &T, human: String) {
    if let Ok(line) = serde_json::to_string(row) {
        println!("{line}");
    }
    eprintln!("{human}");
}

/// `name=value` pairs, one decimal.
pub fn pairs(v: &[(String, f64)]) -> String {
    v.iter()
        .map(|(n, x)| format!("{n}={x:.1}"))
        .collect::<Vec<_>>()
        .join(" ")
}
