//! `crema inspect`: a net's layers as a table of shapes, parameters, multiply-adds and memory.

use super::common::parse_phase;
use crema::engine::CpuEngine;
use crema::layers::Phase;
use crema::net::substitute::{replace_data_layers, DataOverrides};
use crema::net::{Net, State};
use std::path::PathBuf;
use std::rc::Rc;

#[derive(clap::Args, Debug)]
pub struct Args {
    /// The net definition (deploy or train_val prototxt).
    pub model: PathBuf,
    /// Trained weights to load (checks that they fit the net).
    #[arg(long)]
    pub weights: Option<PathBuf>,
    /// Phase to build the net for.
    #[arg(long, default_value = "TEST", value_parser = parse_phase)]
    pub phase: Phase,
    /// Net stages to include (repeatable, or comma separated).
    #[arg(long, value_delimiter = ',')]
    pub stage: Vec<String>,
    /// Net level.
    #[arg(long, default_value_t = 0)]
    pub level: i32,
    /// Replace every data layer by an Input of its declared shape, even when its source exists.
    #[arg(long)]
    pub no_data: bool,
    /// Shape of the data of replaced data layers: N,C,H,W (or C,H,W with N from the layer).
    #[arg(long, value_delimiter = ',')]
    pub input_shape: Vec<usize>,
}

