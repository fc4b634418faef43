//! `haba compare`: several runs in one equal-storage table, a bar chart and JSON.

use std::path::PathBuf;

use anyhow::Context;
use haba::report::compare::{compare, rows_of_report, table};
use haba::report::plot::compare_png;

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
        let path = dir.join("report.json");
        let json = std::fs::read_to_string(&path).with_context(|| {
            format!(
                "reading {} (is {} a finished run directory?)",
                path.display(),
                dir.display()
            )
        })?;
        let name = dir
            .file_name()
            .map_or_else(|| dir.display().to_string(), |n| n.to_string_lossy().into());
        runs.push(rows_of_report(&name, &json)?);
    }
    let rows = compare(runs)?;
    print!("{}", table(&rows));
    std::fs::create_dir_all(&args.out)
        .with_context(|| format!("creating --out {}", args.out.display()))?;
    let (png, json) = (args.out.join("compare.png"), args.out.join("compare.json"));
    std::fs::write(&png, compare_png(&rows)?)
        .with_context(|| format!("writing {}", png.display()))?;
    haba::report::write_report_json(&json, &rows)?;
    println!("wrote {} and {}", png.display(), json.display());
    Ok(())
}
