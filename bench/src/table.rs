//! The result table: one `Row` per measured figure, its median, min and max for each daemon
//! and their ratio.

/// One measured figure for both daemons.
pub struct Row {
    pub name: String,
    pub unit: &'static str,
    pub crated: Vec<f64>,
    pub containerd: Vec<f64>,
}

pub fn stats(v: &[f64]) -> Option<(f64, f64, f64)> {
    if v.is_empty() {
        return None;
    }
    let mut s = v.to_vec();
    s.sort_by(f64::total_cmp);
    Some((s[s.len() / 2], s[0], s[s.len() - 1]))
}

fn cell(v: &[f64]) -> String {
    match stats(v) {
        Some((med, min, max)) => format!("{med:.1} ({min:.1}-{max:.1})"),
        None => "n/a".into(),
    }
}

pub fn print(rows: &[Row]) {
    println!(
        "{:<34} {:>24} {:>24} {:>16}",
        "benchmark", "crated median (min-max)", "containerd median (min-max)", "crated/containerd"
    );
    for r in rows {
        let ratio = match (stats(&r.crated), stats(&r.containerd)) {
            (Some((a, ..)), Some((b, ..))) if b > 0.0 => format!("{:.3}", a / b),
            _ => "n/a".into(),
        };
        println!(
            "{:<34} {:>24} {:>24} {:>16}",
            format!("{} [{}]", r.name, r.unit),
            cell(&r.crated),
            cell(&r.containerd),
            ratio
        );
    }
}
