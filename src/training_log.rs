//! Training logs (crema's or Caffe's glog output) read into the two tables Caffe's
//! tools/extra/parse_log.py writes: training outputs and test outputs by iteration.
//!
//! The rules are parse_log.py's, so the CSV files come out the same: parsing starts after the
//! `Solving` line, a row collects the `Train net output` / `Test net output` values of one
//! iteration, and a row is complete once it has as many columns as the first row.

use crate::{bail, Result};

/// One table: column names (NumIters, Seconds, LearningRate, then the net's outputs in log order)
/// and rows of values; `None` where a row lacks a column.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct LogTable {
    pub columns: Vec<String>,
    pub rows: Vec<Vec<Option<f64>>>,
}

impl LogTable {
    /// The values of a column, with their iterations, skipping rows that lack it.
    pub fn series(&self, column: &str) -> Vec<(f64, f64)> {
        let Some(c) = self.columns.iter().position(|n| n == column) else {
            return vec![];
        };
        self.rows
            .iter()
            .filter_map(|r| Some((r[0]?, r.get(c).copied().flatten()?)))
            .collect()
    }

    /// The net-output columns (everything after NumIters, Seconds, LearningRate).
    pub fn outputs(&self) -> &[String] {
        self.columns.get(3..).unwrap_or(&[])
    }

    /// The table as parse_log.py's CSV: a header, then one line per row, `\r\n` line ends and
    /// numbers as Python's `str(float)` prints them.
    pub fn to_csv(&self) -> String {
        let mut out = self.columns.join(",");
        out.push_str("\r\n");
        for r in &self.rows {
            let cells: Vec<String> = r
                .iter()
                .map(|v| v.map(python_float).unwrap_or_default())
                .collect();
            out.push_str(&cells.join(","));
            out.push_str("\r\n");
        }
        out
    }
}

/// A row being collected: ordered (name, value) pairs.
type Row = Vec<(String, f64)>;

/// Python's `repr(float)`: shortest round-trip digits, positional for 1e-4 <= |x| < 1e16.
pub fn python_float(x: f64) -> String {
    if x.is_nan() {
        return "nan".into();
    }
    if x.is_infinite() {
        return if x > 0.0 { "inf".into() } else { "-inf".into() };
    }
    if x == 0.0 {
        return if x.is_sign_negative() {
            "-0.0".into()
        } else {
            "0.0".into()
        };
    }
    let sci = format!("{:e}", x.abs());
    let (mantissa, exp) = sci.split_once('e').unwrap_or((&sci, "0"));
    let exp: i32 = exp.parse().unwrap_or(0);
    let digits: String = mantissa.chars().filter(|c| *c != '.').collect();
    let sign = if x < 0.0 { "-" } else { "" };
    if (-4..16).contains(&exp) {
        if exp >= 0 {
            let int_len = exp as usize + 1;
            let (int, frac) = if digits.len() > int_len {
                (digits[..int_len].to_string(), digits[int_len..].to_string())
            } else {
                (format!("{digits:0<int_len$}"), "0".to_string())
            };
            format!("{sign}{int}.{frac}")
        } else {
            format!("{sign}0.{}{digits}", "0".repeat((-exp - 1) as usize))
        }
    } else {
        let m = if digits.len() > 1 {
            format!("{}.{}", &digits[..1], &digits[1..])
        } else {
            digits
        };
        format!(
            "{sign}{m}e{}{:02}",
            if exp < 0 { '-' } else { '+' },
            exp.abs()
        )
    }
}

/// `Iteration (\d+)`: the first "Iteration " followed by digits.
fn find_iteration(line: &str) -> Option<u64> {
    line.match_indices("Iteration ").find_map(|(i, m)| {
        let rest = &line[i + m.len()..];
        let n: String = rest.chars().take_while(|c| c.is_ascii_digit()).collect();
        n.parse().ok()
    })
}

/// `PREFIX(\d+): (\S+) = ([\.\deE+-]+)`: (name, value) of a net output line.
fn find_output(line: &str, prefix: &str) -> Option<(String, f64)> {
    line.match_indices(prefix).find_map(|(i, m)| {
        let rest = &line[i + m.len()..];
        let digits = rest.chars().take_while(|c| c.is_ascii_digit()).count();
        if digits == 0 {
            return None;
        }
        let rest = rest[digits..].strip_prefix(": ")?;
        let name: String = rest.chars().take_while(|c| !c.is_whitespace()).collect();
        if name.is_empty() {
            return None;
        }
        let rest = rest[name.len()..].strip_prefix(" = ")?;
        let value: String = rest
            .chars()
            .take_while(|c| c.is_ascii_digit() || ".eE+-".contains(*c))
            .collect();
        Some((name, value.parse().ok()?))
    })
}

