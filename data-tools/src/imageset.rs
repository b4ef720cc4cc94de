//! Caffe's convert_imageset as a library: a list of images (or one folder per class) to an LMDB
//! of Datums, decoded and resized in parallel, written in a deterministic order.
use std::path::{Path, PathBuf};
use std::time::Instant;

use crema_proto::caffe::Datum;
use indicatif::{ProgressBar, ProgressStyle};
use rand::seq::SliceRandom;
use rand::SeedableRng;
use rayon::prelude::*;

use crate::error::{DataError, Result};
use crate::image_io::{self, ColorMode};
use crate::lmdb::DatumWriter;

/// Images decoded in parallel before their Datums are written in order.
const CHUNK: usize = 1024;
/// Extensions `--from-folders` picks up (case-insensitive); other files are ignored.
const IMAGE_EXTENSIONS: [&str; 5] = ["jpg", "jpeg", "jpe", "png", "bmp"];

/// `(relative path, label)` pairs, in list order.
type Listing = Vec<(String, i32)>;

/// What convert-imageset should do; the fields mirror Caffe's flags.
#[derive(Clone, Debug, Default)]
pub struct ConvertOptions {
    /// Folder the list's relative paths start from.
    pub root: PathBuf,
    /// The `relative/path label` list; None with `from_folders`.
    pub list: Option<PathBuf>,
    /// Build the list from one sub-folder of `root` per class (sorted names → labels 0..K-1).
    pub from_folders: bool,
    /// The LMDB directory to create.
    pub out: PathBuf,
    /// One grey channel instead of BGR.
    pub gray: bool,
    /// Shuffle the list (with `seed`) before writing.
    pub shuffle: bool,
    /// Seed of the shuffle.
    pub seed: u64,
    /// Resize to this height (together with `resize_width`; 0 keeps the size).
    pub resize_height: u32,
    /// Resize to this width (together with `resize_height`; 0 keeps the size).
    pub resize_width: u32,
    /// Require every image to have the first one's size.
    pub check_size: bool,
    /// Store encoded image bytes instead of raw pixels.
    pub encoded: bool,
    /// Encoding for `encoded` ("jpg", "png", "bmp"); empty: the file's own extension.
    pub encode_type: String,
    /// Replace an existing output database (and a differing labels.txt).
    pub overwrite: bool,
    /// Draw a progress bar on stderr.
    pub show_progress: bool,
}

/// What convert-imageset did.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct ConvertSummary {
    /// Datums written.
    pub written: usize,
    /// Images skipped because they could not be read or decoded.
    pub skipped: usize,
    /// The skipped files.
    pub skipped_files: Vec<PathBuf>,
    /// Channels, height, width of the first image written (after resizing).
    pub first_shape: Option<[u32; 3]>,
    /// The class-name file written with `from_folders`.
    pub labels_file: Option<PathBuf>,
    /// Number of classes (with `from_folders`) or distinct labels in the list.
    pub classes: usize,
    /// Wall time in seconds.
    pub seconds: f64,
}

/// Reads a Caffe image list: each non-empty line is `relative/path label`, split at the last
/// space or tab so paths may contain spaces.
pub fn read_list_file(path: &Path) -> Result<Vec<(String, i32)>> {
    let text =
        std::fs::read_to_string(path).map_err(|e| DataError::io("read list file", path, e))?;
    let mut lines = Vec::new();
    for (i, raw) in text.lines().enumerate() {
        let line = raw.trim_end();
        if line.trim().is_empty() {
            continue;
        }
        let bad = |reason: String| DataError::ListLine {
            path: path.to_path_buf(),
            line: i + 1,
            reason,
        };
        let Some(split) = line.rfind([' ', '\t']) else {
            return Err(bad(format!("{line:?} has no label")));
        };
        let (file, label) = (line[..split].trim_end(), &line[split + 1..]);
        if file.trim().is_empty() {
            return Err(bad(format!("{line:?} has no file name")));
        }
        let label: i32 = label
            .parse()
            .map_err(|_| bad(format!("label {label:?} is not an integer")))?;
        lines.push((file.to_string(), label));
    }
    Ok(lines)
}

