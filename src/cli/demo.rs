//! `crema demo`: the whole Caffe workflow on a data set drawn on the spot, with no download:
//! image folders → convert-imageset → compute-image-mean → train → test → classify. Each step
//! calls what its subcommand calls and prints that subcommand, so it can be repeated on real data.

use super::common::{engine, EngineArgs};
use crema::layers::Phase;
use crema::net::{net_from_file, Net, State};
use crema::solver::{NetChoices, Solver};
use crema_data_tools::synth::{write_digit_folders, SynthOptions, CLASSES};
use crema_data_tools::{
    compute_image_mean, convert_imageset, load_image_datum, write_mean, ConvertOptions, Transformer,
};
use std::path::{Path, PathBuf};
use std::time::Instant;

/// The reference model, written into the work folder with its paths pointed there.
const TRAIN_VAL: &str = include_str!("../../models/demo/train_val.prototxt");
const SOLVER: &str = include_str!("../../models/demo/solver.prototxt");
const DEPLOY: &str = include_str!("../../models/demo/deploy.prototxt");
/// The folder the model files name; replaced by `--dir`.
const MODEL_DIR: &str = "crema-demo/";

/// The log the demo shows by default: the solver's Caffe-style progress lines, not every layer's
/// setup (`CREMA_LOG=info` shows everything).
pub const LOG_FILTER: &str = "warn,crema::solver=info";

/// Run the whole workflow on generated digits (no download needed).
#[derive(clap::Args, Debug)]
pub struct Args {
    /// Work folder for the images, databases, model files and weights (reused if it exists).
    #[arg(long, default_value = "crema-demo")]
    pub dir: PathBuf,
    /// A shorter run: fewer images and iterations (for tests and slow machines).
    #[arg(long)]
    pub quick: bool,
    /// Train on this GPU (needs a build with the `cuda` feature).
    #[arg(long)]
    pub gpu: Option<String>,
}

/// Images drawn per class for training and for testing.
const TRAIN_PER_CLASS: usize = 500;
const TEST_PER_CLASS: usize = 100;

fn step(n: usize, what: &str) {
    println!("\n[{n}/6] {what}");
}

fn command(c: &str) {
    println!("  $ {c}");
}

/// The model file `text` with its paths moved from `crema-demo/` to `dir`, and the solver's
/// iteration counts set to `iterations`.
fn adapt(text: &str, dir: &str, iterations: usize) -> String {
    text.replace(MODEL_DIR, &format!("{dir}/"))
        .replace("max_iter: 400", &format!("max_iter: {iterations}"))
        .replace(
            "test_interval: 400",
            &format!("test_interval: {iterations}"),
        )
}

/// Mean of the net output `name` over `batches` forward passes.
fn mean_output(net: &mut Net, name: &str, batches: usize) -> crema::Result<f32> {
    let mut sum = 0.0;
    for _ in 0..batches {
        net.forward()?;
        let blob = net
            .blob(name)
            .ok_or_else(|| crema::Error::msg(format!("the net has no `{name}` output")))?;
        sum += blob
            .data_to_vec(&**net.engine())
            .first()
            .copied()
            .unwrap_or(0.0);
    }
    Ok(sum / batches.max(1) as f32)
}

