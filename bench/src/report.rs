//! The results: one structure, printed as Markdown tables and written as
//! JSON, so the two can never disagree.

use crate::procfs::Machine;
use serde::Serialize;
use serde_json::Value;
use std::fmt::Write as _;

/// How the numbers of a column are shown in Markdown (JSON keeps them raw).
#[derive(Debug, Clone, Copy, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Kind {
    /// Text as is.
    Text,
    /// A plain number.
    Number,
    /// A ratio, shown with an `x`.
    Ratio,
}

/// A column of a table.
#[derive(Debug, Clone, Serialize)]
pub struct Column {
    /// Header, with the unit in it ("p50 us").
    pub name: &'static str,
    /// How to show it.
    pub kind: Kind,
}

/// Shorthand for a column.
pub const fn col(name: &'static str, kind: Kind) -> Column {
    Column { name, kind }
}

/// One table of results.
#[derive(Debug, Clone, Serialize)]
pub struct Section {
    /// Heading.
    pub title: String,
    /// What the rows measure, in a sentence or two.
    pub about: String,
    /// Columns, in order.
    pub columns: Vec<Column>,
    /// Rows: one value per column (a string, a number, or null for "n/a").
    pub rows: Vec<Vec<Value>>,
}

impl Section {
    /// An empty table.
    pub fn new(title: &str, about: &str, columns: Vec<Column>) -> Section {
        Section {
            title: title.to_owned(),
            about: about.to_owned(),
            columns,
            rows: Vec::new(),
        }
    }

    /// Append a row; it must have one value per column.
    pub fn push(&mut self, row: Vec<Value>) {
        assert_eq!(row.len(), self.columns.len(), "row width of {}", self.title);
        self.rows.push(row);
    }
}

/// A performance target from the issue and whether this run met it.
#[derive(Debug, Clone, Serialize)]
pub struct Target {
    /// What is measured, in words.
    pub what: String,
    /// The goal, in words ("<= 1.5x floor").
    pub goal: String,
    /// The measured value, in words.
    pub measured: String,
    /// Whether the goal was met.
    pub met: bool,
}

/// A whole run.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    /// Where it ran.
    pub machine: Machine,
    /// Whether this was a `--quick` run (small sizes, few iterations).
    pub quick: bool,
    /// Seconds since the epoch when the run started.
    pub started_unix: u64,
    /// The tables, in order.
    pub sections: Vec<Section>,
    /// The targets and their outcome.
    pub targets: Vec<Target>,
    /// Anything skipped, and why.
    pub notes: Vec<String>,
}

impl Report {
    /// The whole report as Markdown.
    pub fn markdown(&self) -> String {
        let mut out = String::new();
        let m = &self.machine;
        let _ = writeln!(
            out,
            "Machine: {}, {} CPUs, {:.1} GiB RAM, Linux {}{}\n",
            m.cpu,
            m.cpus,
            m.ram_gib,
            m.kernel,
            if self.quick {
                " (quick run: small sizes, few iterations; not for quoting)"
            } else {
                ""
            }
        );
        for section in &self.sections {
            let _ = writeln!(out, "### {}\n\n{}\n", section.title, section.about);
            out.push_str(&table(
                section.columns.iter().map(|c| c.name.to_owned()).collect(),
                section
                    .rows
                    .iter()
                    .map(|row| {
                        row.iter()
                            .zip(&section.columns)
                            .map(|(value, column)| cell(value, column.kind))
                            .collect()
                    })
                    .collect(),
            ));
            out.push('\n');
        }
        out.push_str("### Targets\n\n");
        out.push_str(&table(
            ["target", "goal", "measured", "met"]
                .map(str::to_owned)
                .to_vec(),
            self.targets
                .iter()
                .map(|t| {
                    vec![
                        t.what.clone(),
                        t.goal.clone(),
                        t.measured.clone(),
                        if t.met { "yes" } else { "**no**" }.to_owned(),
                    ]
                })
                .collect(),
        ));
        if !self.notes.is_empty() {
            out.push_str("\nNotes:\n\n");
            for note in &self.notes {
                let _ = writeln!(out, "- {note}");
            }
        }
        out
    }
}

fn table(header: Vec<String>, rows: Vec<Vec<String>>) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "| {} |", header.join(" | "));
    let _ = writeln!(
        out,
        "|{}",
        header.iter().map(|_| "---|").collect::<String>()
    );
    for row in rows {
        let _ = writeln!(out, "| {} |", row.join(" | "));
    }
    out
}

fn cell(value: &Value, kind: Kind) -> String {
    match (value, kind) {
        (Value::Null, _) => "n/a".to_owned(),
        (Value::Number(n), Kind::Ratio) => format!("{}x", number(n.as_f64().unwrap_or(0.0))),
        (Value::Number(n), _) => number(n.as_f64().unwrap_or(0.0)),
        (Value::String(s), _) => s.clone(),
        (other, _) => other.to_string(),
    }
}

/// Three significant figures or so, no scientific notation.
pub fn number(x: f64) -> String {
    let magnitude = x.abs();
    if magnitude >= 100.0 || x.fract() == 0.0 {
        format!("{x:.0}")
    } else if magnitude >= 10.0 {
        format!("{x:.1}")
    } else if magnitude >= 1.0 {
        format!("{x:.2}")
    } else {
        format!("{x:.3}")
    }
}

/// A JSON number, or null for a missing or non-finite value.
pub fn num(x: impl Into<Option<f64>>) -> Value {
    match x.into() {
        Some(x) if x.is_finite() => {
            // Keep JSON readable: four decimals are far below the noise.
            Value::from((x * 10_000.0).round() / 10_000.0)
        }
        _ => Value::Null,
    }
}

/// A JSON string.
pub fn text(s: impl Into<String>) -> Value {
    Value::String(s.into())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn markdown_shows_ratios_and_missing_values() {
        let mut section = Section::new(
            "t",
            "about",
            vec![col("size", Kind::Text), col("ratio", Kind::Ratio)],
        );
        section.push(vec![text("4 KiB"), num(1.234)]);
        section.push(vec![text("1 GiB"), num(None)]);
        let report = Report {
            machine: Machine::describe(),
            quick: true,
            started_unix: 0,
            sections: vec![section],
            targets: vec![Target {
                what: "w".into(),
                goal: "g".into(),
                measured: "m".into(),
                met: false,
            }],
            notes: vec![],
        };
        let md = report.markdown();
        assert!(md.contains("| 4 KiB | 1.23x |"), "{md}");
        assert!(md.contains("| 1 GiB | n/a |"), "{md}");
        assert!(md.contains("| w | g | m | **no** |"), "{md}");
    }

    #[test]
    fn numbers_keep_three_figures() {
        assert_eq!(number(1234.5), "1234");
        assert_eq!(number(12.345), "12.3");
        assert_eq!(number(1.2345), "1.23");
        assert_eq!(number(0.01234), "0.012");
        assert_eq!(number(4.0), "4");
    }
}
