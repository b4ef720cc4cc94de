//! `crema classify`: Caffe's classification example, for one image, many, or folders of them.

use super::common::{engine, EngineArgs};
use crema::classify::{average_crops, top_k, Classifier, Crop, Mean, Preprocess};
use rayon::prelude::*;
use std::path::{Path, PathBuf};

#[derive(clap::Args, Debug)]
pub struct Args {
    /// The deploy net (deploy.prototxt) with one N×C×H×W input.
    #[arg(long)]
    pub model: PathBuf,
    /// Trained weights (.caffemodel).
    #[arg(long)]
    pub weights: PathBuf,
    /// Mean image (.binaryproto); reduced to its per-channel means as Caffe's example does,
    /// unless --mean-mode image.
    #[arg(long, conflicts_with = "mean_value")]
    pub mean: Option<PathBuf>,
    /// Per-channel mean values in BGR order, e.g. 104,117,123 (one value serves every channel).
    #[arg(long, value_delimiter = ',')]
    pub mean_value: Vec<f32>,
    /// With --mean: `channel` subtracts its per-channel means (Caffe's cpp_classification),
    /// `image` the whole mean image, resized to the canvas and cropped with the image.
    #[arg(long, default_value = "channel", value_parser = ["channel", "image"])]
    pub mean_mode: String,
    /// Labels, one per line in class order (Caffe's synset_words.txt format).
    #[arg(long)]
    pub labels: Option<PathBuf>,
    /// How many of the best classes to print per image.
    #[arg(long, default_value_t = 5)]
    pub top_k: usize,
    /// Resize to the canvas (--resize, else the mean image's size, else 256x256) and classify
    /// the centre crop.
    #[arg(long, conflicts_with = "oversample")]
    pub center_crop: bool,
    /// Resize to the canvas and average 10 crops: 4 corners, centre and their mirrors.
    #[arg(long)]
    pub oversample: bool,
    /// Canvas size H,W for --center-crop / --oversample.
    #[arg(long, value_delimiter = ',', num_args = 1)]
    pub resize: Vec<usize>,
    /// Scales raw pixels (0..255) to 0..RAW_SCALE before the mean is subtracted (Python's raw_scale).
    #[arg(long, default_value_t = 255.0)]
    pub raw_scale: f32,
    /// Multiplies the mean-subtracted input, as transform_param.scale did in training
    /// (0.00390625 for LeNet).
    #[arg(long, default_value_t = 1.0)]
    pub scale: f32,
    /// Images per forward pass.
    #[arg(long, default_value_t = 16)]
    pub batch_size: usize,
    /// Blob to read scores from (default: the net's last output).
    #[arg(long)]
    pub output_blob: Option<String>,
    /// Print the predictions as JSON.
    #[arg(long)]
    pub json: bool,
    /// GPU id to run on.
    #[arg(long)]
    pub gpu: Option<String>,
    /// Image files or folders (searched recursively for .jpg/.jpeg/.png/.bmp).
    #[arg(required = true)]
    pub images: Vec<PathBuf>,
}

const IMAGE_EXTENSIONS: [&str; 4] = ["jpg", "jpeg", "png", "bmp"];

/// The image files named, with folders expanded recursively in name order.
fn collect_images(args: &[PathBuf]) -> Result<Vec<PathBuf>, String> {
    fn walk(dir: &Path, out: &mut Vec<PathBuf>) -> Result<(), String> {
        let rd = std::fs::read_dir(dir)
            .map_err(|e| format!("cannot read folder {}: {e}", dir.display()))?;
        let mut entries: Vec<PathBuf> = rd.filter_map(|e| e.ok().map(|e| e.path())).collect();
        entries.sort();
        for p in entries {
            if p.is_dir() {
                walk(&p, out)?;
            } else if p
                .extension()
                .and_then(|e| e.to_str())
                .is_some_and(|e| IMAGE_EXTENSIONS.contains(&e.to_ascii_lowercase().as_str()))
            {
                out.push(p);
            }
        }
        Ok(())
    }
    let mut out = vec![];
    for a in args {
        if a.is_dir() {
            let before = out.len();
            walk(a, &mut out)?;
            if out.len() == before {
                return Err(format!(
                    "folder {} holds no .jpg, .jpeg, .png or .bmp files",
                    a.display()
                ));
            }
        } else if a.exists() {
            out.push(a.clone());
        } else {
            return Err(format!("image {} does not exist", a.display()));
        }
    }
    Ok(out)
}

fn read_labels(path: &Path) -> Result<Vec<String>, String> {
    let text =
        std::fs::read_to_string(path).map_err(|e| format!("--labels {}: {e}", path.display()))?;
    Ok(text
        .lines()
        .map(|l| l.trim_end_matches('\r').to_string())
        .collect())
}

