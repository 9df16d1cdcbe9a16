//! One result row per scenario: medians of both sides, their ratios, and the verdict against
//! the scenario's target.

use std::fmt::Write as _;

use tonic::Code;

use crate::load::RunStats;

/// The outcome of one scenario.
pub struct Row {
    title: &'static str,
    reference_name: &'static str,
    reference: Vec<RunStats>,
    measured_name: &'static str,
    measured: Vec<RunStats>,
    targets: Vec<(String, bool)>,
    notes: Vec<String>,
}

/// Returns the median of `values`, or 0 for none.
pub fn median(values: &[f64]) -> f64 {
    let mut sorted = values.to_vec();
    sorted.sort_by(f64::total_cmp);
    match sorted.len() {
        0 => 0.0,
        len if len % 2 == 1 => sorted[len / 2],
        len => (sorted[len / 2 - 1] + sorted[len / 2]) / 2.0,
    }
}

fn median_of(runs: &[RunStats], field: impl Fn(&RunStats) -> f64) -> f64 {
    median(&runs.iter().map(field).collect::<Vec<_>>())
}

impl Row {
    /// Creates a row comparing `measured` runs against `reference` runs.
    pub fn new(
        title: &'static str,
        reference_name: &'static str,
        reference: Vec<RunStats>,
        measured_name: &'static str,
        measured: Vec<RunStats>,
    ) -> Row {
        Row {
            title,
            reference_name,
            reference,
            measured_name,
            measured,
            targets: Vec::new(),
            notes: Vec::new(),
        }
    }

    /// Returns the median calls per second of the measured side.
    pub fn measured_calls(&self) -> f64 {
        median_of(&self.measured, |stats| stats.calls_per_sec)
    }

    fn ratio(&self, field: impl Fn(&RunStats) -> f64 + Copy) -> f64 {
        let reference = median_of(&self.reference, field);
        if reference == 0.0 {
            return 0.0;
        }
        median_of(&self.measured, field) / reference
    }

    /// Requires the measured calls per second to reach `minimum` times the reference.
    pub fn target_throughput(&mut self, minimum: f64) {
        let ratio = self.ratio(|stats| stats.calls_per_sec);
        self.targets.push((
            format!("calls/s ratio {ratio:.2} (target >= {minimum})"),
            ratio >= minimum,
        ));
    }

    /// Requires the measured p99 latency to stay within `maximum` times the reference.
    pub fn target_p99(&mut self, maximum: f64) {
        let ratio = self.ratio(|stats| stats.p99_us);
        self.targets.push((
            format!("p99 ratio {ratio:.2} (target <= {maximum})"),
            ratio <= maximum,
        ));
    }

    /// Requires the measured calls per second to reach `minimum` times `bound`.
    pub fn target_against(&mut self, name: &str, bound: f64, minimum: f64) {
        let ratio = if bound > 0.0 {
            self.measured_calls() / bound
        } else {
            0.0
        };
        self.targets.push((
            format!("calls/s / {name} {ratio:.2} (target >= {minimum})"),
            ratio >= minimum,
        ));
    }

    /// Notes any call of either side that ended with another code than expected.
    pub fn expect_codes(&mut self, reference: Code, measured: Code) {
        let unexpected: u64 = self.reference.iter().map(|s| s.unexpected(reference)).sum();
        let wrong: u64 = self.measured.iter().map(|s| s.unexpected(measured)).sum();
        if unexpected + wrong > 0 {
            self.notes.push(format!(
                "UNEXPECTED STATUS: {unexpected} {} calls not {reference:?}, {wrong} {} calls \
                 not {measured:?}",
                self.reference_name, self.measured_name
            ));
        }
    }

    /// Adds a line of context under the row.
    pub fn note(&mut self, text: String) {
        self.notes.push(text);
    }

    /// Reports whether every target was met.
    pub fn met(&self) -> bool {
        self.targets.iter().all(|(_, met)| *met)
    }

    /// Renders the row as Markdown: a small table of both sides, then the targets and notes.
    pub fn render(&self) -> String {
        let mut text = String::new();
        let _ = writeln!(text, "### {}\n", self.title);
        let _ = writeln!(
            text,
            "| side | calls/s | p50 µs | p90 µs | p99 µs | server CPU µs/call | status codes (all runs) |"
        );
        let _ = writeln!(text, "|---|---|---|---|---|---|---|");
        for (name, runs) in [
            (self.reference_name, &self.reference),
            (self.measured_name, &self.measured),
        ] {
            let cpu = median(
                &runs
                    .iter()
                    .filter_map(|stats| stats.server_cpu_us_per_call)
                    .collect::<Vec<_>>(),
            );
            let mut codes = std::collections::BTreeMap::<&str, u64>::new();
            for stats in runs {
                for (code, count) in &stats.codes {
                    *codes.entry(code.as_str()).or_default() += count;
                }
            }
            let _ = writeln!(
                text,
                "| {name} | {:.0} | {:.0} | {:.0} | {:.0} | {cpu:.1} | {codes:?} |",
                median_of(runs, |s| s.calls_per_sec),
                median_of(runs, |s| s.p50_us),
                median_of(runs, |s| s.p90_us),
                median_of(runs, |s| s.p99_us),
            );
        }
        let cpu_ratio = self.ratio(|stats| stats.server_cpu_us_per_call.unwrap_or(0.0));
        let _ = writeln!(
            text,
            "\nRatios {} / {}: calls/s {:.2}, p50 {:.2}, p90 {:.2}, p99 {:.2}, server CPU per call {:.2}.",
            self.measured_name,
            self.reference_name,
            self.ratio(|s| s.calls_per_sec),
            self.ratio(|s| s.p50_us),
            self.ratio(|s| s.p90_us),
            self.ratio(|s| s.p99_us),
            cpu_ratio,
        );
        for (target, met) in &self.targets {
            let verdict = if *met { "met" } else { "MISSED" };
            let _ = writeln!(text, "- {target}: {verdict}");
        }
        for note in &self.notes {
            let _ = writeln!(text, "- {note}");
        }
        text
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn median_of_odd_and_even_counts() {
        assert_eq!(median(&[3.0, 1.0, 2.0]), 2.0);
        assert_eq!(median(&[4.0, 1.0, 2.0, 3.0]), 2.5);
        assert_eq!(median(&[]), 0.0);
    }
}