/// Loads one image file as a raw Datum (uint8 C×H×W, BGR or grey), resized to
/// `new_h` × `new_w` when both are positive. Used by the ImageData layer.
pub fn load_image_datum(
    path: &Path,
    label: i32,
    new_h: u32,
    new_w: u32,
    is_color: bool,
) -> Result<Datum> {
    let bytes = std::fs::read(path).map_err(|e| DataError::io("read image", path, e))?;
    let mode = if is_color {
        ColorMode::Color
    } else {
        ColorMode::Gray
    };
    let mut img = image_io::decode(&bytes, mode, path)?;
    if new_h > 0 && new_w > 0 {
        img = image_io::resize_bilinear(&img, new_h as usize, new_w as usize);
    }
    Ok(image_io::image_to_datum(&img, label))
}

/// Builds the list from `root/<class>/...` folders: sorted class names get labels 0..K-1.
fn list_from_folders(root: &Path) -> Result<(Listing, Vec<String>)> {
    let mut classes = Vec::new();
    for entry in std::fs::read_dir(root).map_err(|e| DataError::io("list", root, e))? {
        let entry = entry.map_err(|e| DataError::io("list", root, e))?;
        let name = entry.file_name();
        let Some(name) = name.to_str() else {
            return Err(DataError::InvalidArgument(format!(
                "class folder {} has a name that is not UTF-8; rename it",
                entry.path().display()
            )));
        };
        if !name.starts_with('.') && entry.path().is_dir() {
            classes.push(name.to_string());
        }
    }
    classes.sort();
    if classes.is_empty() {
        return Err(DataError::InvalidArgument(format!(
            "--from-folders: {} has no sub-folders; put each class's images in its own folder",
            root.display()
        )));
    }
    let mut lines = Vec::new();
    let mut ignored = 0usize;
    for (label, class) in classes.iter().enumerate() {
        let mut files = Vec::new();
        walk(&root.join(class), class, &mut files, &mut ignored)?;
        files.sort();
        lines.extend(files.into_iter().map(|f| (f, label as i32)));
    }
    if ignored > 0 {
        tracing::warn!(
            "--from-folders: ignored {ignored} files under {} that are not .jpg/.jpeg/.png/.bmp",
            root.display()
        );
    }
    Ok((lines, classes))
}

/// Collects image files under `dir` as `/`-separated paths starting with `rel`.
fn walk(dir: &Path, rel: &str, out: &mut Vec<String>, ignored: &mut usize) -> Result<()> {
    for entry in std::fs::read_dir(dir).map_err(|e| DataError::io("list", dir, e))? {
        let entry = entry.map_err(|e| DataError::io("list", dir, e))?;
        let path = entry.path();
        let Some(name) = entry.file_name().to_str().map(str::to_string) else {
            tracing::warn!("skipping {}: its name is not UTF-8", path.display());
            *ignored += 1;
            continue;
        };
        if name.starts_with('.') {
            continue;
        }
        let child = format!("{rel}/{name}");
        if path.is_dir() {
            walk(&path, &child, out, ignored)?;
        } else if path
            .extension()
            .and_then(|e| e.to_str())
            .is_some_and(|e| IMAGE_EXTENSIONS.contains(&e.to_ascii_lowercase().as_str()))
        {
            out.push(child);
        } else {
            *ignored += 1;
        }
    }
    Ok(())
}

/// The lower-cased extension of a file name, or "" when it has none.
fn extension_of(name: &str) -> String {
    Path::new(name)
        .extension()
        .and_then(|e| e.to_str())
        .unwrap_or("")
        .to_ascii_lowercase()
}

/// One image turned into the Datum to store, with its decoded C, H, W.
fn load_entry(path: &Path, label: i32, opts: &ConvertOptions) -> Result<(Datum, [u32; 3])> {
    let bytes = std::fs::read(path).map_err(|e| DataError::io("read image", path, e))?;
    let mode = if opts.gray {
        ColorMode::Gray
    } else {
        ColorMode::Color
    };
    let resize = opts.resize_height > 0 && opts.resize_width > 0;
    let (mut img, source_has_color) = image_io::decode_full(&bytes, mode, path)?;
    if resize {
        img = image_io::resize_bilinear(
            &img,
            opts.resize_height as usize,
            opts.resize_width as usize,
        );
    }
    let shape = [img.channels as u32, img.height as u32, img.width as u32];
    if !opts.encoded {
        return Ok((image_io::image_to_datum(&img, label), shape));
    }
    let ext = extension_of(&path.to_string_lossy());
    let encoding = if opts.encode_type.is_empty() {
        ext.clone()
    } else {
        opts.encode_type.to_ascii_lowercase()
    };
    // The file's own bytes are kept when they already decode to what was asked for (as Caffe's
    // ReadImageToDatum does); a grey request on a colour file is re-encoded so it stays grey.
    let same_format = image_io::normalize_encoding(&encoding).is_some()
        && image_io::normalize_encoding(&encoding) == image_io::normalize_encoding(&ext);
    let channels_match = !opts.gray || !source_has_color;
    let data = if same_format && !resize && channels_match {
        bytes
    } else {
        image_io::encode(&img, &encoding, path)?
    };
    let datum = Datum {
        data: Some(data),
        label: Some(label),
        encoded: Some(true),
        ..Default::default()
    };
    Ok((datum, shape))
}

