//! What a scenario produces, as one JSON line on stdout and rows of a
//! Markdown table appended to the results file.

use std::fmt::Write as _;
use std::io::Write as _;
use std::path::Path;

use anyhow::{Context, Result};
use serde_json::{Map, Value, json};

/// Which direction of a figure is the good one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Better {
    Higher,
    Lower,
}

impl Better {
    pub fn describe(self) -> &'static str {
        match self {
            Better::Higher => "higher",
            Better::Lower => "lower",
        }
    }
}

/// One measured number. The unit is the last part of the name
/// (`send_p50_ms`, `msgs_per_s`, `bytes`).
#[derive(Debug, Clone)]
pub struct Figure {
    pub name: String,
    pub value: f64,
    pub better: Better,
}

/// The result of one scenario against one server.
#[derive(Debug, Clone)]
pub struct Outcome {
    pub scenario: &'static str,
    pub server: String,
    pub url: String,
    /// The sizes this run used (`{"messages": 1000, ...}`).
    pub params: Map<String, Value>,
    pub figures: Vec<Figure>,
    /// What was checked to prove the work happened.
    pub verified: String,
    pub requests: u64,
    pub wall_s: f64,
    pub rss_peak_kb: Option<u64>,
    pub error: Option<String>,
}

impl Outcome {
    pub fn new(scenario: &'static str, server: &str, url: &str) -> Self {
        Outcome {
            scenario,
            server: server.to_owned(),
            url: url.to_owned(),
            params: Map::new(),
            figures: Vec::new(),
            verified: String::new(),
            requests: 0,
            wall_s: 0.0,
            rss_peak_kb: None,
            error: None,
        }
    }

    pub fn param(&mut self, key: &str, value: impl Into<Value>) {
        self.params.insert(key.to_owned(), value.into());
    }

    pub fn figure(&mut self, name: impl Into<String>, value: f64, better: Better) {
        self.figures.push(Figure { name: name.into(), value, better });
    }

    pub fn get(&self, name: &str) -> Option<f64> {
        self.figures.iter().find(|f| f.name == name).map(|f| f.value)
    }

    pub fn json_line(&self) -> String {
        let mut figures = Map::new();
        for f in &self.figures {
            figures.insert(f.name.clone(), json_number(f.value));
        }
        let v = json!({
            "scenario": self.scenario,
            "server": self.server,
            "url": self.url,
            "params": self.params,
            "figures": figures,
            "verified": self.verified,
            "requests": self.requests,
            "wall_s": round3(self.wall_s),
            "rss_peak_kb": self.rss_peak_kb,
            "error": self.error,
        });
        v.to_string()
    }

    fn size_text(&self) -> String {
        self.params.iter().map(|(k, v)| format!("{k}={}", v.to_string().trim_matches('"'))).collect::<Vec<_>>().join(" ")
    }

    fn figures_text(&self) -> String {
        if let Some(e) = &self.error {
            return format!("**failed**: {}", e.replace('|', "/").replace('\n', " "));
        }
        self.figures.iter().map(|f| format!("{} {}", f.name, fmt_num(f.value))).collect::<Vec<_>>().join(", ")
    }
}

fn json_number(v: f64) -> Value {
    if v.is_finite() { json!(round3(v)) } else { Value::Null }
}

fn round3(v: f64) -> f64 {
    (v * 1000.0).round() / 1000.0
}

/// Three significant digits or so, for tables.
pub fn fmt_num(v: f64) -> String {
    if !v.is_finite() {
        return "–".into();
    }
    let a = v.abs();
    if a >= 100.0 || a == 0.0 {
        format!("{v:.0}")
    } else if a >= 10.0 {
        format!("{v:.1}")
    } else if a >= 1.0 {
        format!("{v:.2}")
    } else {
        format!("{v:.3}")
    }
}

/// The Markdown results file; every write appends, so a run that is
/// stopped half-way keeps the rows it finished.
pub struct ResultsFile<'a> {
    path: Option<&'a Path>,
}

impl<'a> ResultsFile<'a> {
    pub fn new(path: Option<&'a Path>) -> Self {
        ResultsFile { path }
    }

    fn append(&self, text: &str) -> Result<()> {
        let Some(path) = self.path else { return Ok(()) };
        let mut f = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .with_context(|| format!("opening {}", path.display()))?;
        f.write_all(text.as_bytes()).with_context(|| format!("writing {}", path.display()))
    }

