//! Summaries of repeated measurements. This machine is noisy, so every figure the bench prints
//! is a median of several samples, shown with its spread so a reader can tell a real
//! difference from jitter.

use std::fmt;

/// The median and range of a set of samples.
#[derive(Debug, Clone)]
pub struct Summary {
    pub median: f64,
    pub min: f64,
    pub max: f64,
    pub samples: Vec<f64>,
}

impl Summary {
    /// Summarises `samples`; an empty set gives NaN so a missing figure is never shown as zero.
    pub fn of(samples: &[f64]) -> Summary {
        let mut sorted: Vec<f64> = samples.iter().copied().filter(|x| x.is_finite()).collect();
        sorted.sort_by(f64::total_cmp);
        let median = match sorted.len() {
            0 => f64::NAN,
            n if n % 2 == 1 => sorted[n / 2],
            n => (sorted[n / 2 - 1] + sorted[n / 2]) / 2.0,
        };
        Summary {
            median,
            min: sorted.first().copied().unwrap_or(f64::NAN),
            max: sorted.last().copied().unwrap_or(f64::NAN),
            samples: samples.to_vec(),
        }
    }

    pub fn json(&self) -> serde_json::Value {
        serde_json::json!({
            "median": round(self.median, 4),
            "min": round(self.min, 4),
            "max": round(self.max, 4),
            "samples": self.samples.iter().map(|x| round(*x, 4)).collect::<Vec<_>>(),
        })
    }
}

impl fmt::Display for Summary {
    /// `1234 [1100..1300]`, with as many decimals as the magnitude needs to be readable.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} [{}..{}]",
            number(self.median),
            number(self.min),
            number(self.max)
        )
    }
}

/// A number with precision suited to its size: 12345, 123.4, 1.234, 0.0123.
pub fn number(x: f64) -> String {
    if !x.is_finite() {
        return "n/a".into();
    }
    let magnitude = x.abs();
    if magnitude >= 1000.0 {
        format!("{x:.0}")
    } else if magnitude >= 100.0 {
        format!("{x:.1}")
    } else if magnitude >= 1.0 {
        format!("{x:.2}")
    } else {
        format!("{x:.4}")
    }
}

/// Rounds for JSON so the object stays readable; NaN becomes null through serde_json.
pub fn round(x: f64, decimals: i32) -> f64 {
    let scale = 10f64.powi(decimals);
    (x * scale).round() / scale
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn median_of_odd_even_and_empty_sets() {
        assert_eq!(Summary::of(&[3.0, 1.0, 2.0]).median, 2.0);
        assert_eq!(Summary::of(&[4.0, 1.0, 3.0, 2.0]).median, 2.5);
        assert!(Summary::of(&[]).median.is_nan());
        let s = Summary::of(&[10.0, 12.0, 8.0]);
        assert_eq!((s.min, s.max), (8.0, 12.0));
    }

    #[test]
    fn numbers_read_well() {
        assert_eq!(number(12345.6), "12346");
        assert_eq!(number(123.45), "123.5");
        assert_eq!(number(1.2345), "1.23");
        assert_eq!(number(0.012345), "0.0123");
        assert_eq!(number(f64::NAN), "n/a");
    }
}
