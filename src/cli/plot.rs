//! `crema plot`: training curves from a log, as a PNG.

use crema::curves::plot_curves;
use crema::training_log::{learning_rates, log_year, parse_log};
use std::path::PathBuf;

#[derive(clap::Args, Debug)]
pub struct Args {
    /// A training log (crema's or Caffe's glog output).
    pub log: PathBuf,
    /// The image to write (.png).
    pub out: PathBuf,
    /// Image width in pixels.
    #[arg(long, default_value_t = 1200)]
    pub width: u32,
    /// Image height in pixels.
    #[arg(long, default_value_t = 1000)]
    pub height: u32,
    /// Chart title (default: the log's file name).
    #[arg(long)]
    pub title: Option<String>,
}

pub fn run(args: &Args) -> Result<(), Box<dyn std::error::Error>> {
    let text = std::fs::read(&args.log)
        .map_err(|e| format!("cannot read log {}: {e}", args.log.display()))?;
    let text = String::from_utf8_lossy(&text);
    let (train, test) = parse_log(&text, log_year(&args.log))
        .map_err(|e| format!("{}: {e}", args.log.display()))?;
    let title = args.title.clone().unwrap_or_else(|| {
        args.log
            .file_name()
            .map(|f| f.to_string_lossy().into_owned())
            .unwrap_or_default()
    });
    plot_curves(
        &train,
        &test,
        &learning_rates(&text),
        &title,
        &args.out,
        args.width,
        args.height,
    )?;
    println!(
        "{}: {} training points, {} test points",
        args.out.display(),
        train.rows.len(),
        test.rows.len()
    );
    Ok(())
}