/// Writes `labels` one per line to `path`; an existing different file is kept unless `overwrite`.
fn write_labels_file(path: &Path, classes: &[String], overwrite: bool) -> Result<()> {
    let text: String = classes.iter().map(|c| format!("{c}\n")).collect();
    if let Ok(existing) = std::fs::read_to_string(path) {
        if existing == text {
            return Ok(());
        }
        if !overwrite {
            return Err(DataError::InvalidArgument(format!(
                "{} exists with other class names; pass --overwrite to replace it or write the DB elsewhere",
                path.display()
            )));
        }
    }
    std::fs::write(path, text).map_err(|e| DataError::io("write", path, e))
}

/// Where `--from-folders` writes the class names: `labels.txt` beside the DB directory.
pub fn labels_file_path(out: &Path) -> PathBuf {
    match out.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.join("labels.txt"),
        _ => PathBuf::from("labels.txt"),
    }
}

/// Converts the images named by `opts` into an LMDB of Datums; see [`ConvertOptions`].
/// Unreadable images are skipped (with a warning) and counted in the summary.
pub fn convert_imageset(opts: &ConvertOptions) -> Result<ConvertSummary> {
    let started = Instant::now();
    if !opts.root.is_dir() {
        return Err(DataError::RootMissing {
            path: opts.root.clone(),
        });
    }
    if !opts.encode_type.is_empty() && image_io::normalize_encoding(&opts.encode_type).is_none() {
        return Err(DataError::InvalidArgument(format!(
            "--encode-type {:?} is not supported; use jpg, png or bmp",
            opts.encode_type
        )));
    }
    if (opts.resize_height > 0) != (opts.resize_width > 0) {
        tracing::warn!(
            "only one of --resize-height/--resize-width is set ({}x{}); images keep their size, as in Caffe",
            opts.resize_height,
            opts.resize_width
        );
    }
    let (mut lines, classes) = match (&opts.list, opts.from_folders) {
        (Some(list), false) => (read_list_file(list)?, None),
        (None, true) => {
            let (lines, classes) = list_from_folders(&opts.root)?;
            (lines, Some(classes))
        }
        (Some(list), true) => {
            return Err(DataError::InvalidArgument(format!(
                "--from-folders builds the list itself; drop the list file {}",
                list.display()
            )))
        }
        (None, false) => {
            return Err(DataError::InvalidArgument(
                "no list file given; pass LISTFILE or --from-folders".into(),
            ))
        }
    };
    if lines.is_empty() {
        let source = opts.list.as_ref().map_or_else(
            || opts.root.display().to_string(),
            |l| l.display().to_string(),
        );
        return Err(DataError::InvalidArgument(format!(
            "no images listed in {source}"
        )));
    }
    if opts.shuffle {
        lines.shuffle(&mut rand::rngs::StdRng::seed_from_u64(opts.seed));
    }
    tracing::info!("convert-imageset: {} images listed", lines.len());

    let mut writer = DatumWriter::create(&opts.out, opts.overwrite)?;
    let progress = if opts.show_progress {
        let bar = ProgressBar::new(lines.len() as u64);
        if let Ok(style) = ProgressStyle::with_template(
            "{elapsed_precise} [{wide_bar}] {pos}/{len} images ({per_sec}, eta {eta})",
        ) {
            bar.set_style(style);
        }
        bar
    } else {
        ProgressBar::hidden()
    };
    let mut summary = ConvertSummary::default();
    let mut first: Option<(PathBuf, [u32; 3])> = None;
    let mut decoded: Vec<Result<(Datum, [u32; 3])>> = Vec::new();
    let mut chunks = lines.chunks(CHUNK).enumerate().peekable();
    // Decode the first chunk, then overlap writing chunk k with decoding chunk k+1.
    if let Some((_, chunk)) = chunks.peek() {
        decoded = decode_chunk(chunk, opts);
    }
    while let Some((k, chunk)) = chunks.next() {
        let next = chunks.peek().map(|(_, c)| *c);
        let current = std::mem::take(&mut decoded);
        let (written, next_decoded) = rayon::join(
            || -> Result<ConvertSummary> {
                let mut part = ConvertSummary::default();
                for (j, (result, (rel, _))) in current.into_iter().zip(chunk).enumerate() {
                    let index = k * CHUNK + j;
                    let path = opts.root.join(rel);
                    match result {
                        Ok((datum, shape)) => {
                            match &first {
                                None => first = Some((path.clone(), shape)),
                                Some((_, expected)) if opts.check_size && *expected != shape => {
                                    return Err(DataError::SizeMismatch {
                                        path,
                                        expected: *expected,
                                        found: shape,
                                    })
                                }
                                Some(_) => {}
                            }
                            writer.put(&format!("{index:08}_{rel}"), &datum)?;
                            part.written += 1;
                        }
                        Err(e) => {
                            tracing::warn!("skipping {}: {e}", path.display());
                            part.skipped += 1;
                            part.skipped_files.push(path);
                        }
                    }
                    progress.inc(1);
                }
                Ok(part)
            },
            || next.map(|c| decode_chunk(c, opts)).unwrap_or_default(),
        );
        let part = written?;
        summary.written += part.written;
        summary.skipped += part.skipped;
        summary.skipped_files.extend(part.skipped_files);
        decoded = next_decoded;
    }
    progress.finish_and_clear();
    if summary.written == 0 {
        return Err(DataError::InvalidArgument(format!(
            "none of the {} listed images could be read (first: {}); check ROOTFOLDER {}",
            lines.len(),
            opts.root.join(&lines[0].0).display(),
            opts.root.display()
        )));
    }
    writer.finish()?;
    summary.first_shape = first.map(|(_, s)| s);
    summary.classes = match &classes {
        Some(c) => c.len(),
        None => {
            let mut labels: Vec<i32> = lines.iter().map(|l| l.1).collect();
            labels.sort_unstable();
            labels.dedup();
            labels.len()
        }
    };
    if let Some(classes) = &classes {
        let path = labels_file_path(&opts.out);
        write_labels_file(&path, classes, opts.overwrite)?;
        tracing::info!(
            "convert-imageset: wrote {} class names to {}",
            classes.len(),
            path.display()
        );
        summary.labels_file = Some(path);
    }
    summary.seconds = started.elapsed().as_secs_f64();
    tracing::info!(
        "convert-imageset: wrote {} images to {} ({} skipped) in {:.1}s",
        summary.written,
        opts.out.display(),
        summary.skipped,
        summary.seconds
    );
    Ok(summary)
}

