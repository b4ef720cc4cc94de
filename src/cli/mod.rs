//! The command line: one module per subcommand; each parses its flags and calls the library.

pub mod bench;
pub mod caffe;
pub mod classify;
pub mod common;
pub mod compute_image_mean;
pub mod convert_imageset;
pub mod convert_mnist;
pub mod demo;
pub mod device_query;
pub mod extract_features;
pub mod inspect;
pub mod log;
pub mod parse_log;
pub mod plot;
pub mod test;
pub mod time;
pub mod train;
pub mod upgrade;

/// Rewrites Caffe's single-dash long flags (`-solver x`, `-resize_height=32`) into clap's
/// `--solver x` / `--resize-height=32`, so existing scripts keep working.
pub fn caffe_style_args(args: Vec<String>) -> Vec<String> {
    args.into_iter()
        .enumerate()
        .map(|(i, a)| {
            let is_caffe_flag = i > 0
                && a.starts_with('-')
                && !a.starts_with("--")
                && a.len() > 2
                && a[1..]
                    .chars()
                    .next()
                    .is_some_and(|c| c.is_ascii_alphabetic());
            if !is_caffe_flag {
                return a;
            }
            let body = &a[1..];
            let (name, value) = match body.split_once('=') {
                Some((n, v)) => (n, Some(v)),
                None => (body, None),
            };
            let name = name.replace('_', "-");
            match value {
                Some(v) => format!("--{name}={v}"),
                None => format!("--{name}"),
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn caffe_flags_become_clap_flags() {
        let v: Vec<String> = [
            "crema",
            "train",
            "-solver",
            "s.prototxt",
            "-resize_height=32",
            "--gpu",
            "0",
            "-5",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        assert_eq!(
            caffe_style_args(v),
            [
                "crema",
                "train",
                "--solver",
                "s.prototxt",
                "--resize-height=32",
                "--gpu",
                "0",
                "-5"
            ]
        );
    }
}
