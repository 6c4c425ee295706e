//! Output: aligned tables for people, JSON for scripts, and the words both use.

use std::io::Write;

use benmo::proto;
use benmo_paxos::{Hash, Outcome};
use serde_json::Value;

/// The first 12 hex digits of a hash, as tables show it.
pub fn short(hash: &Hash) -> String {
    hash.to_hex()[..12].to_string()
}

/// A hash from a proto field, or zero if malformed.
pub fn hash_bytes(bytes: &[u8]) -> Hash {
    benmo::convert::hash(bytes, "hash").unwrap_or(Hash::ZERO)
}

/// A ballot as `round.node`, or `-`.
pub fn ballot(ballot: Option<&proto::Ballot>) -> String {
    match ballot {
        Some(ballot) if ballot.node != 0 => format!("{}.{}", ballot.round, ballot.node),
        _ => "-".to_string(),
    }
}

/// An outcome in words.
pub fn outcome(outcome: Option<proto::Outcome>) -> String {
    match outcome.map(Outcome::try_from) {
        Some(Ok(outcome)) => outcome.to_string(),
        _ => "unknown".to_string(),
    }
}

/// An outcome as a JSON value with stable fields: `{"status": "applied"}`, `{"status":
/// "rejected", "reason": ...}` or `{"status": "duplicate", "first_height": ...}`.
pub fn outcome_json(outcome: Option<proto::Outcome>) -> Value {
    match outcome.map(Outcome::try_from) {
        Some(Ok(Outcome::Applied)) => serde_json::json!({ "status": "applied" }),
        Some(Ok(Outcome::Rejected(rejection))) => serde_json::json!({
            "status": "rejected",
            "reason": rejection.to_string(),
        }),
        Some(Ok(Outcome::Duplicate { first_height })) => serde_json::json!({
            "status": "duplicate",
            "first_height": first_height,
        }),
        _ => serde_json::json!({ "status": "unknown" }),
    }
}

/// A table: a header row and rows, columns padded to their widest cell.
pub struct Table {
    rows: Vec<Vec<String>>,
}

impl Table {
    /// A table with these column titles.
    pub fn new(header: &[&str]) -> Table {
        Table {
            rows: vec![header.iter().map(|title| title.to_string()).collect()],
        }
    }

    /// Adds a row.
    pub fn row(&mut self, cells: Vec<String>) {
        self.rows.push(cells);
    }

    /// Writes the table.
    pub fn write(&self, out: &mut dyn Write) -> std::io::Result<()> {
        let columns = self.rows.iter().map(Vec::len).max().unwrap_or(0);
        let widths: Vec<usize> = (0..columns)
            .map(|column| {
                self.rows
                    .iter()
                    .filter_map(|row| row.get(column))
                    .map(|cell| cell.chars().count())
                    .max()
                    .unwrap_or(0)
            })
            .collect();
        for row in &self.rows {
            let mut line = String::new();
            for (column, cell) in row.iter().enumerate() {
                if column + 1 == row.len() {
                    line.push_str(cell);
                } else {
                    line.push_str(&format!("{cell:<width$}  ", width = widths[column]));
                }
            }
            writeln!(out, "{}", line.trim_end())?;
        }
        Ok(())
    }
}

/// Writes a JSON value on one line.
pub fn json(out: &mut dyn Write, value: &Value) -> std::io::Result<()> {
    writeln!(out, "{value}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tables_align_columns() {
        let mut table = Table::new(&["NODE", "ROLE"]);
        table.row(vec!["1".into(), "leader".into()]);
        table.row(vec!["10".into(), "follower".into()]);
        let mut out = Vec::new();
        table.write(&mut out).unwrap();
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "NODE  ROLE\n1     leader\n10    follower\n"
        );
    }
}
