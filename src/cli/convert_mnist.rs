//! `crema convert-mnist`: MNIST idx files (plain or .gz) to an LMDB of Datums.
use std::path::PathBuf;

/// Convert an MNIST image/label file pair into an LMDB, as Caffe's convert_mnist_data.
#[derive(clap::Args, Debug)]
pub struct Args {
    /// The idx3 image file, e.g. train-images-idx3-ubyte(.gz).
    pub images: PathBuf,
    /// The idx1 label file, e.g. train-labels-idx1-ubyte(.gz).
    pub labels: PathBuf,
    /// The LMDB directory to create.
    pub output_db: PathBuf,
    /// First item to convert.
    #[arg(long, default_value_t = 0)]
    pub start: usize,
    /// Number of items to convert (default: all from --start).
    #[arg(long)]
    pub count: Option<usize>,
    /// Replace an existing output database.
    #[arg(long)]
    pub overwrite: bool,
}

/// Runs the conversion and prints a one-line summary.
pub fn run(args: &Args) -> Result<(), Box<dyn std::error::Error>> {
    let written = crema_data_tools::convert_mnist(
        &args.images,
        &args.labels,
        &args.output_db,
        args.start,
        args.count,
        args.overwrite,
    )?;
    println!(
        "convert-mnist: wrote {written} items to {}",
        args.output_db.display()
    );
    Ok(())
}
