//! `crema parse-log`: the CSV tables of Caffe's tools/extra/parse_log.py.

use crema::training_log::{log_year, parse_log};
use std::path::PathBuf;

#[derive(clap::Args, Debug)]
pub struct Args {
    /// A training log (crema's or Caffe's glog output).
    pub log: PathBuf,
    /// Folder for LOG.train and LOG.test (default: the current folder, as parse_log.py's argument).
    #[arg(default_value = ".")]
    pub out_dir: PathBuf,
}

pub fn run(args: &Args) -> Result<(), Box<dyn std::error::Error>> {
    let text = std::fs::read(&args.log)
        .map_err(|e| format!("cannot read log {}: {e}", args.log.display()))?;
    let (train, test) = parse_log(&String::from_utf8_lossy(&text), log_year(&args.log))
        .map_err(|e| format!("{}: {e}", args.log.display()))?;
    let base = args
        .log
        .file_name()
        .ok_or("the log path has no file name")?
        .to_string_lossy()
        .into_owned();
    std::fs::create_dir_all(&args.out_dir)?;
    for (table, ext) in [(&train, "train"), (&test, "test")] {
        let out = args.out_dir.join(format!("{base}.{ext}"));
        if table.rows.is_empty() {
            println!("Not writing {}; no lines to write", out.display());
            continue;
        }
        std::fs::write(&out, table.to_csv())
            .map_err(|e| format!("cannot write {}: {e}", out.display()))?;
        println!(
            "{}: {} rows ({})",
            out.display(),
            table.rows.len(),
            table.columns.join(",")
        );
    }
    Ok(())
}
