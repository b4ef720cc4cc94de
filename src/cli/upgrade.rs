//! `crema upgrade-net` and `crema upgrade-solver`: write legacy Caffe files in the current format
//! (Caffe's upgrade_net_proto_text / _binary and upgrade_solver_proto_text).

use std::path::{Path, PathBuf};

#[derive(clap::Args, Debug)]
pub struct NetArgs {
    /// The net to upgrade: a prototxt, or a binary .caffemodel.
    pub input: PathBuf,
    /// Where to write the upgraded net (same format as the input).
    pub output: PathBuf,
}

#[derive(clap::Args, Debug)]
pub struct SolverArgs {
    /// The solver prototxt to upgrade.
    pub input: PathBuf,
    /// Where to write the upgraded solver.
    pub output: PathBuf,
}

/// Binary files are recognised by extension, as Caffe's two separate tools are chosen by users.
fn is_binary(p: &Path) -> bool {
    matches!(
        p.extension().and_then(|e| e.to_str()),
        Some("caffemodel" | "binaryproto" | "pb")
    )
}

pub fn run_net(args: &NetArgs) -> Result<(), Box<dyn std::error::Error>> {
    let binary = is_binary(&args.input);
    let net: crema_proto::caffe::NetParameter = if binary {
        crema_proto::read_binary(&args.input, "caffe.NetParameter")?
    } else {
        crema_proto::read_net_text(&args.input)?
    };
    let up = crema::upgrade::upgrade_net(&net)?;
    if binary {
        crema_proto::write_binary_atomic(&args.output, &up)?;
    } else {
        crema_proto::write_text_atomic(&args.output, &up, "caffe.NetParameter")?;
    }
    println!(
        "wrote upgraded net ({} layers) to {}",
        up.layer.len(),
        args.output.display()
    );
    Ok(())
}

pub fn run_solver(args: &SolverArgs) -> Result<(), Box<dyn std::error::Error>> {
    let p = crema_proto::read_solver_text(&args.input)?;
    let up = crema::upgrade::upgrade_solver(&p)?;
    crema_proto::write_text_atomic(&args.output, &up, "caffe.SolverParameter")?;
    println!("wrote upgraded solver to {}", args.output.display());
    Ok(())
}