fn decode_chunk(chunk: &[(String, i32)], opts: &ConvertOptions) -> Vec<Result<(Datum, [u32; 3])>> {
    chunk
        .par_iter()
        .map(|(rel, label)| load_entry(&opts.root.join(rel), *label, opts))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn list_parsing() {
        let dir = tempfile::tempdir().unwrap();
        let list = dir.path().join("list.txt");
        std::fs::write(&list, "a/b c.jpg 3\r\n\n  \nx.png\t-1\n").unwrap();
        assert_eq!(
            read_list_file(&list).unwrap(),
            vec![("a/b c.jpg".to_string(), 3), ("x.png".to_string(), -1)]
        );
        std::fs::write(&list, "ok.jpg 1\nnolabel.jpg\n").unwrap();
        let e = read_list_file(&list).unwrap_err().to_string();
        assert!(e.contains("list.txt:2") && e.contains("no label"), "{e}");
        std::fs::write(&list, "ok.jpg cat\n").unwrap();
        let e = read_list_file(&list).unwrap_err().to_string();
        assert!(e.contains("list.txt:1") && e.contains("\"cat\""), "{e}");
    }

    #[test]
    fn labels_file_sits_beside_the_db() {
        assert_eq!(
            labels_file_path(Path::new("a/b/train_lmdb")),
            Path::new("a/b/labels.txt")
        );
        assert_eq!(
            labels_file_path(Path::new("train_lmdb")),
            Path::new("labels.txt")
        );
    }
}