pub fn run(args: &Args) -> Result<(), Box<dyn std::error::Error>> {
    let started = Instant::now();
    // 400 iterations reach about 97% test accuracy; 200 about 90%.
    let iterations = if args.quick { 200 } else { 400 };
    let dir_text = args.dir.display().to_string();
    let d = dir_text.trim_end_matches('/');
    let d = if d.is_empty() { "/" } else { d };
    let dir = Path::new(d);
    let at = |name: &str| dir.join(name);
    println!("crema demo: Caffe's workflow, end to end, on digits drawn on the spot (no download), in {d}/");

    step(
        1,
        "Draw a labelled image-folder data set: one folder per class, as for your own images",
    );
    let drawn = write_digit_folders(
        &at("images"),
        &SynthOptions {
            train_per_class: TRAIN_PER_CLASS,
            test_per_class: TEST_PER_CLASS,
            size: 32,
            seed: 2024,
        },
    )?;
    println!(
        "  {} training and {} test images (32x32 PNG, digits 0-9 with random size, slant, colours and noise)\n  in {d}/images/train/<digit>/ and {d}/images/test/<digit>/ ({:.1} s)",
        TRAIN_PER_CLASS * CLASSES,
        TEST_PER_CLASS * CLASSES,
        drawn.seconds
    );

    step(
        2,
        "Convert each folder to an LMDB of Datums (labels from the sorted class folder names)",
    );
    for (images, db) in [
        (&drawn.train_dir, "train_lmdb"),
        (&drawn.test_dir, "test_lmdb"),
    ] {
        command(&format!(
            "crema convert-imageset --from-folders --shuffle --overwrite {}/ {d}/{db}",
            images.display()
        ));
        let s = convert_imageset(&ConvertOptions {
            root: images.clone(),
            from_folders: true,
            out: at(db),
            shuffle: true,
            overwrite: true,
            ..Default::default()
        })?;
        println!(
            "  wrote {} images ({} classes, {} skipped) in {:.1} s; class names in {d}/labels.txt",
            s.written, s.classes, s.skipped, s.seconds
        );
    }

    step(3, "Compute the mean image the nets subtract");
    command(&format!(
        "crema compute-image-mean {d}/train_lmdb {d}/mean.binaryproto"
    ));
    let (mean, channel_means) = compute_image_mean(&at("train_lmdb"), false)?;
    write_mean(&at("mean.binaryproto"), &mean)?;
    let means: Vec<String> = channel_means.iter().map(|m| format!("{m:.1}")).collect();
    println!("  mean B, G, R = {}", means.join(", "));

    step(
        4,
        "Train a LeNet (models/demo/train_val.prototxt, written to the work folder with its paths)",
    );
    for (name, text) in [
        ("train_val.prototxt", TRAIN_VAL),
        ("solver.prototxt", SOLVER),
        ("deploy.prototxt", DEPLOY),
    ] {
        std::fs::write(at(name), adapt(text, d, iterations))
            .map_err(|e| format!("cannot write {}: {e}", at(name).display()))?;
    }
    command(&format!("crema train --solver {d}/solver.prototxt"));
    let engine_args = EngineArgs {
        gpu: args.gpu.clone(),
        ..Default::default()
    };
    let engine = engine(&engine_args, None)?;
    let trained = Instant::now();
    let mut solver = Solver::from_file(
        &at("solver.prototxt"),
        engine.clone(),
        &NetChoices::default(),
    )?;
    solver.solve(None)?;
    let weights = format!("{d}/demo_iter_{}.caffemodel", iterations);
    println!(
        "  {} iterations of 64 images in {:.1} s on the {} engine; weights in {weights}",
        iterations,
        trained.elapsed().as_secs_f64(),
        engine.name()
    );

    step(5, "Test the trained weights on the test images");
    let batches = TEST_PER_CLASS * CLASSES / 100;
    command(&format!(
        "crema test --model {d}/train_val.prototxt --weights {weights} --iterations {batches}"
    ));
    let mut test_net = net_from_file(
        &at("train_val.prototxt"),
        &State::phase(Phase::Test),
        engine.clone(),
    )?;
    test_net.copy_trained_layers_from(Path::new(&weights))?;
    let accuracy = mean_output(&mut test_net, "accuracy", batches)?;
    println!(
        "  accuracy = {accuracy:.4} over {} test images",
        batches * 100
    );

    step(6, "Classify single images with the deploy net and the mean");
    let mut deploy = net_from_file(
        &at("deploy.prototxt"),
        &State::phase(Phase::Test),
        engine.clone(),
    )?;
    deploy.copy_trained_layers_from(Path::new(&weights))?;
    // Preprocess exactly as the TEST phase of train_val.prototxt does.
    let transform = crema_proto::read_net_text(&at("train_val.prototxt"))?
        .layer
        .iter()
        .find(|l| {
            l.include
                .iter()
                .any(|r| r.phase == Some(crema_proto::caffe::Phase::Test as i32))
        })
        .and_then(|l| l.transform_param.clone())
        .unwrap_or_default();
    let mut transformer = Transformer::new(&transform, false, 0)?;
    let labels = std::fs::read_to_string(at("labels.txt")).unwrap_or_default();
    let names: Vec<&str> = labels.lines().collect();
    let input = deploy
        .blob("data")
        .ok_or("deploy.prototxt has no `data` input")?;
    let mut values = vec![0.0f32; input.count()];
    for k in 0..5 {
        let class = (k * 3 + 1) % CLASSES;
        let file = drawn
            .test_dir
            .join(class.to_string())
            .join(format!("{k:04}.png"));
        let datum = load_image_datum(&file, class as i32, 0, 0, true)?;
        transformer.transform(&datum, &mut values)?;
        input.set_data(&**deploy.engine(), &values);
        deploy.forward()?;
        let prob = deploy
            .blob("prob")
            .ok_or("deploy.prototxt has no `prob` output")?;
        let prob = prob.data_to_vec(&**deploy.engine());
        let (best, p) =
            prob.iter().enumerate().fold(
                (0, f32::MIN),
                |(bi, bp), (i, &p)| if p > bp { (i, p) } else { (bi, bp) },
            );
        let name = |i: usize| names.get(i).copied().unwrap_or("?").to_string();
        let verdict = if best == class { "right" } else { "wrong" };
        println!(
            "  {}: {} (p = {p:.3}); true class {} - {verdict}",
            file.display(),
            name(best),
            name(class)
        );
    }

    println!(
        "\nFinal test accuracy: {:.1}% (chance: {:.0}%), the whole workflow in {:.0} s.",
        accuracy * 100.0,
        100.0 / CLASSES as f64,
        started.elapsed().as_secs_f64()
    );
    println!("Your own data: put the images in one folder per class and run the commands above with your paths.");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn model_files_follow_the_work_folder() {
        let s = adapt(SOLVER, "/tmp/x", 40);
        assert!(
            s.contains("net: \"/tmp/x/train_val.prototxt\"")
                && s.contains("snapshot_prefix: \"/tmp/x/demo\""),
            "{s}"
        );
        assert!(
            s.contains("max_iter: 40") && s.contains("test_interval: 40"),
            "{s}"
        );
        let n = adapt(TRAIN_VAL, "w", 40);
        assert!(
            !n.contains(MODEL_DIR)
                && n.contains("\"w/train_lmdb\"")
                && n.contains("\"w/mean.binaryproto\"")
        );
    }
}
