//! `crema compute-image-mean`: the mean image of an LMDB, as Caffe's compute_image_mean.
use std::io::IsTerminal;
use std::path::PathBuf;

/// Compute the mean image of a database of Datums (raw or encoded).
#[derive(clap::Args, Debug)]
pub struct Args {
    /// The LMDB to average.
    pub input_db: PathBuf,
    /// Where to write the mean as a binaryproto (optional: without it only the means print).
    pub output_file: Option<PathBuf>,
    /// Database type; only lmdb is supported.
    #[arg(long, default_value = "lmdb")]
    pub backend: String,
}

/// Computes the mean, writes it if asked, and prints the per-channel means.
pub fn run(args: &Args) -> Result<(), Box<dyn std::error::Error>> {
    if args.backend != "lmdb" {
        return Err(format!(
            "--backend {:?} is not supported; crema reads and writes lmdb only",
            args.backend
        )
        .into());
    }
    let show_progress = std::io::stderr().is_terminal();
    let (blob, means) = crema_data_tools::compute_image_mean(&args.input_db, show_progress)?;
    if let Some(out) = &args.output_file {
        crema_data_tools::write_mean(out, &blob)?;
    }
    for (c, m) in means.iter().enumerate() {
        println!("mean_value channel [{c}]: {m}");
    }
    let written = args
        .output_file
        .as_ref()
        .map(|p| format!(", written to {}", p.display()))
        .unwrap_or_default();
    println!(
        "compute-image-mean: {}x{}x{} mean of {}{written}",
        blob.channels(),
        blob.height(),
        blob.width(),
        args.input_db.display()
    );
    Ok(())
}