fn json_string(s: &str) -> String {
    let mut o = String::from("\"");
    for ch in s.chars() {
        match ch {
            '"' => o.push_str("\\\""),
            '\\' => o.push_str("\\\\"),
            '\n' => o.push_str("\\n"),
            '\r' => o.push_str("\\r"),
            '\t' => o.push_str("\\t"),
            c if (c as u32) < 0x20 => o.push_str(&format!("\\u{:04x}", c as u32)),
            c => o.push(c),
        }
    }
    o.push('"');
    o
}

pub fn run(args: &Args) -> Result<(), Box<dyn std::error::Error>> {
    let engine = engine(
        &EngineArgs {
            gpu: args.gpu.clone(),
            ..Default::default()
        },
        None,
    )?;
    let mut classifier = Classifier::new(
        &args.model,
        &args.weights,
        engine,
        args.output_blob.as_deref(),
    )?;
    let [_, channels, height, width] = classifier.input_shape;
    let mean_image = match &args.mean {
        Some(p) => Some(crema_data_tools::load_mean(p).map_err(|e| format!("--mean: {e}"))?),
        None => None,
    };
    let crop = match (args.center_crop, args.oversample) {
        (_, true) => Crop::Oversample,
        (true, _) => Crop::Center,
        _ => Crop::None,
    };
    let canvas = match (args.resize.as_slice(), &mean_image) {
        ([h, w], _) => (*h, *w),
        ([s], _) => (*s, *s),
        ([], Some(m)) => (m.height, m.width),
        ([], None) => (256, 256),
        _ => return Err("--resize takes H,W (or one size for both)".into()),
    };
    let mean = match (&mean_image, args.mean_value.as_slice()) {
        (Some(m), _) if args.mean_mode == "image" => Mean::Image(m.clone()),
        (Some(m), _) => Mean::channel_means(m),
        (None, []) => Mean::None,
        (None, v) => Mean::Values(v.to_vec()),
    };
    let prep = Preprocess {
        channels,
        height,
        width,
        crop,
        canvas,
        mean,
        raw_scale: args.raw_scale,
        scale: args.scale,
    };
    prep.validate()?;
    let k = classifier.num_outputs();
    let labels = match &args.labels {
        Some(p) => {
            let l = read_labels(p)?;
            if l.len() != k {
                return Err(format!(
                    "--labels {} has {} labels but the net's `{}` has {k} outputs",
                    p.display(),
                    l.len(),
                    classifier.output_name()
                )
                .into());
            }
            Some(l)
        }
        None => None,
    };
    let files = collect_images(&args.images)?;
    let per = prep.crops_per_image();
    let batch = args.batch_size.max(1);
    let show = |i: usize| {
        labels
            .as_ref()
            .map_or_else(|| i.to_string(), |l| l[i].clone())
    };
    if args.json {
        println!("[");
    }
    for (bi, chunk) in files.chunks(batch).enumerate() {
        let inputs: Vec<Vec<Vec<f32>>> = chunk
            .par_iter()
            .map(|f| -> Result<Vec<Vec<f32>>, String> {
                let bytes = std::fs::read(f)
                    .map_err(|e| format!("cannot read image {}: {e}", f.display()))?;
                prep.image_bytes(&bytes, f).map_err(|e| e.to_string())
            })
            .collect::<Result<_, _>>()?;
        let flat: Vec<Vec<f32>> = inputs.into_iter().flatten().collect();
        let scores = average_crops(&classifier.predict(&flat)?, per);
        for (j, (f, s)) in chunk.iter().zip(&scores).enumerate() {
            let best = top_k(s, args.top_k.min(k));
            if args.json {
                let preds: Vec<String> = best
                    .iter()
                    .map(|(c, p)| match &labels {
                        Some(l) => format!(
                            "{{\"class\": {c}, \"label\": {}, \"prob\": {p}}}",
                            json_string(&l[*c])
                        ),
                        None => format!("{{\"class\": {c}, \"prob\": {p}}}"),
                    })
                    .collect();
                let last = bi * batch + j + 1 == files.len();
                println!(
                    "  {{\"image\": {}, \"predictions\": [{}]}}{}",
                    json_string(&f.display().to_string()),
                    preds.join(", "),
                    if last { "" } else { "," }
                );
            } else {
                println!("---------- Prediction for {} ----------", f.display());
                for (c, p) in best {
                    println!("{p:.4} - \"{}\"", show(c));
                }
            }
        }
    }
    if args.json {
        println!("]");
    }
    Ok(())
}
