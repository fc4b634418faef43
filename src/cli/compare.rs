//! `haba compare`: several runs in one equal-storage table, a bar chart and JSON.

use std::path::PathBuf;

use anyhow::Context;
use haba::report::compare::{compare, rows_of_report, table};
use haba::report::plot::compare_png;
use haba::report::{COMPARE_JSON, COMPARE_PNG, RunDir};

#[derive(clap::Args, Debug)]
pub struct Args {
    /// Run directories (each with its report.json), in the order of the table.
    #[arg(required = true)]
    pub runs: Vec<PathBuf>,
    /// Where compare.png and compare.json go (default: the current directory).
    #[arg(long, default_value = ".")]
    pub out: PathBuf,
}

pub fn run(args: Args) -> anyhow::Result<()> {
    let mut runs = Vec::new();
    for dir in &args.runs {
        let run = RunDir::at(dir);
        let report = run
            .read_report()
            .with_context(|| format!("is {} a finished run directory?", dir.display()))?;
        runs.push(rows_of_report(&run.name(), &report));
    }
    let rows = compare(runs)?;
    print!("{}", table(&rows));
    let (png, json) = write(&rows, &args.out)?;
    println!("wrote {} and {}", png.display(), json.display());
    Ok(())
}

/// `compare.png` and `compare.json` of `rows` in `out` (created if needed).
pub fn write(
    rows: &[haba::report::compare::Row],
    out: &std::path::Path,
) -> anyhow::Result<(PathBuf, PathBuf)> {
    std::fs::create_dir_all(out).with_context(|| format!("creating {}", out.display()))?;
    let (png, json) = (out.join(COMPARE_PNG), out.join(COMPARE_JSON));
    std::fs::write(&png, compare_png(rows)?)
        .with_context(|| format!("writing {}", png.display()))?;
    haba::report::write_report_json(&json, &rows)?;
    Ok((png, json))
}