    pub fn start_run(&self, title: &str, notes: &[String]) -> Result<()> {
        let mut s = format!("\n### {title}\n\n");
        for n in notes {
            let _ = writeln!(s, "- {n}");
        }
        s.push_str("\n| time (UTC) | server | scenario | size | figures | verified | requests | wall s |\n");
        s.push_str("|---|---|---|---|---|---|---|---|\n");
        self.append(&s)
    }

    pub fn row(&self, o: &Outcome) -> Result<()> {
        let verified = if o.error.is_some() { "no".to_owned() } else { o.verified.replace('|', "/") };
        let peak = o.rss_peak_kb.map(|kb| format!(", rss_peak_kb {kb}")).unwrap_or_default();
        self.append(&format!(
            "| {} | {} | {} | {} | {}{} | {} | {} | {} |\n",
            utc_now(),
            o.server,
            o.scenario,
            o.size_text(),
            o.figures_text(),
            peak,
            verified,
            o.requests,
            fmt_num(o.wall_s)
        ))
    }

    pub fn ratios(&self, a_label: &str, b_label: &str, pairs: &[(Outcome, Outcome)]) -> Result<String> {
        let mut s = format!(
            "\n| scenario | figure | {a_label} (A) | {b_label} (B) | A/B | better is | better here |\n|---|---|---|---|---|---|---|\n"
        );
        for (a, b) in pairs {
            for row in ratio_rows(a, b, a_label, b_label) {
                s.push_str(&row);
            }
        }
        self.append(&s)?;
        Ok(s)
    }
}

fn ratio_rows(a: &Outcome, b: &Outcome, a_label: &str, b_label: &str) -> Vec<String> {
    if a.error.is_some() || b.error.is_some() {
        let which = match (&a.error, &b.error) {
            (Some(_), Some(_)) => "both failed",
            (Some(_), None) => "A failed",
            _ => "B failed",
        };
        return vec![format!("| {} | – | – | – | – | – | {which} |\n", a.scenario)];
    }
    a.figures
        .iter()
        .filter_map(|fa| {
            let fb = b.figures.iter().find(|f| f.name == fa.name)?;
            let ratio = fa.value / fb.value;
            let winner = if !ratio.is_finite() || fa.value == fb.value {
                "even".to_owned()
            } else if (fa.value > fb.value) == (fa.better == Better::Higher) {
                format!("{a_label} {}×", fmt_num(advantage(fa.value, fb.value)))
            } else {
                format!("{b_label} {}×", fmt_num(advantage(fa.value, fb.value)))
            };
            Some(format!(
                "| {} | {} | {} | {} | {} | {} | {} |\n",
                a.scenario,
                fa.name,
                fmt_num(fa.value),
                fmt_num(fb.value),
                fmt_num(ratio),
                fa.better.describe(),
                winner
            ))
        })
        .collect()
}

/// How many times the better value beats the worse one.
fn advantage(a: f64, b: f64) -> f64 {
    let (hi, lo) = if a.abs() >= b.abs() { (a, b) } else { (b, a) };
    hi / lo
}

/// `YYYY-MM-DD HH:MM:SS` in UTC, from the system clock.
pub fn utc_now() -> String {
    let secs = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0);
    let (days, rem) = ((secs / 86_400) as i64, secs % 86_400);
    // Howard Hinnant's days-to-civil.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1_460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!("{year:04}-{month:02}-{day:02} {:02}:{:02}:{:02}", rem / 3600, rem % 3600 / 60, rem % 60)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ratio_names_the_better_server() {
        let mut a = Outcome::new("send", "chancery", "u");
        let mut b = Outcome::new("send", "synapse", "u");
        a.figure("msgs_per_s", 200.0, Better::Higher);
        b.figure("msgs_per_s", 50.0, Better::Higher);
        a.figure("send_p50_ms", 2.0, Better::Lower);
        b.figure("send_p50_ms", 20.0, Better::Lower);
        let rows = ratio_rows(&a, &b, "chancery", "synapse");
        assert!(rows[0].contains("| 4.00 | higher | chancery 4.00× |"), "{}", rows[0]);
        assert!(rows[1].contains("| 0.100 | lower | chancery 10.0× |"), "{}", rows[1]);
    }

    #[test]
    fn numbers_read_well() {
        assert_eq!(fmt_num(1234.5), "1234");
        assert_eq!(fmt_num(12.345), "12.3");
        assert_eq!(fmt_num(1.2345), "1.23");
        assert_eq!(fmt_num(0.012345), "0.012");
        assert_eq!(fmt_num(f64::NAN), "–");
    }
}