/// 1234567 -> "1,234,567".
pub fn thousands(n: u64) -> String {
    let s = n.to_string();
    let mut out = String::new();
    for (i, ch) in s.chars().enumerate() {
        if i > 0 && (s.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(ch);
    }
    out
}

fn bytes(n: usize) -> String {
    let n = n as f64;
    if n >= 1024.0 * 1024.0 * 1024.0 {
        format!("{:.2} GiB", n / (1024.0 * 1024.0 * 1024.0))
    } else if n >= 1024.0 * 1024.0 {
        format!("{:.1} MiB", n / (1024.0 * 1024.0))
    } else if n >= 1024.0 {
        format!("{:.1} KiB", n / 1024.0)
    } else {
        format!("{n} B")
    }
}

/// Blob names (split copies shown as their source) joined by commas; long lists (Concat's inputs)
/// abbreviated to the first and a count.
fn blob_list(names: &[String], split_source: &std::collections::HashMap<String, String>) -> String {
    let names: Vec<&str> = names
        .iter()
        .map(|n| split_source.get(n).unwrap_or(n).as_str())
        .collect();
    match names.as_slice() {
        [first, _, _, ..] => format!("{first},+{} more", names.len() - 1),
        _ => names.join(","),
    }
}

fn shape(s: &[usize]) -> String {
    if s.is_empty() {
        return "scalar".to_string();
    }
    s.iter()
        .map(|d| d.to_string())
        .collect::<Vec<_>>()
        .join("x")
}

pub fn run(args: &Args) -> Result<(), Box<dyn std::error::Error>> {
    let param = crema_proto::read_net_text(&args.model)?;
    let state = State {
        phase: args.phase,
        level: args.level,
        stages: args.stage.clone(),
    };
    let overrides = DataOverrides {
        all: args.no_data,
        input_shape: (!args.input_shape.is_empty()).then(|| args.input_shape.clone()),
    };
    let (param, replaced) = replace_data_layers(&param, &state, &overrides)?;
    let original: std::collections::HashSet<String> =
        param.layer.iter().map(|l| l.name().to_string()).collect();
    let mut net = Net::new(&param, &state, Rc::new(CpuEngine::new()))?;
    let mut weights_note = None;
    if let Some(w) = &args.weights {
        net.copy_trained_layers_from(w)?;
        let model: crema_proto::caffe::NetParameter =
            crema_proto::read_binary(w, "caffe.NetParameter")?;
        let blobs = model
            .layer
            .iter()
            .flat_map(|l| &l.blobs)
            .chain(model.layers.iter().flat_map(|l| &l.blobs));
        let values: usize = blobs
            .map(|b| crema::net::weights::proto_data(b).len())
            .sum();
        weights_note = Some(format!(
            "weights {}: {} values loaded",
            w.display(),
            thousands(values as u64)
        ));
    }
    let s = net.summary();
    let header = [
        "layer",
        "type",
        "bottoms -> tops",
        "top shapes",
        "params",
        "MACs/image",
        "activations",
    ];
    let mut rows: Vec<[String; 7]> = vec![];
    let mut hidden_splits = 0;
    // The tops of the Split layers crema inserts, by the blob they copy.
    let mut split_source = std::collections::HashMap::new();
    for l in &s.layers {
        if l.kind == "Split" && !original.contains(&l.name) {
            hidden_splits += 1;
            for t in &l.tops {
                split_source.insert(t.clone(), l.bottoms[0].clone());
            }
            continue;
        }
        let params = match (l.params, l.shares_params) {
            (0, true) => "shared".to_string(),
            (0, false) => "-".to_string(),
            (n, true) => format!("{} +shared", thousands(n as u64)),
            (n, false) => thousands(n as u64),
        };
        rows.push([
            l.name.clone(),
            l.kind.clone(),
            format!(
                "{} -> {}",
                blob_list(&l.bottoms, &split_source),
                blob_list(&l.tops, &split_source)
            ),
            l.top_shapes
                .iter()
                .map(|t| shape(t))
                .collect::<Vec<_>>()
                .join(" "),
            params,
            if l.macs_per_image == 0 {
                "-".to_string()
            } else {
                thousands(l.macs_per_image)
            },
            if l.activation_bytes == 0 {
                "-".to_string()
            } else {
                bytes(l.activation_bytes)
            },
        ]);
    }
    let mut totals: [String; 7] = Default::default();
    totals[0] = "total".into();
    totals[4] = thousands(s.total_params as u64);
    totals[5] = thousands(s.total_macs_per_image);
    totals[6] = bytes(s.total_activation_bytes);
    let mut widths = header.map(|h| h.chars().count());
    for r in rows.iter().chain(std::iter::once(&totals)) {
        for (w, c) in widths.iter_mut().zip(r) {
            *w = (*w).max(c.chars().count());
        }
    }
    let line = |cells: &[String]| {
        let mut out = String::new();
        for (i, (c, w)) in cells.iter().zip(&widths).enumerate() {
            let pad = w - c.chars().count();
            if i >= 4 {
                out.push_str(&" ".repeat(pad));
                out.push_str(c);
            } else {
                out.push_str(c);
                out.push_str(&" ".repeat(pad));
            }
            out.push_str("  ");
        }
        out.trim_end().to_string()
    };
    println!(
        "{} ({} phase, batch {})",
        net.name,
        args.phase.name(),
        s.batch
    );
    for r in &replaced {
        let shapes: Vec<String> = r.shapes.iter().map(|t| shape(t)).collect();
        println!(
            "  data layer `{}` ({}) stands in as an Input of {}",
            r.layer,
            r.kind,
            shapes.join(" + ")
        );
        for n in &r.notes {
            println!("    note: {n}");
        }
    }
    let head = line(&header.map(|h| h.to_string()));
    println!("{head}");
    println!("{}", "-".repeat(head.chars().count()));
    for r in &rows {
        println!("{}", line(r));
    }
    println!("{}", "-".repeat(head.chars().count()));
    println!("{}", line(&totals));
    println!(
        "learnable parameters: {} ({}); multiply-adds per image: {}; activations for a batch of {}: {}{}",
        thousands(s.total_params as u64),
        bytes(s.total_params * 4),
        thousands(s.total_macs_per_image),
        s.batch,
        bytes(s.total_activation_bytes),
        if hidden_splits > 0 { format!("; {hidden_splits} Split layers crema inserted are not shown") } else { String::new() }
    );
    if let Some(n) = weights_note {
        println!("{n}");
    }
    Ok(())
}
