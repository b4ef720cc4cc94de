//! `crema convert-imageset`: a folder of images plus a list (or one folder per class) to an LMDB.
use std::io::IsTerminal;
use std::path::PathBuf;

use crema_data_tools::{convert_imageset, ConvertOptions};

/// Convert a set of images to an LMDB of Datums, as Caffe's convert_imageset.
#[derive(clap::Args, Debug)]
pub struct Args {
    /// Folder the list's relative paths start from (with --from-folders: one sub-folder per class).
    pub root_folder: PathBuf,
    /// The list of `relative/path label` lines; with --from-folders this is DB_NAME instead.
    #[arg(value_name = "LISTFILE")]
    pub list_file: PathBuf,
    /// The LMDB directory to create (omitted with --from-folders).
    #[arg(value_name = "DB_NAME")]
    pub db_name: Option<PathBuf>,
    /// Store one grey channel instead of BGR.
    #[arg(long)]
    pub gray: bool,
    /// Shuffle the images before writing.
    #[arg(long)]
    pub shuffle: bool,
    /// Seed of --shuffle.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Database type; only lmdb is supported.
    #[arg(long, default_value = "lmdb")]
    pub backend: String,
    /// Resize images to this height (with --resize-width).
    #[arg(long, default_value_t = 0)]
    pub resize_height: u32,
    /// Resize images to this width (with --resize-height).
    #[arg(long, default_value_t = 0)]
    pub resize_width: u32,
    /// Require all images to have the same size.
    #[arg(long)]
    pub check_size: bool,
    /// Store the encoded image bytes instead of raw pixels.
    #[arg(long)]
    pub encoded: bool,
    /// Encoding for --encoded (jpg, png, bmp); default: each file's own format.
    #[arg(long, default_value = "")]
    pub encode_type: String,
    /// Make the list from ROOTFOLDER's sub-folders (sorted names get labels 0..K-1) and write
    /// their names to labels.txt beside the database.
    #[arg(long)]
    pub from_folders: bool,
    /// Replace an existing output database.
    #[arg(long)]
    pub overwrite: bool,
}

/// Runs the conversion and prints a one-line summary.
pub fn run(args: &Args) -> Result<(), Box<dyn std::error::Error>> {
    if args.backend != "lmdb" {
        return Err(format!(
            "--backend {:?} is not supported; crema reads and writes lmdb only",
            args.backend
        )
        .into());
    }
    let (list, out) = match (args.from_folders, &args.db_name) {
        (true, None) => (None, args.list_file.clone()),
        (false, Some(db)) => (Some(args.list_file.clone()), db.clone()),
        (true, Some(_)) => {
            return Err("with --from-folders give ROOTFOLDER DB_NAME only (no LISTFILE)".into())
        }
        (false, None) => {
            return Err(
                "give ROOTFOLDER LISTFILE DB_NAME, or ROOTFOLDER DB_NAME with --from-folders"
                    .into(),
            )
        }
    };
    let opts = ConvertOptions {
        root: args.root_folder.clone(),
        list,
        from_folders: args.from_folders,
        out,
        gray: args.gray,
        shuffle: args.shuffle,
        seed: args.seed,
        resize_height: args.resize_height,
        resize_width: args.resize_width,
        check_size: args.check_size,
        encoded: args.encoded,
        encode_type: args.encode_type.clone(),
        overwrite: args.overwrite,
        show_progress: std::io::stderr().is_terminal(),
    };
    let s = convert_imageset(&opts)?;
    let shape = s
        .first_shape
        .map(|[c, h, w]| format!(", {c}x{h}x{w}"))
        .unwrap_or_default();
    let labels = s
        .labels_file
        .as_ref()
        .map(|p| format!(", class names in {}", p.display()))
        .unwrap_or_default();
    println!(
        "convert-imageset: wrote {} images{shape} to {} ({} skipped, {} classes{labels}) in {:.1}s",
        s.written,
        opts.out.display(),
        s.skipped,
        s.classes,
        s.seconds
    );
    Ok(())
}
