//! Each way against the no-op round by round: a way's chunk and the no-op's
//! chunk of the same round run a minute or less apart, so a slow spell of the
//! shared machine that lasts a round moves both. The ratio of a round's two
//! chunks' p50 (and p99), and the median of those ratios over the rounds,
//! tell a way's cost apart from the spells better than the ratio of the
//! whole rows, which a spell on one way's chunks moves alone.

use super::cost::{Row, pct};

/// The way every other is compared with.
const BASE: &str = "no-op";

/// The median of `v` (the mean of the middle two for an even count).
fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    match v.len() {
        0 => f64::NAN,
        n if n % 2 == 1 => v[n / 2],
        n => (v[n / 2 - 1] + v[n / 2]) / 2.0,
    }
}

/// Round by round, `way`'s chunk's `p` percentile over the base's.
fn ratios(way: &Row, base: &Row, p: f64) -> Vec<f64> {
    way.chunks
        .iter()
        .zip(&base.chunks)
        .map(|(w, b)| pct(w.clone(), p) / pct(b.clone(), p))
        .collect()
}

/// Prints, for each wave, each way's round-by-round ratios to the no-op's.
pub fn print(rows: &[Row]) {
    println!(
        "\neach way against the {BASE} round by round (a round: one chunk of each way, in turn): \
         the ratio of the two chunks' p50 and p99, the median over the rounds, then each round's"
    );
    for base in rows.iter().filter(|r| r.way == BASE) {
        for r in rows.iter().filter(|r| r.wave == base.wave && r.way != BASE) {
            let line = |p: f64| {
                let v = ratios(r, base, p);
                let each: Vec<String> = v.iter().map(|x| format!("{x:.2}")).collect();
                format!("{:.2}x ({})", median(v), each.join(" "))
            };
            println!(
                "  {:<13} {:<18} p50 {}, p99 {}",
                r.way,
                r.wave,
                line(0.5),
                line(0.99)
            );
        }
    }
}