/// `lr = ([-+]?[0-9]*\.?[0-9]+([eE]?[-+]?[0-9]+)?)`
fn find_lr(line: &str) -> Option<f64> {
    line.match_indices("lr = ").find_map(|(i, m)| {
        let rest = &line[i + m.len()..];
        let v: String = rest
            .chars()
            .take_while(|c| c.is_ascii_digit() || ".eE+-".contains(*c))
            .collect();
        // The longest prefix that parses as a number, as the regex's greedy match would take.
        (1..=v.len()).rev().find_map(|n| v[..n].parse::<f64>().ok())
    })
}

/// Days since 1970-01-01 of a civil date (Howard Hinnant's algorithm).
fn days_from_civil(y: i64, m: u32, d: u32) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (m as i64 + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d as i64 - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// glog's `I1122 19:07:12.345678 ...` prefix: (month, microseconds since the epoch in `year`).
fn line_time(line: &str, year: i64) -> Option<(u32, i64)> {
    let mut words = line.split_whitespace();
    let head = words.next()?;
    let clock = words.next()?;
    let month: u32 = head.get(1..3)?.parse().ok()?;
    let day: u32 = head.get(3..5)?.parse().ok()?;
    let (hms, micros) = clock.rsplit_once('.')?;
    let micros: i64 = micros.parse().ok()?;
    let hms: Vec<i64> = hms
        .split(':')
        .map(|p| p.parse().ok())
        .collect::<Option<_>>()?;
    let [h, mi, s] = hms[..] else { return None };
    if !(1..=12).contains(&month)
        || !(1..=31).contains(&day)
        || h > 23
        || mi > 59
        || s > 59
        || micros > 999_999
    {
        return None;
    }
    let secs = days_from_civil(year, month, day) * 86_400 + h * 3600 + mi * 60 + s;
    Some((month, secs * 1_000_000 + micros))
}

/// parse_log.py's parse_line_for_net_output.
fn add_output(
    found: Option<(String, f64)>,
    row: &mut Option<Row>,
    rows: &mut Vec<Row>,
    iter: f64,
    secs: f64,
    lr: f64,
) {
    if let Some((name, value)) = found {
        let same_iter = row.as_ref().is_some_and(|r| r[0].1 == iter);
        if !same_iter {
            if let Some(r) = row.take() {
                rows.push(r);
            }
            *row = Some(vec![
                ("NumIters".into(), iter),
                ("Seconds".into(), secs),
                ("LearningRate".into(), lr),
            ]);
        }
        let r = row.as_mut().expect("row was just set");
        match r.iter_mut().find(|(n, _)| *n == name) {
            Some(slot) => slot.1 = value,
            None => r.push((name, value)),
        }
    }
    if let (Some(r), Some(first)) = (row.as_ref(), rows.first()) {
        if r.len() == first.len() {
            rows.push(row.take().expect("checked"));
        }
    }
}

fn to_table(mut rows: Vec<Row>) -> LogTable {
    // fix_initial_nan_learning_rate: the first row's lr is the second's.
    if rows.len() > 1 {
        let lr = rows[1][2].1;
        rows[0][2].1 = lr;
    }
    let columns: Vec<String> = rows
        .first()
        .map(|r| r.iter().map(|(n, _)| n.clone()).collect())
        .unwrap_or_default();
    let rows = rows
        .iter()
        .map(|r| {
            columns
                .iter()
                .map(|c| r.iter().find(|(n, _)| n == c).map(|(_, v)| *v))
                .collect()
        })
        .collect();
    LogTable { columns, rows }
}

/// Parses a training log into (train, test) tables as parse_log.py does; `year` is the year the
/// log starts in (glog lines carry no year; it matters only across a leap day).
pub fn parse_log(text: &str, year: i64) -> Result<(LogTable, LogTable)> {
    let mut lines = text.lines();
    let mut start = None;
    for line in lines.by_ref() {
        if line.contains("Solving") {
            start = line_time(line.trim(), year);
            break;
        }
    }
    let Some((mut last_month, start_us)) = start else {
        bail!("no `Solving ...` line with a glog time stamp: not a crema or Caffe training log");
    };
    let mut year = year;
    let mut iteration = -1f64;
    let mut lr = f64::NAN;
    let (mut train_rows, mut test_rows) = (vec![], vec![]);
    let (mut train_row, mut test_row) = (None, None);
    for line in lines {
        if let Some(i) = find_iteration(line) {
            iteration = i as f64;
        }
        if iteration == -1.0 {
            continue;
        }
        let Some((mut month, mut t)) = line_time(line, year) else {
            continue;
        };
        if month < last_month {
            year += 1;
            (month, t) = line_time(line, year).expect("parsed above");
        }
        last_month = month;
        let secs = (t - start_us) as f64 / 1e6;
        if let Some(v) = find_lr(line) {
            lr = v;
        }
        add_output(
            find_output(line, "Train net output #"),
            &mut train_row,
            &mut train_rows,
            iteration,
            secs,
            lr,
        );
        add_output(
            find_output(line, "Test net output #"),
            &mut test_row,
            &mut test_rows,
            iteration,
            secs,
            lr,
        );
    }
    Ok((to_table(train_rows), to_table(test_rows)))
}

/// The learning rate at each iteration the log prints one (`Iteration N, lr = X`, after the
/// `Solving` line), as (iteration, lr). The tables' LearningRate column lags one display behind
/// (a row takes the last lr printed before its outputs, as parse_log.py's does); these points don't.
pub fn learning_rates(text: &str) -> Vec<(f64, f64)> {
    let mut lines = text.lines();
    if !lines.by_ref().any(|l| l.contains("Solving")) {
        return vec![];
    }
    lines
        .filter_map(|l| Some((find_iteration(l)? as f64, find_lr(l)?)))
        .collect()
}

/// The year a log file was last written (glog lines carry no year), or this year.
pub fn log_year(path: &std::path::Path) -> i64 {
    let t = std::fs::metadata(path)
        .and_then(|m| m.modified())
        .unwrap_or_else(|_| std::time::SystemTime::now());
    let secs = t
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0);
    let mut y = 1970;
    while days_from_civil(y + 1, 1, 1) * 86_400 <= secs {
        y += 1;
    }
    y
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn floats_print_as_python_does() {
        let cases = [
            (100.0, "100.0"),
            (0.01, "0.01"),
            (1e-5, "1e-05"),
            (0.0001, "0.0001"),
            (2.35127, "2.35127"),
            (1e16, "1e+16"),
            (123456.789, "123456.789"),
            (-0.5, "-0.5"),
            (0.0, "0.0"),
            (1.5e-7, "1.5e-07"),
        ];
        for (x, want) in cases {
            assert_eq!(python_float(x), want);
        }
    }

    #[test]
    fn learning_rates_from_the_lr_lines_after_solving() {
        let log = "I0101 00:00:00.000000 1 solver.cpp:48] Iteration 0, lr = 0.5 (before the solver starts)
I0101 00:00:00.100000 1 solver.cpp:317] Solving LeNet
I0101 00:00:00.200000 1 sgd_solver.cpp:105] Iteration 0, lr = 0.01
I0101 00:00:00.300000 1 solver.cpp:218] Iteration 100 (50 iter/s, 2s/100 iters), loss = 0.25
I0101 00:00:00.400000 1 sgd_solver.cpp:105] Iteration 100, lr = 1e-05
";
        assert_eq!(learning_rates(log), vec![(0.0, 0.01), (100.0, 1e-5)]);
        assert!(learning_rates("Iteration 0, lr = 0.01").is_empty());
    }

    #[test]
    fn line_patterns() {
        assert_eq!(
            find_iteration("I0101 solver.cpp:228] Iteration 100, loss = 0.3"),
            Some(100)
        );
        assert_eq!(
            find_output(
                "    Train net output #0: loss = 0.203 (* 1 = 0.203 loss)",
                "Train net output #"
            ),
            Some(("loss".into(), 0.203))
        );
        assert_eq!(find_lr("Iteration 100, lr = 0.00992565"), Some(0.00992565));
        assert_eq!(find_lr("lr = 1e-05"), Some(1e-5));
        assert_eq!(days_from_civil(1970, 1, 1), 0);
        assert_eq!(days_from_civil(2000, 3, 1), 11_017);
    }
}
