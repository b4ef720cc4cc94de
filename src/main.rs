//! crema's command-line entry point.

mod cli;

use clap::{Parser, Subcommand};
use std::process::ExitCode;

/// crema: a Caffe-compatible deep-learning trainer.
#[derive(Parser, Debug)]
#[command(name = "crema", version, about, long_about = None)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Run the whole workflow (convert, mean, train, test, classify) on digits it draws; no download.
    Demo(cli::demo::Args),
    /// Train a net from a solver definition (Caffe's `caffe train`).
    Train(cli::train::Args),
    /// Score a trained model over N batches (Caffe's `caffe test`).
    Test(cli::test::Args),
    /// Time each layer's forward and backward pass (Caffe's `caffe time`).
    Time(cli::time::Args),
    /// Convert MNIST idx files (optionally gzipped) to an LMDB of Datum.
    ConvertMnist(cli::convert_mnist::Args),
    /// Convert an image folder and list file to an LMDB of Datum (Caffe's convert_imageset).
    ConvertImageset(cli::convert_imageset::Args),
    /// Compute the mean image of an LMDB (Caffe's compute_image_mean).
    ComputeImageMean(cli::compute_image_mean::Args),
    /// Show the GPUs, their memory and compute capability, and the CUDA library versions.
    DeviceQuery(cli::device_query::Args),
    /// Time training steps and forward passes of deploy nets on synthetic data.
    Bench(cli::bench::Args),
    /// Write a legacy (V1, input_dim, old transform fields) net in the current format.
    UpgradeNet(cli::upgrade::NetArgs),
    /// Write a solver with the legacy solver_type enum as a type string.
    UpgradeSolver(cli::upgrade::SolverArgs),
    /// Classify images with a deploy net and trained weights (Caffe's classification example).
    Classify(cli::classify::Args),
    /// Print a net's layers: shapes, learnable parameters, multiply-adds and memory.
    Inspect(cli::inspect::Args),
    /// Write named blobs of a net, batch after batch, to LMDBs of float Datums (Caffe's extract_features).
    ExtractFeatures(cli::extract_features::Args),
    /// Write the train and test CSV tables of a training log (Caffe's parse_log.py).
    ParseLog(cli::parse_log::Args),
    /// Draw training loss, test scores and the learning rate of a training log into a PNG.
    Plot(cli::plot::Args),
    /// Caffe's own command line: `crema caffe train -solver s.prototxt -gpu 0` (train, test, time, device_query).
    Caffe(cli::caffe::Args),
}

fn main() -> ExitCode {
    let args = cli::caffe_style_args(std::env::args().collect());
    let cli = Cli::parse_from(args);
    // The demo prints its own steps and shows only the solver's log; the rest log everything.
    cli::log::init(if matches!(cli.command, Command::Demo(_)) {
        cli::demo::LOG_FILTER
    } else {
        "info"
    });
    let result = match &cli.command {
        Command::Demo(a) => cli::demo::run(a),
        Command::Train(a) => cli::train::run(a),
        Command::Test(a) => cli::test::run(a),
        Command::Time(a) => cli::time::run(a),
        Command::ConvertMnist(a) => cli::convert_mnist::run(a),
        Command::ConvertImageset(a) => cli::convert_imageset::run(a),
        Command::ComputeImageMean(a) => cli::compute_image_mean::run(a),
        Command::DeviceQuery(a) => cli::device_query::run(a),
        Command::Bench(a) => cli::bench::run(a),
        Command::UpgradeNet(a) => cli::upgrade::run_net(a),
        Command::UpgradeSolver(a) => cli::upgrade::run_solver(a),
        Command::Classify(a) => cli::classify::run(a),
        Command::Inspect(a) => cli::inspect::run(a),
        Command::ExtractFeatures(a) => cli::extract_features::run(a),
        Command::ParseLog(a) => cli::parse_log::run(a),
        Command::Plot(a) => cli::plot::run(a),
        Command::Caffe(a) => cli::caffe::run(a),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}
